"""Two linear projections of the Mamba mixer whose backward skips the copies autograd would add.

- ``split_linear``: in_proj followed by a split of its features. Autograd's backward of a split
  concatenates the parts' gradients into one (tokens, 2 * d_inner) tensor for the weight and input
  GEMMs (0.12 ms at the 768p unit); here each part's gradient feeds its own GEMMs instead.
- ``forked_linear``: x_proj applied to a tensor that also goes on elsewhere (the conv output, which
  the scan reads). Autograd would run x_proj's input-gradient GEMM, then add the other branch's
  gradient in a separate pass (0.09 ms at the 768p unit); here the GEMM adds it (beta = 1).

Both compute in autocast's dtype when autocast is on, as ``F.linear`` would, and return gradients in
their inputs' dtypes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


# Device types with an autocast to ask about ("meta", used for FLOP counting, has none). Found once:
# dynamo cannot trace torch.amp.is_autocast_available (torch 2.11), while it folds
# torch.is_autocast_enabled and torch.get_autocast_dtype into constants.
_AUTOCAST_DEVICE_TYPES = frozenset(
    device_type
    for device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "maia",
                        torch._C._get_privateuse1_backend_name())
    if torch.amp.is_autocast_available(device_type))


def _linear_as_autocast(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """F.linear as autocast, if on for x's device, would run it. Returns (out, x, weight), the last two
    in the dtype the product was computed in (for the backward)."""
    device_type = x.device.type
    if not (device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type)):
        return F.linear(x, weight, bias), x, weight
    dtype = torch.get_autocast_dtype(device_type)
    x_c, weight_c = x.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False):
        return F.linear(x_c, weight_c, None if bias is None else bias.to(dtype)), x_c, weight_c


def _rows(x: Tensor) -> Tensor:
    """(..., features) -> (rows, features), a view where the layout allows."""
    return x.reshape(-1, x.shape[-1])


class _SplitLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], split_sizes: Sequence[int]):
        out, x_c, weight_c = _linear_as_autocast(x, weight, bias)
        ctx.save_for_backward(x_c, weight_c)
        ctx.split_sizes = list(split_sizes)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return tuple(out.split(ctx.split_sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads: Tensor):
        x_c, weight_c = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grads = [_rows(g.to(x_c.dtype)) for g in grads]
        weights = weight_c.split(ctx.split_sizes, dim=0)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = grads[0] @ weights[0]
            for grad, part in zip(grads[1:], weights[1:]):
                dx.addmm_(grad, part)
            dx = dx.view(x_c.shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            x_rows = _rows(x_c)
            dweight = torch.cat([grad.mT @ x_rows for grad in grads]).to(weight_dtype)
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            acc = torch.promote_types(x_c.dtype, torch.float32)
            dbias = torch.cat([grad.sum(0, dtype=acc) for grad in grads]).to(bias_dtype)
        return dx, dweight, dbias, None


class _ForkedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor):
        out, x_c, weight_c = _linear_as_autocast(x, weight, None)
        ctx.save_for_backward(x_c, weight_c)
        ctx.dtypes = (x.dtype, weight.dtype)
        return x.view_as(x), out

    @staticmethod
    def backward(ctx, dx_passed: Tensor, dout: Tensor):
        x_c, weight_c = ctx.saved_tensors
        x_dtype, weight_dtype = ctx.dtypes
        dout_rows = _rows(dout.to(x_c.dtype))
        dx = dweight = None
        if ctx.needs_input_grad[0]:
            if dx_passed.dtype == x_c.dtype:
                dx = torch.addmm(_rows(dx_passed), dout_rows, weight_c).view(dx_passed.shape)
            else:  # autocast from a wider input: add in the input's dtype, as autograd would
                dx = dx_passed + (dout_rows @ weight_c).view(dx_passed.shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            dweight = (dout_rows.mT @ _rows(x_c)).to(weight_dtype)
        return dx, dweight


def split_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], split_sizes: Sequence[int]) -> tuple[Tensor, ...]:
    """``F.linear(x, weight, bias).split(split_sizes, dim=-1)``: x (..., in_features), weight
    (sum(split_sizes), in_features) -> one (..., size) view per part of a single GEMM's output."""
    if weight.shape[0] != sum(split_sizes):
        raise ValueError(f"split_linear: weight has {weight.shape[0]} output features, split_sizes sum to "
                         f"{sum(split_sizes)}")
    return _SplitLinear.apply(x, weight, bias, tuple(split_sizes))


def forked_linear(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(x, F.linear(x, weight))``: x (..., in_features), weight (out_features, in_features). Use
    the returned x for x's other consumers, so that their gradient joins the GEMM's."""
    return _ForkedLinear.apply(x, weight)


__all__ = ["split_linear", "forked_linear"]
