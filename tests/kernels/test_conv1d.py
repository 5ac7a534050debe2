"""Causal depthwise conv1d (+ SiLU): the reference against torch's conv1d; the CUDA kernels against
the float64 reference (odd sizes, L = 1, long L, packed sequences, strided input); gradients,
determinism, registration and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from m4v.kernels._backend import available_backends
from m4v.kernels.conv1d import causal_conv1d, causal_conv1d_ref

HAS_CUDA_KERNELS = available_backends()["cuda"].usable
cuda_only = pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="needs the CUDA extension and a GPU")
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def conv1d_expected(x, weight, bias, activation=None):
    width, seqlen = weight.shape[1], x.shape[1]
    pre = F.conv1d(x.mT, weight[:, None], bias, padding=width - 1, groups=x.shape[2])[..., :seqlen].mT
    return F.silu(pre) if activation == "silu" else pre


@pytest.fixture
def poison_outputs(monkeypatch):
    monkeypatch.setenv("M4V_POISON_OUTPUTS", "1")


@pytest.mark.parametrize("seqlen", [1, 3, 19])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_conv1d(seqlen, width, activation):
    x = torch.randn(2, seqlen, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, width, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation=activation),
                               conv1d_expected(x, weight, bias, activation))
    torch.testing.assert_close(causal_conv1d(x, weight, activation=activation),
                               conv1d_expected(x, weight, None, activation))


def test_packed_sequences_do_not_mix():
    x = torch.randn(1, 19, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    cu = torch.tensor([0, 7, 8, 8, 19], dtype=torch.int32)
    packed = causal_conv1d(x, weight, bias, cu)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if end > start:  # the empty sequence has nothing to compare
            torch.testing.assert_close(packed[:, start:end], conv1d_expected(x[:, start:end], weight, bias))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_gradients(packed, activation):
    x = torch.randn(1, 11, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 4, 11], dtype=torch.int32) if packed else None
    torch.autograd.gradcheck(lambda a, w, b: causal_conv1d(a, w, b, cu, activation), (x, weight, bias))


def test_half_of_a_projection_is_read_in_place():
    projected = torch.randn(2, 9, 10, dtype=torch.float64)
    x = projected[..., :5]  # unit channel stride, row stride 10
    weight, bias = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation="silu"),
                               conv1d_expected(x.contiguous(), weight, bias, "silu"))


def test_opcheck_and_flops():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 9, 5, requires_grad=True)
    weight, bias = torch.randn(5, 4, requires_grad=True), torch.randn(5, requires_grad=True)
    for silu in (False, True):
        torch.library.opcheck(torch.ops.m4v.causal_conv1d.default, (x, weight, bias, None, silu, "reference"))
    with FlopCounterMode(display=False) as counter:
        causal_conv1d(x, weight, bias)
    assert counter.get_total_flops() == 2 * 2 * 9 * 5 * 4


def test_bad_inputs():
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d(torch.randn(4, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="x must not be empty"):
        causal_conv1d(torch.randn(1, 0, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="batch 1"):
        causal_conv1d(torch.randn(2, 4, 3), torch.randn(3, 4), cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), cu_seqlens=torch.tensor([0, 4]))
    # Offsets past the input or out of order would send the packed kernel's cursor off the array.
    with pytest.raises(ValueError, match="causal_conv1d: cu_seqlens must start at 0 and end at seqlen=4"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), cu_seqlens=torch.tensor([0, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="causal_conv1d: cu_seqlens must be non-decreasing"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), cu_seqlens=torch.tensor([0, 3, 1, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), activation="gelu")
    with pytest.raises(ValueError, match="bias must be"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), torch.randn(4))


# ------------------------------------------------------------------------------------------------
# CUDA kernels.

CASES = [  # (batch, seqlen, channels, width, cu_seqlens): vector and scalar paths, odd sizes
    (2, 1, 64, 4, None),
    (2, 77, 40, 4, None),
    (1, 300, 13, 3, None),
    (3, 129, 24, 2, None),
    (1, 70, 16, 1, None),
    (1, 4099, 48, 4, None),
    (1, 200, 32, 4, [0, 1, 64, 64, 65, 150, 200]),
]


def _case(batch, seqlen, channels, width, cu, dtype, strided=False):
    gen = torch.Generator(device="cuda").manual_seed(seqlen * 31 + channels)
    shape = (batch, seqlen, 2 * channels if strided else channels)
    x = torch.randn(shape, device="cuda", generator=gen).to(dtype)[..., :channels]
    weight = (torch.randn(channels, width, device="cuda", generator=gen) / width).to(dtype)
    bias = torch.randn(channels, device="cuda", generator=gen).to(dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device="cuda") if cu is not None else None
    return x, weight, bias, cu_seqlens


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_cuda_forward_matches_float64(dtype, case, activation, poison_outputs):
    x, weight, bias, cu = _case(*case, dtype)
    out = causal_conv1d(x, weight, bias, cu, activation, backend="cuda")
    expected = causal_conv1d_ref(x.double(), weight.double(), bias.double(), cu, activation)
    assert not out.isnan().any()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("strided", [False, True])
def test_cuda_backward_matches_float64(dtype, case, strided, poison_outputs):
    x, weight, bias, cu = _case(*case, dtype, strided=strided)
    dout = torch.randn(x.shape, device="cuda", dtype=dtype)
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    causal_conv1d(*leaves, cu, "silu", backend="cuda").backward(dout)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    causal_conv1d_ref(*ref_leaves, cu, "silu").backward(dout.double())
    tol = TOLERANCE[dtype]
    for name, got, ref in zip(("dx", "dweight", "dbias"), leaves, ref_leaves):
        assert not got.grad.isnan().any(), name
        scale = ref.grad.abs().max().clamp(min=1.0)  # the weight gradients sum over many rows
        torch.testing.assert_close(got.grad.double() / scale, ref.grad / scale, rtol=tol, atol=tol, msg=name)


@cuda_only
def test_cuda_backward_is_deterministic():
    x, weight, bias, cu = _case(2, 1000, 64, 4, None, torch.bfloat16)
    dout = torch.randn_like(x)
    first = torch.ops.m4v.causal_conv1d_bwd_cuda(dout, x, weight, bias, cu, True)
    second = torch.ops.m4v.causal_conv1d_bwd_cuda(dout, x, weight, bias, cu, True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@cuda_only
def test_cuda_opcheck_and_compile():
    x, weight, bias, cu = _case(2, 33, 24, 4, None, torch.float32)
    for silu in (False, True):
        torch.library.opcheck(torch.ops.m4v.causal_conv1d.default, (x.requires_grad_(), weight, bias, None, silu,
                                                                     "cuda"))
    compiled = torch.compile(lambda a: causal_conv1d(a, weight, bias, activation="silu", backend="cuda"),
                             fullgraph=True)
    torch.testing.assert_close(compiled(x), causal_conv1d(x, weight, bias, activation="silu", backend="cuda"))


@cuda_only
def test_cuda_op_checks():
    x = torch.randn(1, 8, 4, device="cuda")
    with pytest.raises(RuntimeError, match="width in"):
        torch.ops.m4v.causal_conv1d_fwd_cuda(x, torch.randn(4, 5, device="cuda"), None, None, False)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        torch.ops.m4v.causal_conv1d_fwd_cuda(x, torch.randn(4, 4, device="cuda").half(), None, None, False)
    with pytest.raises(RuntimeError, match="cu_seqlens must be int32"):
        torch.ops.m4v.causal_conv1d_fwd_cuda(x, torch.randn(4, 4, device="cuda"), None,
                                             torch.tensor([0, 8], device="cuda"), False)
    # Widths past the kernels' fall back to the reference.
    weight = torch.randn(4, 6, device="cuda")
    torch.testing.assert_close(causal_conv1d(x, weight, backend="cuda"), causal_conv1d_ref(x, weight, None))
