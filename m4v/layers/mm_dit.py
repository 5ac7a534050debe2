"""MM-DiT: the dual-stream block (separate text and video weights, one joint attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m4v.layers.attention import DEFAULT_ROPE_AXES, JointAttention, QKNorm, check_heads, split_heads
from m4v.layers.context import TokenContext
from m4v.layers.modulation import Modulation, layer_norm, modulate


class FeedForward(nn.Module):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, hidden: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden, int(hidden * mlp_ratio))
        self.fc2 = nn.Linear(int(hidden * mlp_ratio), hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class _Stream(nn.Module):
    """One modality's weights in an MM-DiT block."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.modulation = Modulation(hidden, 6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.norm = QKNorm(hidden // heads)
        self.proj = nn.Linear(hidden, hidden)
        self.mlp = FeedForward(hidden, mlp_ratio)


class MMDiTBlock(nn.Module):
    """Dual-stream block: text and video keep their own modulation, QKV, output projection and MLP,
    and meet in one joint attention over [text; video] with 3D RoPE on the video tokens and the
    context's temporal-causal mask (frame i sees text and frames <= i; text sees text).

    ``forward(text (batch, T, C), video (batch, V, C), c (batch, C), ctx) -> (text, video)``.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, rope_axes=DEFAULT_ROPE_AXES):
        super().__init__()
        check_heads(hidden, heads, rope_axes)
        self.hidden, self.heads = hidden, heads
        self.text_stream = _Stream(hidden, heads, mlp_ratio)
        self.video_stream = _Stream(hidden, heads, mlp_ratio)
        self.attention = JointAttention(rope_axes)

    def forward(self, text: Tensor, video: Tensor, c: Tensor, ctx: TokenContext) -> tuple[Tensor, Tensor]:
        streams = (self.text_stream, self.video_stream)
        inputs = (text, video)
        mods = [s.modulation(c) for s in streams]
        qkvs = [split_heads(s.qkv(modulate(layer_norm(x), m[0], m[1])), self.heads)
                for s, x, m in zip(streams, inputs, mods)]
        normed = [s.norm(q, k) for s, (q, k, _) in zip(streams, qkvs)]
        q = torch.cat([normed[0][0], normed[1][0]], dim=2)
        k = torch.cat([normed[0][1], normed[1][1]], dim=2)
        v = torch.cat([qkvs[0][2], qkvs[1][2]], dim=2)
        attn = self.attention(q, k, v, ctx)
        attn_parts = (attn[:, :ctx.text_len], attn[:, ctx.text_len:])
        outputs = []
        for s, x, m, a in zip(streams, inputs, mods, attn_parts):
            shift1, scale1, gate1, shift2, scale2, gate2 = m
            x = x + gate1 * s.proj(a)
            x = x + gate2 * s.mlp(modulate(layer_norm(x), shift2, scale2))
            outputs.append(x)
        return outputs[0], outputs[1]


__all__ = ["MMDiTBlock", "FeedForward"]
