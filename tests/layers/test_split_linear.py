"""split_linear against F.linear(...).split(...): values, gradients, unused chunks, autocast, compile."""

import pytest
import torch
import torch.nn.functional as F

from m4v.layers.split_linear import split_linear

SIZES = (5, 7, 3)


def _inputs(dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, 6, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(sum(SIZES), 6, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(sum(SIZES), generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, weight, b


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(bias):
    x, weight, b = _inputs(bias=bias)
    args = (x, weight, b) if bias else (x, weight)
    fn = (lambda x, w, b: split_linear(x, w, b, SIZES)) if bias else (lambda x, w: split_linear(x, w, None, SIZES))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("used", [(0, 1, 2), (1,), (0, 2)])
def test_matches_linear_then_split_with_unused_chunks(used):
    x, weight, b = _inputs(torch.float32)
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, b)]
    parts = split_linear(x, weight, b, SIZES)
    ref_parts = F.linear(*ref_leaves).split(SIZES, dim=-1)
    for p, rp in zip(parts, ref_parts):
        assert p.shape == rp.shape
        torch.testing.assert_close(p, rp, rtol=0, atol=0)
    weights = [torch.randn_like(parts[i]) for i in used]
    loss = sum((parts[i] * w).sum() for i, w in zip(used, weights))
    ref_loss = sum((ref_parts[i] * w).sum() for i, w in zip(used, weights))
    grads = torch.autograd.grad(loss, (x, weight, b))
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    for g, rg in zip(grads, ref_grads):
        assert not torch.isnan(g).any()
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-5)


def test_autocast_casts_like_linear_and_returns_fp32_parameter_grads():
    x, weight, b = _inputs(torch.float32)
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = split_linear(x, weight, b, SIZES)
        ref_parts = F.linear(*ref_leaves).split(SIZES, dim=-1)
    assert all(p.dtype == rp.dtype == torch.bfloat16 for p, rp in zip(parts, ref_parts))
    grads = torch.autograd.grad(sum(p.float().sum() for p in parts), (x, weight, b))
    ref_grads = torch.autograd.grad(sum(p.float().sum() for p in ref_parts), ref_leaves)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, rg, rtol=2e-2, atol=2e-2)


def test_sizes_must_cover_the_weight():
    x, weight, b = _inputs()
    with pytest.raises(ValueError, match="sizes"):
        split_linear(x, weight, b, (5, 7))


def test_compiles_fullgraph():
    x, weight, b = _inputs(torch.float32)
    compiled = torch.compile(lambda x, w, b: split_linear(x, w, b, SIZES), fullgraph=True, backend="aot_eager")
    parts = compiled(x, weight, b)
    grads = torch.autograd.grad(sum(p.sum() for p in parts), (x, weight, b))
    ref = torch.autograd.grad(F.linear(x, weight, b).sum(), (x, weight, b))
    for g, rg in zip(grads, ref):
        torch.testing.assert_close(g, rg)
