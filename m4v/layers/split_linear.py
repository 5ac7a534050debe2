"""A linear layer whose output is used as separate feature chunks (Mamba's in_proj -> x, z).

With ``F.linear(...).split(...)`` autograd concatenates the chunks' gradients into one tensor
before the GEMMs of the backward: at the 768p unit that cat moved 350 MB (about 90 us) per
MambaMixer backward. Here each chunk's gradient goes into its own GEMMs instead: the weight's
gradient is written chunk by chunk into its rows, and the input's gradient accumulates one
``addmm`` per chunk. Same FLOPs, no concatenated copy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], sizes: tuple[int, ...]):
        ctx.save_for_backward(x, weight)
        ctx.sizes, ctx.has_bias = sizes, bias is not None
        return tuple(F.linear(x, weight, bias).split(sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):
        x, weight = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        grad_rows = [g.reshape(-1, g.shape[-1]) if g is not None else None for g in grads]
        weight_chunks = weight.split(ctx.sizes, dim=0)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        dx = dweight = dbias = None
        if need_x:
            dx = torch.zeros_like(rows) if all(g is None for g in grad_rows) else None
            for g, w in zip(grad_rows, weight_chunks):
                if g is None:
                    continue
                dx = torch.mm(g, w) if dx is None else dx.addmm_(g, w)
            dx = dx.view(x.shape)
        if need_weight:
            dweight = torch.empty_like(weight)
            for g, dw in zip(grad_rows, dweight.split(ctx.sizes, dim=0)):
                torch.mm(g.t(), rows, out=dw) if g is not None else dw.zero_()
        if need_bias and ctx.has_bias:
            dbias = torch.cat([g.sum(0) if g is not None else rows.new_zeros(size)
                               for g, size in zip(grad_rows, ctx.sizes)])
        return dx, dweight, dbias, None


def split_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], sizes: Sequence[int]) -> tuple[Tensor, ...]:
    """``F.linear(x, weight, bias).split(sizes, dim=-1)`` with a backward that never concatenates
    the chunks' gradients.

    x (..., in_features), weight (sum(sizes), in_features), bias (sum(sizes),) or None. Returns one
    (..., size) tensor per entry of ``sizes`` (views of one GEMM output). Under autocast the
    arguments are cast as autocast casts ``F.linear``'s, with differentiable casts outside the
    function, so gradients reach fp32 parameters in fp32.
    """
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"split_linear: sizes {tuple(sizes)} must add up to weight's {weight.shape[0]} rows")
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device_type, enabled=False):
        return _SplitLinear.apply(x, weight, bias, tuple(sizes))


__all__ = ["split_linear"]
