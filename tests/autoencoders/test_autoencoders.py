"""Autoencoders: shapes, causality, exact tiled and chunked decoding, the frame rule, save/load."""

from __future__ import annotations

import pytest
import torch

from m4v.autoencoders import CausalVideoVAE, PixelPatchAutoencoder, load_autoencoder


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return CausalVideoVAE(latent_channels=4, channels=(8, 8, 16, 16)).double()


def test_vae_shapes(vae):
    video = torch.randn(2, 3, 17, 32, 48, dtype=torch.float64)
    latents = vae.encode(video)
    assert latents.shape == (2, 4, 3, 4, 6)
    assert vae.decode(latents).shape == video.shape
    sampled = vae.encode(video, sample=True, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == latents.shape and not torch.equal(sampled, latents)


def test_vae_is_causal(vae):
    video = torch.randn(1, 3, 17, 16, 16, dtype=torch.float64)
    later = video.clone()
    later[:, :, 1:] += torch.randn_like(later[:, :, 1:])
    assert torch.equal(vae.encode(later)[:, :, 0], vae.encode(video)[:, :, 0])  # the first frame alone
    changed = later.clone()
    changed[:, :, 9:] += 1.0  # frames of the last latent frame only
    assert torch.equal(vae.encode(changed)[:, :, :2], vae.encode(later)[:, :, :2])
    latents = vae.encode(video)
    edited = latents.clone()
    edited[:, :, 2] += 1.0
    assert torch.equal(vae.decode(edited)[:, :, :9], vae.decode(latents)[:, :, :9])


def test_tiled_and_chunked_decode_equal_plain_decode(vae):
    latents = torch.randn(1, 4, 5, 5, 7, dtype=torch.float64)
    plain = vae.decode(latents)
    torch.testing.assert_close(vae.decode(latents, tile=2), plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(vae.decode(latents, chunk=2), plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(vae.decode(latents, tile=3, chunk=1), plain, rtol=0, atol=1e-12)


def test_vae_trains(vae):
    video = torch.randn(1, 3, 9, 16, 16, dtype=torch.float64)
    loss = (vae.decode(vae.encode(video)) - video).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in vae.parameters())
    vae.zero_grad()


def test_pixel_autoencoder_round_trip():
    torch.manual_seed(0)
    ae = PixelPatchAutoencoder(latent_channels=4)
    video = torch.rand(2, 3, 17, 16, 24) * 2 - 1
    latents = ae.encode(video)
    assert latents.shape == (2, 4, 3, 2, 3)
    assert ae.decode(latents).shape == video.shape
    later = video.clone()
    later[:, :, 1:] = 0
    assert torch.equal(ae.encode(later)[:, :, 0], latents[:, :, 0])


@pytest.mark.parametrize("make", [lambda: PixelPatchAutoencoder(), lambda: CausalVideoVAE(4, (8, 8, 8, 8))])
def test_frame_and_size_rules(make):
    ae = make()
    assert ae.latent_frames(33) == 5 and ae.num_frames(5) == 33
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 8 k"):
        ae.latent_frames(32)
    with pytest.raises(ValueError, match="divisible by 8"):
        ae.encode(torch.zeros(1, 3, 9, 12, 16))
    with pytest.raises(ValueError, match="video must be"):
        ae.encode(torch.zeros(1, 9, 16, 16))


def test_save_and_load(tmp_path, vae):
    vae.save_pretrained(tmp_path)
    loaded = load_autoencoder(tmp_path, dtype=torch.float64)
    assert isinstance(loaded, CausalVideoVAE) and loaded.channels == vae.channels
    latents = torch.randn(1, 4, 2, 2, 2, dtype=torch.float64)
    assert torch.equal(loaded.decode(latents), vae.decode(latents))
