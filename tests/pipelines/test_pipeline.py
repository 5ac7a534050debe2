"""The text-to-video pipeline end to end on CPU: m4v-tiny + pixel autoencoder + hashing text."""

from __future__ import annotations

import pytest
import torch

from m4v.layers import MambaMixer
from m4v.pipelines import M4VPipeline
from m4v.pipelines.scheduler import PyramidFlowScheduler, PyramidFlowSchedulerConfig

KWARGS = dict(num_frames=17, height=64, width=64, num_inference_steps=(2, 1, 1), video_num_inference_steps=(1, 1, 1),
              progress=False)


@pytest.fixture(scope="module")
def pipe():
    return M4VPipeline.from_preset(seed=0)


def test_output_shapes_and_types(pipe):
    frames = pipe("a red circle moving right", generator=torch.Generator().manual_seed(0), **KWARGS)
    assert frames.shape == (1, 17, 64, 64, 3) and frames.dtype.name == "float32"
    assert frames.min() >= 0 and frames.max() <= 1
    latents = pipe(["a", "b"], output_type="latent", **KWARGS)
    assert latents.shape == (2, 4, 3, 8, 8)
    images = pipe("a", output_type="pil", **KWARGS)
    assert len(images) == 1 and len(images[0]) == 17 and images[0][0].size == (64, 64)


def test_a_seed_gives_the_same_video(pipe):
    a = pipe("waves", generator=torch.Generator().manual_seed(3), **KWARGS)
    b = pipe("waves", generator=torch.Generator().manual_seed(3), **KWARGS)
    c = pipe("waves", generator=torch.Generator().manual_seed(4), **KWARGS)
    assert (a == b).all() and not (a == c).all()


def test_prompt_changes_the_video(pipe):
    a = pipe("a red circle", generator=torch.Generator().manual_seed(3), **KWARGS)
    b = pipe("a blue square", generator=torch.Generator().manual_seed(3), **KWARGS)
    assert not (a == b).all()


def test_cfg_is_one_batched_call_per_step(pipe, monkeypatch):
    calls = []
    forward = pipe.transformer.forward

    def counting(latent, timestep, text, text_mask, pooled, **kwargs):
        calls.append((latent.shape[0], len(kwargs["history"]), kwargs["stage"]))
        return forward(latent, timestep, text, text_mask, pooled, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", counting)
    pipe(["one", "two"], guidance_scale=5.0, video_guidance_scale=3.0, output_type="latent", **KWARGS)
    # 3 latent frames: (2 + 1 + 1) steps for the first, (1 + 1 + 1) for each later one.
    assert len(calls) == 4 + 3 + 3
    assert all(batch == 4 for batch, _, _ in calls)           # cond + uncond of both prompts at once
    assert [h for _, h, _ in calls] == [0] * 4 + [1] * 3 + [2] * 3  # the history grows frame by frame
    calls.clear()
    pipe("one", guidance_scale=1.0, video_guidance_scale=1.0, output_type="latent", **KWARGS)
    assert all(batch == 1 for batch, _, _ in calls)           # no CFG: no unconditional branch


def test_guidance_interval_limits_cfg_to_its_steps(monkeypatch):
    """CFG (a doubled batch) only on the steps whose tau lies in the scheduler's interval; the
    others are one conditional call. Stage 0 spans tau in [0, 1/3), its two steps start at 0 and 1/6."""
    pipe = M4VPipeline.from_preset(seed=0)
    pipe.scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(guidance_interval=(0.0, 0.1)))
    calls = []
    forward = pipe.transformer.forward

    def counting(latent, timestep, text, text_mask, pooled, **kwargs):
        calls.append((latent.shape[0], round(float(timestep[0]), 4)))
        return forward(latent, timestep, text, text_mask, pooled, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", counting)
    pipe("one", guidance_scale=5.0, video_guidance_scale=3.0, output_type="latent", **KWARGS)
    assert [batch for batch, _ in calls] == ([2, 1, 1, 1] + [2, 1, 1] * 2)  # each frame's first step only
    assert all((batch == 2) == (tau < 0.1) for batch, tau in calls)
    with pytest.raises(ValueError, match="guidance_interval"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(guidance_interval=(0.5, 0.5)))
    with pytest.raises(ValueError, match="guidance_interval"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(guidance_interval=(0.0, 1.5)))


def test_callback_and_progress(pipe):
    seen = []
    pipe("x", callback=seen.append, output_type="latent", **KWARGS)
    assert [(e["frame"], e["stage"]) for e in seen][:4] == [(0, 0), (0, 0), (0, 1), (0, 2)]
    assert seen[-1]["latent"].shape == (1, 4, 8, 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt must be"),
    (dict(prompt=["ok", "  "]), "prompt must be"),
    (dict(num_frames=16), "num_frames must be 1 \\+ 8 k"),
    (dict(height=48), "multiples of 64"),
    (dict(width=0), "multiples of 64"),
    (dict(num_inference_steps=(1, 0, 1)), "num_inference_steps must be 3 positive ints"),
    (dict(video_num_inference_steps=(1, 1)), "video_num_inference_steps must be 3 positive ints"),
    (dict(output_type="gif"), "output_type"),
    (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries"),
])
def test_argument_errors(pipe, kwargs, message):
    args = dict(KWARGS, prompt="a prompt")
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_save_and_load(pipe, tmp_path):
    pipe.scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(renoise_sigma=(0.5, 0.25),
                                                                     guidance_interval=(0.0, 0.2)))
    pipe.save_pretrained(tmp_path)
    loaded = M4VPipeline.from_pretrained(tmp_path)
    assert loaded.scheduler.config == pipe.scheduler.config
    a = pipe("same", generator=torch.Generator().manual_seed(0), output_type="latent", **KWARGS)
    b = loaded("same", generator=torch.Generator().manual_seed(0), output_type="latent", **KWARGS)
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError):
        M4VPipeline.from_pretrained(tmp_path / "missing")


def test_from_scratch_keeps_mambas_own_ssm_init():
    """The from-scratch pipeline perturbs the zero-initialised (adaLN-Zero) weights, but its Mamba
    mixers start as Mamba-1 does: S4D-real A (one decay per state), a dt that depends on the input."""
    mixers = [m for m in M4VPipeline.from_preset("m4v-shapes", seed=0).transformer.modules()
              if isinstance(m, MambaMixer)]
    assert len(mixers) == 6
    for mixer in mixers:
        expected_A = torch.arange(1, mixer.d_state + 1, dtype=torch.float32).repeat(mixer.d_inner, 1)
        torch.testing.assert_close(torch.exp(mixer.A_log.detach()), expected_A)
        # Uniform(-b, b) has std b / sqrt(3): 0.29 for the width-4 conv, 0.17 for dt_rank 12.
        assert 0.2 < mixer.conv_weight.std() < 0.35
        assert 0.12 < mixer.dt_proj.weight.std() < 0.22
        assert torch.all(mixer.D == 1)


def test_mismatched_parts_are_refused(pipe):
    from m4v.autoencoders import PixelPatchAutoencoder

    with pytest.raises(ValueError, match="latent channels"):
        M4VPipeline(pipe.transformer, pipe.text_encoder, PixelPatchAutoencoder(latent_channels=16))


def test_restaged_keeps_the_finest_registers_and_every_other_weight(tmp_path):
    pipe = M4VPipeline.from_preset(seed=0)
    one = pipe.restaged((0.0, 1.0))
    assert one.scheduler.num_stages == 1 and one.transformer.config.num_stages == 1
    assert one.size_multiple() == pipe.size_multiple() // 4
    old, new = pipe.transformer.state_dict(), one.transformer.state_dict()
    assert old.keys() == new.keys()
    for name, tensor in new.items():
        expected = old[name][2:] if name.endswith("mamba.registers") else old[name]
        assert torch.equal(tensor, expected), name
    assert one.text_encoder is pipe.text_encoder and one.autoencoder is pipe.autoencoder
    deeper = pipe.restaged((0.0, 0.25, 0.5, 0.75, 1.0))
    registers = next(t for n, t in deeper.transformer.state_dict().items() if n.endswith("mamba.registers"))
    original = next(t for n, t in old.items() if n.endswith("mamba.registers"))
    assert torch.equal(registers, original[[0, 0, 1, 2]])
    # It generates, saves and loads as a one-stage model.
    latents = one("a red circle", num_frames=17, height=16, width=16, num_inference_steps=2,
                  video_num_inference_steps=1, progress=False, output_type="latent",
                  generator=torch.Generator().manual_seed(0))
    assert latents.shape == (1, 4, 3, 2, 2) and torch.isfinite(latents).all()
    one.save_pretrained(tmp_path)
    assert M4VPipeline.from_pretrained(tmp_path).scheduler.config == one.scheduler.config


def test_restaged_keeps_the_finest_jumps_renoise():
    pipe = M4VPipeline.from_preset(seed=0)
    pipe.scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(renoise_sigma=(0.5, 0.25)))
    assert pipe.restaged((0.0, 0.5, 1.0)).scheduler.renoise_sigmas == (0.25,)
    assert pipe.restaged((0.0, 1.0)).scheduler.renoise_sigmas == ()


def test_the_models_own_steps_are_the_default():
    pipe = M4VPipeline.from_preset(seed=0)
    pipe.scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(num_inference_steps=(2, 1, 1),
                                                                     video_num_inference_steps=(1, 1, 1)))
    calls = []
    pipe("a", num_frames=17, height=64, width=64, progress=False, output_type="latent",
         callback=lambda info: calls.append(info["frame"]))
    assert calls.count(0) == 4 and calls.count(1) == 3 and calls.count(2) == 3
