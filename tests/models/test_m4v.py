"""The M4V transformer: presets on the meta device with independently counted parameters, a tiny
model's forward and backward, input packing, and the safetensors round trip."""

from __future__ import annotations

import math
import os

import pytest
import torch

from m4v.models import PRESETS, M4VConfig, M4VTransformer, get_config, history_stages


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def expected_parameters(c: M4VConfig) -> int:
    """Counted from the architecture description (DESIGN.md section 2), not from the modules."""
    C, head_dim, mlp = c.hidden, c.hidden // c.heads, int(c.hidden * c.mlp_ratio)
    modulation = lambda k: linear(C, k * C)  # noqa: E731
    feed_forward = linear(C, mlp) + linear(mlp, C)
    qk_norm = 2 * head_dim
    dit_stream = modulation(6) + linear(C, 3 * C) + qk_norm + linear(C, C) + feed_forward
    d_inner, dt_rank = int(c.expand * C), math.ceil(C / 16)
    mamba = (linear(C, 2 * d_inner, bias=False) + d_inner * c.d_conv + d_inner
             + linear(d_inner, dt_rank + 2 * c.d_state, bias=False) + linear(dt_rank, d_inner)
             + d_inner * c.d_state + d_inner + linear(d_inner, C, bias=False))
    temporal = linear(C, 3 * c.temporal_channels) + linear(c.temporal_channels, C) + C if c.temporal else 0
    mmdim = modulation(3) + c.num_stages * C + mamba + feed_forward + temporal
    single_stream = modulation(3) + linear(C, 3 * C + mlp) + qk_norm + linear(C + mlp, C)  # FLUX, unfused
    mixer_block = mmdim if c.mixer == "mmdim" else single_stream
    embeddings = (linear(c.latent_channels * c.patch_size ** 2, C) + linear(c.text_dim, C)
                  + linear(256, C) + linear(C, C) + linear(c.pooled_dim, C) + linear(C, C))
    final = modulation(2) + linear(C, c.patch_size ** 2 * c.latent_channels)
    return embeddings + c.num_dit_blocks * 2 * dit_stream + c.num_mixer_blocks * mixer_block + final


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_on_meta_with_expected_parameter_counts(name):
    with torch.device("meta"):
        model = M4VTransformer.from_preset(name)
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) == expected_parameters(model.config)


def test_768p_presets_follow_the_design():
    m4v, attn, pure = (get_config(n) for n in ("m4v-768p", "attn-768p", "pure-mamba-768p"))
    assert (m4v.hidden, m4v.heads, m4v.num_dit_blocks, m4v.num_mixer_blocks) == (1920, 30, 8, 16)
    assert int(m4v.expand * m4v.hidden) == 2880 and m4v.d_state == 16 and m4v.mixer == "mmdim" and m4v.temporal
    assert attn.mixer == "attention" and not pure.temporal
    # Everything but the mixer blocks is shared by the three.
    for other in (attn, pure):
        assert {k: v for k, v in other.to_dict().items() if k not in ("mixer", "temporal")} == \
            {k: v for k, v in m4v.to_dict().items() if k not in ("mixer", "temporal")}


def test_history_stages_follow_the_pyramid_rule():
    assert history_stages(0, 2) == []
    assert history_stages(1, 2) == [2]
    assert history_stages(5, 2) == [0, 0, 0, 1, 2]
    assert history_stages(3, 0) == [0, 0, 0]


def tiny_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = get_config("m4v-tiny")
    latent = torch.randn(batch, c.latent_channels, 16, 24, generator=g)
    history = [torch.randn(batch, c.latent_channels, 4, 6, generator=g),
               torch.randn(batch, c.latent_channels, 8, 12, generator=g),
               torch.randn(batch, c.latent_channels, 16, 24, generator=g)]
    text = torch.randn(batch, 7, c.text_dim, generator=g)
    mask = torch.ones(batch, 7, dtype=torch.bool)
    mask[0, 4:] = False
    return dict(latent=latent, timestep=torch.rand(batch, generator=g), text=text, text_mask=mask,
                pooled=torch.randn(batch, c.pooled_dim, generator=g), history=history)


def randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or name.endswith("gate"):
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("preset", ["m4v-tiny", "attn-tiny"])
def test_tiny_model_forward_and_backward(preset):
    model = randomized(M4VTransformer.from_preset(preset, backend="reference"))
    inputs = tiny_inputs()
    velocity = model(**inputs)
    assert velocity.shape == inputs["latent"].shape and torch.isfinite(velocity).all()
    velocity.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.dit_blocks[0].video_stream.qkv.weight.grad.abs().sum() > 0


def test_fresh_model_predicts_zero_velocity():
    """adaLN-Zero and the zero final projection: an untrained model is the zero field."""
    model = M4VTransformer.from_preset("m4v-tiny", backend="reference")
    assert bool((model(**tiny_inputs()) == 0).all())


def test_velocity_depends_on_history_text_and_time():
    model = randomized(M4VTransformer.from_preset("m4v-tiny", backend="reference"))
    inputs = tiny_inputs()
    base = model(**inputs)
    for key, change in (("timestep", lambda x: x * 0.5), ("text", lambda x: x + 1),
                        ("history", lambda h: [h[0] + 1, *h[1:]])):
        changed = dict(inputs, **{key: change(inputs[key])})
        assert not torch.allclose(model(**changed), base), key


def test_save_and_load_round_trip(tmp_path):
    model = randomized(M4VTransformer.from_preset("m4v-tiny", backend="reference"))
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = M4VTransformer.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    inputs = tiny_inputs()
    torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=0)


def test_bad_inputs_get_clear_errors():
    model = M4VTransformer.from_preset("m4v-tiny", backend="reference")
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="stage"):
        model(**inputs, stage=3)
    with pytest.raises(ValueError, match="text must be"):
        model(**dict(inputs, text=inputs["text"][..., :5]))
    with pytest.raises(ValueError, match="text_mask"):
        model(**dict(inputs, text_mask=inputs["text_mask"][:, :3]))
    with pytest.raises(ValueError, match="divisible by patch size"):
        model(**dict(inputs, latent=inputs["latent"][..., :7]))
    with pytest.raises(ValueError, match="history_stage"):
        model(**inputs, history_stage=[0])
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("m4v-1080p")
    with pytest.raises(ValueError, match="mixer"):
        M4VConfig(mixer="rwkv")
