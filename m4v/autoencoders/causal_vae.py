"""A causal 3D convolutional VAE: 8x spatial and 8x temporal compression, 16 latent channels.

The design follows the causal video VAEs of CogVideoX and PyramidFlow (written from their
description, not their code):

- every 3D convolution is causal in time (the past is padded by repeating the first frame), so a
  latent frame never depends on later frames and the first frame is encoded alone;
- each of the three levels halves H, W and the number of frames after the first
  (1 + 8 k frames -> 1 + k latent frames); the decoder mirrors it;
- normalisation is per pixel (RMS over channels), never over space, so spatially tiled decoding
  with a halo of ``tile_halo`` latent pixels equals whole-frame decoding, and temporally chunked
  decoding with ``chunk_context`` latent frames of causal context equals whole-video decoding.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m4v.autoencoders.base import VideoAutoencoder

LEVELS = 3  # 2 ** 3 = 8 in space and time


class ChannelRMSNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:  # (batch, C, F, H, W)
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        scale = torch.rsqrt(wide.square().mean(1, keepdim=True) + 1e-6)
        return (wide * scale).to(x.dtype) * self.weight.view(1, -1, 1, 1, 1)


class CausalConv3d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.time_pad = kernel - 1
        self.conv = nn.Conv3d(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelRMSNorm(cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = ChannelRMSNorm(cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def downsample(x: Tensor) -> Tensor:
    """Halve H, W, and the frames after the first (pairs averaged)."""
    x = F.avg_pool3d(x, (1, 2, 2))
    rest = x[:, :, 1:]
    rest = 0.5 * (rest[:, :, 0::2] + rest[:, :, 1::2])
    return torch.cat([x[:, :, :1], rest], dim=2)


def upsample(x: Tensor) -> Tensor:
    """Double H, W, and every frame after the first (nearest)."""
    x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
    return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)


class CausalVideoVAE(VideoAutoencoder):
    """Causal 3D conv VAE. ``encode`` returns the posterior mean (or a sample with ``sample=True``);
    ``decode`` optionally works in spatial tiles and temporal chunks to bound memory.

    Args:
        latent_channels: 16 for the M4V presets. channels: width per level (4 entries: the full
            resolution, then after each of the three downsamplings).
        tile_halo: latent pixels of overlap kept around each spatial tile (>= the decoder's spatial
            receptive radius, about 6, for exact tiling).
        chunk_context: latent frames of causal context before each temporal chunk (>= the
            decoder's temporal receptive field, about 12, for exact chunking).
    """

    kind = "causal_vae"
    spatial_factor = 2 ** LEVELS
    temporal_factor = 2 ** LEVELS

    def __init__(self, latent_channels: int = 16, channels: tuple[int, ...] = (64, 128, 256, 256),
                 tile_halo: int = 8, chunk_context: int = 12):
        super().__init__()
        if len(channels) != LEVELS + 1:
            raise ValueError(f"channels needs {LEVELS + 1} entries, got {channels}")
        self.latent_channels, self.channels = latent_channels, tuple(channels)
        self.tile_halo, self.chunk_context = tile_halo, chunk_context
        c = self.channels
        self.encoder_in = CausalConv3d(3, c[0])
        self.encoder_blocks = nn.ModuleList(ResBlock(c[i], c[i + 1]) for i in range(LEVELS))
        self.encoder_mid = ResBlock(c[-1], c[-1])
        self.encoder_norm = ChannelRMSNorm(c[-1])
        self.encoder_out = CausalConv3d(c[-1], 2 * latent_channels)
        self.decoder_in = CausalConv3d(latent_channels, c[-1])
        self.decoder_mid = ResBlock(c[-1], c[-1])
        self.decoder_blocks = nn.ModuleList(ResBlock(c[i + 1], c[i]) for i in reversed(range(LEVELS)))
        self.decoder_norm = ChannelRMSNorm(c[0])
        self.decoder_out = CausalConv3d(c[0], 3)

    def config_dict(self) -> dict:
        return {"latent_channels": self.latent_channels, "channels": list(self.channels),
                "tile_halo": self.tile_halo, "chunk_context": self.chunk_context}

    def encode(self, video: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """(batch, 3, 1 + 8 k, H, W) in [-1, 1] -> (batch, latent_channels, 1 + k, H / 8, W / 8)."""
        self.check_video(video)
        h = self.encoder_in(video)
        for block in self.encoder_blocks:
            h = downsample(block(h))
        h = self.encoder_out(F.silu(self.encoder_norm(self.encoder_mid(h))))
        mean, logvar = h.chunk(2, dim=1)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise

    def _decode(self, z: Tensor) -> Tensor:
        h = self.decoder_mid(self.decoder_in(z))
        for block in self.decoder_blocks:
            h = block(upsample(h))
        return self.decoder_out(F.silu(self.decoder_norm(h)))

    def decode(self, latents: Tensor, tile: Optional[int] = None, chunk: Optional[int] = None) -> Tensor:
        """(batch, latent_channels, f, h, w) -> (batch, 3, 1 + 8 (f - 1), 8 h, 8 w).

        ``tile``: decode (tile x tile)-latent-pixel tiles with a halo; ``chunk``: decode ``chunk``
        latent frames at a time with causal context. Both bound peak memory and give the same result.
        """
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (batch, {self.latent_channels}, frames, h, w), "
                             f"got {tuple(latents.shape)}")
        if chunk is not None and latents.shape[2] > chunk:
            pieces = [self._decode_tiles(latents[:, :, :chunk], tile)]
            for start in range(chunk, latents.shape[2], chunk):
                context = max(0, start - self.chunk_context)
                out = self._decode_tiles(latents[:, :, context:start + chunk], tile)
                pieces.append(out[:, :, -(min(chunk, latents.shape[2] - start) * self.temporal_factor):])
            return torch.cat(pieces, dim=2)
        return self._decode_tiles(latents, tile)

    def _decode_tiles(self, latents: Tensor, tile: Optional[int]) -> Tensor:
        height, width = latents.shape[-2:]
        if tile is None or (height <= tile and width <= tile):
            return self._decode(latents)
        s, halo = self.spatial_factor, self.tile_halo
        rows = []
        for y0 in range(0, height, tile):
            row = []
            for x0 in range(0, width, tile):
                ya, xa = max(0, y0 - halo), max(0, x0 - halo)
                yb, xb = min(height, y0 + tile + halo), min(width, x0 + tile + halo)
                out = self._decode(latents[..., ya:yb, xa:xb])
                y1, x1 = min(height, y0 + tile), min(width, x0 + tile)
                row.append(out[..., (y0 - ya) * s:(y1 - ya) * s, (x0 - xa) * s:(x1 - xa) * s])
            rows.append(torch.cat(row, dim=-1))
        return torch.cat(rows, dim=-2)


__all__ = ["CausalVideoVAE"]
