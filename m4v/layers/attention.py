"""Joint [text; video] attention with 3D RoPE, and the single-stream attention block (the baseline
that MM-DiM replaces)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from m4v.layers.context import TokenContext
from m4v.layers.modulation import Modulation, compute_dtype, layer_norm, modulate

# Head-dimension split of 3D RoPE over (t, y, x); sums to the head dim 64 of every preset.
DEFAULT_ROPE_AXES = (16, 24, 24)


def check_heads(hidden: int, heads: int, rope_axes: tuple[int, int, int]) -> int:
    """Returns the head dim, after checking that heads divide hidden and RoPE axes fill a head."""
    if hidden % heads:
        raise ValueError(f"hidden {hidden} must be divisible by heads {heads}")
    if sum(rope_axes) != hidden // heads:
        raise ValueError(f"rope_axes {tuple(rope_axes)} must sum to the head dim {hidden // heads}")
    return hidden // heads


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates consecutive channel pairs of x (batch, heads, tokens, head_dim) by the angles
    (tokens, head_dim // 2)."""
    pairs = x.to(compute_dtype(x)).unflatten(-1, (-1, 2))
    first, second = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def rope_video_part(x: Tensor, text_len: int, ctx: TokenContext, axes: tuple[int, int, int]) -> Tensor:
    """Applies 3D RoPE to the video tokens of x (batch, heads, T + V, head_dim); text is unrotated."""
    cos, sin = ctx.rope(axes)
    return torch.cat([x[:, :, :text_len], apply_rope(x[:, :, text_len:], cos, sin)], dim=2)


class JointAttention(nn.Module):
    """The attention core over [text; video]: 3D RoPE on the video tokens, then SDPA with the
    context's mask (temporal-causal frames, text padding). No parameters; a module of its own so
    FLOP counters can attribute it to the mixer.

    ``forward(q, k, v (batch, heads, T + V, head_dim), ctx) -> (batch, T + V, heads * head_dim)``.
    """

    def __init__(self, rope_axes: tuple[int, int, int] = DEFAULT_ROPE_AXES):
        super().__init__()
        self.rope_axes = tuple(rope_axes)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, ctx: TokenContext) -> Tensor:
        q = rope_video_part(q, ctx.text_len, ctx, self.rope_axes)
        k = rope_video_part(k, ctx.text_len, ctx, self.rope_axes)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attention_mask)
        return rearrange(out, "b h n d -> b n (h d)")


class QKNorm(nn.Module):
    """RMSNorm of queries and keys per head (FLUX), which keeps attention logits bounded."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        dtype = compute_dtype(q)
        shape = (q.shape[-1],)
        q_out = F.rms_norm(q.to(dtype), shape, self.q_norm.weight.to(dtype), self.q_norm.eps)
        k_out = F.rms_norm(k.to(dtype), shape, self.k_norm.weight.to(dtype), self.k_norm.eps)
        return q_out.to(q.dtype), k_out.to(k.dtype)


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(batch, tokens, 3 * heads * head_dim) -> three (batch, heads, tokens, head_dim)."""
    return rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=heads).unbind(0)


class SingleStreamAttentionBlock(nn.Module):
    """FLUX single-stream block: one weight set for [text; video], adaLN-Zero, and joint attention
    in parallel with an MLP on the same modulated input. FLUX fuses the input projections (and the
    output ones) into one GEMM each; they are kept apart here, which is the same function, so that
    the attention (the mixer MM-DiM replaces) and the MLP can be counted separately.

    ``forward(text (batch, T, C), video (batch, V, C), c (batch, C), ctx) -> (text, video)``.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, rope_axes=DEFAULT_ROPE_AXES):
        super().__init__()
        self.head_dim = check_heads(hidden, heads, rope_axes)
        self.hidden, self.heads = hidden, heads
        mlp_hidden = int(hidden * mlp_ratio)
        self.modulation = Modulation(hidden, 3)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.norm = QKNorm(self.head_dim)
        self.attention = JointAttention(rope_axes)
        self.proj = nn.Linear(hidden, hidden)
        self.mlp_in = nn.Linear(hidden, mlp_hidden)
        self.mlp_out = nn.Linear(mlp_hidden, hidden, bias=False)  # one bias for the fused output

    def forward(self, text: Tensor, video: Tensor, c: Tensor, ctx: TokenContext) -> tuple[Tensor, Tensor]:
        shift, scale, gate = self.modulation(c)
        x = torch.cat([text, video], dim=1)
        h = modulate(layer_norm(x), shift, scale)
        q, k, v = split_heads(self.qkv(h), self.heads)
        q, k = self.norm(q, k)
        attn = self.attention(q, k, v, ctx)
        x = x + gate * (self.proj(attn) + self.mlp_out(F.gelu(self.mlp_in(h), approximate="tanh")))
        return x[:, :ctx.text_len], x[:, ctx.text_len:]


__all__ = ["SingleStreamAttentionBlock", "JointAttention", "apply_rope", "check_heads", "QKNorm", "split_heads",
           "DEFAULT_ROPE_AXES"]
