"""Eager calls of the package's custom ops without torch.library's Python dispatch layers.

A call of a Python-defined custom op goes through the dispatcher, a generated autograd.Function, a
redispatch, an alias check and a dynamo-disabling wrapper before it reaches the implementation. At
the 768p unit that host time kept the GPU waiting: the MM-DiM mixer's eight op calls per
forward+backward are about a tenth of its host time, and its synced step took 7.30 ms against 6.40
ms of kernels (H100, thirty-eighth session's profile).

In plain eager mode the same implementation, ``setup_context`` and ``backward`` run through one
``torch.autograd.Function`` instead. Anything that inspects or transforms ops (``torch.compile``,
fake tensors, ``FlopCounterMode``, ``make_fx``, a ``torch.device`` context, other dispatch or
function modes) still sees the registered op, so its fake kernel, autograd and FLOP formula apply.
"""

from __future__ import annotations

from typing import Callable

import torch


def plain_eager() -> bool:
    """Whether nothing but eager autograd would see an op call made now."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._len_torch_function_stack() == 0)


def eager_call(op: Callable, impl: Callable) -> Callable:
    """``op(*args)``, or ``impl(*args)`` in plain eager mode (for ops without autograd)."""

    def call(*args):
        return impl(*args) if plain_eager() else op(*args)

    return call


def eager_autograd_call(op: Callable, impl: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """``op(*args)``, or in plain eager mode ``impl`` with the autograd ``op`` was registered with
    (``op.register_autograd(backward, setup_context=setup_context)``), through one Function."""

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(*args):
            return impl(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            setup_context(ctx, inputs, output)

        @staticmethod
        @torch.autograd.function.once_differentiable  # as the registered op: no double backward
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    EagerFunction.__name__ = EagerFunction.__qualname__ = f"Eager_{impl.__name__.lstrip('_')}"

    def call(*args):
        return EagerFunction.apply(*args) if plain_eager() else op(*args)

    return call


__all__ = ["plain_eager", "eager_call", "eager_autograd_call"]
