"""Conditioning and patch embeddings: timestep, pooled text, latent patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def timestep_features(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of flow times t (batch,) in [0, 1], scaled to [0, 1000] -> (batch, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear: the embedding MLP of timesteps and pooled text (FLUX style)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class TimestepEmbedding(nn.Module):
    """Flow time (batch,) -> (batch, hidden)."""

    def __init__(self, hidden: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = MLPEmbedder(frequency_dim, hidden)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_features(t, self.frequency_dim).to(self.mlp.fc1.weight.dtype))


class PooledTextEmbedding(MLPEmbedder):
    """Pooled text vector (batch, pooled_dim) -> (batch, hidden); joins the timestep embedding."""


class PatchEmbed(nn.Module):
    """Latent frame (batch, channels, H, W) -> tokens (batch, H/p * W/p, hidden), row-major."""

    def __init__(self, in_channels: int, hidden: int, patch_size: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, hidden)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"PatchEmbed: latent size {height} x {width} is not divisible by patch size {p}")
        return height // p, width // p

    def forward(self, latent: Tensor) -> Tensor:
        if latent.dim() != 4:
            raise ValueError(f"PatchEmbed: latent must be (batch, channels, H, W), got {tuple(latent.shape)}")
        self.grid(latent.shape[2], latent.shape[3])
        p = self.patch_size
        patches = rearrange(latent, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        return self.proj(patches.to(self.proj.weight.dtype))


def unpatchify(tokens: Tensor, grid: tuple[int, int], channels: int, patch_size: int) -> Tensor:
    """(batch, h*w, channels*p*p) -> (batch, channels, h*p, w*p); the inverse of PatchEmbed's fold."""
    h, w = grid
    return rearrange(tokens, "b (h w) (c p q) -> b c (h p) (w q)", h=h, w=w, c=channels, p=patch_size, q=patch_size)


__all__ = ["timestep_features", "MLPEmbedder", "TimestepEmbedding", "PooledTextEmbedding", "PatchEmbed", "unpatchify"]
