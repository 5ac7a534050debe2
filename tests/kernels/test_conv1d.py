"""Causal depthwise conv1d: against torch's conv1d, packed sequences, gradients and registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from m4v.kernels.conv1d import causal_conv1d


def conv1d_expected(x, weight, bias):
    width, seqlen = weight.shape[1], x.shape[1]
    return F.conv1d(x.mT, weight[:, None], bias, padding=width - 1, groups=x.shape[2])[..., :seqlen].mT


@pytest.mark.parametrize("seqlen", [1, 3, 19])
@pytest.mark.parametrize("width", [2, 4])
def test_matches_conv1d(seqlen, width):
    x = torch.randn(2, seqlen, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, width, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(causal_conv1d(x, weight, bias), conv1d_expected(x, weight, bias))
    torch.testing.assert_close(causal_conv1d(x, weight), conv1d_expected(x, weight, None))


def test_packed_sequences_do_not_mix():
    x = torch.randn(1, 19, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    cu = torch.tensor([0, 7, 8, 8, 19], dtype=torch.int32)
    packed = causal_conv1d(x, weight, bias, cu)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if end > start:  # the empty sequence has nothing to compare
            torch.testing.assert_close(packed[:, start:end], conv1d_expected(x[:, start:end], weight, bias))


@pytest.mark.parametrize("packed", [False, True])
def test_gradients(packed):
    x = torch.randn(1, 11, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 4, 11], dtype=torch.int32) if packed else None
    torch.autograd.gradcheck(lambda a, w, b: causal_conv1d(a, w, b, cu), (x, weight, bias))


def test_opcheck_and_flops():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 9, 5, requires_grad=True)
    weight, bias = torch.randn(5, 4, requires_grad=True), torch.randn(5, requires_grad=True)
    torch.library.opcheck(torch.ops.m4v.causal_conv1d.default, (x, weight, bias, None))
    with FlopCounterMode(display=False) as counter:
        causal_conv1d(x, weight, bias)
    assert counter.get_total_flops() == 2 * 2 * 9 * 5 * 4


def test_bad_inputs():
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d(torch.randn(1, 4, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d(torch.randn(4, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="batch 1"):
        causal_conv1d(torch.randn(2, 4, 3), torch.randn(3, 4), cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
