"""Video autoencoders: a causal 3D conv VAE and a pixel-space patch autoencoder for the tiny model."""

from m4v.autoencoders.base import VideoAutoencoder, load_autoencoder
from m4v.autoencoders.causal_vae import CausalVideoVAE
from m4v.autoencoders.pixel import PixelPatchAutoencoder

__all__ = ["VideoAutoencoder", "CausalVideoVAE", "PixelPatchAutoencoder", "load_autoencoder"]
