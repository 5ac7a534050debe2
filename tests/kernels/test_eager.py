"""The eager call path of the custom ops (m4v/kernels/_eager.py) against the registered ops."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import m4v.kernels._eager as eager
from m4v.kernels import available_backends
from m4v.kernels.conv1d import causal_conv1d
from m4v.kernels.recompose import FrameSpec, ScanLayout, inverse_recompose, recompose
from m4v.kernels.selective_scan import selective_scan, selective_scan_flops

DEVICE = "cuda" if available_backends()["cuda"].usable else "cpu"


def scan_case(generator):
    """A float64 gated scan with every optional input, varlen-free: (function, inputs)."""
    batch, dim, seqlen, dstate = 2, 6, 37, 4

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    inputs = [rand(batch, dim, seqlen), rand(batch, dim, seqlen) * 0.5, -rand(dim, dstate).abs() - 0.1,
              rand(batch, dstate, seqlen), rand(batch, dstate, seqlen), rand(dim), rand(batch, dim, seqlen),
              rand(dim)]

    def run(u, delta, A, B, C, D, z, delta_bias):
        out, last = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                   return_last_state=True, backend="reference")
        return out, last

    return run, inputs


def conv_case(generator):
    inputs = [torch.randn(2, 19, 8, generator=generator, dtype=torch.float64),
              torch.randn(8, 4, generator=generator, dtype=torch.float64),
              torch.randn(8, generator=generator, dtype=torch.float64)]
    return (lambda x, w, b: (causal_conv1d(x, w, b, activation="silu", backend="reference"),)), inputs


def recompose_case(generator):
    layout = ScanLayout([FrameSpec(2, 3, 0), FrameSpec(3, 2, 1)], path=1, text_len=3, batch=2)
    inputs = [torch.randn(2, 3, 5, generator=generator, dtype=torch.float64),
              torch.randn(2, layout.video_len, 5, generator=generator, dtype=torch.float64),
              torch.randn(2, 5, generator=generator, dtype=torch.float64)]

    def run(text, video, registers):
        seq = recompose(text, video, layout, registers, backend="reference")
        return inverse_recompose(seq * seq, layout, backend="reference")  # both ops' backwards

    return run, inputs


def outputs_and_grads(run, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    outs = run(*leaves)
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7), dtype=o.dtype) for o in outs]
    torch.autograd.backward(outs, weights)
    return outs, [leaf.grad for leaf in leaves], outs[0].grad_fn.name()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("case", [scan_case, conv_case, recompose_case])
def test_eager_path_matches_the_registered_op(case, autocast):
    run, inputs = case(torch.Generator().manual_seed(0))
    if autocast:  # the implementation sees autocast on both paths alike
        inputs = [t.float() for t in inputs]
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with context:
        fast_outs, fast_grads, fast_node = outputs_and_grads(run, inputs)
    with context, eager.registered_ops():
        op_outs, op_grads, op_node = outputs_and_grads(run, inputs)
    assert "Eager" in fast_node and "Eager" not in op_node, (fast_node, op_node)
    for fast, ref in zip(list(fast_outs) + fast_grads, list(op_outs) + op_grads):
        assert ref is not None and not ref.isnan().any()
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)  # the same implementation, bit for bit


@pytest.mark.parametrize("grad_off", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("case", [scan_case, conv_case, recompose_case])
def test_eager_path_without_grad_matches_the_registered_op(case, grad_off):
    run, inputs = case(torch.Generator().manual_seed(4))
    with grad_off():
        fast = run(*[t.requires_grad_() for t in inputs])
        with eager.registered_ops():
            registered = run(*inputs)
    for got, ref in zip(fast, registered):
        assert not got.requires_grad and not ref.isnan().any()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_modes_see_the_registered_op():
    """FLOP counting (a dispatch mode) and a torch.device context (a function mode) bypass the
    eager path, so the registered op's FLOP formula counts the scan."""
    run, inputs = scan_case(torch.Generator().manual_seed(1))
    assert eager.plain_eager()
    with FlopCounterMode(display=False) as counter:
        assert not eager.plain_eager()
        run(*inputs)
    assert counter.get_total_flops() == selective_scan_flops(2, 6, 37, 4)
    with torch.device("cpu"):
        assert not eager.plain_eager()
    with eager.registered_ops():
        assert not eager.plain_eager()
        with eager.registered_ops(False):  # an inner "not forced" leaves the outer in force
            assert not eager.plain_eager()
    with eager.registered_ops(False):
        assert eager.plain_eager()
    assert eager.plain_eager()


def test_functorch_transforms_see_the_registered_op():
    seen = []

    def loss(x):
        seen.append(eager.plain_eager())
        return x.sum()

    torch.func.grad(loss)(torch.ones(3))
    assert seen == [False]
    assert eager.plain_eager()


def test_double_backward_is_refused_as_by_the_op():
    run, inputs = scan_case(torch.Generator().manual_seed(2))
    u = inputs[0].clone().requires_grad_()
    out, _ = run(u, *inputs[1:])
    (grad_u,) = torch.autograd.grad(out.sum(), u, create_graph=True)
    with pytest.raises(RuntimeError):
        grad_u.sum().backward()


@pytest.mark.skipif(DEVICE != "cuda", reason="the CUDA ops need a GPU")
def test_eager_path_on_the_cuda_ops_matches_the_registered_op():
    generator = torch.Generator().manual_seed(3)
    u, delta, z = (torch.randn(1, 32, 300, generator=generator).to(DEVICE, torch.bfloat16) for _ in range(3))
    A = -torch.rand(32, 16, generator=generator).to(DEVICE) - 0.1
    B, C = (torch.randn(1, 16, 300, generator=generator).to(DEVICE, torch.bfloat16) for _ in range(2))

    def run():
        leaves = [t.clone().requires_grad_() for t in (u, delta, B, C, z)]
        out = selective_scan(leaves[0], leaves[1], A, leaves[2], leaves[3], z=leaves[4], delta_softplus=True,
                             backend="cuda")
        out.float().square().sum().backward()
        return [out] + [leaf.grad for leaf in leaves]

    fast = run()
    with eager.registered_ops():
        registered = run()
    for got, ref in zip(fast, registered):
        assert not ref.isnan().any()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
