"""Multi-modal token re-composition (M4V, DESIGN.md section 3): the layout, the ops and a reference.

One MM-DiM block scans a single sequence built from text tokens Z (batch, T, C) and the video
tokens X (batch, V, C) of several frames::

    [ Z_l ; r(f0), zigzag(f0) ; r(f1), zigzag(f1) ; ... ; Z_r ]

- Z_l is the text with its padding moved to the left (real tokens end right before the video), Z_r
  the text with its padding on the right (real tokens start right after the video). Padding slots
  hold zeros. A forward scan thus lets video read the text and text read the video.
- Each frame is flattened along one of 8 continuous zigzag paths (``zigzag_order``) on its own
  (h, w) grid, and preceded by the learned register of its pyramid stage.
- Frames keep their order in ``video`` (oldest history first, the current frame last).

``inverse_recompose`` maps the scanned sequence back: registers are dropped, frames un-zigzagged,
and the text output is Z_l' + Z_r' at every real text position (zero at padding).

Both directions are row gathers driven by index maps that ``ScanLayout`` precomputes once per
device: ``gather_index`` (batch, S) for the forward and ``scatter_index`` (batch, T + V, 2) for the
inverse. The backward of each is the other one (a gather's adjoint here is again a gather, because
every source row lands in at most two known slots), so gradients are deterministic: no atomics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from m4v.kernels._backend import resolve_backend
from m4v.kernels._eager import eager_autograd_call

OP = "recompose"
NUM_PATHS = 8


def _fail(message: str) -> None:
    raise ValueError(f"{OP}: {message}")


# ------------------------------------------------------------------------------------------------
# Zigzag paths.


def zigzag_order(h: int, w: int, path: int) -> Tensor:
    """The cells of an (h, w) grid in the visiting order of zigzag path ``path`` (0-7).

    Paths are {row-major, column-major} x {start at top-left, top-right, bottom-left, bottom-right}:
    ``path // 4`` picks the major axis and ``path % 4`` the start corner. Every path is a
    boustrophedon: it sweeps one line, steps to the neighbouring line and sweeps back, so any two
    consecutive cells are 4-neighbours.

    Returns:
        int64 (h * w,): row-major cell indices ``row * w + col`` in visiting order.
    """
    if not isinstance(path, int) or not 0 <= path < NUM_PATHS:
        _fail(f"path must be an int in [0, {NUM_PATHS}), got {path!r}")
    if h < 1 or w < 1:
        _fail(f"a frame grid must be at least 1 x 1, got {h} x {w}")
    column_major, corner = divmod(path, 4)
    grid = torch.arange(h * w, device="cpu").view(h, w)
    if corner in (1, 3):  # start on the right
        grid = grid.flip(1)
    if corner in (2, 3):  # start at the bottom
        grid = grid.flip(0)
    if column_major:
        grid = grid.t()
    lines = grid.clone()
    lines[1::2] = lines[1::2].flip(1)  # every other line runs backwards
    return lines.reshape(-1)


# ------------------------------------------------------------------------------------------------
# Layout.


@dataclass(frozen=True)
class FrameSpec:
    """One frame of the packed video: its token grid and its pyramid stage (register index)."""

    height: int
    width: int
    stage: int = 0

    @property
    def tokens(self) -> int:
        return self.height * self.width


class ScanLayout:
    """Describes one re-composed sequence and owns its index maps.

    Args:
        frames: the frames in ``video`` order (oldest first), as ``FrameSpec`` or (h, w, stage).
        path: zigzag path index 0-7 (layer k of a model uses ``k % 8``).
        text_len: T, the text tokens per sample (0 for video only).
        text_mask: (batch, T) bool, True at real tokens; None means every token is real.
        batch: the batch size when ``text_mask`` is None.

    The maps are built on the CPU once and copied to each device on first use (``maps(device)``).
    """

    def __init__(self, frames: Sequence, path: int = 0, text_len: int = 0, text_mask: Optional[Tensor] = None,
                 batch: int = 1):
        self.frames = tuple(f if isinstance(f, FrameSpec) else FrameSpec(*f) for f in frames)
        if not self.frames:
            _fail("a layout needs at least one frame")
        for i, f in enumerate(self.frames):
            if f.height < 1 or f.width < 1:
                _fail(f"frame {i} grid must be at least 1 x 1, got {f.height} x {f.width}")
            if f.stage < 0:
                _fail(f"frame {i} stage must be >= 0, got {f.stage}")
        if not isinstance(path, int) or not 0 <= path < NUM_PATHS:
            _fail(f"path must be an int in [0, {NUM_PATHS}), got {path!r}")
        if text_len < 0:
            _fail(f"text_len must be >= 0, got {text_len}")
        if text_mask is not None:
            if text_mask.dim() != 2 or text_mask.shape[1] != text_len:
                _fail(f"text_mask must be (batch, text_len={text_len}), got {tuple(text_mask.shape)}")
            if text_mask.dtype != torch.bool:
                _fail(f"text_mask must be bool, got {text_mask.dtype}")
            batch = text_mask.shape[0]
            text_mask = text_mask.detach().to("cpu")
        if batch < 1:
            _fail(f"batch must be >= 1, got {batch}")
        self.path = path
        self.text_len = text_len
        self.batch = batch
        self.text_mask = text_mask if text_mask is not None else torch.ones(batch, text_len, dtype=torch.bool,
                                                                            device="cpu")
        self.num_stages = 1 + max(f.stage for f in self.frames)
        self.video_len = sum(f.tokens for f in self.frames)
        self.seq_len = 2 * text_len + len(self.frames) + self.video_len
        self._gather_cpu, self._scatter_cpu, self.frame_slices = self._build_maps()
        self._register_cpu = self._build_register_map()
        self._maps: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._register_maps: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _build_maps(self) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        T, V, S = self.text_len, self.video_len, self.seq_len
        zero_row = -1
        gather = torch.full((self.batch, S), zero_row, dtype=torch.int64, device="cpu")
        scatter = torch.full((self.batch, T + V, 2), zero_row, dtype=torch.int64, device="cpu")
        # Video: identical for every sample.
        slot, video_start, frame_slices = T, 0, []
        for f in self.frames:
            gather[:, slot] = T + V + f.stage
            cells = zigzag_order(f.height, f.width, self.path) + video_start
            slots = torch.arange(slot + 1, slot + 1 + f.tokens, device="cpu")
            gather[:, slots] = T + cells
            scatter[:, T + cells, 0] = slots
            frame_slices.append((slot + 1, slot + 1 + f.tokens))
            slot += 1 + f.tokens
            video_start += f.tokens
        right_start = slot
        # Text: per sample, the real tokens keep their order in both copies.
        for b in range(self.batch):
            real = self.text_mask[b].nonzero().flatten()
            n = real.numel()
            left_slots = torch.arange(T - n, T, device="cpu")
            right_slots = torch.arange(right_start, right_start + n, device="cpu")
            gather[b, left_slots] = real
            gather[b, right_slots] = real
            scatter[b, real, 0] = left_slots
            scatter[b, real, 1] = right_slots
        return gather.to(torch.int32), scatter.to(torch.int32), frame_slices

    def _build_register_map(self) -> tuple[Tensor, Tensor]:
        slots = torch.tensor([start - 1 for start, _ in self.frame_slices], dtype=torch.int64, device="cpu")
        stages = torch.tensor([f.stage for f in self.frames], dtype=torch.int64, device="cpu")
        one_hot = (torch.arange(self.num_stages, device="cpu")[:, None] == stages).to(torch.float32)
        return slots, one_hot

    def register_map(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(register_slots (frames,) int64, the sequence position of each frame's register token;
        stage_one_hot (num_stages, frames) float32, 1 where a frame belongs to a stage), on
        ``device``: what the registers' gradient is gathered and summed with."""
        device = torch.device(device)
        if device not in self._register_maps:
            self._register_maps[device] = tuple(t.to(device) for t in self._register_cpu)
        return self._register_maps[device]

    def maps(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(gather_index (batch, S), scatter_index (batch, T + V, 2)), int32, on ``device``.

        The maps are always built on the CPU (explicit devices), so a layout can be made inside a
        ``torch.device("meta")`` context for FLOP counting."""
        device = torch.device(device)
        if device not in self._maps:
            self._maps[device] = (self._gather_cpu.to(device), self._scatter_cpu.to(device))
        return self._maps[device]

    def __repr__(self) -> str:
        return (f"ScanLayout(batch={self.batch}, text_len={self.text_len}, frames={len(self.frames)}, "
                f"video_len={self.video_len}, seq_len={self.seq_len}, path={self.path})")


# ------------------------------------------------------------------------------------------------
# Reference: plain indexing.


def _gather_rows(source: Tensor, index: Tensor) -> Tensor:
    """source (batch, rows, C); index (batch, n) with -1 meaning a zero row -> (batch, n, C)."""
    batch, rows, channels = source.shape
    padded = torch.cat([source, source.new_zeros(batch, 1, channels)], dim=1)
    safe = torch.where(index < 0, rows, index).long()
    return torch.gather(padded, 1, safe[..., None].expand(-1, -1, channels))


def recompose_ref(text: Tensor, video: Tensor, registers: Tensor, gather_index: Tensor) -> Tensor:
    """Reference of the forward gather: (batch, S, C) from text, video and registers."""
    batch = video.shape[0]
    source = torch.cat([text, video, registers.to(video.dtype).expand(batch, -1, -1)], dim=1)
    return _gather_rows(source, gather_index)


def inverse_recompose_ref(seq: Tensor, scatter_index: Tensor, text_len: int) -> tuple[Tensor, Tensor]:
    """Reference of the inverse: rows summed in float32 (float64 stays float64), then split."""
    acc = torch.float64 if seq.dtype == torch.float64 else torch.float32
    rows = _gather_rows(seq.to(acc), scatter_index[..., 0]) + _gather_rows(seq.to(acc), scatter_index[..., 1])
    rows = rows.to(seq.dtype)
    return rows[:, :text_len].clone(), rows[:, text_len:].clone()  # outputs must not alias


# ------------------------------------------------------------------------------------------------
# Custom ops. Each takes both index maps and the register map, so that its backward can call the other op.


def _recompose(text: Tensor, video: Tensor, registers: Tensor, gather_index: Tensor, scatter_index: Tensor,
               register_slots: Tensor, stage_one_hot: Tensor, backend: str) -> Tensor:
    """text (batch, T, C), video (batch, V, C), registers (R, C) -> seq (batch, S, C)."""
    if backend == "cuda":
        return torch.ops.m4v.recompose_cuda(text, video, registers, gather_index)
    if backend == "triton":
        from m4v.kernels.triton.recompose import recompose_triton

        return recompose_triton(text, video, registers, gather_index)
    return recompose_ref(text, video, registers, gather_index)


recompose_op = torch.library.custom_op("m4v::recompose", mutates_args=())(_recompose)


@recompose_op.register_fake
def _(text, video, registers, gather_index, scatter_index, register_slots, stage_one_hot, backend):
    return video.new_empty((video.shape[0], gather_index.shape[1], video.shape[2]))


def _inverse_recompose(seq: Tensor, gather_index: Tensor, scatter_index: Tensor, register_slots: Tensor,
                       stage_one_hot: Tensor, text_len: int, backend: str) -> tuple[Tensor, Tensor]:
    """seq (batch, S, C) -> (text (batch, T, C), video (batch, V, C))."""
    if backend == "cuda":
        text, video = torch.ops.m4v.inverse_recompose_cuda(seq, scatter_index, text_len)
        return text, video
    if backend == "triton":
        from m4v.kernels.triton.recompose import inverse_recompose_triton

        return inverse_recompose_triton(seq, scatter_index, text_len)
    return inverse_recompose_ref(seq, scatter_index, text_len)


inverse_recompose_op = torch.library.custom_op("m4v::inverse_recompose", mutates_args=())(_inverse_recompose)


@inverse_recompose_op.register_fake
def _(seq, gather_index, scatter_index, register_slots, stage_one_hot, text_len, backend):
    batch, _, channels = seq.shape
    video_len = scatter_index.shape[1] - text_len
    return seq.new_empty((batch, text_len, channels)), seq.new_empty((batch, video_len, channels))


def _register_gradient(dseq: Tensor, register_slots: Tensor, stage_one_hot: Tensor) -> Tensor:
    """(num_stages, C): each register's gradient, summed over batch and frames in a fixed order.

    Only the frames' register slots are read, at positions the layout knows: gathering them from
    gather_index in the backward took a dozen small ops (a search, casts, a one-hot) per call.
    """
    acc = torch.promote_types(dseq.dtype, torch.float32)
    rows = dseq.index_select(1, register_slots)  # (batch, frames, C)
    rows = rows[0].to(acc) if rows.shape[0] == 1 else rows.sum(0, dtype=acc)
    return stage_one_hot.to(acc) @ rows


def _recompose_setup(ctx, inputs, output):
    text, video, registers, gather_index, scatter_index, register_slots, stage_one_hot, backend = inputs
    ctx.save_for_backward(gather_index, scatter_index, register_slots, stage_one_hot)
    ctx.text_len, ctx.register_dtype, ctx.backend = text.shape[1], registers.dtype, backend


def _recompose_backward(ctx, dseq):
    gather_index, scatter_index, register_slots, stage_one_hot = ctx.saved_tensors
    dseq = dseq.contiguous()
    dtext, dvideo = _inverse_recompose_call(dseq, gather_index, scatter_index, register_slots, stage_one_hot,
                                            ctx.text_len, ctx.backend)
    dregisters = _register_gradient(dseq, register_slots, stage_one_hot)
    return dtext, dvideo, dregisters.to(ctx.register_dtype), None, None, None, None, None


recompose_op.register_autograd(_recompose_backward, setup_context=_recompose_setup)


def _inverse_setup(ctx, inputs, output):
    seq, gather_index, scatter_index, register_slots, stage_one_hot, text_len, backend = inputs
    ctx.save_for_backward(gather_index, scatter_index, register_slots, stage_one_hot)
    ctx.backend = backend


def _inverse_backward(ctx, dtext, dvideo):
    gather_index, scatter_index, register_slots, stage_one_hot = ctx.saved_tensors
    # The adjoint of "drop registers, sum the two text copies" is "zero registers, copy text twice".
    dvideo = dvideo.contiguous() if dvideo is not None else None
    if dtext is None:
        dtext = dvideo.new_zeros((dvideo.shape[0], scatter_index.shape[1] - dvideo.shape[1], dvideo.shape[2]))
    if dvideo is None:
        dvideo = dtext.new_zeros((dtext.shape[0], scatter_index.shape[1] - dtext.shape[1], dtext.shape[2]))
    zero_registers = dvideo.new_zeros((stage_one_hot.shape[0], dvideo.shape[2]))
    dseq = _recompose_call(dtext.contiguous(), dvideo, zero_registers, gather_index, scatter_index, register_slots,
                           stage_one_hot, ctx.backend)
    return dseq, None, None, None, None, None, None


inverse_recompose_op.register_autograd(_inverse_backward, setup_context=_inverse_setup)
# Each op's backward calls the other, so both callers exist before either backward runs.
_recompose_call = eager_autograd_call(recompose_op, _recompose, _recompose_setup, _recompose_backward)
_inverse_recompose_call = eager_autograd_call(inverse_recompose_op, _inverse_recompose, _inverse_setup,
                                              _inverse_backward)


def recompose_bytes(layout: ScanLayout, channels: int, dtype: torch.dtype) -> tuple[int, int]:
    """Ideal bytes moved by (recompose, inverse_recompose): each row read and written once."""
    size = torch.empty((), dtype=dtype).element_size()
    text_rows = int(layout.text_mask.sum())
    seq_rows = layout.batch * layout.seq_len
    video_rows = layout.batch * layout.video_len
    forward = (text_rows + video_rows + layout.num_stages + seq_rows) * channels * size
    inverse = (2 * text_rows + video_rows + layout.batch * (layout.text_len + layout.video_len)) * channels * size
    return forward, inverse


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.m4v.recompose)
    def _recompose_flops(*args, out_shape=None, **kwargs) -> int:
        return 0  # a permutation with copies

    @register_flop_formula(torch.ops.m4v.inverse_recompose)
    def _inverse_flops(seq_shape, gather_shape, scatter_shape, slots_shape, one_hot_shape, text_len, *args,
                       out_shape=None, **kwargs) -> int:
        batch, _, channels = seq_shape
        return batch * text_len * channels  # one add per text element (Z_l' + Z_r')


_register_flop_formulas()


# ------------------------------------------------------------------------------------------------
# Public functions.


def _check(name: str, x: Tensor, batch: int, rows: int, channels: Optional[int]) -> None:
    if not isinstance(x, Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        _fail(f"{name} must be (batch, tokens, channels), got rank {x.dim()} shape {tuple(x.shape)}")
    if x.shape[0] != batch:
        _fail(f"{name} has batch {x.shape[0]} but the layout has batch {batch}")
    if x.shape[1] != rows:
        _fail(f"{name} has {x.shape[1]} tokens but the layout expects {rows}")
    if channels is not None and x.shape[2] != channels:
        _fail(f"{name} has {x.shape[2]} channels, expected {channels}")
    if x.shape[2] == 0:
        _fail(f"{name} must have at least one channel")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        _fail(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")


def recompose(text: Optional[Tensor], video: Tensor, layout: ScanLayout, registers: Tensor,
              backend: str = "auto") -> Tensor:
    """Builds the scan sequence ``[Z_l; r, f0; r, f1; ...; Z_r]``.

    Args:
        text: (batch, T, C) text tokens, or None when ``layout.text_len == 0``.
        video: (batch, V, C), the frames' tokens concatenated in layout order, each frame row-major.
        layout: the ``ScanLayout``.
        registers: (num_stages, C) learned register tokens (at least ``layout.num_stages`` rows).
        backend: "auto", "cuda", "triton" or "reference".

    Returns:
        (batch, S, C) with S = 2 T + frames + V, in video's dtype.
    """
    _check("video", video, layout.batch, layout.video_len, None)
    channels = video.shape[2]
    if text is None:
        if layout.text_len:
            _fail(f"text is None but the layout has text_len={layout.text_len}")
        text = video.new_empty((layout.batch, 0, channels))
    _check("text", text, layout.batch, layout.text_len, channels)
    if not isinstance(registers, Tensor) or registers.dim() != 2 or registers.shape[1] != channels:
        _fail(f"registers must be (num_stages, C={channels}), got "
              f"{tuple(registers.shape) if isinstance(registers, Tensor) else type(registers).__name__}")
    if registers.shape[0] < layout.num_stages:
        _fail(f"registers has {registers.shape[0]} rows but the layout uses stages up to {layout.num_stages - 1}")
    for name, t in (("text", text), ("registers", registers)):
        if t.device != video.device:
            _fail(f"{name} is on {t.device} but video is on {video.device}")
    if text.dtype != video.dtype:
        _fail(f"text must have video's dtype {video.dtype}, got {text.dtype}")
    backend = resolve_backend(OP, backend, video)
    if registers.shape[0] > layout.num_stages:  # sliced only when needed: the slice's backward is two kernels
        registers = registers[:layout.num_stages]
    return _recompose_call(text.contiguous(), video.contiguous(), registers.to(video.dtype),
                           *layout.maps(video.device), *layout.register_map(video.device), backend)


def inverse_recompose(seq: Tensor, layout: ScanLayout, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Maps a scanned sequence back to ``(text_out (batch, T, C), video_out (batch, V, C))``.

    Registers are dropped, frames un-zigzagged, and text_out = Z_l' + Z_r' at real text tokens
    (zero at padding), summed in float32.
    """
    _check("seq", seq, layout.batch, layout.seq_len, None)
    backend = resolve_backend(OP, backend, seq)
    return _inverse_recompose_call(seq.contiguous(), *layout.maps(seq.device), *layout.register_map(seq.device),
                                   layout.text_len, backend)


__all__ = ["FrameSpec", "ScanLayout", "zigzag_order", "recompose", "inverse_recompose", "recompose_ref",
           "inverse_recompose_ref", "recompose_bytes", "NUM_PATHS"]
