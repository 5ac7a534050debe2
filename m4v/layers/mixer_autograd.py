"""The Mamba mixer's forward and backward as one autograd node after in_proj's, for eager training.

Recorded op by op, the mixer's forward adds about twenty nodes to autograd's graph (the
projections, the conv, the scan, and the views, splits and casts between them), each costing the
host time to record; at the 768p unit the GPU then waited on the host before the scan (H200: 0.17
ms per synced fwd+bwd step, `benchmarks/profile_mixer_timeline.py`). ``mamba_inner`` runs in_proj
as its own node (its GEMM, the step's first long kernel, should start as early as it can), then
the conv, x_proj, dt_proj, the scan and out_proj without recording, keeping what each op's
backward needs; that node's backward calls those backwards in reverse order, with the glue
autograd would have added (transposes, the split's concatenation, the casts and the
``-exp(A_log)`` chain) written out. Each op's own ``setup_context`` and ``backward`` run unchanged
(on a stand-in context), so both paths compute the same gradients. Measured on an H100 at 15,360
tokens with in_proj inside the node: 3.0-3.5 ms of host time to issue a fwd+bwd step instead of
3.8-4.0, but a synced step of ~7.0 ms either way, as the node's bookkeeping delayed in_proj's
GEMM; hence in_proj outside it.

The layer takes this path only in plain eager mode with grad enabled and plain ``nn.Linear``
projections; torch.compile, FLOP counting, other modes, wrapped layers (LoRA) and sampling take the
op-by-op path (``MambaMixer.forward``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from m4v.kernels._eager import Switch, plain_eager
from m4v.kernels.conv1d import _causal_conv1d_call, causal_conv1d_args
from m4v.kernels.selective_scan import _selective_scan_fwd_call, selective_scan_args
from m4v.layers.projections import _ForkedLinear, _linear_as_autocast, split_linear


# Within it, the mixer records its ops one by one even where it would take the one-node path.
mixer_op_by_op = Switch()


def one_node_enabled() -> bool:
    """Whether a mixer call made now may run as one node (eager, grad on, not within mixer_op_by_op)."""
    return not mixer_op_by_op.on and torch.is_grad_enabled() and plain_eager()


class _OpContext:
    """An op's autograd context inside the mixer's node: its ``setup_context`` and ``backward`` run
    against it. What the op saves goes through the node's own ``save_for_backward`` (so autograd's
    checks of in-place changes still apply); flags and attributes stay here."""

    def __init__(self, needs_input_grad: tuple = ()):
        self.needs_input_grad = needs_input_grad
        self.to_save: tuple = ()
        self.saved_tensors: tuple = ()

    def save_for_backward(self, *tensors) -> None:
        self.to_save = tensors

    def mark_non_differentiable(self, *tensors) -> None:
        pass  # the node's outputs are marked by the node

    def set_materialize_grads(self, value: bool) -> None:
        pass  # the node passes None for unused gradients itself


@dataclass(frozen=True)
class MixerShape:
    """The mixer's sizes and scan settings that are not tensors."""
    d_inner: int
    dt_rank: int
    d_state: int
    backend: str


class _MambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, conv_weight, conv_bias, x_weight, dt_weight, dt_bias, A_log, D, out_weight, out_bias,
                initial_state, cu_seqlens, shape: MixerShape, save: bool):
        conv_ctx, fork_ctx, scan_ctx = _OpContext(), _OpContext((True, ctx.needs_input_grad[4])), _OpContext()
        conv_args = causal_conv1d_args(x, conv_weight, conv_bias, cu_seqlens, "silu", shape.backend)
        x = _causal_conv1d_call.impl(*conv_args)
        _causal_conv1d_call.setup_context(conv_ctx, conv_args, x)
        x, x_dbl = _ForkedLinear.forward(fork_ctx, x, x_weight)
        dt, B, C = x_dbl.split([shape.dt_rank, shape.d_state, shape.d_state], dim=-1)
        delta, dt_c, dt_weight_c = _linear_as_autocast(dt, dt_weight, None)  # its bias goes into the scan
        exp_A = torch.exp(A_log.float())
        scan_args = selective_scan_args(x.mT, delta.mT, -exp_A, B.mT, C.mT, D.float(), z.mT, dt_bias.float(), True,
                                        initial_state, False, cu_seqlens, shape.backend) + (save,)
        scan_out = _selective_scan_fwd_call.impl(*scan_args)
        _selective_scan_fwd_call.setup_context(scan_ctx, scan_args, scan_out)
        y, last_state = scan_out[0], scan_out[1]
        # The CUDA scan returns token-major y for token-major input, so y.mT is already contiguous
        # (see MambaMixer.forward).
        out, y_c, out_weight_c = _linear_as_autocast(y.mT.contiguous(), out_weight, out_bias)

        ctx.op_contexts = (conv_ctx, fork_ctx, scan_ctx)
        ctx.counts = tuple(len(c.to_save) for c in ctx.op_contexts)
        ctx.save_for_backward(*(t for c in ctx.op_contexts for t in c.to_save), dt_c, dt_weight_c, exp_A, y_c,
                              out_weight_c)
        for c in ctx.op_contexts:
            c.to_save = ()
        ctx.dtypes = {name: None if t is None else t.dtype for name, t in (
            ("conv_weight", conv_weight), ("conv_bias", conv_bias), ("dt_weight", dt_weight),
            ("dt_bias", dt_bias), ("A_log", A_log), ("D", D), ("out_weight", out_weight), ("out_bias", out_bias),
            ("initial_state", initial_state))}
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Optional[Tensor], dlast_state: Optional[Tensor]):
        saved = ctx.saved_tensors
        start = 0
        for c, count in zip(ctx.op_contexts, ctx.counts):
            c.saved_tensors, start = saved[start:start + count], start + count
        dt_c, dt_weight_c, exp_A, y_c, out_weight_c = saved[start:]
        conv_ctx, fork_ctx, scan_ctx = ctx.op_contexts
        dtypes, needs = ctx.dtypes, ctx.needs_input_grad

        # out_proj
        dy = dout_weight = dout_bias = None
        if dout is not None:
            dout_rows = dout.to(y_c.dtype).reshape(-1, dout.shape[-1])
            dy = (dout_rows @ out_weight_c).view(y_c.shape).mT  # (batch, d_inner, seqlen), token-major
            if needs[9]:
                dout_weight = (dout_rows.mT @ y_c.reshape(-1, y_c.shape[-1])).to(dtypes["out_weight"])
            if dtypes["out_bias"] is not None and needs[10]:
                dout_bias = dout_rows.sum(0).to(dtypes["out_bias"])  # as autograd's linear: in the GEMM's dtype
        # The scan, then the glue around its inputs: A = -exp(A_log), D and the dt bias cast to float,
        # B and C split from x_proj's output, and every (batch, d_inner, seqlen) input a transpose.
        # Each gradient is dropped after its last use, as autograd frees them between nodes; the
        # saved tensors cannot be (they stay for a retain_graph backward), so the node's backward
        # peaks above the op-by-op one by what those release early (~0.2 GB at the 768p unit).
        (du, ddelta, dA, dB, dC, dD, dz, ddt_bias, dinitial, *_) = _selective_scan_fwd_call.backward(
            scan_ctx, dy, dlast_state, None, None)
        del dy
        # A, D and the dt bias reach the scan through float32 (the layer's .float()), then the state
        # dtype: their gradients come back the same way.
        dA_log = (dA.float().neg() * exp_A).to(dtypes["A_log"])
        ddelta_rows = ddelta.mT.reshape(-1, ddelta.shape[1])
        del ddelta
        ddt = (ddelta_rows @ dt_weight_c).view(*dt_c.shape)
        ddt_weight = (ddelta_rows.mT @ dt_c.reshape(-1, dt_c.shape[-1])).to(dtypes["dt_weight"])
        del ddelta_rows
        dx_dbl = torch.cat([ddt, dB.squeeze(1).mT, dC.squeeze(1).mT], dim=-1)
        del ddt, dB, dC
        dx, dx_weight = _ForkedLinear.backward(fork_ctx, du.mT, dx_dbl)
        del du, dx_dbl
        dx, dconv_weight, dconv_bias, *_ = _causal_conv1d_call.backward(conv_ctx, dx)
        return (dx, dz.mT, dconv_weight.to(dtypes["conv_weight"]),
                None if dconv_bias is None else dconv_bias.to(dtypes["conv_bias"]), dx_weight, ddt_weight,
                ddt_bias.float().to(dtypes["dt_bias"]), dA_log, dD.float().to(dtypes["D"]), dout_weight, dout_bias,
                None if dinitial is None else dinitial.to(dtypes["initial_state"]), None, None, None)


def mamba_inner(hidden: Tensor, in_proj: torch.nn.Linear, conv_weight: Tensor, conv_bias: Optional[Tensor],
                x_proj: torch.nn.Linear, dt_proj: torch.nn.Linear, A_log: Tensor, D: Tensor,
                out_proj: torch.nn.Linear, shape: MixerShape, initial_state: Optional[Tensor] = None,
                cu_seqlens: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The mixer of :class:`m4v.layers.mixer.MambaMixer` from hidden (batch, seqlen, d_model) to
    (out (batch, seqlen, d_model), last_state (num_seqs, d_inner, d_state) float32), recorded as
    one autograd node after in_proj's own. The projections must be plain ``nn.Linear`` layers (x_proj
    without bias)."""
    # in_proj first, as its own node (projections.py): its GEMM, the step's first long kernel, then
    # starts before the host prepares the node (which took it 25-55 us later on a CPU host).
    x, z = split_linear(hidden, in_proj.weight, in_proj.bias, (shape.d_inner, shape.d_inner))
    inputs = (x, z, conv_weight, conv_bias, x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight,
              out_proj.bias, initial_state)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _MambaInner.apply(*inputs, cu_seqlens, shape, save)


__all__ = ["MixerShape", "mamba_inner", "mixer_op_by_op", "one_node_enabled"]
