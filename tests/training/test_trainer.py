"""Training: the loss falls on a fixed batch, checkpoints resume bit for bit, checkpointing works."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from m4v.data import ShapesVideoDataset
from m4v.pipelines import M4VPipeline
from m4v.training import TrainConfig, Trainer, initial_pipeline
from m4v.eval.quality import box_blur
from m4v.training.trainer import FlowMatchingLoss, object_cover, object_weighted_mse, other_shapes


def make_trainer(tmp_path, **overrides):
    config = TrainConfig(out_dir=str(tmp_path), batch_size=2, frames=9, height=64, width=64, lr=1e-3,
                         checkpoint_every=2, log_every=1, precision="fp32", **overrides)
    return Trainer(M4VPipeline.from_preset(seed=0), config)


def test_loss_falls_on_a_fixed_batch(tmp_path):
    trainer = make_trainer(tmp_path)
    video, captions, _ = trainer.batch()
    draws = trainer.generator.get_state()

    def fixed_loss():
        trainer.generator.set_state(draws)  # the same units, stages, times and noise each time
        with torch.no_grad():
            return float(trainer.loss(video, captions))

    before = fixed_loss()
    for _ in range(15):
        trainer.generator.set_state(draws)
        loss = trainer.loss(video, captions)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    assert fixed_loss() < 0.8 * before


def test_stage_weights_choose_the_pyramid_stages(tmp_path):
    """stage_weights sets how often each pyramid stage is trained; a zero weight never draws it."""
    objective = make_trainer(tmp_path, stage_weights=(3.0, 1.0, 0.0)).objective
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([objective.draw_stage(generator) for _ in range(400)]), minlength=3)
    assert counts[2] == 0 and 2.2 < counts[0] / counts[1] < 4.0
    uniform = make_trainer(tmp_path / "uniform").objective
    assert set(uniform.draw_stage(generator) for _ in range(60)) == {0, 1, 2}
    for bad in [(1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 0.0, 0.0)]:
        with pytest.raises(ValueError, match="stage_weights must be 3 non-negative numbers"):
            make_trainer(tmp_path / "bad", stage_weights=bad)


def test_coarse_shape_swap_changes_only_the_coarse_stages_shapes(tmp_path):
    scene = ShapesVideoDataset(10, seed=0).scene(3)
    swapped = other_shapes(scene, torch.Generator().manual_seed(0))
    for before, after in zip(scene.objects, swapped.objects):  # another shape, everything else kept
        assert after.shape != before.shape and dataclasses.replace(after, shape=before.shape) == before
    for stage_weights, differs in (((0.0, 0.0, 1.0), True), ((1.0, 0.0, 0.0), False)):
        trainer = make_trainer(tmp_path / str(differs), coarse_shape_swap=1.0, stage_weights=stage_weights)
        video, captions, coarse = trainer.batch()
        assert coarse is not None and coarse.shape == video.shape and not torch.equal(coarse, video)
        draws = trainer.generator.get_state()
        losses = []
        for source in (None, coarse):  # the same draws; only the start point's source differs
            trainer.generator.set_state(draws)
            with torch.no_grad():
                losses.append(float(trainer.loss(video, captions, source)))
        # Stage 2 starts from the swapped copy; stage 0 starts from noise, which no copy changes.
        assert (losses[0] != losses[1]) == differs and all(math.isfinite(v) for v in losses)
    assert make_trainer(tmp_path / "off").batch()[2] is None
    with pytest.raises(ValueError, match="coarse_shape_swap"):
        make_trainer(tmp_path / "bad", coarse_shape_swap=1.5)


def test_source_hint_starts_stage_zero_from_the_swapped_copy(tmp_path):
    """With source_hint_max, stage 0 (which otherwise starts from noise alone) starts from noise
    plus a faint copy of the swapped scene, so the copy changes its loss."""
    trainer = make_trainer(tmp_path, coarse_shape_swap=1.0, source_hint_max=0.3, stage_weights=(1.0, 0.0, 0.0))
    video, captions, coarse = trainer.batch(stage=0)
    assert coarse is not None and not torch.equal(coarse, video)
    draws = trainer.generator.get_state()
    losses = []
    for source in (None, coarse):
        trainer.generator.set_state(draws)
        with torch.no_grad():
            losses.append(float(trainer.loss(video, captions, source, stage=0)))
    assert losses[0] != losses[1] and all(math.isfinite(v) for v in losses)
    assert make_trainer(tmp_path / "no-hint", coarse_shape_swap=1.0).batch(stage=0)[2] is None
    with pytest.raises(ValueError, match="source_hint_max"):
        make_trainer(tmp_path / "bad", source_hint_max=-0.1)


def test_coarse_shape_swap_is_drawn_per_sample(tmp_path):
    """A swap share below 1 swaps some samples of a batch and leaves the others' copies true."""
    trainer = make_trainer(tmp_path, coarse_shape_swap=0.5, stage_weights=(0.0, 0.0, 1.0))
    trainer.config = dataclasses.replace(trainer.config, batch_size=16)
    video, _, coarse = trainer.batch()
    swapped = [not torch.equal(c, v) for c, v in zip(coarse, video)]
    assert 0 < sum(swapped) < len(swapped)


def test_coarse_stages_pick_which_stages_start_from_the_swapped_copy(tmp_path):
    for stage_weights, differs in (((0.0, 1.0, 0.0), False), ((0.0, 0.0, 1.0), True)):
        trainer = make_trainer(tmp_path / str(differs), coarse_shape_swap=1.0, coarse_stages=(2,),
                               stage_weights=stage_weights)
        video, captions, coarse = trainer.batch()
        draws = trainer.generator.get_state()
        losses = []
        for source in (None, coarse):
            trainer.generator.set_state(draws)
            with torch.no_grad():
                losses.append(float(trainer.loss(video, captions, source)))
        # Stage 1 ignores the copy (not in coarse_stages); stage 2 starts from it.
        assert (losses[0] != losses[1]) == differs and all(math.isfinite(v) for v in losses)
    # With the stage drawn first, the copy is rendered only for a stage that starts from it.
    trainer = make_trainer(tmp_path / "drawn", coarse_shape_swap=1.0, coarse_blur_passes=2, coarse_stages=(2,))
    assert trainer.batch(stage=1)[2] is None and trainer.batch(stage=0)[2] is None
    video, _, coarse = trainer.batch(stage=2)
    assert coarse is not None and coarse.shape == video.shape and not torch.equal(coarse, video)
    for bad in [(0,), (3,), (1.5,)]:
        with pytest.raises(ValueError, match="coarse_stages"):
            make_trainer(tmp_path / "bad", coarse_stages=bad)


def test_same_footprint_swap_keeps_each_objects_area_and_centroid():
    data = ShapesVideoDataset(12, frames=1, height=320, width=256, seed=1)
    rows = torch.arange(320.0).view(-1, 1).expand(320, 256)

    def footprint(scene):  # (area in pixels, centroid row) of the scene's single object
        frame = data.render(scene)[:, 0]
        drawn = (frame - frame[:, :1, :1]).abs().sum(0) > 1e-3
        return float(drawn.sum()), float(rows[drawn].mean())

    for index in range(6):
        full = data.scene(index)
        scene = dataclasses.replace(full, objects=full.objects[:1])
        area, centroid = footprint(scene)
        generator = torch.Generator().manual_seed(index)
        swapped = other_shapes(scene, generator, same_footprint=True, row_per_radius=256 / 320)
        assert swapped.objects[0].shape != scene.objects[0].shape
        new_area, new_centroid = footprint(swapped)
        assert abs(new_area - area) < 0.03 * area and abs(new_centroid - centroid) < 1.0
        plain_area, _ = footprint(other_shapes(scene, torch.Generator().manual_seed(index)))
        assert abs(plain_area - area) > abs(new_area - area)  # the plain swap changes the mass


def test_coarse_blur_hides_the_shape_but_keeps_the_footprint(tmp_path):
    data = ShapesVideoDataset(10, frames=5, height=64, width=64, seed=0)
    scene = data.scene(3)
    video = data.render(scene)[None]
    other = data.render(other_shapes(scene, torch.Generator().manual_seed(0)))[None]
    blurred, other_blurred = box_blur(video, 14), box_blur(other, 14)
    assert blurred.shape == video.shape and torch.isfinite(blurred).all()
    flat = torch.full((1, 3, 2, 16, 20), 0.25)
    torch.testing.assert_close(box_blur(flat, 5), flat)  # a flat background stays flat
    # Mass stays where it was (the objects are away from the edges), the shape difference shrinks.
    torch.testing.assert_close(blurred.mean(dim=(-2, -1)), video.mean(dim=(-2, -1)), atol=2e-3, rtol=0)
    assert (blurred - other_blurred).abs().mean() < 0.6 * (video - other).abs().mean()
    trainer = make_trainer(tmp_path / "blur", coarse_blur_passes=14)
    video, captions, coarse = trainer.batch()
    torch.testing.assert_close(coarse, box_blur(video, 14))
    with torch.no_grad():
        assert math.isfinite(float(trainer.loss(video, captions, coarse)))
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="coarse_blur_passes"):
            make_trainer(tmp_path / "bad", coarse_blur_passes=bad)


def test_resume_after_a_kill_is_bit_identical(tmp_path):
    straight = make_trainer(tmp_path / "straight", steps=4)
    straight.run(progress=False)
    killed = make_trainer(tmp_path / "killed", steps=2)  # dies right after its step-2 checkpoint
    killed.run(progress=False)
    resumed = make_trainer(tmp_path / "killed", steps=4)
    assert resumed.load_checkpoint() and resumed.step == 2
    resumed.run(progress=False)
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema, resumed.ema):
        assert torch.equal(a, b)
    lines = open(os.path.join(tmp_path / "killed", "metrics.jsonl")).read().splitlines()
    assert len(lines) == 4
    assert sorted(os.listdir(tmp_path / "killed")) == ["checkpoint", "metrics.jsonl"]  # no staging left


def test_cosine_schedule_resumes_on_the_same_curve(tmp_path):
    straight = make_trainer(tmp_path / "straight", steps=4, lr_schedule="cosine", min_lr_ratio=0.2)
    assert [straight.lr_at(s) for s in (0, 3, 9)] == [1e-3, 2e-4, 2e-4]
    assert straight.lr_at(1) > straight.lr_at(2)
    straight.run(progress=False)
    killed = make_trainer(tmp_path / "killed", steps=4, lr_schedule="cosine", min_lr_ratio=0.2)
    for _ in range(2):
        killed.train_step()
    killed.save_checkpoint()
    resumed = make_trainer(tmp_path / "killed", steps=4, lr_schedule="cosine", min_lr_ratio=0.2)
    assert resumed.load_checkpoint() and resumed.step == 2
    resumed.run(progress=False)
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)


def test_checkpoint_holds_a_loadable_pipeline(tmp_path):
    trainer = make_trainer(tmp_path, steps=1, renoise_sigma=(0.6, 0.3))
    records = trainer.run(progress=False)
    assert records[-1]["elapsed_s"] >= 0
    pipe = M4VPipeline.from_pretrained(os.path.join(tmp_path, "checkpoint", "pipeline"))
    # The run's re-noise levels replace the starting pipeline's and ship with the weights.
    assert trainer.pipe.scheduler.renoise_sigmas == pipe.scheduler.renoise_sigmas == (0.6, 0.3)
    saved = list(pipe.transformer.parameters()) + list(pipe.text_encoder.parameters())
    assert len(saved) == len(trainer.ema)
    for a, b in zip(saved, trainer.ema):  # the pipeline users sample from holds the EMA weights
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(trainer.ema, trainer.params))  # which differ from the raw ones


def test_a_frozen_text_encoder_is_saved_as_loaded(tmp_path):
    """train_text_encoder false: the transformer trains, the text encoder's weights stay the
    starting pipeline's (what a stage expert needs) and are not in the optimizer."""
    trainer = make_trainer(tmp_path, steps=2, train_text_encoder=False)
    start = {k: v.clone() for k, v in trainer.pipe.text_encoder.state_dict().items()}
    transformer_start = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.run(progress=False)
    text_ids = {id(p) for p in trainer.pipe.text_encoder.parameters()}
    assert not any(id(p) in text_ids for p in trainer.params)
    saved = M4VPipeline.from_pretrained(os.path.join(tmp_path, "checkpoint", "pipeline"))
    for name, tensor in saved.text_encoder.state_dict().items():
        assert torch.equal(tensor, start[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(transformer_start, saved.transformer.parameters()))


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    grads = []
    for flag in (False, True):
        trainer = make_trainer(tmp_path / str(flag), gradient_checkpointing=flag)
        video, captions, _ = trainer.batch()
        trainer.loss(video, captions).backward()
        grads.append([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_train_command(tmp_path, capsys):
    import json

    from m4v.cli import main

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"out_dir": str(tmp_path / "run"), "steps": 2, "batch_size": 1, "frames": 9,
                                  "precision": "fp32"}))
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    assert "step 2: loss" in capsys.readouterr().out
    assert main(["train", "--config", str(config), "--quiet"]) == 0  # resumes at step 2: nothing left to do
    assert "resuming from step 2" in capsys.readouterr().out
    config.write_text(json.dumps({"bogus": 1}))
    assert main(["train", "--config", str(config)]) == 2


def test_reward_tune_and_eval_commands(tmp_path, capsys):
    """The shipped model's recipe end to end at toy scale: reward-tune a pipeline, then evaluate it
    next to the real-video reference."""
    import json

    from m4v.cli import main

    assert main(["create-tiny", str(tmp_path / "tiny")]) == 0
    config = tmp_path / "reward.json"
    config.write_text(json.dumps({"model": str(tmp_path / "tiny"), "out_dir": str(tmp_path / "tuned"), "steps": 2,
                                  "batch_size": 2, "frames": 9, "max_unit": 1, "steps_per_stage": [1, 1, 1],
                                  "classifier_steps": 2, "critic_steps": 2, "critic_videos": 2, "precision": "fp32",
                                  "log_every": 1}))
    assert main(["reward-tune", "--config", str(config), "--quiet"]) == 0
    assert "step 2: reward" in capsys.readouterr().out
    tuned = tmp_path / "tuned" / "checkpoint" / "pipeline"
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tuned), "--num-videos", "2", "--train-frames", "9", "--judge-steps", "2",
                 "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "| real videos (dataset) |" in table and f"| {tuned} |" in table
    assert "| real videos through the autoencoder |" in table
    results = json.loads(out.read_text())
    drift = results[str(tuned)]["drift"]
    assert results[str(tuned)]["frames"] == 17 and len(drift["critic"]) == 3  # 2x the 9-frame clips: 3 units
    assert all(0 <= v <= 1 for v in drift["critic"])


def test_stage_range_retrains_over_fewer_stages(tmp_path):
    trainer = make_trainer(tmp_path, stage_range=(0.0, 1.0), steps=2)
    assert trainer.pipe.scheduler.num_stages == 1 and trainer.model.config.num_stages == 1
    records = trainer.run(progress=False)
    assert math.isfinite(records[-1]["loss"])
    loaded = M4VPipeline.from_pretrained(os.path.join(trainer.checkpoint_dir(), "pipeline"))
    assert loaded.scheduler.config.stage_range == (0.0, 1.0) and loaded.transformer.config.num_stages == 1
    resumed = make_trainer(tmp_path, stage_range=(0.0, 1.0), steps=2)
    assert resumed.load_checkpoint() and resumed.step == 2


def test_object_cover_is_the_objects_share_of_each_cell():
    data = ShapesVideoDataset(20, frames=9, seed=0)
    index = next(i for i in range(20) if len(data.scene(i).objects) == 1)
    video = data[index][0][None]
    background = torch.full_like(video, video.flatten(2).median(2).values.max().item())
    assert object_cover(background, 1, 4, 4).abs().max() == 0
    shows = ((video - video[:, :, :, :1, :1]).abs().amax(1) > 0.05).float()  # corners show background
    for unit, frames in ((0, slice(0, 1)), (1, slice(1, 5)), (2, slice(5, 9))):
        cover = object_cover(video, unit, 4, 4)
        assert cover.shape == (1, 1, 16, 16) and 0 <= cover.min() and cover.max() <= 1
        torch.testing.assert_close(cover.sum() * 16, shows[:, frames].sum() / (frames.stop - frames.start))
    assert object_cover(video, 1, 4, 8).shape == (1, 1, 8, 8)


def test_object_weighted_mse_weighs_object_cells_and_keeps_mse_scale():
    velocity, target = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    cover = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    cover[:, :, 1, 2] = 0.5
    torch.testing.assert_close(object_weighted_mse(velocity, target, cover, 0.0),
                               torch.nn.functional.mse_loss(velocity, target))
    error = (velocity - target).square().mean(1, keepdim=True)
    weight = 1 + 10 * cover
    expected = torch.stack([(weight[b] * error[b]).sum() / weight[b].sum() for b in range(2)]).mean()
    torch.testing.assert_close(object_weighted_mse(velocity, target, cover, 10.0), expected)
    with pytest.raises(ValueError, match="object_loss_weight"):
        FlowMatchingLoss(M4VPipeline.from_preset(seed=0), 1 / 3, False, object_loss_weight=-1.0)


def test_object_loss_weight_trains(tmp_path):
    trainer = make_trainer(tmp_path, object_loss_weight=10.0, steps=2)
    assert math.isfinite(trainer.run(progress=False)[-1]["loss"])


def test_time_shift_draws_flow_times_towards_the_noise(tmp_path, monkeypatch):
    """time_shift s draws u = t / (t + s (1 - t)), t ~ U(0, 1) (median 1 / (1 + s)), and saves the
    same step placement with the pipeline's sampler."""
    trainer = make_trainer(tmp_path, time_shift=3.0)
    assert trainer.pipe.scheduler.config.time_shift == 3.0
    drawn = []
    original = trainer.pipe.scheduler.training_sample

    def spy(x_end, stage, u, generator=None, coarse=None, source_hint=None):
        drawn.append(u.clone())
        return original(x_end, stage, u, generator, coarse, source_hint)

    monkeypatch.setattr(trainer.pipe.scheduler, "training_sample", spy)
    video, captions, _ = trainer.batch()
    with torch.no_grad():
        for _ in range(100):
            trainer.loss(video, captions)
    u = torch.cat(drawn)
    assert 0 <= u.min() and u.max() < 1
    assert abs(float(u.median()) - 0.25) < 0.08
    with pytest.raises(ValueError, match="time_shift"):
        FlowMatchingLoss(M4VPipeline.from_preset(seed=0), 1 / 3, False, time_shift=0.0)


def test_model_overrides_shape_a_run_from_scratch():
    config = TrainConfig(preset="m4v-tiny", spatial_factor=4, temporal_factor=4, autoencoder_fit_videos=4,
                         model_overrides={"patch_size": 1})
    assert initial_pipeline(config).transformer.config.patch_size == 1
    with pytest.raises(TypeError, match="no_such_field"):
        initial_pipeline(dataclasses.replace(config, model_overrides={"no_such_field": 1}))
