"""Causal depthwise conv1d (+ optional SiLU) on token-major input: the custom op, its autograd,
the public function and the reference.

For each channel d and time t of one sequence::

    pre[t, d] = bias[d] + sum_k weight[d, k] * x[t - (width - 1) + k, d]      (x = 0 before the start)
    out[t, d] = silu(pre[t, d]) if activation == "silu" else pre[t, d]

With ``cu_seqlens`` the input packs several sequences (batch 1) and no tap reaches across a
sequence start. Backends: ``"cuda"`` (one fused memory pass each way, widths 1-4) and the PyTorch
reference; the conv has no Triton kernel, so the Triton backend (and any width above 4) runs the
reference, a handful of elementwise passes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from m4v.kernels._backend import resolve_backend
from m4v.kernels._cu_seqlens import check_cu_seqlens_values
from m4v.kernels._eager import eager_autograd_call, eager_call

OP = "causal_conv1d"
CUDA_MAX_WIDTH = 4  # mirrors kConvMaxWidth in csrc/causal_conv1d/causal_conv1d.h


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


def _conv_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor]) -> Tensor:
    """The pre-activation, computed in x's dtype."""
    width = weight.shape[1]
    masks = _tap_masks(x.shape[1], width, cu_seqlens, x.device)
    out = x * weight[:, width - 1]
    for tap in range(width - 1):
        term = _shifted(x, width - 1 - tap) * weight[:, tap]
        if masks is not None:
            term = term * masks[tap].to(x.dtype)[None, :, None]
        out = out + term
    return out + bias if bias is not None else out


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor] = None,
                      activation: Optional[str] = None) -> Tensor:
    """Reference: x (batch, seqlen, channels), weight (channels, width), bias (channels,) or None."""
    pre = _conv_ref(x, weight, bias, cu_seqlens)
    return F.silu(pre) if activation == "silu" else pre


def _conv_ref_bwd(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor],
                  silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias): the weight gradients sum in float32 (dbias empty without a bias)."""
    width = weight.shape[1]
    if silu:  # recompute the pre-activation rather than saving it
        pre = _conv_ref(x, weight, bias, cu_seqlens).float()
        sig = torch.sigmoid(pre)
        dout = (dout.float() * sig * (1 + pre * (1 - sig))).to(x.dtype)
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
    dbias = dout.to(acc).sum((0, 1)) if bias is not None else dout.new_empty((0,), dtype=acc)
    return dx, dweight, dbias


def _uses_cuda(backend: str, weight: Tensor) -> bool:
    return backend == "cuda" and weight.shape[1] <= CUDA_MAX_WIDTH


def _causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor], silu: bool,
                   backend: str) -> Tensor:
    """Forward op: x (batch, seqlen, channels) with unit channel stride; weight and bias in x's
    dtype. Returns a contiguous tensor."""
    if _uses_cuda(backend, weight):
        return torch.ops.m4v.causal_conv1d_fwd_cuda(x, weight, bias, cu_seqlens, silu)
    return causal_conv1d_ref(x, weight, bias, cu_seqlens, "silu" if silu else None).contiguous()


causal_conv1d_op = torch.library.custom_op("m4v::causal_conv1d", mutates_args=())(_causal_conv1d)


@causal_conv1d_op.register_fake
def _(x, weight, bias, cu_seqlens, silu, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _causal_conv1d_bwd(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                       cu_seqlens: Optional[Tensor], silu: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight float32, dbias float32 or empty). Deterministic on every backend."""
    if _uses_cuda(backend, weight):
        return torch.ops.m4v.causal_conv1d_bwd_cuda(dout, x, weight, bias, cu_seqlens, silu)
    dx, dweight, dbias = _conv_ref_bwd(dout, x, weight, bias, cu_seqlens, silu)
    return dx.contiguous(), dweight.float(), dbias.float()


causal_conv1d_bwd_op = torch.library.custom_op("m4v::causal_conv1d_bwd", mutates_args=())(_causal_conv1d_bwd)
_causal_conv1d_bwd_call = eager_call(causal_conv1d_bwd_op, _causal_conv1d_bwd)


@causal_conv1d_bwd_op.register_fake
def _(dout, x, weight, bias, cu_seqlens, silu, backend):
    dbias = weight.new_empty((weight.shape[0],) if bias is not None else (0,), dtype=torch.float32)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape, dtype=torch.float32), dbias)


def _setup(ctx, inputs, output):
    x, weight, bias, cu_seqlens, silu, backend = inputs
    ctx.save_for_backward(x, weight, bias, cu_seqlens)
    ctx.silu, ctx.backend = silu, backend


def _backward(ctx, dout):
    x, weight, bias, cu_seqlens = ctx.saved_tensors
    dx, dweight, dbias = _causal_conv1d_bwd_call(dout.contiguous(), x, weight, bias, cu_seqlens, ctx.silu,
                                                 ctx.backend)
    return dx, dweight.to(weight.dtype), dbias.to(bias.dtype) if bias is not None else None, None, None, None


causal_conv1d_op.register_autograd(_backward, setup_context=_setup)
_causal_conv1d_call = eager_autograd_call(causal_conv1d_op, _causal_conv1d, _setup, _backward)


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


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None,
                  activation: Optional[str] = None, backend: str = "auto") -> Tensor:
    """Causal depthwise conv1d, optionally fused with SiLU (``activation="silu"``).

    Args:
        x: (batch, seqlen, channels), token-major.
        weight: (channels, width). bias: (channels,) or None.
        cu_seqlens: int32 (num_seqs + 1,) when x packs sequences (batch must be 1).
        activation: None or "silu".
        backend: "auto", "cuda", "triton" (runs the reference) or "reference".

    Returns:
        (batch, seqlen, channels), contiguous, in x's dtype.
    """
    return _causal_conv1d_call(*causal_conv1d_args(x, weight, bias, cu_seqlens, activation, backend))


def causal_conv1d_args(x: Tensor, weight: Tensor, bias: Optional[Tensor], cu_seqlens: Optional[Tensor],
                       activation: Optional[str], backend: str) -> tuple:
    """Checks :func:`causal_conv1d`'s arguments and returns the op's: (x, weight, bias, cu_seqlens,
    silu, backend), with the backend resolved and weight and bias in x's dtype."""
    if x.dim() != 3:
        raise ValueError(f"{OP}: x must be (batch, seqlen, channels), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{OP}: x must not be empty, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{OP}: x must be a floating tensor, got {x.dtype}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[2] or weight.shape[1] < 1:
        raise ValueError(f"{OP}: weight must be (channels={x.shape[2]}, width), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"{OP}: bias must be ({x.shape[2]},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("cu_seqlens", cu_seqlens)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP}: {name} is on {t.device} but x is on {x.device}")
    if cu_seqlens is not None:
        if x.shape[0] != 1:
            raise ValueError(f"{OP}: cu_seqlens needs batch 1, got {x.shape[0]}")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"{OP}: cu_seqlens must be int32 (num_seqs + 1,), got {cu_seqlens.dtype} "
                             f"{tuple(cu_seqlens.shape)}")
        check_cu_seqlens_values(OP, cu_seqlens, x.shape[1])
    if activation not in (None, "silu"):
        raise ValueError(f"{OP}: activation must be None or 'silu', got {activation!r}")
    backend = resolve_backend(OP, backend, x)
    weight = weight.to(x.dtype)
    bias = bias.to(x.dtype) if bias is not None else None
    # Half of a fused projection's output (unit channel stride) is read in place, without a copy.
    x = x if x.stride(2) == 1 else x.contiguous()
    return x, weight, bias, cu_seqlens, activation == "silu", backend


__all__ = ["causal_conv1d", "causal_conv1d_args", "causal_conv1d_ref", "CUDA_MAX_WIDTH"]
