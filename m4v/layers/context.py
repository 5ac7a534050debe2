"""What every block of one forward pass shares about the packed token sequence."""

from __future__ import annotations

import functools
from functools import cached_property
from typing import Optional, Sequence

import torch
from torch import Tensor

from m4v.kernels.recompose import FrameSpec, ScanLayout


@functools.lru_cache(maxsize=64)
def _cached_layout(frames: tuple[FrameSpec, ...], path: int, mask_shape: tuple[int, int], mask_bytes: bytes) -> ScanLayout:
    mask = torch.tensor(list(mask_bytes), dtype=torch.uint8, device="cpu").to(torch.bool).view(mask_shape)
    return ScanLayout(frames, path=path, text_len=mask_shape[1], text_mask=mask)


class TokenContext:
    """The frames, text mask and derived tables (scan layouts, RoPE angles, attention mask) of one
    packed [text; video] sequence. Built once per forward and handed to every block; tables are
    made on first use and cached.

    Args:
        frames: the frames in video-token order (oldest first, the current frame last).
        text_mask: (batch, T) bool, True at real text tokens.
        device: where the tables live.
        temporal_causal: frame i attends to frames <= i (and all text) in the attention blocks.
    """

    def __init__(self, frames: Sequence, text_mask: Tensor, device: torch.device | str,
                 temporal_causal: bool = True):
        self.frames = tuple(f if isinstance(f, FrameSpec) else FrameSpec(*f) for f in frames)
        if text_mask.dim() != 2 or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be (batch, T) bool, got {tuple(text_mask.shape)} {text_mask.dtype}")
        self.text_mask = text_mask
        self.device = torch.device(device)
        self.temporal_causal = temporal_causal
        self.batch, self.text_len = text_mask.shape
        self.video_len = sum(f.tokens for f in self.frames)
        self._layouts: dict[int, ScanLayout] = {}
        self._rope: dict[tuple, tuple[Tensor, Tensor]] = {}

    def layout(self, path: int) -> ScanLayout:
        """The re-composition layout for zigzag path ``path`` (shared across forward passes with the
        same frames and text mask, so a sampling loop builds each layout once)."""
        if path not in self._layouts:
            self._layouts[path] = _cached_layout(self.frames, path, tuple(self.text_mask.shape), self._mask_bytes)
        return self._layouts[path]

    @cached_property
    def _mask_bytes(self) -> bytes:
        """The text mask's values, read from the device once per forward pass (one host sync)."""
        if self.text_mask.device.type == "meta":  # no values: count every token as real (FLOP counting)
            return bytes([1]) * self.text_mask.numel()
        return self.text_mask.cpu().numpy().tobytes()

    @cached_property
    def frame_of_token(self) -> Tensor:
        """(V,) int64: each video token's frame index."""
        counts = torch.tensor([f.tokens for f in self.frames], device="cpu")
        return torch.repeat_interleave(torch.arange(len(self.frames), device="cpu"), counts).to(self.device)

    @cached_property
    def video_positions(self) -> Tensor:
        """(V, 3) float32 (t, y, x) of every video token; lower pyramid stages are stretched onto the
        largest grid, so one place in the scene keeps one position at every resolution."""
        top_h = max(f.height for f in self.frames)
        top_w = max(f.width for f in self.frames)
        rows = []
        for index, f in enumerate(self.frames):
            y = (torch.arange(f.height, dtype=torch.float32, device="cpu") + 0.5) * (top_h / f.height) - 0.5
            x = (torch.arange(f.width, dtype=torch.float32, device="cpu") + 0.5) * (top_w / f.width) - 0.5
            grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
            t = torch.full_like(grid_y, float(index))
            rows.append(torch.stack([t, grid_y, grid_x], dim=-1).reshape(-1, 3))
        return torch.cat(rows).to(self.device)

    def rope(self, axes_dim: tuple[int, int, int], theta: float = 10000.0) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (V, head_dim // 2), for 3D RoPE over (t, y, x) with ``axes_dim`` dims."""
        key = tuple(axes_dim)
        if key not in self._rope:
            angles = []
            for axis, dim in enumerate(axes_dim):
                freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=self.device) / dim)
                angles.append(self.video_positions[:, axis:axis + 1] * freqs)
            angle = torch.cat(angles, dim=-1)
            self._rope[key] = (angle.cos(), angle.sin())
        return self._rope[key]

    @cached_property
    def attention_mask(self) -> Optional[Tensor]:
        """(batch, 1, T + V, T + V) bool, True where a query may attend to a key, or None for full
        attention (so SDPA may pick its flash or cuDNN kernels).

        Temporal-causal: text queries see the real text; video queries see the real text and the
        frames up to their own. Otherwise every query sees every real token. Every token sees
        itself, so no row is empty.
        """
        T, V = self.text_len, self.video_len
        real_text = self.text_mask.to(self.device)
        if not self.temporal_causal:
            if self.text_mask.device.type == "meta" or bool(real_text.all()):
                return None
            keys = torch.cat([real_text, real_text.new_ones(self.batch, V)], dim=1)
            mask = keys[:, None, :].expand(self.batch, T + V, T + V).clone()
        else:
            frame = self.frame_of_token
            mask = torch.zeros(self.batch, T + V, T + V, dtype=torch.bool, device=self.device)
            mask[:, :, :T] = real_text[:, None, :]
            mask[:, T:, T:] = frame[None, :, None] >= frame[None, None, :]
        mask |= torch.eye(T + V, dtype=torch.bool, device=self.device)
        return mask[:, None]


__all__ = ["TokenContext"]
