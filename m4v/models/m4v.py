"""The M4V text-to-video transformer: MM-DiT blocks, then MM-DiM (or attention) blocks, over one
pyramid autoregressive unit."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from m4v._weights import load_module, save_module
from m4v.kernels.recompose import FrameSpec
from m4v.layers.attention import SingleStreamAttentionBlock
from m4v.layers.context import TokenContext
from m4v.layers.embeddings import PatchEmbed, PooledTextEmbedding, TimestepEmbedding, unpatchify
from m4v.layers.mm_dim import MMDiMBlock
from m4v.layers.mm_dit import MMDiTBlock
from m4v.layers.modulation import Modulation, layer_norm, modulate
from m4v.models.configs import M4VConfig, get_config

def history_stages(num_history: int, stage: int) -> list[int]:
    """Stages of the history frames (oldest first) for a unit at ``stage`` (DESIGN.md section 1):
    the newest frame at ``stage``, the next older one stage lower, every older one at stage 0."""
    stages = [0] * num_history
    for age in range(min(num_history, 2)):
        stages[num_history - 1 - age] = max(stage - age, 0)
    return stages


class M4VTransformer(nn.Module):
    """Predicts the flow velocity of the current latent frame of one autoregressive unit.

    ``forward`` packs [text; history frames (oldest first); current frame] into one token sequence,
    runs ``num_dit_blocks`` MM-DiT blocks and then ``num_mixer_blocks`` MM-DiM (or single-stream
    attention) blocks, and returns the velocity of the current frame only.
    """

    def __init__(self, config: M4VConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.latent_channels, c.hidden, c.patch_size)
        self.text_embed = nn.Linear(c.text_dim, c.hidden)
        self.time_embed = TimestepEmbedding(c.hidden)
        self.pooled_embed = PooledTextEmbedding(c.pooled_dim, c.hidden)
        self.dit_blocks = nn.ModuleList(
            MMDiTBlock(c.hidden, c.heads, c.mlp_ratio, c.rope_axes) for _ in range(c.num_dit_blocks))
        if c.mixer == "mmdim":
            mixer_blocks = (
                MMDiMBlock(c.hidden, layer_index=i, mlp_ratio=c.mlp_ratio, num_stages=c.num_stages,
                           d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, temporal=c.temporal,
                           temporal_channels=c.temporal_channels, temporal_tokens_per_side=c.temporal_tokens_per_side,
                           temporal_heads=c.temporal_heads, backend=c.backend)
                for i in range(c.num_mixer_blocks))
        else:
            mixer_blocks = (SingleStreamAttentionBlock(c.hidden, c.heads, c.mlp_ratio, c.rope_axes)
                            for _ in range(c.num_mixer_blocks))
        self.mixer_blocks = nn.ModuleList(mixer_blocks)
        self.gradient_checkpointing = False  # recompute each block in the backward (training memory)
        self.final_modulation = Modulation(c.hidden, 2)
        self.final_proj = nn.Linear(c.hidden, c.patch_size * c.patch_size * c.latent_channels)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "M4VTransformer":
        return cls(get_config(name, **overrides))

    def forward(self, latent: Tensor, timestep: Tensor, text: Tensor, text_mask: Tensor, pooled: Tensor,
                history: Sequence[Tensor] = (), stage: Optional[int] = None,
                history_stage: Optional[Sequence[int]] = None) -> Tensor:
        """Velocity of the current frame.

        Args:
            latent: (batch, latent_channels, H, W), the noisy current frame at pyramid ``stage``.
            timestep: (batch,) flow time in [0, 1].
            text: (batch, T, text_dim) text-encoder states, T <= max_text_len.
            text_mask: (batch, T) bool, True at real tokens.
            pooled: (batch, pooled_dim) pooled text vector.
            history: the clean (or lightly noised) history latents, oldest first, each
                (batch, latent_channels, H_i, W_i) at its own pyramid resolution.
            stage: the current frame's stage (default: the top stage, num_stages - 1).
            history_stage: each history frame's stage (default: ``history_stages``).

        Returns:
            (batch, latent_channels, H, W).
        """
        c = self.config
        stage = c.num_stages - 1 if stage is None else stage
        if not 0 <= stage < c.num_stages:
            raise ValueError(f"stage must be in [0, {c.num_stages}), got {stage}")
        stages = list(history_stages(len(history), stage) if history_stage is None else history_stage)
        if len(stages) != len(history):
            raise ValueError(f"history_stage has {len(stages)} entries for {len(history)} history frames")
        if text.dim() != 3 or text.shape[-1] != c.text_dim or text.shape[1] > c.max_text_len:
            raise ValueError(f"text must be (batch, T <= {c.max_text_len}, {c.text_dim}), got {tuple(text.shape)}")
        if tuple(text_mask.shape) != tuple(text.shape[:2]) or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])}, got {tuple(text_mask.shape)} "
                             f"{text_mask.dtype}")
        batch = latent.shape[0]
        for name, t in (("timestep", timestep), ("pooled", pooled), ("text", text)):
            if t.shape[0] != batch:
                raise ValueError(f"{name} has batch {t.shape[0]}, latent has {batch}")

        frame_latents = list(history) + [latent]
        frames = [FrameSpec(*self.patch_embed.grid(x.shape[-2], x.shape[-1]), s)
                  for x, s in zip(frame_latents, stages + [stage])]
        video = torch.cat([self.patch_embed(x) for x in frame_latents], dim=1)
        text_tokens = self.text_embed(text.to(self.text_embed.weight.dtype))
        cond = self.time_embed(timestep) + self.pooled_embed(pooled.to(self.pooled_embed.fc1.weight.dtype))
        ctx = TokenContext(frames, text_mask, video.device, temporal_causal=c.temporal_causal)
        for block in [*self.dit_blocks, *self.mixer_blocks]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                text_tokens, video = checkpoint(block, text_tokens, video, cond, ctx, use_reentrant=False)
            else:
                text_tokens, video = block(text_tokens, video, cond, ctx)
        current = video[:, -frames[-1].tokens:]
        shift, scale = self.final_modulation(cond)
        patches = self.final_proj(modulate(layer_norm(current), shift, scale))
        return unpatchify(patches, (frames[-1].height, frames[-1].width), c.latent_channels, c.patch_size)

    # --------------------------------------------------------------------------------------------
    # Weights on disk: config.json + model.safetensors (never pickle).

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_module(self, self.config.to_dict(), directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str = "cpu",
                        dtype: Optional[torch.dtype] = None) -> "M4VTransformer":
        return load_module(directory, lambda config: cls(M4VConfig.from_dict(config)), device, dtype)


__all__ = ["M4VTransformer", "history_stages"]
