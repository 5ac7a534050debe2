"""adaLN-Zero modulation shared by every block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Modulation(nn.Module):
    """c (batch, hidden) -> `count` (batch, 1, hidden) vectors (shift, scale, gate, ...).

    Zero-initialised (adaLN-Zero): a fresh block is the identity on its residual stream.
    """

    def __init__(self, hidden: int, count: int):
        super().__init__()
        self.count = count
        self.linear = nn.Linear(hidden, count * hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        return self.linear(F.silu(c))[:, None, :].chunk(self.count, dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype otherwise (float64 stays exact)."""
    return torch.promote_types(x.dtype, torch.float32)


def layer_norm(x: Tensor) -> Tensor:
    """LayerNorm without affine parameters (the modulation supplies them), accumulated in at least float32.

    torch's layer_norm kernels (CUDA and CPU) already accumulate half-precision inputs in float32, so
    the input is not cast: a float32 copy of the activations and its backward cost ~0.4 ms per 768p
    block. The cast back only matters under autocast, whose layer_norm returns float32.
    """
    return F.layer_norm(x, x.shape[-1:], eps=1e-6).to(x.dtype)


__all__ = ["Modulation", "modulate", "layer_norm", "compute_dtype"]
