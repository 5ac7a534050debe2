"""MM-DiM: the multi-modal Mamba block of M4V, and its mixer as a drop-in for self-attention."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from m4v.kernels.recompose import NUM_PATHS, ScanLayout, inverse_recompose, recompose
from m4v.layers.context import TokenContext
from m4v.layers.mixer import MambaMixer
from m4v.layers.mm_dit import FeedForward
from m4v.layers.modulation import Modulation, layer_norm, modulate
from m4v.layers.temporal import TemporalBranch


class MultiModalMamba(nn.Module):
    """Token re-composition -> one forward Mamba scan -> inverse re-composition.

    The drop-in replacement for a video DiT's self-attention: it maps (batch, V, C) video tokens
    (and, optionally, (batch, T, C) text tokens) to the same shapes, given the frame grids. Frames
    are zigzagged along path ``layer_index % 8``; one learned register per pyramid stage marks each
    frame start; text is sandwiched around the video so a forward scan mixes both ways.

    Example: replacing the self-attention of a Wan-style video DiT, whose blocks call
    ``self_attn(x, seq_lens, grid_sizes, freqs)`` on F frames of an (h, w) token grid::

        class MambaSelfAttention(nn.Module):
            # Stands in for WanSelfAttention: same call, same output shape.

            def __init__(self, dim, layer_index):
                super().__init__()
                self.mixer = MultiModalMamba(dim, layer_index=layer_index, num_stages=1)

            def forward(self, x, seq_lens, grid_sizes, freqs):
                frames, h, w = grid_sizes[0].tolist()
                return self.mixer(x, frames=[(h, w, 0)] * frames)

        for index, block in enumerate(wan_model.blocks):
            block.self_attn = MambaSelfAttention(wan_model.dim, index)

    Args:
        hidden: C. layer_index: selects the zigzag path. num_stages: register count.
        d_state, d_conv, expand, backend: the ``MambaMixer``'s.
    """

    def __init__(self, hidden: int, layer_index: int = 0, num_stages: int = 3, d_state: int = 16, d_conv: int = 4,
                 expand: float = 1.5, backend: str = "auto"):
        super().__init__()
        self.path = layer_index % NUM_PATHS
        self.backend = backend
        self.registers = nn.Parameter(torch.randn(num_stages, hidden) * 0.02)
        self.mixer = MambaMixer(hidden, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)

    def layout(self, frames: Sequence, text_len: int = 0, text_mask: Optional[Tensor] = None,
               batch: int = 1) -> ScanLayout:
        """A layout with this layer's zigzag path (build once, reuse across steps)."""
        return ScanLayout(frames, path=self.path, text_len=text_len, text_mask=text_mask, batch=batch)

    def forward(self, video: Tensor, frames: Optional[Sequence] = None, text: Optional[Tensor] = None,
                text_mask: Optional[Tensor] = None, layout: Optional[ScanLayout] = None):
        """video (batch, V, C) [+ text (batch, T, C)] -> video_out, or (text_out, video_out) with text.

        Give either ``frames`` ((h, w, stage) per frame, or FrameSpec) or a prebuilt ``layout``.
        """
        if layout is None:
            if frames is None:
                raise ValueError("MultiModalMamba: give frames or layout")
            text_len = 0 if text is None else text.shape[1]
            layout = self.layout(frames, text_len, text_mask, batch=video.shape[0])
        elif layout.path != self.path:
            raise ValueError(f"MultiModalMamba: layout path {layout.path} differs from this layer's {self.path}")
        seq = recompose(text, video, layout, self.registers, backend=self.backend)
        text_out, video_out = inverse_recompose(self.mixer(seq), layout, backend=self.backend)
        return video_out if text is None else (text_out, video_out)


class _AddToLastTokens(torch.autograd.Function):
    """``video[:, -n:] += update`` in place (n = update's tokens), with a backward that copies
    nothing: the gradient passes to ``video`` as it is and to ``update`` as its last n tokens.

    Autograd's own backward of an in-place add on a slice (CopySlices) clones the whole gradient
    and copies the slice's around the add: at 15,360 tokens that was two full-size copies and five
    slice-size kernels per block backward, for values it passes on unchanged.
    """

    @staticmethod
    def forward(ctx, video: Tensor, update: Tensor) -> Tensor:
        ctx.tokens, ctx.update_dtype = update.shape[1], update.dtype
        ctx.mark_dirty(video)
        video[:, -update.shape[1]:] += update
        return video

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, grad[:, -ctx.tokens:].to(ctx.update_dtype)


class MMDiMBlock(nn.Module):
    """The MM-DiM block: adaLN-Zero modulation; [re-composition -> Mamba mixer -> inverse] in
    parallel with an MLP on the shared modulated input; a gated residual; and the temporal branch
    added to the current (last) frame's tokens. Weights are shared by text and video.

    ``forward(text (batch, T, C), video (batch, V, C), c (batch, C), ctx) -> (text, video)``;
    ``ctx`` is the forward pass's ``TokenContext`` (frames, text mask, cached layouts).
    """

    def __init__(self, hidden: int, layer_index: int = 0, mlp_ratio: float = 4.0, num_stages: int = 3,
                 d_state: int = 16, d_conv: int = 4, expand: float = 1.5, temporal: bool = True,
                 temporal_channels: int = 16, temporal_tokens_per_side: int = 4, temporal_heads: int = 2,
                 backend: str = "auto"):
        super().__init__()
        self.modulation = Modulation(hidden, 3)
        self.mamba = MultiModalMamba(hidden, layer_index, num_stages, d_state, d_conv, expand, backend)
        self.mlp = FeedForward(hidden, mlp_ratio)
        self.temporal = (TemporalBranch(hidden, temporal_channels, temporal_tokens_per_side, temporal_heads)
                         if temporal else None)

    @property
    def path(self) -> int:
        return self.mamba.path

    def forward(self, text: Tensor, video: Tensor, c: Tensor, ctx: TokenContext) -> tuple[Tensor, Tensor]:
        shift, scale, gate = self.modulation(c)
        h_text = modulate(layer_norm(text), shift, scale)
        h_video = modulate(layer_norm(video), shift, scale)
        mixed_text, mixed_video = self.mamba(h_video, text=h_text, layout=ctx.layout(self.path))
        text = text + gate * (mixed_text + self.mlp(h_text))
        video = video + gate * (mixed_video + self.mlp(h_video))
        if self.temporal is not None:
            # In place on the sum (its backward keeps no output): a cat copied all V tokens to
            # change the current frame's.
            video = _AddToLastTokens.apply(video, self.temporal(h_video, ctx.frames))
        return text, video


__all__ = ["MMDiMBlock", "MultiModalMamba"]
