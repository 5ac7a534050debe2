"""The Mamba mixer as one autograd node (m4v/layers/mixer_autograd.py) against the same mixer with
its ops recorded one by one: outputs and every gradient, and when each path is taken."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from m4v.kernels import available_backends
from m4v.kernels._eager import registered_ops
from m4v.layers import MambaMixer
from m4v.layers.mixer_autograd import mixer_op_by_op

HIDDEN = 24


def mixer(dtype=torch.float64, device="cpu", bias=False, backend="reference", hidden=HIDDEN, d_state=4):
    torch.manual_seed(0)
    module = MambaMixer(hidden, d_state=d_state, expand=1.5, bias=bias, backend=backend)
    with torch.no_grad():  # every parameter away from its init, so that each gradient carries signal
        for name, p in module.named_parameters():
            if name not in ("A_log", "D"):
                p.add_(torch.randn_like(p) * 0.05)
    return module.to(device=device, dtype=dtype)


def step(module, hidden, op_by_op, initial_state=None, cu_seqlens=None, outputs=("out", "last"), autocast=None):
    """Output, last state and every gradient of a loss on the chosen outputs."""
    module.zero_grad(set_to_none=True)
    hidden = hidden.detach().requires_grad_(True)
    init = initial_state.detach().requires_grad_(True) if initial_state is not None else None
    g = torch.Generator(device=hidden.device).manual_seed(1)
    with mixer_op_by_op(op_by_op), torch.autocast(hidden.device.type, dtype=autocast or torch.bfloat16,
                                                  enabled=autocast is not None):
        out, last = module(hidden, initial_state=init, cu_seqlens=cu_seqlens, return_last_state=True)
        loss = 0
        if "out" in outputs:
            loss = loss + (out.float() * torch.randn(out.shape, generator=g, device=out.device)).sum()
        if "last" in outputs:
            loss = loss + (last * torch.randn(last.shape, generator=g, device=last.device)).sum()
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads["hidden"] = hidden.grad
    if init is not None:
        grads["initial_state"] = init.grad
    return out.detach(), last.detach(), grads, out.grad_fn


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert a[2][name] is not None and b[2][name] is not None, name
        assert not a[2][name].isnan().any(), name
        torch.testing.assert_close(a[2][name], b[2][name], rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["plain", "initial_state", "packed", "bias", "one_token", "strided_hidden"])
def test_one_node_is_bitwise_the_op_by_op_mixer(dtype, case):
    module = mixer(dtype, bias=case == "bias")
    batch = 1 if case == "packed" else 2
    hidden = torch.randn(batch, 1 if case == "one_token" else 13, HIDDEN, dtype=dtype)
    if case == "strided_hidden":
        hidden = torch.randn(batch, HIDDEN, 13, dtype=dtype).mT
    cu = torch.tensor([0, 1, 6, 13], dtype=torch.int32) if case == "packed" else None
    seqs = 3 if case == "packed" else batch
    init = torch.randn(seqs, module.d_inner, 4, dtype=dtype) if case in ("initial_state", "packed") else None
    one = step(module, hidden, False, init, cu)
    assert type(one[3]).__name__ == "_MambaInnerBackward"  # the one-node path was taken
    by_op = step(module, hidden, True, init, cu)
    assert type(by_op[3]).__name__ != "_MambaInnerBackward"
    assert_same(one, by_op)


def test_one_node_under_autocast_matches_and_keeps_parameter_dtypes():
    module = mixer(torch.float32, bias=True)
    hidden = torch.randn(2, 9, HIDDEN)
    one = step(module, hidden, False, autocast=torch.bfloat16)
    assert one[0].dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in one[2].values())
    assert_same(one, step(module, hidden, True, autocast=torch.bfloat16))


@pytest.mark.parametrize("outputs", [("out",), ("last",)])
def test_one_node_with_one_output_unused(outputs):
    module = mixer()
    hidden = torch.randn(2, 7, HIDDEN, dtype=torch.float64)
    one = step(module, hidden, False, outputs=outputs)
    by_op = step(module, hidden, True, outputs=outputs)
    if outputs == ("last",):  # out_proj gets no gradient on either path
        assert one[2]["out_proj.weight"] is None and by_op[2]["out_proj.weight"] is None
        for grads in (one[2], by_op[2]):
            del grads["out_proj.weight"]
    assert_same(one, by_op)


def test_one_node_only_where_nothing_else_looks():
    module = mixer()
    hidden = torch.randn(1, 5, HIDDEN, dtype=torch.float64, requires_grad=True)
    one_node = "_MambaInnerBackward"
    assert type(module(hidden).grad_fn).__name__ == one_node
    with registered_ops():  # as under torch.compile: the ops are what gets traced
        assert type(module(hidden).grad_fn).__name__ != one_node
    with FlopCounterMode(display=False) as flops:
        out = module(hidden)
    assert type(out.grad_fn).__name__ != one_node
    assert any("selective_scan" in str(op) for op in flops.get_flop_counts()["Global"])
    with torch.no_grad():
        assert module(hidden).grad_fn is None
    hooked = mixer()
    hooked.out_proj.register_forward_hook(lambda m, args, out: out * 2)
    doubled = hooked(hidden)
    assert type(doubled.grad_fn).__name__ != one_node  # a hooked projection runs as a module
    torch.testing.assert_close(doubled, 2 * module(hidden).detach())


def test_one_node_frozen_input_and_parameters():
    module = mixer()
    module.in_proj.weight.requires_grad_(False)
    hidden = torch.randn(2, 6, HIDDEN, dtype=torch.float64)
    module.zero_grad(set_to_none=True)
    out = module(hidden)  # hidden needs no gradient
    out.sum().backward()
    assert module.in_proj.weight.grad is None and module.x_proj.weight.grad is not None
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    with mixer_op_by_op():
        module(hidden).sum().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, getattr(module.get_parameter(name), "grad"), rtol=0, atol=0)


def test_one_node_backward_twice_with_retain_graph():
    module = mixer()
    hidden = torch.randn(2, 6, HIDDEN, dtype=torch.float64, requires_grad=True)
    out = module(hidden)
    wrt = [hidden, *module.parameters()]
    first = torch.autograd.grad(out.sum(), wrt, retain_graph=True)
    second = torch.autograd.grad(out.sum(), wrt)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not available_backends()["cuda"].usable, reason="needs the CUDA backend")
def test_one_node_on_cuda_matches_op_by_op():
    module = mixer(torch.bfloat16, device="cuda", backend="cuda", hidden=64, d_state=16)
    hidden = torch.randn(2, 300, 64, device="cuda", dtype=torch.bfloat16)
    init = torch.randn(2, module.d_inner, 16, device="cuda")
    one = step(module, hidden, False, init)
    assert type(one[3]).__name__ == "_MambaInnerBackward"
    by_op = step(module, hidden, True, init)
    torch.testing.assert_close(one[0], by_op[0], rtol=0, atol=0)  # the same kernels on the same inputs
    torch.testing.assert_close(one[1], by_op[1], rtol=0, atol=0)
    for name in one[2]:  # GEMMs on transposed operands may round differently: bf16's tolerance
        got, want = one[2][name].float(), by_op[2][name].float()
        assert not got.isnan().any(), name
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")
