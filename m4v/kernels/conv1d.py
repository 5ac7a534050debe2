"""Causal depthwise conv1d on token-major input, as a custom op (so FLOP counting and
torch.compile see one op), with an explicit backward.

For each channel d and time t of one sequence::

    y[t, d] = bias[d] + sum_k weight[d, k] * x[t - (width - 1) + k, d]      (x = 0 before the start)

With ``cu_seqlens`` the input packs several sequences (batch 1) and no tap reaches across a
sequence start. Plain PyTorch on every device: the fused CUDA path is the scan's loader.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

OP = "causal_conv1d"


def _tap_masks(seqlen: int, width: int, cu_seqlens: Optional[Tensor], device) -> Optional[Tensor]:
    """(width - 1, seqlen) bool: tap k may read t - (width - 1) + k (same sequence), or None."""
    if cu_seqlens is None:
        return None
    bounds = cu_seqlens.long()
    position = torch.arange(seqlen, device=device)
    seq_start = bounds[torch.searchsorted(bounds[1:], position, right=True)]
    shifts = torch.arange(width - 1, 0, -1, device=device)
    return position[None, :] - shifts[:, None] >= seq_start[None, :]


def _shifted(x: Tensor, shift: int) -> Tensor:
    """x delayed by ``shift`` steps along dim 1 (zeros enter at the start)."""
    return F.pad(x, (0, 0, shift, 0))[:, :x.shape[1]] if shift else x


def _advanced(x: Tensor, shift: int) -> Tensor:
    """x moved ``shift`` steps earlier along dim 1 (zeros enter at the end)."""
    return F.pad(x, (0, 0, 0, shift))[:, shift:] if shift else x


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor] = None) -> Tensor:
    """Reference: x (batch, seqlen, channels), weight (channels, width), bias (channels,) or None."""
    width = weight.shape[1]
    masks = _tap_masks(x.shape[1], width, cu_seqlens, x.device)
    out = x * weight[:, width - 1]
    for tap in range(width - 1):
        term = _shifted(x, width - 1 - tap) * weight[:, tap]
        if masks is not None:
            term = term * masks[tap].to(x.dtype)[None, :, None]
        out = out + term
    return out + bias if bias is not None else out


@torch.library.custom_op("m4v::causal_conv1d", mutates_args=())
def causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor]) -> Tensor:
    return causal_conv1d_ref(x, weight, bias, cu_seqlens)


@causal_conv1d_op.register_fake
def _(x, weight, bias, cu_seqlens):
    return torch.empty_like(x)


@torch.library.custom_op("m4v::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd_op(dout: Tensor, x: Tensor, weight: Tensor, cu_seqlens: Optional[Tensor],
                         has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias); dbias is empty without a bias. Weight gradients sum in float32."""
    width = weight.shape[1]
    masks = _tap_masks(x.shape[1], width, cu_seqlens, x.device)
    acc = torch.promote_types(x.dtype, torch.float32)
    dx = dout * weight[:, width - 1]
    dweight = torch.empty(weight.shape, dtype=acc, device=weight.device)
    dweight[:, width - 1] = (dout.to(acc) * x.to(acc)).sum((0, 1))
    for tap in range(width - 1):
        shift = width - 1 - tap
        masked = dout if masks is None else dout * masks[tap].to(dout.dtype)[None, :, None]
        dx = dx + _advanced(masked, shift) * weight[:, tap]
        dweight[:, tap] = (masked.to(acc) * _shifted(x, shift).to(acc)).sum((0, 1))
    dbias = dout.to(acc).sum((0, 1)) if has_bias else dout.new_empty((0,))
    return dx, dweight.to(weight.dtype), dbias


@causal_conv1d_bwd_op.register_fake
def _(dout, x, weight, cu_seqlens, has_bias):
    dbias = weight.new_empty((weight.shape[0],)) if has_bias else dout.new_empty((0,))
    return torch.empty_like(x), torch.empty_like(weight), dbias


def _setup(ctx, inputs, output):
    x, weight, bias, cu_seqlens = inputs
    ctx.save_for_backward(x, weight, cu_seqlens)
    ctx.has_bias, ctx.bias_dtype = bias is not None, bias.dtype if bias is not None else None


def _backward(ctx, dout):
    x, weight, cu_seqlens = ctx.saved_tensors
    dx, dweight, dbias = causal_conv1d_bwd_op(dout.contiguous(), x, weight, cu_seqlens, ctx.has_bias)
    return dx, dweight, dbias.to(ctx.bias_dtype) if ctx.has_bias else None, None


causal_conv1d_op.register_autograd(_backward, setup_context=_setup)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.m4v.causal_conv1d)
    def _fwd_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        batch, seqlen, channels = x_shape
        return 2 * batch * seqlen * channels * weight_shape[1]

    @register_flop_formula(torch.ops.m4v.causal_conv1d_bwd)
    def _bwd_flops(dout_shape, x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        batch, seqlen, channels = x_shape
        return 4 * batch * seqlen * channels * weight_shape[1]


_register_flop_formulas()


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  cu_seqlens: Optional[Tensor] = None) -> Tensor:
    """Causal depthwise conv1d.

    Args:
        x: (batch, seqlen, channels), token-major.
        weight: (channels, width). bias: (channels,) or None.
        cu_seqlens: int32 (num_seqs + 1,) when x packs sequences (batch must be 1).

    Returns:
        (batch, seqlen, channels), contiguous.
    """
    if x.dim() != 3:
        raise ValueError(f"{OP}: x must be (batch, seqlen, channels), got {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"{OP}: weight must be (channels={x.shape[2]}, width), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"{OP}: bias must be ({x.shape[2]},), got {tuple(bias.shape)}")
    if cu_seqlens is not None and x.shape[0] != 1:
        raise ValueError(f"{OP}: cu_seqlens needs batch 1, got {x.shape[0]}")
    weight = weight.to(x.dtype)
    return causal_conv1d_op(x.contiguous(), weight, bias.to(x.dtype) if bias is not None else None, cu_seqlens)


__all__ = ["causal_conv1d", "causal_conv1d_ref"]
