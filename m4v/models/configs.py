"""Dataclass configs and the named presets of the M4V transformer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MIXERS = ("mmdim", "attention")


def config_from_dict(cls, values: dict, what: str):
    """A dataclass instance from a dict (e.g. read from JSON), refusing unknown keys by name."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown}")
    return cls(**values)


@dataclass
class M4VConfig:
    """Everything that shapes an ``M4VTransformer``.

    The 768p presets follow DESIGN.md section 2: a PyramidFlow-miniFLUX backbone (hidden 1920, 30
    heads of 64), 8 MM-DiT blocks, then 16 mixer blocks. ``mixer="mmdim"`` makes those MM-DiM blocks
    (expand 1.5: d_inner 2880, fitted to the paper's own FLOP count), ``"attention"`` makes them
    FLUX single-stream attention blocks (the baseline).
    """

    hidden: int = 1920
    heads: int = 30
    num_dit_blocks: int = 8
    num_mixer_blocks: int = 16
    mixer: str = "mmdim"
    mlp_ratio: float = 4.0
    rope_axes: tuple[int, int, int] = (16, 24, 24)
    temporal_causal: bool = True
    # Mamba mixer (Mamba-1 / S6).
    d_state: int = 16
    d_conv: int = 4
    expand: float = 1.5
    # Temporal branch of the MM-DiM block; None of it exists when temporal is False.
    temporal: bool = True
    temporal_channels: int = 16
    temporal_tokens_per_side: int = 4
    temporal_heads: int = 2
    # Inputs: VAE latents, text encoder states and the pooled text vector.
    latent_channels: int = 16
    patch_size: int = 2
    text_dim: int = 4096
    pooled_dim: int = 768
    max_text_len: int = 128
    num_stages: int = 3
    backend: str = "auto"

    def __post_init__(self):
        self.rope_axes = tuple(self.rope_axes)
        if self.mixer not in MIXERS:
            raise ValueError(f"M4VConfig: mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.hidden % self.heads:
            raise ValueError(f"M4VConfig: hidden {self.hidden} must be divisible by heads {self.heads}")
        if sum(self.rope_axes) != self.hidden // self.heads:
            raise ValueError(f"M4VConfig: rope_axes {self.rope_axes} must sum to the head dim "
                             f"{self.hidden // self.heads}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["rope_axes"] = list(self.rope_axes)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "M4VConfig":
        return config_from_dict(cls, values, "M4VConfig")


_TINY = dict(hidden=64, heads=4, num_dit_blocks=2, num_mixer_blocks=2, rope_axes=(4, 6, 6), d_state=8,
             expand=2.0, temporal_channels=4, temporal_tokens_per_side=2, latent_channels=4, text_dim=32,
             pooled_dim=16, max_text_len=16)

# The shipped text-to-video model of the shapes dataset (64 x 64, a 4x4x4 pixel patch autoencoder).
_SHAPES = dict(hidden=192, heads=6, num_dit_blocks=2, num_mixer_blocks=6, mlp_ratio=2.0, rope_axes=(8, 12, 12), d_state=16,
               expand=2.0, temporal_channels=8, temporal_tokens_per_side=2, latent_channels=16, text_dim=64,
               pooled_dim=64, max_text_len=24)

PRESETS: dict[str, M4VConfig] = {
    "m4v-768p": M4VConfig(),
    "attn-768p": M4VConfig(mixer="attention"),
    "pure-mamba-768p": M4VConfig(temporal=False),
    "m4v-tiny": M4VConfig(**_TINY),
    "attn-tiny": M4VConfig(**_TINY, mixer="attention"),
    "m4v-shapes": M4VConfig(**_SHAPES),
    "attn-shapes": M4VConfig(**_SHAPES, mixer="attention"),
}


def get_config(name: str, **overrides) -> M4VConfig:
    """A copy of preset ``name`` with ``overrides`` applied (e.g. ``expand=2.0``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


__all__ = ["M4VConfig", "PRESETS", "get_config", "config_from_dict", "MIXERS"]
