"""Triton fallback of the token re-composition (see m4v/kernels/recompose.py for the semantics).

One program moves one output row in blocks of channels. Like the CUDA kernels, an index outside
the sources writes NaN instead of reading out of bounds.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from m4v.kernels._backend import new_output


@triton.jit
def _gather_kernel(text, video, registers, index, seq, text_len, video_len, num_registers, seq_len, channels,
                   BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // seq_len
    m = tl.load(index + row).to(tl.int64)
    is_text = (m >= 0) & (m < text_len)
    is_video = (m >= text_len) & (m < text_len + video_len)
    is_register = (m >= text_len + video_len) & (m < text_len + video_len + num_registers)
    invalid = (m < -1) | (m >= text_len + video_len + num_registers)
    cols = tl.arange(0, BLOCK_C)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + cols
        in_row = c < channels
        x_text = tl.load(text + (b * text_len + m) * channels + c, mask=in_row & is_text, other=0.0)
        x_video = tl.load(video + (b * video_len + m - text_len) * channels + c, mask=in_row & is_video, other=0.0)
        x_register = tl.load(registers + (m - text_len - video_len) * channels + c, mask=in_row & is_register,
                             other=0.0)
        x = tl.where(is_text, x_text, tl.where(is_video, x_video, x_register))
        x = tl.where(invalid, float("nan"), x.to(tl.float32)).to(x_text.dtype)
        tl.store(seq + row * channels + c, x, mask=in_row)


@triton.jit
def _scatter_kernel(seq, index, text_out, video_out, text_len, video_len, seq_len, channels, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    out_len = text_len + video_len
    b = row // out_len
    j = row % out_len
    first = tl.load(index + 2 * row).to(tl.int64)
    second = tl.load(index + 2 * row + 1).to(tl.int64)
    invalid = (first < -1) | (first >= seq_len) | (second < -1) | (second >= seq_len)
    use_first = (first >= 0) & (first < seq_len)
    use_second = (second >= 0) & (second < seq_len)
    is_text = j < text_len
    cols = tl.arange(0, BLOCK_C)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + cols
        in_row = c < channels
        a = tl.load(seq + (b * seq_len + first) * channels + c, mask=in_row & use_first, other=0.0)
        s = tl.load(seq + (b * seq_len + second) * channels + c, mask=in_row & use_second, other=0.0)
        total = a.to(tl.float32) + s.to(tl.float32)
        total = tl.where(invalid, float("nan"), total).to(a.dtype)
        tl.store(text_out + (b * text_len + j) * channels + c, total, mask=in_row & is_text)
        tl.store(video_out + (b * video_len + j - text_len) * channels + c, total, mask=in_row & (j >= text_len))


def _block(channels: int) -> int:
    return min(triton.next_power_of_2(channels), 2048)


def recompose_triton(text: Tensor, video: Tensor, registers: Tensor, gather_index: Tensor) -> Tensor:
    batch, video_len, channels = video.shape
    seq_len = gather_index.shape[1]
    seq = new_output((batch, seq_len, channels), video)
    if seq.numel():
        _gather_kernel[(batch * seq_len,)](text, video, registers, gather_index, seq, text.shape[1], video_len,
                                           registers.shape[0], seq_len, channels, BLOCK_C=_block(channels))
    return seq


def inverse_recompose_triton(seq: Tensor, scatter_index: Tensor, text_len: int) -> tuple[Tensor, Tensor]:
    batch, seq_len, channels = seq.shape
    video_len = scatter_index.shape[1] - text_len
    text_out = new_output((batch, text_len, channels), seq)
    video_out = new_output((batch, video_len, channels), seq)
    _scatter_kernel[(batch * (text_len + video_len),)](seq, scatter_index, text_out, video_out, text_len, video_len,
                                                        seq_len, channels, BLOCK_C=_block(channels))
    return text_out, video_out


__all__ = ["recompose_triton", "inverse_recompose_triton"]
