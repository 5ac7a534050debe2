"""What the pipeline needs from a video autoencoder."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from m4v._weights import load_by_kind, save_module


class VideoAutoencoder(nn.Module):
    """A causal video autoencoder: video (batch, 3, F, H, W) in [-1, 1] <-> latents
    (batch, latent_channels, 1 + (F - 1) / temporal_factor, H / spatial_factor, W / spatial_factor).

    The first frame is encoded alone; every later latent frame covers ``temporal_factor`` frames.
    Subclasses set the three factors and implement ``encode`` / ``decode``; ``kind`` names the class
    in saved configs.
    """

    kind = ""
    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def config_dict(self) -> dict:
        raise NotImplementedError

    def latent_frames(self, num_frames: int) -> int:
        self.check_num_frames(num_frames)
        return 1 + (num_frames - 1) // self.temporal_factor

    def num_frames(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.temporal_factor

    def check_num_frames(self, num_frames: int) -> None:
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
            raise ValueError(f"num_frames must be 1 + {self.temporal_factor} k (k >= 0) for this autoencoder, "
                             f"got {num_frames}")

    def check_video(self, video: Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (batch, 3, frames, H, W), got {tuple(video.shape)}")
        self.check_num_frames(video.shape[2])
        if video.shape[3] % self.spatial_factor or video.shape[4] % self.spatial_factor:
            raise ValueError(f"video size {video.shape[3]} x {video.shape[4]} must be divisible by "
                             f"{self.spatial_factor}")

    def encode(self, video: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_module(self, {"kind": self.kind, **self.config_dict()}, directory)


def load_autoencoder(directory: str | os.PathLike, device: torch.device | str = "cpu",
                     dtype: Optional[torch.dtype] = None) -> VideoAutoencoder:
    """Loads any m4v autoencoder saved with ``save_pretrained`` (the config names its kind)."""
    from m4v.autoencoders.causal_vae import CausalVideoVAE
    from m4v.autoencoders.pixel import PixelPatchAutoencoder

    kinds = {cls.kind: cls for cls in (PixelPatchAutoencoder, CausalVideoVAE)}
    return load_by_kind(directory, kinds, "autoencoder", device, dtype)


__all__ = ["VideoAutoencoder", "load_autoencoder"]
