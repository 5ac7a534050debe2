"""Eager calls of the package's custom ops without torch.library's Python dispatch layers.

A call of a Python-defined custom op goes through the dispatcher, a generated autograd.Function
with ``setup_context``, a redispatch, an alias check and a dynamo-disabling wrapper before it
reaches the implementation. For an op that only allocates its output, on this project's CPU
machine: 45-51 us per forward call where an ``autograd.Function`` with the classic
``forward(ctx, ...)`` takes 8, and 169 us per forward + backward where it takes 93 (a plain
``x * 1`` and its backward: 90). The MM-DiM mixer makes eight such calls per forward+backward,
and its eager step is bound by host time at the 768p unit (H100: 7.30 ms synced against 6.40 ms
of kernels, thirty-eighth session). ``benchmarks/bench_op_overhead.py`` times both paths per op.

In plain eager mode the same implementation, ``setup_context`` and ``backward`` therefore run
through one classic ``torch.autograd.Function``, or, without grad mode (sampling), the
implementation is called directly. The classic form matters: a Function with its own
``setup_context`` binds every call's arguments through ``inspect.signature`` and costs as much as
the op (measured: 51 us against 8). Anything that inspects or transforms ops (``torch.compile``,
fake tensors, ``FlopCounterMode``, ``make_fx``, a ``torch.device`` context, other dispatch or
function modes, ``torch.func`` transforms) still sees the registered op, so its fake kernel,
autograd and FLOP formula apply.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

class Switch:
    """A process-wide flag, on within ``with switch():`` (or ``switch(enabled)``) blocks; an inner
    ``switch(False)`` leaves an outer block's ``on``. For comparing a fast path with the one it
    replaces (tests and benchmarks)."""

    def __init__(self):
        self.on = False

    @contextlib.contextmanager
    def __call__(self, enabled: bool = True) -> Iterator[None]:
        previous, self.on = self.on, enabled or self.on
        try:
            yield
        finally:
            self.on = previous


# Within it, the ops are called through their registrations even in plain eager mode.
registered_ops = Switch()


def plain_eager() -> bool:
    """Whether nothing but eager autograd would see an op call made now."""
    return (not registered_ops.on and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._len_torch_function_stack() == 0
            and torch._C._functorch.peek_interpreter_stack() is None)


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
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        @torch.autograd.function.once_differentiable  # as the registered op: no double backward
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    EagerFunction.__name__ = EagerFunction.__qualname__ = f"Eager_{impl.__name__.lstrip('_')}"

    def call(*args):
        if not plain_eager():
            return op(*args)
        # Without grad mode (sampling) no graph is recorded: the Function would only cost host time.
        return EagerFunction.apply(*args) if torch.is_grad_enabled() else impl(*args)

    # A larger Function that runs several ops in one graph node (m4v/layers/mixer_autograd.py) calls
    # the parts itself.
    call.impl, call.setup_context, call.backward = impl, setup_context, backward
    return call


__all__ = ["Switch", "plain_eager", "registered_ops", "eager_call", "eager_autograd_call"]
