"""A pixel-space patch autoencoder: the tiny model's autoencoder, fast enough for CPU tests."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from m4v.autoencoders.base import VideoAutoencoder


class PixelPatchAutoencoder(VideoAutoencoder):
    """Folds each (temporal x spatial x spatial) patch of pixels into channels and maps it linearly
    to ``latent_channels``; the decoder is the mirror map. The first frame is a patch of its own
    (temporal extent 1), so the code is causal and follows the same frame rule as the 3D VAE.
    """

    kind = "pixel_patch"

    def __init__(self, latent_channels: int = 4, spatial_factor: int = 8, temporal_factor: int = 8):
        super().__init__()
        self.latent_channels, self.spatial_factor, self.temporal_factor = latent_channels, spatial_factor, temporal_factor
        first, group = 3 * spatial_factor ** 2, 3 * spatial_factor ** 2 * temporal_factor
        self.encode_first = nn.Linear(first, latent_channels)
        self.encode_group = nn.Linear(group, latent_channels)
        self.decode_first = nn.Linear(latent_channels, first)
        self.decode_group = nn.Linear(latent_channels, group)

    def config_dict(self) -> dict:
        return {"latent_channels": self.latent_channels, "spatial_factor": self.spatial_factor,
                "temporal_factor": self.temporal_factor}

    @torch.no_grad()
    def fit_pca(self, videos: Tensor) -> "PixelPatchAutoencoder":
        """Sets both maps from the principal components of the patches of ``videos``
        (batch, 3, 1 + t k, H, W) with k >= 1: the best linear code of this size for that data, in
        closed form. Latent channels are scaled to unit variance, the scale flow matching expects."""
        self.check_video(videos)
        if videos.shape[2] < 1 + self.temporal_factor:
            raise ValueError(f"fit_pca needs at least {1 + self.temporal_factor} frames, got {videos.shape[2]}")
        s, t = self.spatial_factor, self.temporal_factor
        first = rearrange(videos[:, :, :1], "b c f (h p) (w q) -> (b f h w) (c p q)", p=s, q=s)
        rest = rearrange(videos[:, :, 1:], "b c (f k) (h p) (w q) -> (b f h w) (c k p q)", k=t, p=s, q=s)
        for patches, encoder, decoder in ((first, self.encode_first, self.decode_first),
                                          (rest, self.encode_group, self.decode_group)):
            if patches.shape[0] <= self.latent_channels:
                raise ValueError(f"fit_pca needs more than {self.latent_channels} patches, got {patches.shape[0]}")
            data = patches.double()
            mean = data.mean(0)
            covariance = (data - mean).T @ (data - mean) / (data.shape[0] - 1)
            variances, vectors = torch.linalg.eigh(covariance)  # ascending
            top = vectors[:, -self.latent_channels:].flip(1)
            std = variances[-self.latent_channels:].flip(0).clamp_min(1e-12).sqrt()
            encoder.weight.copy_((top / std).T)
            encoder.bias.copy_(-(top / std).T @ mean)
            decoder.weight.copy_(top * std)
            decoder.bias.copy_(mean)
        return self

    def encode(self, video: Tensor) -> Tensor:
        """(batch, 3, F, H, W) -> (batch, latent_channels, 1 + (F - 1) / t, H / s, W / s)."""
        self.check_video(video)
        s, t = self.spatial_factor, self.temporal_factor
        first = rearrange(video[:, :, :1], "b c f (h p) (w q) -> b f h w (c p q)", p=s, q=s)
        rest = rearrange(video[:, :, 1:], "b c (f k) (h p) (w q) -> b f h w (c k p q)", k=t, p=s, q=s)
        latents = [self.encode_first(first)]
        if rest.shape[1]:
            latents.append(self.encode_group(rest))
        return rearrange(torch.cat(latents, dim=1), "b f h w c -> b c f h w")

    def decode(self, latents: Tensor) -> Tensor:
        """(batch, latent_channels, f, h, w) -> (batch, 3, 1 + (f - 1) t, h s, w s)."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (batch, {self.latent_channels}, frames, h, w), "
                             f"got {tuple(latents.shape)}")
        s, t = self.spatial_factor, self.temporal_factor
        z = rearrange(latents, "b c f h w -> b f h w c")
        frames = [rearrange(self.decode_first(z[:, :1]), "b f h w (c p q) -> b c f (h p) (w q)", c=3, p=s, q=s)]
        if z.shape[1] > 1:
            frames.append(rearrange(self.decode_group(z[:, 1:]), "b f h w (c k p q) -> b c (f k) (h p) (w q)",
                                    c=3, k=t, p=s, q=s))
        return torch.cat(frames, dim=2)


__all__ = ["PixelPatchAutoencoder"]
