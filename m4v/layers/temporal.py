"""The lightweight temporal branch of the MM-DiM block (DESIGN.md section 3, [ours])."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from m4v.kernels.recompose import FrameSpec


class TemporalBranch(nn.Module):
    """Causal attention along time over whole frames, at a cost independent of the frame area.

    1. Every video token is projected C -> c_t (separately for queries, keys and values); each
       history frame is average-pooled to the lowest-stage grid (h0, w0) and folded into one token
       of size S = c_t * h0 * w0.
    2. The current (last) frame is pooled to (K h0, K w0), K = min(K_s, its size over the lowest
       grid), and split into K^2 tokens of the same size.
    3. Causal attention along time over [history tokens, current tokens] with ``heads`` heads
       (current tokens see each other and all history).
    4. The current tokens are unfolded, projected c_t -> C, upsampled to the current grid and
       returned through a zero-initialised per-channel gate.

    Projecting before pooling is exact (both are linear) and cheaper. Cost: O(T^2 S) for the
    attention plus O(V C c_t) for the projections.

    ``forward(video (batch, V, C), frames) -> (batch, current frame tokens, C)``, the update for the
    current frame's tokens.
    """

    def __init__(self, hidden: int, channels: int = 16, tokens_per_side: int = 4, heads: int = 2):
        super().__init__()
        self.channels, self.tokens_per_side, self.heads = channels, tokens_per_side, heads
        self.qkv = nn.Linear(hidden, 3 * channels)
        self.out = nn.Linear(channels, hidden)
        self.gate = nn.Parameter(torch.zeros(hidden))

    def forward(self, video: Tensor, frames: Sequence[FrameSpec]) -> Tensor:
        lowest = min(f.stage for f in frames)
        base = next(f for f in frames if f.stage == lowest)
        h0, w0 = base.height, base.width
        if (self.channels * h0 * w0) % self.heads:
            raise ValueError(f"TemporalBranch: token size {self.channels * h0 * w0} is not divisible by "
                             f"{self.heads} heads")
        projected = self.qkv(video)  # (batch, V, 3 c_t)
        current = frames[-1]
        history_len = len(frames) - 1
        # History frames come in runs of equal size (all older frames sit at the lowest stage): one
        # pooling call per run, not per frame, keeps long histories from costing a launch per frame.
        tokens, start, index = [], 0, 0
        while index < history_len:
            f = frames[index]
            run = 1
            while index + run < history_len and (frames[index + run].height, frames[index + run].width) == (
                    f.height, f.width):
                run += 1
            maps = rearrange(projected[:, start:start + run * f.tokens].float(), "b (n h w) c -> (b n) c h w",
                             n=run, h=f.height)
            pooled = maps if (f.height, f.width) == (h0, w0) else F.adaptive_avg_pool2d(maps, (h0, w0))
            tokens.append(rearrange(pooled, "(b n) c h w -> b n (c h w)", n=run))
            start, index = start + run * f.tokens, index + run
        k = max(1, min(self.tokens_per_side, round(current.height / h0), round(current.width / w0)))
        current_map = rearrange(projected[:, start:].float(), "b (h w) c -> b c h w", h=current.height)
        pooled_current = F.adaptive_avg_pool2d(current_map, (k * h0, k * w0))
        tokens.append(rearrange(pooled_current, "b c (ky h) (kx w) -> b (ky kx) (c h w)", ky=k, kx=k))
        seq = torch.cat(tokens, dim=1)  # (batch, history + k^2, 3 * S)
        q, key, v = rearrange(seq, "b n (three c hw) -> three b n (c hw)", three=3, c=self.channels).unbind(0)
        q, key, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, key, v))
        time = torch.cat([torch.arange(history_len, device=video.device),
                          torch.full((k * k,), history_len, device=video.device)])
        out = time_causal_attention(q, key, v, time)
        out = rearrange(out[:, :, history_len:], "b h n d -> b n (h d)")
        out = rearrange(out, "b (ky kx) (c h w) -> b c (ky h) (kx w)", ky=k, kx=k, c=self.channels, h=h0)
        out = F.interpolate(out, size=(current.height, current.width), mode="nearest")
        update = self.out(rearrange(out, "b c h w -> b (h w) c").to(video.dtype))
        return update * self.gate.to(video.dtype)


def time_causal_attention(q: Tensor, key: Tensor, v: Tensor, time: Tensor) -> Tensor:
    """Softmax attention in which token i sees token j when time[i] >= time[j].

    q, key, v (batch, heads, n, d) with n = frames (tens) and d = the folded frame size (thousands),
    time (n,). Written as two small matmuls: SDPA sends this shape (float32, d > 256) to its
    memory-efficient kernel, which took 1.2 ms forward and 4.2 ms backward per MM-DiM block in the
    block benchmark at 15,360 tokens (four 48 x 80 frames: n = 4, d = 30,720), for 4 MFLOP.
    """
    scores = (q @ key.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(time[:, None] < time[None, :], float("-inf"))  # each row keeps its own token
    return scores.softmax(dim=-1) @ v


__all__ = ["TemporalBranch", "time_causal_attention"]
