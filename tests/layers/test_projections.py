"""split_linear and forked_linear against plain autograd: values and gradients in float64, dtypes
under autocast, and tracing with torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from m4v.layers.projections import forked_linear, split_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def leaves(*shapes, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).to(DEVICE).requires_grad_() for s in shapes]


def grads_of(outputs, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outputs]
    return torch.autograd.grad(outputs, inputs, cotangents)


@pytest.mark.parametrize("split_sizes", [(6, 6), (5, 3, 1), (1,)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rows", [1, 37])
def test_split_linear_matches_autograd(split_sizes, with_bias, rows):
    x, weight, bias = leaves((2, rows, 7), (sum(split_sizes), 7), (sum(split_sizes),))
    bias = bias if with_bias else None
    inputs = [t for t in (x, weight, bias) if t is not None]
    ours = split_linear(x, weight, bias, split_sizes)
    theirs = F.linear(x, weight, bias).split(split_sizes, dim=-1)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(grads_of(ours, inputs), grads_of(theirs, inputs)):
        assert not a.isnan().any()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 37])
def test_forked_linear_adds_the_other_branchs_gradient(rows):
    x, weight = leaves((2, rows, 9), (5, 9))

    def use(passed, projected):  # the passed x feeds a second, nonlinear consumer
        return passed.sin() * 3 + projected.sum(-1, keepdim=True), projected.square()

    ours = use(*forked_linear(x, weight))
    theirs = use(x, F.linear(x, weight))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(grads_of(ours, (x, weight)), grads_of(theirs, (x, weight))):
        assert not a.isnan().any()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradients_keep_input_dtypes_under_autocast():
    """float32 inputs and weights, bfloat16 autocast: outputs in bfloat16 as F.linear's, gradients
    in float32 and close to plain autograd's under the same autocast."""
    dtype = torch.bfloat16
    x, weight, x_weight = leaves((2, 33, 16), (24, 16), (8, 12), dtype=torch.float32)

    def mixer_like(split, fork):
        with torch.autocast(DEVICE, dtype=dtype):
            a, b = split(x, weight)
            a = a.float().tanh().to(dtype)
            a, projected = fork(a, x_weight)
            return a * b, projected

    ours = mixer_like(lambda x, w: split_linear(x, w, None, (12, 12)), forked_linear)
    theirs = mixer_like(lambda x, w: F.linear(x, w).split([12, 12], dim=-1), lambda a, w: (a, F.linear(a, w)))
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a, b)
    for a, b, leaf in zip(grads_of(ours, (x, weight, x_weight)), grads_of(theirs, (x, weight, x_weight)),
                          (x, weight, x_weight)):
        assert a.dtype == b.dtype == leaf.dtype
        assert not a.isnan().any()
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_traced_by_compile_fullgraph():
    x, weight, x_weight = leaves((1, 11, 6), (10, 6), (3, 5), dtype=torch.float32)

    def f(x, weight, x_weight):
        a, b = split_linear(x, weight, None, (5, 5))
        a, projected = forked_linear(a, x_weight)
        return (a * b).sum() + projected.square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    expected = torch.autograd.grad(f(x, weight, x_weight), (x, weight, x_weight))
    got = torch.autograd.grad(compiled(x, weight, x_weight), (x, weight, x_weight))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_split_sizes_must_cover_the_weight():
    x, weight = leaves((1, 3, 4), (6, 4))
    with pytest.raises(ValueError, match="split_sizes"):
        split_linear(x, weight, None, (3, 2))
