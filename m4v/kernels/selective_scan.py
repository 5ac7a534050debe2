"""Selective scan (Mamba-1 / S6): the public function, its custom ops, autograd and reference.

For each batch row b, channel d and state n, with t running over the sequence::

    dt[t]   = softplus(delta[b, d, t] + delta_bias[d])        (softplus only if delta_softplus)
    x[t, n] = exp(dt[t] * A[d, n]) * x[t-1, n] + dt[t] * B[b, g, n, t] * u[b, d, t]
    y[t]    = sum_n C[b, g, n, t] * x[t, n] + D[d] * u[b, d, t]
    out[t]  = y[t] * silu(z[b, d, t])                         (gate only if z is given)

where g = d // (dim // groups) and x[-1] = initial_state (zeros by default). Arguments and
shapes follow mamba_ssm's ``selective_scan_fn``; ``initial_state``, ``reverse``, ``cu_seqlens``
and the deterministic backward go beyond it.

The ops ``m4v::selective_scan_fwd`` and ``m4v::selective_scan_bwd`` take the backend name as an
argument, so one registration (fake impl, autograd, FLOP formula) serves all three backends and
``torch.compile(fullgraph=True)`` sees no graph break.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from m4v.kernels._backend import new_scan_output, resolve_backend
from m4v.kernels._cu_seqlens import check_cu_seqlens_values
from m4v.kernels._eager import eager_autograd_call, eager_call

OP = "selective_scan"
MAX_DSTATE = 256
# Time steps between the states the forward saves for the backward, per backend. The CUDA value
# mirrors kScanChunk in csrc/selective_scan/selective_scan.h.
CHECKPOINT_CHUNK = {"cuda": 256, "triton": 64}
SEQ_ALIGN = 8  # kSeqAlign in csrc/selective_scan/selective_scan.h


# Steps per chunk of the reference forward: small enough that a chunk's temporaries stay in cache.
_REF_CHUNK = 64


def _fail(message: str) -> None:
    raise ValueError(f"{OP}: {message}")


def _num_seqs(batch: int, cu_seqlens: Optional[Tensor]) -> int:
    return batch if cu_seqlens is None else cu_seqlens.shape[0] - 1


def checkpoint_rows(backend: str, batch: int, seqlen: int, cu_seqlens: Optional[Tensor]) -> int:
    """Rows of the saved-state buffer: chunks per sequence, or a static bound for packed input (both
    compiled backends start each packed sequence's chunk grid up to SEQ_ALIGN - 1 steps early)."""
    chunk = CHECKPOINT_CHUNK.get(backend)
    if chunk is None:
        return 0
    if cu_seqlens is None:
        return batch * -(-seqlen // chunk)
    num_seqs = cu_seqlens.shape[0] - 1
    return -(-(seqlen + (SEQ_ALIGN - 1) * num_seqs) // chunk) + num_seqs


# ------------------------------------------------------------------------------------------------
# Argument checks and canonical shapes.


def _as_grouped(x: Tensor, name: str, batch: int, dim: int, dstate: int, seqlen: int) -> Tensor:
    """B or C as (batch, groups, dstate, seqlen); the time-invariant (dim, dstate) form becomes a
    zero-stride view with one group per channel."""
    if x.dim() == 2:
        if tuple(x.shape) != (dim, dstate):
            _fail(f"{name} as a time-invariant matrix must be (dim, dstate) = ({dim}, {dstate}), got {tuple(x.shape)}")
        return x[None, :, :, None].expand(batch, dim, dstate, seqlen)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() != 4:
        _fail(f"{name} must be (batch, groups, dstate, seqlen), (batch, dstate, seqlen) or (dim, dstate), "
              f"got rank {x.dim()}")
    if x.shape[0] != batch or x.shape[2] != dstate or x.shape[3] != seqlen:
        _fail(f"{name} must be (batch, groups, dstate, seqlen) with batch={batch}, dstate={dstate}, "
              f"seqlen={seqlen}, got {tuple(x.shape)}")
    if x.shape[1] < 1 or dim % x.shape[1] != 0:
        _fail(f"{name} has {x.shape[1]} groups, which must divide dim={dim}")
    return x


def _check_float(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        _fail(f"{name} must be a real floating tensor, got {x.dtype}")


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens):
    """Validates everything; returns (B4, C4) in canonical (batch, groups, dstate, seqlen) form."""
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias,
               "initial_state": initial_state, "cu_seqlens": cu_seqlens}
    for name, t in tensors.items():
        if t is not None and not isinstance(t, Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in tensors.items():
        if t is not None and t.device != u.device:
            _fail(f"{name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3:
        _fail(f"u must be (batch, dim, seqlen), got rank {u.dim()} shape {tuple(u.shape)}")
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        _fail(f"u must be float32, float16, bfloat16 or float64, got {u.dtype}")
    batch, dim, seqlen = u.shape
    if u.numel() == 0:
        _fail(f"u must not be empty, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        _fail(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if delta.dtype != u.dtype:
        _fail(f"delta must have u's dtype {u.dtype}, got {delta.dtype}")
    if z is not None:
        if z.shape != u.shape:
            _fail(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
        if z.dtype != u.dtype:
            _fail(f"z must have u's dtype {u.dtype}, got {z.dtype}")
    if A.is_complex():
        _fail("A must be real; complex A is not supported")
    _check_float(A, "A")
    if A.dim() != 2 or A.shape[0] != dim:
        _fail(f"A must be (dim, dstate) with dim={dim}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        _fail(f"dstate (A.shape[1]) must be in [1, {MAX_DSTATE}], got {dstate}")
    B4 = _as_grouped(B, "B", batch, dim, dstate, seqlen)
    C4 = _as_grouped(C, "C", batch, dim, dstate, seqlen)
    if B4.shape[1] != C4.shape[1]:
        _fail(f"B and C must have the same number of groups, got {B4.shape[1]} and {C4.shape[1]}")
    for name in ("B", "C"):
        _check_float(tensors[name], name)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check_float(t, name)
            if tuple(t.shape) != (dim,):
                _fail(f"{name} must be (dim,) = ({dim},), got {tuple(t.shape)}")
    num_seqs = batch
    if cu_seqlens is not None:
        if cu_seqlens.dtype != torch.int32:
            _fail(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
        if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            _fail(f"cu_seqlens must be (num_seqs + 1,), got shape {tuple(cu_seqlens.shape)}")
        if batch != 1:
            _fail(f"cu_seqlens packs sequences along seqlen and needs batch == 1, got batch={batch}")
        check_cu_seqlens_values(OP, cu_seqlens, seqlen)
        num_seqs = cu_seqlens.shape[0] - 1
    if initial_state is not None:
        _check_float(initial_state, "initial_state")
        if tuple(initial_state.shape) != (num_seqs, dim, dstate):
            what = "num_seqs" if cu_seqlens is not None else "batch"
            _fail(f"initial_state must be ({what}, dim, dstate) = ({num_seqs}, {dim}, {dstate}), "
                  f"got {tuple(initial_state.shape)}")
    return B4, C4


# ------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, any device, float32 or float64 math).


def _step_sizes(u, delta, delta_bias, delta_softplus):
    """The reference's compute dtype, and its steps dt (batch, dim, seqlen) before and after the
    softplus."""
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt_pre = delta.to(compute)
    if delta_bias is not None:
        dt_pre = dt_pre + delta_bias.to(compute)[:, None]
    return compute, dt_pre, (F.softplus(dt_pre) if delta_softplus else dt_pre)


def _prepare_dense(u, delta, A, B4, C4, delta_bias, delta_softplus, reverse):
    """Shared set-up of the reference's backward: steps, decays and per-channel B/C, in scan order."""
    compute, dt_pre, dt = _step_sizes(u, delta, delta_bias, delta_softplus)
    dim = u.shape[1]
    repeat = dim // B4.shape[1]
    Bd = B4.to(compute).repeat_interleave(repeat, dim=1).transpose(-1, -2)  # (batch, dim, seqlen, dstate)
    Cd = C4.to(compute).repeat_interleave(repeat, dim=1).transpose(-1, -2)
    uc = u.to(compute)
    flip = (lambda t: t.flip(2)) if reverse else (lambda t: t)
    dt, uc, Bd, Cd = flip(dt), flip(uc), flip(Bd), flip(Cd)
    decay = torch.exp(dt[..., None] * A.to(compute)[:, None, :])  # (batch, dim, seqlen, dstate)
    drive = (dt * uc)[..., None] * Bd
    return compute, flip, dt_pre, dt, uc, Bd, Cd, decay, drive


def _scan_dense_ref(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, initial_state, reverse):
    """One batch of equal-length sequences; B4/C4 in (batch, groups, dstate, seqlen) form.

    Runs time-major, (seqlen, batch, groups, channels per group, dstate), so each step is one fused
    multiply-add over contiguous memory and B/C broadcast over their group's channels, and in
    chunks of steps, so the (batch, dim, dstate) per-step tensors of a chunk stay in cache: on the
    CPU, where this reference is the scan, strided per-step slices, repeated B/C and whole-sequence
    temporaries cost several times more."""
    compute, _, dt = _step_sizes(u, delta, delta_bias, delta_softplus)
    batch, dim, seqlen = u.shape
    groups, dstate = B4.shape[1], A.shape[1]
    uc = u.to(compute)
    flip = (lambda t: t.flip(0)) if reverse else (lambda t: t)
    per_group = (seqlen, batch, groups, dim // groups, 1)
    dt_t = flip(dt.permute(2, 0, 1)).reshape(per_group)
    dtu_t = dt_t * flip(uc.permute(2, 0, 1)).reshape(per_group)
    A_g = A.to(compute).view(groups, dim // groups, dstate)
    B_t = flip(B4.to(compute).permute(3, 0, 1, 2))[:, :, :, None]  # (seqlen, batch, groups, 1, dstate)
    C_t = flip(C4.to(compute).permute(3, 0, 1, 2))[:, :, :, None]
    x = (initial_state.to(compute).view(batch, groups, dim // groups, dstate) if initial_state is not None
         else u.new_zeros((batch, groups, dim // groups, dstate), dtype=compute))
    outputs = []
    for first in range(0, seqlen, _REF_CHUNK):
        chunk = slice(first, first + _REF_CHUNK)
        decay, drive = torch.exp(dt_t[chunk] * A_g), dtu_t[chunk] * B_t[chunk]
        states = []
        for t in range(decay.shape[0]):
            x = torch.addcmul(drive[t], decay[t], x)
            states.append(x)
        outputs.append((torch.stack(states) * C_t[chunk]).sum(-1))
    y = torch.cat(outputs) if outputs else dtu_t.new_zeros((0, batch, groups, dim // groups))
    y = flip(y).reshape(seqlen, batch, dim).permute(1, 2, 0)
    if D is not None:
        y = y + uc * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(u.dtype), x.reshape(batch, dim, dstate)


def _scan_dense_ref_bwd(dout, dlast, u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, initial_state, reverse):
    """Explicit adjoint recurrence of :func:`_scan_dense_ref` (custom-op kernels run below autograd,
    so the reference backend cannot lean on it). Returns the gradients of every input."""
    compute, flip, dt_pre, dt, uc, Bd, Cd, decay, drive = _prepare_dense(u, delta, A, B4, C4, delta_bias,
                                                                         delta_softplus, reverse)
    batch, dim, seqlen = u.shape
    Ac = A.to(compute)
    x = (initial_state.to(compute) if initial_state is not None
         else u.new_zeros((batch, dim, A.shape[1]), dtype=compute))
    states = []
    for t in range(seqlen):
        states.append(x)  # the state before step t
        x = decay[:, :, t] * x + drive[:, :, t]
    states.append(x)
    g = flip(dout.to(compute))
    dz = None
    if z is not None:
        zc = flip(z.to(compute))
        y = (torch.stack(states, dim=2)[:, :, 1:] * Cd).sum(-1)
        if D is not None:
            y = y + uc * D.to(compute)[:, None]
        sig = torch.sigmoid(zc)
        dz = flip(g * y * sig * (1 + zc * (1 - sig))).to(z.dtype)
        g = g * zc * sig
    v = dlast.to(compute) if dlast is not None else torch.zeros_like(x)  # adjoint entering from the right
    du = (g * D.to(compute)[:, None]) if D is not None else torch.zeros_like(uc)
    ddt = torch.zeros_like(uc)
    dA = torch.zeros_like(Ac)
    dB = torch.zeros_like(Bd)
    dC = torch.zeros_like(Cd)
    for t in range(seqlen - 1, -1, -1):
        h = Cd[:, :, t] * g[:, :, t, None] + v  # dL/dx_t
        decay_term = decay[:, :, t] * states[t]
        du[:, :, t] += (h * Bd[:, :, t]).sum(-1) * dt[:, :, t]
        ddt[:, :, t] = (h * (Ac * decay_term + Bd[:, :, t] * uc[:, :, t, None])).sum(-1)
        dA += (h * dt[:, :, t, None] * decay_term).sum(0)
        dB[:, :, t] = h * (dt[:, :, t] * uc[:, :, t])[..., None]
        dC[:, :, t] = g[:, :, t, None] * states[t + 1]
        v = decay[:, :, t] * h
    ddelta = flip(ddt) * (torch.sigmoid(dt_pre) if delta_softplus else 1.0)
    groups = B4.shape[1]
    fold = lambda t: flip(t).transpose(-1, -2).reshape(batch, groups, dim // groups, A.shape[1], seqlen).sum(2)  # noqa: E731
    return dict(du=flip(du).to(u.dtype), ddelta=ddelta.to(u.dtype), dA=dA, dB=fold(dB), dC=fold(dC),
                dD=(flip(uc) * flip(g)).sum((0, 2)) if D is not None else None, dz=dz,
                ddelta_bias=ddelta.sum((0, 2)) if delta_bias is not None else None, dinit=v)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, reverse=False, cu_seqlens=None):
    """Step-by-step PyTorch reference of :func:`selective_scan` (same arguments and results).

    Runs on any device, computes in float32 (float64 when u is float64) and is differentiable
    through ordinary autograd. Time is a Python loop, so keep seqlen modest.
    """
    B4, C4 = _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens)
    if cu_seqlens is None:
        out, last = _scan_dense_ref(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, initial_state, reverse)
    else:
        bounds = cu_seqlens.tolist()
        outs, lasts = [], []
        for s in range(len(bounds) - 1):
            span = slice(bounds[s], bounds[s + 1])
            init = initial_state[s:s + 1] if initial_state is not None else None
            out_s, last_s = _scan_dense_ref(
                u[..., span], delta[..., span], A, B4[..., span], C4[..., span], D,
                z[..., span] if z is not None else None, delta_bias, delta_softplus, init, reverse)
            outs.append(out_s)
            lasts.append(last_s)
        out, last = torch.cat(outs, dim=-1), torch.cat(lasts, dim=0)
    last = last.to(torch.float64 if u.dtype == torch.float64 else torch.float32)
    return (out, last) if return_last_state else out


# ------------------------------------------------------------------------------------------------
# Backend implementations behind the ops.


def _reference_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse):
    out, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True,
                                   initial_state=initial_state, reverse=reverse, cu_seqlens=cu_seqlens)
    return out.contiguous(), last  # the fake kernel's layout, whatever the inputs' strides


def _reference_bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                   delta_softplus, reverse):
    """Gradients from the explicit reference adjoint; same outputs as the CUDA backward."""
    if cu_seqlens is None:
        spans = [(slice(None), None)]
    else:
        bounds = cu_seqlens.tolist()
        spans = [(slice(bounds[s], bounds[s + 1]), slice(s, s + 1)) for s in range(len(bounds) - 1)]
    parts = []
    for span, seq in spans:
        pick = (lambda t: t[..., span] if t is not None else None)
        pick_state = (lambda t: t[seq] if t is not None and seq is not None else t)
        parts.append(_scan_dense_ref_bwd(pick(dout), pick_state(dlast_state), pick(u), pick(delta), A, pick(B),
                                         pick(C), D, pick(z), delta_bias, delta_softplus,
                                         pick_state(initial_state), reverse))
    cat = lambda key, axis: torch.cat([p[key] for p in parts], axis) if parts[0][key] is not None else None  # noqa: E731
    total = lambda key: sum(p[key] for p in parts) if parts[0][key] is not None else None  # noqa: E731
    return _bwd_outputs(u, cat("du", -1), cat("ddelta", -1), total("dA"), cat("dB", -1), cat("dC", -1),
                        total("dD"), cat("dz", -1), total("ddelta_bias"), cat("dinit", 0))


def _bwd_outputs(u, du, ddelta, dA, dB, dC, dD, dz, dbias, dinit):
    """The bwd op's fixed list of 9 tensors; absent gradients are (distinct) empty tensors."""
    absent = lambda t: t if t is not None else u.new_empty((0,))  # noqa: E731
    dz = dz.contiguous() if dz is not None else None
    return [du.contiguous(), ddelta.contiguous(), dA, dB, dC, absent(dD), absent(dz), absent(dbias), dinit]


def _cuda_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse, save):
    return torch.ops.m4v.selective_scan_fwd_cuda(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                                                 delta_softplus, reverse, save)


# ------------------------------------------------------------------------------------------------
# Custom ops.


def _selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                        cu_seqlens: Optional[Tensor], delta_softplus: bool, reverse: bool, backend: str,
                        save_checkpoints: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward op. B and C are (batch, groups, dstate, seqlen) in u's dtype.

    Returns (out (batch, dim, seqlen), last_state (num_seqs, dim, dstate) fp32, checkpoints,
    out_pre). checkpoints holds the states the backend's backward needs (empty for the reference);
    out_pre is y before the z gate, which the CUDA and Triton backwards use for dz (empty without z,
    without checkpoints, and for the reference).
    """
    if backend == "cuda":
        return _cuda_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse,
                         save_checkpoints)
    if backend == "triton":
        from m4v.kernels.triton.selective_scan import selective_scan_fwd_triton

        return selective_scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                                         delta_softplus, reverse, save_checkpoints)
    out, last = _reference_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                               reverse)
    return out, last, u.new_empty((0, u.shape[1], A.shape[1]), dtype=torch.float32), u.new_empty((0,))


def _row_output(u: Tensor, backend: str) -> Tensor:
    """A fake (batch, dim, seqlen) output with the strides the backend's kernels return."""
    return new_scan_output(u) if backend == "cuda" else u.new_empty(u.shape)


selective_scan_fwd = torch.library.custom_op("m4v::selective_scan_fwd", mutates_args=())(_selective_scan_fwd)


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse, backend,
      save_checkpoints):
    batch, dim, seqlen = u.shape
    state_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    last = u.new_empty((_num_seqs(batch, cu_seqlens), dim, A.shape[1]), dtype=state_dtype)
    rows = checkpoint_rows(backend, batch, seqlen, cu_seqlens) if save_checkpoints else 0
    keeps_pre_gate = backend in ("cuda", "triton") and save_checkpoints and z is not None
    out_pre = _row_output(u, backend) if keeps_pre_gate else u.new_empty((0,))
    out = _row_output(u, backend)
    return out, last, u.new_empty((rows, dim, A.shape[1]), dtype=torch.float32), out_pre


def _selective_scan_bwd(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor,
                        B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                        initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], checkpoints: Tensor,
                        out_pre: Tensor, delta_softplus: bool, reverse: bool, backend: str) -> list[Tensor]:
    """Backward op: [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state].

    dB and dC are float32 (float64 for float64 input) in the (batch, groups, dstate, seqlen) form; dD, dz and ddelta_bias are
    empty when D, z or delta_bias is None. Deterministic: no float atomics on any backend.
    """
    if backend == "cuda":
        return torch.ops.m4v.selective_scan_bwd_cuda(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
                                                     initial_state, cu_seqlens, checkpoints, out_pre, delta_softplus,
                                                     reverse)
    if backend == "triton":
        from m4v.kernels.triton.selective_scan import selective_scan_bwd_triton

        return selective_scan_bwd_triton(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                         cu_seqlens, checkpoints, out_pre, delta_softplus, reverse)
    return _reference_bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                          delta_softplus, reverse)


selective_scan_bwd = torch.library.custom_op("m4v::selective_scan_bwd", mutates_args=())(_selective_scan_bwd)
_selective_scan_bwd_call = eager_call(selective_scan_bwd, _selective_scan_bwd)


@selective_scan_bwd.register_fake
def _(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, checkpoints, out_pre,
      delta_softplus, reverse, backend):
    batch, dim, _ = u.shape
    state_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    return [_row_output(u, backend), _row_output(u, backend), torch.empty_like(A, dtype=state_dtype),
            B.new_empty(B.shape, dtype=state_dtype), C.new_empty(C.shape, dtype=state_dtype),
            D.new_empty((dim,), dtype=state_dtype) if D is not None else u.new_empty((0,)),
            _row_output(u, backend) if z is not None else u.new_empty((0,)),
            delta_bias.new_empty((dim,), dtype=state_dtype) if delta_bias is not None else u.new_empty((0,)),
            u.new_empty((_num_seqs(batch, cu_seqlens), dim, A.shape[1]), dtype=state_dtype)]


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse, backend,
     _save) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, output[2], output[3])
    ctx.delta_softplus, ctx.reverse, ctx.backend = delta_softplus, reverse, backend
    ctx.mark_non_differentiable(output[2], output[3])
    # Unused outputs' gradients stay None: materialised, a model that never reads last_state paid
    # for zero-filling a dlast_state, a checkpoint-sized and an out_pre-sized tensor per backward
    # (99 MB, about 35 us at the 768p unit).
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlast_state, _dcheckpoints, _dout_pre):
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, checkpoints, out_pre = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    elif not (ctx.backend == "cuda" and dout.stride(1) == 1):
        # The CUDA kernels read a token-major dout (the mixer's, from out_proj) in place: its
        # transposed copy took 0.31 ms at 15,360 tokens.
        dout = dout.contiguous()
    grads = _selective_scan_bwd_call(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                     cu_seqlens, checkpoints, out_pre, ctx.delta_softplus, ctx.reverse, ctx.backend)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = grads
    return (du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype),
            dD if D is not None else None, dz if z is not None else None,
            dbias if delta_bias is not None else None,
            dinit if initial_state is not None else None,
            None, None, None, None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)
_selective_scan_fwd_call = eager_autograd_call(selective_scan_fwd, _selective_scan_fwd, _setup_context, _backward)


def _scan_flops(batch: int, dim: int, seqlen: int, dstate: int, has_D: bool, has_z: bool) -> int:
    """mamba_ssm's count: 9 flops per (element, state), plus the D skip and the z gate."""
    return 9 * batch * dim * seqlen * dstate + (batch * dim * seqlen if has_D else 0) + (
        batch * dim * seqlen if has_z else 0)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.m4v.selective_scan_fwd)
    def _fwd_flops(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args, out_shape=None,
                   **kwargs) -> int:
        batch, dim, seqlen = u_shape
        return _scan_flops(batch, dim, seqlen, A_shape[1], D_shape is not None, z_shape is not None)

    @register_flop_formula(torch.ops.m4v.selective_scan_bwd)
    def _bwd_flops(dout_shape, dlast_shape, u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape,
                   *args, out_shape=None, **kwargs) -> int:
        # The backward replays the forward and runs the adjoint scan: about twice the forward.
        batch, dim, seqlen = u_shape
        return 2 * _scan_flops(batch, dim, seqlen, A_shape[1], D_shape is not None, z_shape is not None)


_register_flop_formulas()


# ------------------------------------------------------------------------------------------------
# Public function.


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False, *, initial_state: Optional[Tensor] = None,
                   reverse: bool = False, cu_seqlens: Optional[Tensor] = None, backend: str = "auto"):
    """Selective scan, a drop-in for mamba_ssm's ``selective_scan_fn`` (see the module docstring).

    Args:
        u, delta: (batch, dim, seqlen), float32/float16/bfloat16 (float64 on the reference backend).
        A: (dim, dstate), real; dstate in [1, 256].
        B, C: (batch, groups, dstate, seqlen), (batch, dstate, seqlen) or time-invariant (dim, dstate).
            When their dtype differs from u's they are cast to u's dtype.
        D, delta_bias: (dim,) or None.
        z: (batch, dim, seqlen) gate, or None.
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return the final state (num_seqs, dim, dstate), float32.
        initial_state: (num_seqs, dim, dstate) state before the first step (differentiable).
        reverse: scan right to left (equal to flipping inputs and output, without the copies).
        cu_seqlens: int32 (num_seqs + 1,) offsets of sequences packed along seqlen (batch must be 1);
            the state restarts at every boundary and ``reverse`` applies per sequence.
        backend: "auto", "cuda", "triton" or "reference".

    Returns:
        out (batch, dim, seqlen) in u's dtype, and the last state when ``return_last_state``.
    """
    args = selective_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse,
                               cu_seqlens, backend)
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in args)
    out, last_state, _, _ = _selective_scan_fwd_call(*args, needs_grad)
    return (out, last_state) if return_last_state else out


def selective_scan_args(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                        z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                        initial_state: Optional[Tensor], reverse: bool, cu_seqlens: Optional[Tensor],
                        backend: str) -> tuple:
    """Checks :func:`selective_scan`'s arguments and returns the forward op's, all but its last
    (save_checkpoints): (u, delta, A, B4, C4, D, z, delta_bias, initial_state, cu_seqlens,
    delta_softplus, reverse, backend), with B and C grouped in u's dtype, A, D, delta_bias and
    initial_state in the state dtype, and the backend resolved."""
    B4, C4 = _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens)
    backend = resolve_backend(OP, backend, u)
    state_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    A = A.to(state_dtype)
    D = D.to(state_dtype) if D is not None else None
    delta_bias = delta_bias.to(state_dtype) if delta_bias is not None else None
    initial_state = initial_state.to(state_dtype) if initial_state is not None else None
    B4, C4 = B4.to(u.dtype), C4.to(u.dtype)
    return u, delta, A, B4, C4, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse, backend


def selective_scan_flops(batch: int, dim: int, seqlen: int, dstate: int, has_D: bool = True,
                         has_z: bool = True) -> int:
    """Forward FLOPs of one scan call, as counted by the registered FLOP formula."""
    return _scan_flops(batch, dim, seqlen, dstate, has_D, has_z)


__all__ = ["selective_scan", "selective_scan_args", "selective_scan_ref", "selective_scan_flops", "checkpoint_rows",
           "MAX_DSTATE"]
