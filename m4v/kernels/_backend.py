"""Which kernel backends are usable in this process, and why the others are not.

Three backends implement every op: ``"cuda"`` (the compiled extension ``m4v._C``), ``"triton"``
and ``"reference"`` (plain PyTorch). ``"auto"`` takes the first usable one for the input's device
and dtype, and logs once why it fell back.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass

import torch

BACKENDS = ("cuda", "triton", "reference")
logger = logging.getLogger("m4v")


@dataclass(frozen=True)
class BackendStatus:
    usable: bool
    reason: str


@functools.cache
def _cuda_extension_status() -> BackendStatus:
    try:
        importlib.import_module("m4v._C")
    except ImportError as exc:
        return BackendStatus(False, f"the CUDA extension m4v._C is not built or failed to load ({exc})")
    if not torch.cuda.is_available():
        return BackendStatus(False, "m4v._C is built but no CUDA device is visible")
    return BackendStatus(True, "m4v._C loaded")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_status() -> BackendStatus:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return BackendStatus(False, f"triton is not installed ({exc})")
    if triton_interpret():
        return BackendStatus(True, "triton interpreter (TRITON_INTERPRET=1): CPU, slow, for tests")
    if not torch.cuda.is_available():
        return BackendStatus(False, "no CUDA device is visible (set TRITON_INTERPRET=1 to run on CPU)")
    return BackendStatus(True, f"triton {triton.__version__}")


def available_backends() -> dict[str, BackendStatus]:
    """Returns, per backend name, whether it is usable here and why (not)."""
    return {
        "cuda": _cuda_extension_status(),
        "triton": _triton_status(),
        "reference": BackendStatus(True, "plain PyTorch, any device, float64 capable"),
    }


def _usable_for(name: str, device_type: str, dtype: torch.dtype) -> tuple[bool, str]:
    status = available_backends()[name]
    if not status.usable:
        return False, status.reason
    if name == "reference":
        return True, status.reason
    if dtype == torch.float64:
        return False, f"the {name} backend has no float64 kernels"
    if name == "cuda" and device_type != "cuda":
        return False, f"the input is on {device_type}, not CUDA"
    if name == "triton" and device_type != "cuda" and not (triton_interpret() and device_type == "cpu"):
        return False, f"the input is on {device_type}; triton needs CUDA (or TRITON_INTERPRET=1 on CPU)"
    return True, status.reason


def new_output(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised output buffer; NaN-filled when M4V_POISON_OUTPUTS=1, so that tests catch any
    element a kernel fails to write (the CUDA launchers do the same)."""
    out = like.new_empty(shape, dtype=dtype)
    return out.fill_(float("nan")) if os.environ.get("M4V_POISON_OUTPUTS") == "1" else out


def new_row_output(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (batch, dim, seqlen) tensor laid out as the CUDA launchers lay out theirs
    (csrc/launch_utils.h:new_row_output): rows padded to 16 bytes, a view of the first seqlen columns.
    The fake kernels use it so that compiled graphs expect the strides the kernels return."""
    batch, dim, seqlen = like.shape
    per_16_bytes = 16 // like.element_size()
    padded = -(-seqlen // per_16_bytes) * per_16_bytes
    return like.new_empty((batch, dim, padded))[..., :seqlen]


def new_scan_output(like: torch.Tensor) -> torch.Tensor:
    """The selective-scan forward's output layout on the CUDA backend: a (batch, dim, seqlen) view of
    a token-major buffer when ``like`` (u) is token-major, else :func:`new_row_output`
    (csrc/selective_scan/selective_scan.cpp applies the same rule)."""
    batch, dim, seqlen = like.shape
    if like.stride(1) == 1 and like.stride(2) != 1:
        return like.new_empty((batch, seqlen, dim)).transpose(1, 2)
    return new_row_output(like)


_logged_fallbacks: set[tuple[str, str]] = set()


def resolve_backend(op: str, backend: str, tensor: torch.Tensor) -> str:
    """Maps ``backend`` ("auto" or a name) to a usable backend for ``tensor``, or raises."""
    return _resolve(op, backend, tensor.device.type, tensor.dtype)


# Constant for a given (op, backend, device type, dtype): torch.compile evaluates it once at trace
# time instead of tracing the import and environment probing inside.
@torch.compiler.assume_constant_result
def _resolve(op: str, backend: str, device_type: str, dtype: torch.dtype) -> str:
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        ok, reason = _usable_for(backend, device_type, dtype)
        if not ok:
            raise RuntimeError(f"{op}: backend={backend!r} is not usable: {reason}")
        return backend
    reasons = []
    for name in BACKENDS:
        if name == "triton" and device_type == "cpu":
            continue  # the interpreter is for tests that ask for it; "auto" on a CPU means the reference
        ok, reason = _usable_for(name, device_type, dtype)
        if ok:
            # Falling back on a GPU input is worth a word; CPU inputs only ever get the reference.
            if reasons and device_type == "cuda" and (op, name) not in _logged_fallbacks:
                _logged_fallbacks.add((op, name))
                logger.warning("m4v: %s uses the %s backend: %s", op, name, "; ".join(reasons))
            return name
        reasons.append(f"{name}: {reason}")
    raise AssertionError("the reference backend is always usable")
