"""Selective scan: the reference against an independent float64 recurrence, every backend against
the reference, registration (opcheck, torch.compile, FLOP counting) and argument checking.

On a CPU-only machine the Triton backend runs through its interpreter (tests/conftest.py) on small
float32 shapes; with a GPU the same tests run for the cuda and triton backends.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from m4v.cuda_graphs import capture_step
from m4v.kernels import available_backends, selective_scan, selective_scan_flops, selective_scan_ref
from m4v.kernels.selective_scan import CHECKPOINT_CHUNK, SEQ_ALIGN, checkpoint_rows

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"
# Backends under test here: both compiled paths on a GPU, the Triton interpreter on CPU.
BACKENDS = [b for b in ("cuda", "triton") if available_backends()[b].usable]
# Relative L2 error allowed per input dtype (forward, gradients).
TOLERANCE = {torch.float32: (2e-4, 1e-3), torch.float16: (5e-3, 1e-2), torch.bfloat16: (3e-2, 4e-2)}
LOW_PRECISION = [torch.float16, torch.bfloat16] if HAS_GPU else []


@dataclass
class Case:
    batch: int = 2
    dim: int = 6
    seqlen: int = 7
    dstate: int = 4
    groups: int = 2
    with_D: bool = True
    with_z: bool = True
    with_bias: bool = True
    softplus: bool = True
    with_init: bool = False
    reverse: bool = False
    seq_lens: tuple | None = None  # packed varlen (batch becomes 1)


def case_id(case: Case) -> str:
    """The test id: the case's fields, led by "packed" for varlen cases, so `-k packed` picks them."""
    return ("packed-" if case.seq_lens is not None else "") + repr(case)


def make_inputs(case: Case, dtype=torch.float32, device=DEVICE, generator_seed=None):
    """Fresh random inputs (never zeros). Returns (args, kwargs) for selective_scan."""
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    batch, seqlen = case.batch, case.seqlen
    cu_seqlens = None
    if case.seq_lens is not None:
        batch, seqlen = 1, sum(case.seq_lens)
        cu_seqlens = torch.tensor([0, *torch.tensor(case.seq_lens).cumsum(0).tolist()], dtype=torch.int32,
                                  device=device)
    num_seqs = batch if cu_seqlens is None else len(case.seq_lens)
    dim, n = case.dim, case.dstate
    f32 = dict(device=device, dtype=torch.float32)
    u = torch.randn(batch, dim, seqlen, device=device).to(dtype)
    # Positive-ish steps so that decays span (0, 1) without vanishing.
    delta = (0.5 * torch.rand(batch, dim, seqlen, device=device) + (-1.0 if case.softplus else 0.05)).to(dtype)
    A = -(0.5 + torch.rand(dim, n, **f32))
    B = torch.randn(batch, case.groups, n, seqlen, device=device).to(dtype)
    C = torch.randn(batch, case.groups, n, seqlen, device=device).to(dtype)
    D = torch.randn(dim, **f32) if case.with_D else None
    z = torch.randn(batch, dim, seqlen, device=device).to(dtype) if case.with_z else None
    bias = 0.1 * torch.randn(dim, **f32) if case.with_bias else None
    init = torch.randn(num_seqs, dim, n, **f32) if case.with_init else None
    args = (u, delta, A, B, C, D, z)
    kwargs = dict(delta_bias=bias, delta_softplus=case.softplus, initial_state=init, reverse=case.reverse,
                  cu_seqlens=cu_seqlens)
    return args, kwargs


def independent_recurrence(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, cu_seqlens):
    """Float64, one time step at a time, written without the reference's vectorisation.

    Differentiable by autograd. Returns (out, last_state) in float64.
    """
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, seqlen = u.shape
    groups = B.shape[1]
    per_group = dim // groups
    if cu_seqlens is None:
        spans = [(b, 0, seqlen) for b in range(batch)]
    else:
        bounds = cu_seqlens.tolist()
        spans = [(0, bounds[s], bounds[s + 1]) for s in range(len(bounds) - 1)]
    out_cols = {}
    lasts = []
    for s, (b, lo, hi) in enumerate(spans):
        x = initial_state[s].double() if initial_state is not None else u.new_zeros(dim, A.shape[1])
        steps = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
        for t in steps:
            dt = delta[b, :, t] + (delta_bias.double() if delta_bias is not None else 0.0)
            if delta_softplus:
                dt = torch.log1p(torch.exp(dt))
            Bt = torch.stack([B[b, d // per_group, :, t] for d in range(dim)])  # (dim, dstate)
            Ct = torch.stack([C[b, d // per_group, :, t] for d in range(dim)])
            x = torch.exp(dt[:, None] * A) * x + (dt * u[b, :, t])[:, None] * Bt
            y = (x * Ct).sum(-1)
            if D is not None:
                y = y + D.double() * u[b, :, t]
            if z is not None:
                zt = z[b, :, t].double()
                y = y * zt / (1 + torch.exp(-zt))
            out_cols[(b, t)] = y
        lasts.append(x)
    out = torch.stack([torch.stack([out_cols[(b, t)] for t in range(seqlen)], -1) for b in range(batch)])
    return out, torch.stack(lasts)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert not torch.isnan(actual).any(), "NaN in result"
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


CORE_CASES = [
    Case(),
    Case(seqlen=1),
    Case(seqlen=127, groups=1, reverse=True, with_init=True),
    Case(with_z=False, with_D=False, with_bias=False, softplus=False, with_init=True),
    Case(groups=3, dim=6, reverse=True, softplus=False),
    Case(seq_lens=(5, 1, 9), with_init=True),
    Case(seq_lens=(3, 0, 8), reverse=True, groups=1),
]


def _differentiable(args, kwargs):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in args]
    kw = dict(kwargs)
    if kw["initial_state"] is not None:
        kw["initial_state"] = kw["initial_state"].detach().clone().requires_grad_(True)
    if kw["delta_bias"] is not None:
        kw["delta_bias"] = kw["delta_bias"].detach().clone().requires_grad_(True)
    return leaves, kw


def _grad_leaves(leaves, kw):
    return [t for t in (*leaves, kw["delta_bias"], kw["initial_state"]) if t is not None]


@pytest.mark.parametrize("case", CORE_CASES, ids=case_id)
def test_reference_matches_independent_recurrence(case):
    args, kwargs = make_inputs(case, device="cpu")
    args = tuple(t.double() if t is not None and t.is_floating_point() else t for t in args)
    kwargs = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in kwargs.items()}
    leaves, kw = _differentiable(args, kwargs)
    out, last = selective_scan_ref(*leaves, return_last_state=True, **kw)
    leaves2, kw2 = _differentiable(args, kwargs)
    out2, last2 = independent_recurrence(*leaves2, kw2["delta_bias"], kw2["delta_softplus"], kw2["initial_state"],
                                         kw2["reverse"], kw2["cu_seqlens"])
    assert rel_err(out, out2) < 1e-12
    assert rel_err(last, last2) < 1e-12
    g_out, g_last = torch.randn_like(out), torch.randn_like(last)
    grads = torch.autograd.grad([out, last], _grad_leaves(leaves, kw), [g_out, g_last])
    grads2 = torch.autograd.grad([out2, last2], _grad_leaves(leaves2, kw2), [g_out, g_last])
    for g, g2 in zip(grads, grads2):
        assert rel_err(g, g2) < 1e-10


@pytest.mark.parametrize("case", [Case(seqlen=5, dim=4, dstate=3), Case(seq_lens=(2, 3), reverse=True, with_init=True,
                                                                      dim=2, dstate=2, groups=1)], ids=case_id)
def test_gradcheck_float64_through_the_op(case):
    """gradcheck of the public function on the reference backend (exercises the op's autograd)."""
    args, kwargs = make_inputs(case, device="cpu")
    args = tuple(t.double() if t is not None and t.is_floating_point() else t for t in args)
    kwargs = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in kwargs.items()}
    leaves, kw = _differentiable(args, kwargs)
    cu = kw["cu_seqlens"]

    def fn(u, delta, A, B, C, D, z, bias, init):
        out, last = selective_scan(u, delta, A, B, C, D, z, bias, kw["delta_softplus"], True, initial_state=init,
                                   reverse=kw["reverse"], cu_seqlens=cu, backend="reference")
        return out, last

    inputs = (*leaves, kw["delta_bias"], kw["initial_state"])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("used", ["out", "last_state"])
def test_gradients_of_one_output_alone(backend, used):
    """Only out, or only last_state, reaches the loss: the other output's gradient is None inside
    the op's backward (not materialised as zeros) and must count as zero."""
    case = Case(dim=8, seqlen=130, dstate=16, groups=1, with_init=True)
    args, kwargs = make_inputs(case, dtype=torch.float32)
    leaves, kw = _differentiable(args, kwargs)
    out, last = selective_scan(*leaves, return_last_state=True, backend=backend, **kw)
    ref_leaves, ref_kw = _differentiable([t.double() if t is not None else None for t in args],
                                         {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                                          for k, v in kwargs.items()})
    ref_out, ref_last = selective_scan_ref(*ref_leaves, return_last_state=True, **ref_kw)
    picked, ref_picked = (out, ref_out) if used == "out" else (last, ref_last)
    weight = torch.randn_like(ref_picked)
    grads = torch.autograd.grad((picked * weight.to(picked.dtype)).sum(), _grad_leaves(leaves, kw),
                                allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref_picked * weight).sum(), _grad_leaves(ref_leaves, ref_kw),
                                    allow_unused=True, materialize_grads=True)
    for g, rg in zip(grads, ref_grads):
        if rg.count_nonzero() == 0:  # C, D and z do not reach last_state: exactly zero, no NaN
            assert g.count_nonzero() == 0
        else:
            assert rel_err(g, rg) < TOLERANCE[torch.float32][1]


def test_reference_long_sequence_against_recurrence():
    case = Case(batch=1, dim=2, seqlen=2049, dstate=2, groups=1, with_init=True)
    args, kwargs = make_inputs(case, device="cpu", dtype=torch.float64)
    out, last = selective_scan_ref(*args, return_last_state=True, **kwargs)
    out2, last2 = independent_recurrence(*args, kwargs["delta_bias"], kwargs["delta_softplus"],
                                         kwargs["initial_state"], kwargs["reverse"], None)
    assert rel_err(out, out2) < 1e-12 and rel_err(last, last2) < 1e-12


def test_mamba_ssm_shape_forms_agree():
    """(batch, dstate, seqlen) and time-invariant (dim, dstate) B/C, as mamba_ssm accepts them."""
    torch.manual_seed(0)
    u, delta = torch.randn(2, 4, 9), torch.rand(2, 4, 9)
    A = -torch.rand(4, 3) - 0.5
    B3, C3 = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    out3 = selective_scan(u, delta, A, B3, C3)
    out4 = selective_scan(u, delta, A, B3[:, None], C3[:, None])
    assert torch.equal(out3, out4)
    Bti, Cti = torch.randn(4, 3), torch.randn(4, 3)
    out_ti = selective_scan(u, delta, A, Bti, Cti)
    expanded = lambda m: m[None, :, :, None].expand(2, 4, 3, 9).contiguous()  # noqa: E731
    assert rel_err(out_ti, selective_scan(u, delta, A, expanded(Bti), expanded(Cti))) < 1e-6


def test_reverse_equals_flip_scan_flip():
    args, kwargs = make_inputs(Case(seqlen=11), device="cpu")
    u, delta, A, B, C, D, z = args
    flip = lambda t: t.flip(-1)  # noqa: E731
    out_rev = selective_scan(*args, **{**kwargs, "reverse": True})
    out_flip = flip(selective_scan(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z), **kwargs))
    assert rel_err(out_rev, out_flip) < 1e-6


# ------------------------------------------------------------------------------------------------
# Backends against the reference.


def _backend_cases():
    if HAS_GPU:
        lengths = (1, 7, 127, 2049, 8192 + 3)
    else:  # the Triton interpreter is slow: small float32 shapes only
        lengths = (1, 7, 127)
    cases = [Case(seqlen=L, reverse=(i % 2 == 1), with_init=(i % 2 == 0)) for i, L in enumerate(lengths)]
    cases += [
        Case(with_z=False, with_D=False, with_bias=False, softplus=False, seqlen=70),
        Case(seq_lens=(65, 1, 0, 130), with_init=True, groups=3, dim=6),
        Case(seq_lens=(300, 17, 150), reverse=True, groups=1),  # the third: head, whole and tail chunks
        Case(dstate=1, seqlen=33, groups=1),
        Case(dstate=17, seqlen=40, reverse=True),
    ]
    if HAS_GPU:
        cases += [Case(dstate=64, seqlen=600, dim=16), Case(dstate=256, seqlen=300, dim=8, groups=1),
                  Case(batch=3, dim=40, seqlen=1000, groups=4, with_init=True)]
    return cases


def mixer_layout(u, delta, A, B, C, D, z, lead=8):
    """The inputs as MambaMixer passes them, built differentiably: u and delta are (batch, dim,
    seqlen) views of token-major tensors, z of one half of a twice-as-wide projection, and B and C
    of slices of one (batch, seqlen, lead + 2 * groups * dstate) projection (unit state stride;
    ``lead`` stands for dt_rank)."""
    batch, groups, dstate, seqlen = B.shape
    u, delta = (t.mT.contiguous().mT for t in (u, delta))
    if z is not None:
        z = torch.cat([z.mT, torch.zeros_like(z.mT)], dim=-1)[..., :z.shape[1]].mT
    width = groups * dstate
    token_major = lambda t: t.permute(0, 3, 1, 2).reshape(batch, seqlen, width)  # noqa: E731
    proj = torch.cat([torch.zeros(batch, seqlen, lead, dtype=B.dtype, device=B.device), token_major(B),
                      token_major(C)], dim=-1)
    as_grouped = lambda t: t.reshape(batch, seqlen, groups, dstate).permute(0, 2, 3, 1)  # noqa: E731
    return u, delta, A, as_grouped(proj[..., lead:lead + width]), as_grouped(proj[..., lead + width:]), D, z


def _check_backend_against_reference(backend, case, dtype, layout=None):
    args, kwargs = make_inputs(case, dtype=dtype)
    leaves, kw = _differentiable(args, kwargs)
    call_args = layout(*leaves) if layout is not None else leaves
    out, last = selective_scan(*call_args, return_last_state=True, backend=backend, **kw)
    ref_args = [t.detach().double() if t is not None and t.is_floating_point() else t for t in args]
    ref_kw = {k: (v.detach().double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in kwargs.items()}
    ref_leaves, ref_kw = _differentiable(ref_args, ref_kw)
    ref_out, ref_last = selective_scan_ref(*ref_leaves, return_last_state=True, **ref_kw)
    fwd_tol, grad_tol = TOLERANCE[dtype]
    assert out.dtype == dtype and last.dtype == torch.float32
    assert rel_err(out, ref_out) < fwd_tol
    assert rel_err(last, ref_last) < fwd_tol
    g_out = torch.randn_like(ref_out)
    g_last = torch.randn_like(ref_last)
    # dout in out's layout, as autograd hands it over in the model (token-major under the mixer
    # layout on CUDA), so the backward is checked with the strides it meets there.
    dout = torch.empty_like(out).copy_(g_out)
    grads = torch.autograd.grad([out, last], _grad_leaves(leaves, kw), [dout, g_last.float()])
    ref_grads = torch.autograd.grad([ref_out, ref_last], _grad_leaves(ref_leaves, ref_kw), [g_out, g_last])
    for g, rg, leaf in zip(grads, ref_grads, _grad_leaves(leaves, kw)):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        assert rel_err(g, rg) < grad_tol


@pytest.fixture
def poison_outputs(monkeypatch):
    """Fill every buffer the kernels write with NaN first, so an unwritten element fails the test."""
    monkeypatch.setenv("M4V_POISON_OUTPUTS", "1")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", _backend_cases(), ids=case_id)
def test_backend_matches_reference_fp32(backend, case, poison_outputs):
    _check_backend_against_reference(backend, case, torch.float32)


@pytest.mark.skipif(not HAS_GPU, reason="bf16/fp16 kernels are checked on the GPU")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("case", [Case(seqlen=2049), Case(seq_lens=(100, 257, 3), reverse=True, with_init=True),
                                  # packed starts off the 8-step grid; the second one's lead adds a chunk
                                  Case(seq_lens=(251, 262, 7, 512), dim=8, with_init=True),
                                  Case(dim=64, seqlen=4096, dstate=16, groups=1),
                                  # aligned (batch, groups, dstate, seqlen) B/C rows: one, four (packed,
                                  # starts off the 8-step grid) and eight 8-state tiles per chunk in the
                                  # CUDA forward's B/C pipeline (v25)
                                  Case(dim=16, seqlen=600, dstate=8, groups=1, reverse=True),
                                  Case(seq_lens=(251, 262, 7, 512), dim=16, dstate=32, groups=2, with_init=True),
                                  Case(batch=2, dim=16, seqlen=1000, dstate=64, groups=1)], ids=case_id)
def test_backend_matches_reference_low_precision(backend, dtype, case, poison_outputs):
    _check_backend_against_reference(backend, case, dtype)


# Many short packed sequences, empty and single-step ones among them, at widths of 256 and 512
# channel blocks (more CTAs than one wave of a 132-SM GPU holds).
PACKED_MANY_LENS = (0, 1, 7, 300, 0, 257, 33, 1, 600, 2, 90, 0, 5)


@pytest.mark.skipif("cuda" not in BACKENDS, reason="a CUDA grid-size case")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [Case(seq_lens=PACKED_MANY_LENS, dim=2048, dstate=16, groups=1, with_init=True),
                                  Case(seq_lens=PACKED_MANY_LENS, dim=4096, dstate=16, groups=2, reverse=True)],
                         ids=case_id)
def test_cuda_many_short_packed_sequences(dtype, case, poison_outputs):
    _check_backend_against_reference("cuda", case, dtype)
    _check_backend_against_reference("cuda", case, dtype, layout=mixer_layout)


# The backward's summary and main passes size their channel blocks for their own CTAs per SM; at
# these widths on an H100 they differ (16 chunk rows: main 16 blocks of 48 channels, summary 24 of
# 32; with two groups, 8 of 48 against 12 of 32), so a chunk's summary and its main pass come from
# different CTAs.
@pytest.mark.skipif("cuda" not in BACKENDS, reason="a CUDA grid-size case")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [Case(batch=1, dim=768, seqlen=4096, dstate=16, groups=1),
                                  Case(batch=1, dim=768, seqlen=4095, dstate=16, groups=2, reverse=True,
                                       with_init=True)], ids=case_id)
def test_cuda_backward_passes_on_their_own_channel_blocks(dtype, case, poison_outputs):
    _check_backend_against_reference("cuda", case, dtype)
    _check_backend_against_reference("cuda", case, dtype, layout=mixer_layout)


@pytest.mark.skipif(not HAS_GPU, reason="the token-major fast paths are GPU kernels")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [
    Case(dim=16, seqlen=1000, dstate=16, groups=1),                            # both fast paths
    Case(dim=24, seqlen=777, dstate=32, groups=3, reverse=True),                # 8 channels per group
    Case(seq_lens=(300, 1, 0, 513), dim=16, dstate=16, groups=2, with_init=True),
    Case(seq_lens=(251, 262, 7, 512), dim=16, dstate=16, groups=1, reverse=True),
    # seqlen 1 from an initial state: from a zero state dA is exactly 0 and a relative error undefined
    Case(dim=16, seqlen=1, dstate=16, groups=1, with_init=True),
    Case(dim=12, seqlen=300, dstate=16, groups=1),                              # rows: generic path
    Case(dim=16, seqlen=300, dstate=8, groups=1, with_z=False),                 # states: generic path
], ids=case_id)
def test_mixer_layout_matches_reference(backend, dtype, case, poison_outputs):
    _check_backend_against_reference(backend, case, dtype, layout=mixer_layout)
    args, kwargs = make_inputs(case, dtype=dtype)
    mixer_args = mixer_layout(*args)
    out = selective_scan(*mixer_args, backend=backend, **kwargs)
    if backend == "cuda" and mixer_args[0].stride(2) != 1:  # token-major: out_proj reads it without a copy
        assert out.stride(1) == 1 and out.mT.is_contiguous()
    elif backend == "cuda":  # seqlen 1: the view is also contiguous, so the padded-row layout applies
        assert case.seqlen == 1 and out.stride(2) == 1


# B and C rows that are not 16-byte aligned (an x_proj output of width 7 + 2 * dstate): the CUDA
# forward copies them to aligned rows for its vector path; the backward reads them as they are.
@pytest.mark.skipif(not HAS_GPU, reason="the token-major fast paths are GPU kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [Case(dim=16, seqlen=1000, dstate=16, groups=1),
                                  Case(dim=32, seqlen=513, dstate=32, groups=2, reverse=True, with_init=True)],
                         ids=case_id)
def test_cuda_mixer_layout_with_unaligned_state_rows(dtype, case, poison_outputs):
    _check_backend_against_reference("cuda", case, dtype, layout=functools.partial(mixer_layout, lead=7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_output_layout_rule(dtype):
    """The layout the fake kernels promise for the CUDA forward (csrc/selective_scan/selective_scan.cpp
    applies the same rule): token-major when u is, else rows padded to 16 bytes."""
    from m4v.kernels._backend import new_scan_output

    token_major = torch.empty(2, 7, 24, dtype=dtype).mT  # (batch, dim=24, seqlen=7) view
    out = new_scan_output(token_major)
    assert out.shape == (2, 24, 7) and out.stride() == (7 * 24, 1, 24)
    out = new_scan_output(torch.empty(2, 24, 7, dtype=dtype))
    per_16_bytes = 16 // out.element_size()
    assert out.shape == (2, 24, 7) and out.stride(2) == 1 and out.stride(1) % per_16_bytes == 0
    assert new_scan_output(torch.empty(2, 24, 1, dtype=dtype)).stride(2) == 1  # seqlen 1: contiguous rule


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_last_strides(backend):
    """(batch, dim, seqlen) views of token-major (batch, seqlen, dim) tensors, as the model uses."""
    case = Case(seqlen=45, dim=8)
    args, kwargs = make_inputs(case)
    as_channel_last = lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731
    u, delta, A, B, C, D, z = args
    strided = (as_channel_last(u), as_channel_last(delta), A, as_channel_last(B), as_channel_last(C), D,
               as_channel_last(z))
    assert strided[0].stride(1) == 1
    out = selective_scan(*strided, backend=backend, **kwargs)
    assert rel_err(out, selective_scan_ref(*args, **kwargs)) < TOLERANCE[torch.float32][0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend):
    case = Case(dim=16, seqlen=700 if HAS_GPU else 130, groups=1, with_init=True)
    args, kwargs = make_inputs(case)
    results = []
    for _ in range(2):
        leaves, kw = _differentiable(args, kwargs)
        out = selective_scan(*leaves, backend=backend, **kw)
        results.append(torch.autograd.grad(out, _grad_leaves(leaves, kw), torch.ones_like(out)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.skipif("cuda" not in BACKENDS, reason="CUDA graphs of the CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [Case(dim=16, seqlen=1000, dstate=16, groups=1, with_init=True),
                                  Case(seq_lens=(300, 1, 0, 513), dim=16, dstate=16, groups=2, reverse=True)],
                         ids=case_id)
def test_cuda_graph_replay_follows_new_inputs(dtype, case):
    """Forward and backward (mixer layout) captured once, then replayed on new values copied into
    the captured inputs: bitwise what the eager op gives for those values (the kernels are
    deterministic). Nothing in the op may read values on the host or allocate outside the graph."""
    args, kwargs = make_inputs(case, dtype=dtype, generator_seed=0)
    leaves, kw = _differentiable(args, kwargs)
    grad_leaves = _grad_leaves(leaves, kw)
    results = []

    def step():
        out = selective_scan(*mixer_layout(*leaves), backend="cuda", **kw)
        results[:] = [out, *torch.autograd.grad(out, grad_leaves, torch.ones_like(out))]

    graph = capture_step(step)
    new_args, new_kwargs = make_inputs(case, dtype=dtype, generator_seed=1)
    with torch.no_grad():
        for leaf, value in zip(grad_leaves, _grad_leaves(*_differentiable(new_args, new_kwargs))):
            leaf.copy_(value)
    graph.replay()
    replayed = [t.clone() for t in results]
    step()  # eager, on the same new values
    assert len(replayed) == len(grad_leaves) + 1
    for a, b in zip(replayed, results):
        assert not torch.isnan(a).any() and torch.equal(a, b)


@pytest.mark.skipif(not available_backends()["triton"].usable, reason="needs Triton")
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_tiles_compute_the_same_scan(reverse, poison_outputs):
    """The tiles that benchmarks/tune_triton_selective_scan.py sweeps (channels per program, warps,
    the forward's register cap) give the default tile's outputs and gradients, partial channel blocks
    included."""
    from m4v.kernels.triton.selective_scan import selective_scan_bwd_triton, selective_scan_fwd_triton

    case = Case(dim=6, seqlen=70, dstate=16, groups=2, with_init=True, reverse=reverse)  # 2 chunks, one partial
    (u, delta, A, B, C, D, z), kwargs = make_inputs(case)
    bias, init = kwargs["delta_bias"], kwargs["initial_state"]
    dout, dlast = torch.randn_like(u), torch.randn_like(init)

    def run(tile, max_registers=None):
        out, last, checkpoints, out_pre = selective_scan_fwd_triton(u, delta, A, B, C, D, z, bias, init, None, True,
                                                                    reverse, True, tile=tile,
                                                                    max_registers=max_registers)
        grads = selective_scan_bwd_triton(dout, dlast, u, delta, A, B, C, D, z, bias, init, None, checkpoints,
                                          out_pre, True, reverse, tile=tile)
        return [out, last, out_pre, *grads]

    expected = run(None)
    assert all(torch.isfinite(t).all() for t in expected)
    for tile, max_registers in [((4, 2), None), ((1, 1), None), (None, 128)]:
        for got, want in zip(run(tile, max_registers), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not available_backends()["triton"].usable, reason="needs Triton")
def test_triton_backward_names_a_missing_pre_gate_output():
    """With z, the Triton backward reads dz's y from the forward's out_pre: without it, a clear error."""
    from m4v.kernels.triton.selective_scan import selective_scan_bwd_triton, selective_scan_fwd_triton

    (u, delta, A, B, C, D, z), kwargs = make_inputs(Case(dim=4, seqlen=9, dstate=4))
    _, _, checkpoints, out_pre = selective_scan_fwd_triton(u, delta, A, B, C, D, z, None, None, None, True, False,
                                                           True)
    assert out_pre.shape == u.shape
    for bad in (u.new_empty((0,)), out_pre.mT.contiguous().mT, out_pre.double()):
        with pytest.raises(ValueError, match="out_pre"):
            selective_scan_bwd_triton(torch.randn_like(u), None, u, delta, A, B, C, D, z, None, None, None,
                                      checkpoints, bad, True, False)


@pytest.mark.skipif(HAS_GPU, reason="on a GPU the Triton tests compile the kernels themselves")
def test_triton_kernels_compile_for_hopper():
    """Every Triton scan kernel lowers and assembles for sm_90, checked without a GPU (the CPU runs
    interpret them, so their lowering is otherwise first met on the device)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parents[2] / "scripts" / "compile_triton_scan.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    kernels = [line for line in run.stdout.splitlines() if "sm_90 cubin" in line]
    assert len(kernels) == 8, run.stdout  # four kernels, both scan directions


def test_triton_forward_caps_registers_only_past_one_wave(monkeypatch):
    """The default register cap is taken when the one-warp programs outnumber what the SMs hold
    uncapped, at dstate 16 (where it was timed), and never on CPU (the interpreter)."""
    from types import SimpleNamespace

    pytest.importorskip("triton")
    from m4v.kernels.triton import selective_scan as triton_scan

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    gpu = torch.device("cuda", 0)
    # (2, 2048, L): 2,048 programs of 2 channels; (1, 3072, L): 1,536, one wave already
    assert triton_scan.default_forward_tile(2, 2048, 16, gpu) == (2, 1, triton_scan.FORWARD_CAPPED_REGISTERS)
    assert triton_scan.default_forward_tile(1, 3072, 16, gpu) == (2, 1, None)
    assert triton_scan.forward_max_registers(4096, 32, gpu) is None
    assert triton_scan.forward_max_registers(10**6, 16, torch.device("cpu")) is None


# ------------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile, FLOP formula, backend choice.


def _op_args(backend, device, token_major=False):
    args, kwargs = make_inputs(Case(seqlen=9, with_init=True), device=device)
    u, delta, A, B, C, D, z = args
    if token_major:  # (batch, dim, seqlen) views of (batch, seqlen, dim) storage, as MambaMixer passes them
        u, delta, z = (t.mT.contiguous().mT for t in (u, delta, z))
    return (u, delta, A, B, C, D, z, kwargs["delta_bias"], kwargs["initial_state"], None, True, False, backend, True)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("seq_lens", [(7, 250, 1, 0, 300), (1,) * 40, (249, 263) * 5, (256, 255, 257, 9),
                                      (63, 2, 65, 1, 127)])
def test_checkpoint_rows_cover_the_aligned_chunk_grids(backend, seq_lens):
    """Both compiled backends start a packed sequence's chunk grid at the SEQ_ALIGN boundary at or
    below its first step; the static checkpoint bound must cover every grid's chunks."""
    starts = [0, *torch.tensor(seq_lens).cumsum(0).tolist()]
    chunk = CHECKPOINT_CHUNK[backend]
    grids = sum(-(-(end - start + start % SEQ_ALIGN) // chunk) for start, end in zip(starts, starts[1:]))
    cu = torch.tensor(starts, dtype=torch.int32)
    assert grids <= checkpoint_rows(backend, 1, starts[-1], cu)
    if backend == "triton":  # the host's count of the grids' chunks, which places each one's checkpoints
        from m4v.kernels.triton.selective_scan import _chunk_offsets

        assert int(_chunk_offsets(cu)[-1]) == grids
    # Fixed-length batches have no lead: rows are exactly the chunks.
    assert checkpoint_rows(backend, 3, 2 * chunk + 1, None) == 9


def _extension_loaded() -> bool:
    try:
        import m4v._C  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


# The CUDA backward's vector paths for a layout: [grads_token_major, inputs_token_major] (the
# launcher's choice, queried through the compiled extension; layout only, so it runs on the CPU).
@pytest.mark.skipif(not _extension_loaded(), reason="the compiled extension makes the CUDA path choice")
@pytest.mark.parametrize("dtype, dim, dstate, layout, expected", [
    (torch.bfloat16, 16, 16, "mixer", (1, 1)),          # MambaMixer's layout: both vector paths
    (torch.float16, 24, 32, "mixer", (1, 1)),
    (torch.float32, 16, 16, "mixer", (1, 0)),           # fp32: vector gradients, generic input loads
    (torch.bfloat16, 16, 64, "mixer", (1, 0)),          # dstate > 32
    (torch.bfloat16, 16, 16, "mixer_row_dout", (1, 0)),  # dout not token-major
    (torch.bfloat16, 12, 16, "mixer", (0, 0)),          # channels not in whole blocks of 8
    (torch.bfloat16, 16, 16, "contiguous", (0, 0)),
])
def test_cuda_backward_path_choice(dtype, dim, dstate, layout, expected):
    batch, seqlen = 2, 300
    u, delta, z = (torch.randn(batch, dim, seqlen, dtype=dtype) for _ in range(3))
    if layout != "contiguous":  # as MambaMixer: token-major views, z one half of a wider projection
        u, delta = (t.mT.contiguous().mT for t in (u, delta))
        z = torch.cat([z.mT, torch.zeros_like(z.mT)], dim=-1)[..., :dim].mT
    out_pre = torch.empty_like(u)  # the forward keeps it in u's layout
    dout = torch.randn(batch, dim, seqlen, dtype=dtype) if layout == "mixer_row_dout" else torch.randn_like(u)
    paths = torch.ops.m4v.selective_scan_bwd_paths(u, delta, dout, z, out_pre, 1, dstate)
    assert tuple(paths) == expected


@pytest.mark.parametrize("token_major", [False, True], ids=["contiguous", "token_major"])
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_opcheck(backend, token_major):
    """The fake kernels give the real kernels' output strides (torch.compile asserts them)."""
    device = "cpu" if backend == "reference" else DEVICE
    args = _op_args(backend, device, token_major)
    for t in args[:9]:
        if t is not None:
            t.requires_grad_(True)
    torch.library.opcheck(torch.ops.m4v.selective_scan_fwd.default, args)
    out, last, checkpoints, out_pre = torch.ops.m4v.selective_scan_fwd(*args)
    detached = [t.detach() if isinstance(t, torch.Tensor) else t for t in args]
    bwd_args = (torch.randn_like(out), torch.randn_like(last), *detached[:10], checkpoints.detach(), out_pre.detach(),
                True, False, backend)
    torch.library.opcheck(torch.ops.m4v.selective_scan_bwd.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    args, kwargs = make_inputs(Case(seqlen=9), device=DEVICE)

    def mixer(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True) * 2.0

    compiled = torch.compile(mixer, fullgraph=True, backend="aot_eager")
    expected = mixer(*args, kwargs["delta_bias"])
    assert torch.equal(compiled(*args, kwargs["delta_bias"]), expected)


def test_flop_counter_counts_the_scan():
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = make_inputs(Case(batch=2, dim=6, seqlen=7, dstate=4), device="cpu")
    with FlopCounterMode(display=False) as counter:
        selective_scan(*args, **kwargs)
    assert counter.get_total_flops() == selective_scan_flops(2, 6, 7, 4, has_D=True, has_z=True)


def test_auto_backend_on_cpu_is_reference_and_backends_explain_themselves():
    status = available_backends()
    assert set(status) == {"cuda", "triton", "reference"}
    assert all(s.reason for s in status.values())
    from m4v.kernels._backend import resolve_backend

    assert resolve_backend("selective_scan", "auto", torch.zeros(1)) == "reference"  # even with the interpreter
    if not HAS_GPU:
        assert not status["cuda"].usable
        args, kwargs = make_inputs(Case(), device="cpu")
        with pytest.raises(RuntimeError, match="backend='cuda' is not usable"):
            selective_scan(*args, backend="cuda", **kwargs)


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument.


def _good():
    args, kwargs = make_inputs(Case(batch=1, seqlen=10), device="cpu")
    return list(args), kwargs


def _bad_inputs():
    def mutate(fn):
        args, kwargs = _good()
        fn(args, kwargs)
        return args, kwargs

    def set_arg(i, value_fn):
        return lambda a, k: a.__setitem__(i, value_fn(a))

    def set_kw(name, value_fn):
        return lambda a, k: k.__setitem__(name, value_fn(a, k))

    yield "u", mutate(set_arg(0, lambda a: a[0].long()))
    yield "u", mutate(set_arg(0, lambda a: a[0][0]))
    yield "u", mutate(lambda a, k: [a.__setitem__(i, a[i][..., :0]) for i in (0, 1, 6)]
                      + [a.__setitem__(i, a[i][..., :0]) for i in (3, 4)])
    yield "delta", mutate(set_arg(1, lambda a: a[1][..., :5]))
    yield "delta", mutate(set_arg(1, lambda a: a[1].double()))
    yield "A", mutate(set_arg(2, lambda a: a[2][:3]))
    yield "A", mutate(set_arg(2, lambda a: a[2].to(torch.complex64)))
    yield "dstate", mutate(lambda a, k: [a.__setitem__(2, -torch.rand(a[0].shape[1], 257)),
                                          a.__setitem__(3, torch.randn(1, 257, 10)),
                                          a.__setitem__(4, torch.randn(1, 257, 10))])
    yield "B", mutate(set_arg(3, lambda a: a[3][..., :4]))
    yield "B", mutate(set_arg(3, lambda a: torch.randn(2, 2, 4, 10)))  # mismatched batch
    yield "C", mutate(set_arg(4, lambda a: a[4][0, 0]))
    yield "groups", mutate(lambda a, k: [a.__setitem__(3, torch.randn(1, 4, 4, 10)),
                                         a.__setitem__(4, torch.randn(1, 4, 4, 10))])
    yield "D", mutate(set_arg(5, lambda a: torch.randn(3)))
    yield "z", mutate(set_arg(6, lambda a: a[6][..., :3]))
    yield "delta_bias", mutate(set_kw("delta_bias", lambda a, k: torch.randn(5)))
    yield "initial_state", mutate(set_kw("initial_state", lambda a, k: torch.randn(2, 6, 4)))
    yield "meta", mutate(set_arg(3, lambda a: a[3].to("meta")))
    yield "cu_seqlens", mutate(set_kw("cu_seqlens", lambda a, k: torch.tensor([0, 6, 3, 10], dtype=torch.int32)))
    yield "cu_seqlens", mutate(set_kw("cu_seqlens", lambda a, k: torch.tensor([0, 4, 9], dtype=torch.int32)))
    yield "cu_seqlens", mutate(set_kw("cu_seqlens", lambda a, k: torch.tensor([0, 4, 10])))
    yield "cu_seqlens", mutate(set_kw("cu_seqlens", lambda a, k: torch.tensor([[0, 10]], dtype=torch.int32)))


def _batch2_cu_seqlens():
    args, kwargs = make_inputs(Case(batch=2, seqlen=10), device="cpu")
    kwargs["cu_seqlens"] = torch.tensor([0, 10], dtype=torch.int32)
    return list(args), kwargs


@pytest.mark.parametrize("name,inputs", [*_bad_inputs(), ("batch", _batch2_cu_seqlens())],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_argument(name, inputs):
    args, kwargs = inputs
    with pytest.raises(ValueError, match=name):
        selective_scan(*args, **kwargs)


def test_cu_seqlens_changed_in_place_is_checked_again():
    """The value checks are skipped for a cu_seqlens tensor already checked, unless it changed."""
    args, kwargs = _good()
    kwargs["cu_seqlens"] = cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    ok = selective_scan(*args, **kwargs)
    assert torch.isfinite(ok).all()
    cu[1] = 11
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        selective_scan(*args, **kwargs)
    cu[1] = 4
    torch.testing.assert_close(selective_scan(*args, **kwargs), ok)
    with torch.inference_mode():  # no version counter: checked at every call
        kwargs["cu_seqlens"] = torch.tensor([0, 4, 10], dtype=torch.int32)
        torch.testing.assert_close(selective_scan(*args, **kwargs), ok)
        kwargs["cu_seqlens"][1] = 11
        with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
            selective_scan(*args, **kwargs)


def test_bad_backend_name():
    args, kwargs = _good()
    with pytest.raises(ValueError, match="backend"):
        selective_scan(*args, backend="cudnn", **kwargs)


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_cuda_op_rejects_bad_input_directly():
    """The compiled op checks its own arguments too (for callers that bypass the Python checks)."""
    u = torch.randn(1, 4, 8, device="cuda")
    A = -torch.rand(4, 3, device="cuda")
    B = torch.randn(1, 1, 3, 8, device="cuda")
    with pytest.raises(RuntimeError, match="delta"):
        torch.ops.m4v.selective_scan_fwd_cuda(u, u[..., :4], A, B, B, None, None, None, None, None, False, False,
                                              False)
    with pytest.raises(RuntimeError, match="dstate"):
        torch.ops.m4v.selective_scan_fwd_cuda(u, u, -torch.rand(4, 300, device="cuda"), B, B, None, None, None, None,
                                              None, False, False, False)
    with pytest.raises(RuntimeError, match="A must be float32"):
        torch.ops.m4v.selective_scan_fwd_cuda(u, u, A.double(), B, B, None, None, None, None, None, False, False,
                                              False)


def test_math_sanity_decay_only():
    """With B = 0 and an initial state the output is C . exp(A * cumsum(dt)) * x0: a closed form."""
    dim, n, L = 3, 2, 6
    u = torch.randn(1, dim, L, dtype=torch.float64)
    dt = torch.rand(1, dim, L, dtype=torch.float64)
    A = -torch.rand(dim, n, dtype=torch.float64)
    B = torch.zeros(1, n, L, dtype=torch.float64)
    C = torch.randn(1, n, L, dtype=torch.float64)
    x0 = torch.randn(1, dim, n, dtype=torch.float64)
    out = selective_scan(u, dt, A, B, C, initial_state=x0)
    decay = torch.exp(dt.cumsum(-1)[..., None, :] * A[None, :, :, None])  # (1, dim, n, L)
    expected = (C[:, None] * decay * x0[..., None]).sum(2)
    assert rel_err(out, expected) < 1e-12
