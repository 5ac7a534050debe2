"""The value checks of a packed-sequence offsets tensor, shared by the ops that take one.

Reading the values is a host sync that drains the GPU's queue (0.35 ms per selective-scan call on
the H200, over half the anchor forward), and a model hands the same tensor to every layer, so a
tensor that passed is remembered by (weak reference, version counter, seqlen) and not read again;
an in-place change bumps the version, so a changed tensor is checked again. Inference tensors have
no version counter and are checked at every call.
"""

from __future__ import annotations

import weakref
from collections import deque

import torch
from torch import Tensor

_CHECKED: deque = deque(maxlen=8)


def check_cu_seqlens_values(op: str, cu_seqlens: Tensor, seqlen: int) -> None:
    """Raises ValueError (naming ``op`` and cu_seqlens) unless cu_seqlens runs from 0 to ``seqlen``
    without decreasing. Skipped under torch.compile, where values are not known."""
    if torch.compiler.is_compiling():
        return
    remember = not cu_seqlens.is_inference()
    key = (cu_seqlens._version, seqlen) if remember else None
    if remember and any(ref() is cu_seqlens and (version, length) == key for ref, version, length in _CHECKED):
        return
    first, last, decreasing = torch.stack([cu_seqlens[0], cu_seqlens[-1],
                                           (cu_seqlens[1:] < cu_seqlens[:-1]).any().to(cu_seqlens.dtype)]).tolist()
    if first != 0 or last != seqlen:
        raise ValueError(f"{op}: cu_seqlens must start at 0 and end at seqlen={seqlen}, got {first} .. {last}")
    if decreasing:
        raise ValueError(f"{op}: cu_seqlens must be non-decreasing")
    if remember:
        _CHECKED.append((weakref.ref(cu_seqlens), *key))
