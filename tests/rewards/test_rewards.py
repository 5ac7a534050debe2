"""Reward fine-tuning: the reward gradient reaches the transformer; the built-in rewards behave."""

from __future__ import annotations

import pytest
import torch

from m4v.data import ShapesVideoDataset
from m4v.eval import AttributeClassifier
from m4v.pipelines import M4VPipeline
from m4v.rewards import AttributeReward, RealismCritic, RealismReward, train_realism_critic
from m4v.training.reward import (RewardTuneConfig, UpToUnit, build_rewards, regulariser_config, reward_loss,
                                rollout_estimate)


def test_reward_gradient_reaches_the_transformer():
    pipe = M4VPipeline.from_preset(seed=0)
    critic = RealismCritic().requires_grad_(False)  # as train_realism_critic returns it
    attributes = AttributeReward(AttributeClassifier())
    loss = reward_loss(pipe, ["a red circle moving left", "a blue square moving up"],
                       [(critic, 1.0), (attributes, 1.0)], height=64, width=64,
                       generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert pipe.transformer.final_proj.weight.grad.abs().sum() > 0
    assert pipe.transformer.mixer_blocks[-1].mamba.mixer.in_proj.weight.grad.abs().sum() > 0
    assert pipe.text_encoder.tokens.weight.grad is not None  # the prompt's path, too
    assert all(p.grad is None for p in critic.parameters())  # rewards are frozen judges


def test_rollout_estimate_shapes():
    pipe = M4VPipeline.from_preset(seed=0)
    generator = torch.Generator().manual_seed(1)
    first = rollout_estimate(pipe, ["a red circle moving left"], 64, 64, 0, (1, 1, 2), 1.0, generator)
    assert first.shape == (1, 1, 3, 64, 64) and first.min() >= 0 and first.max() <= 1
    third = rollout_estimate(pipe, ["a red circle moving left"], 64, 64, 2, (1, 1, 2), 3.0, generator)
    assert third.shape == (1, pipe.autoencoder.temporal_factor, 3, 64, 64) and torch.isfinite(third).all()


def test_rollout_gradient_comes_from_the_last_step_only():
    """The rollout before the rewarded step runs without gradients: of all transformer calls for
    unit 3, exactly one records a graph."""
    pipe = M4VPipeline.from_preset(seed=0)
    critic = RealismCritic().requires_grad_(False)
    grad_modes = []
    handle = pipe.transformer.register_forward_hook(lambda *args: grad_modes.append(torch.is_grad_enabled()))
    loss = reward_loss(pipe, ["a red circle moving left"], [(critic, 1.0)], 64, 64, unit=3, steps=(1, 1, 1),
                       generator=torch.Generator().manual_seed(2))
    handle.remove()
    assert grad_modes.count(True) == 1 and len(grad_modes) == 3 * 3 + 3  # 3 units rolled out, unit 3 in full
    loss.backward()
    assert pipe.transformer.final_proj.weight.grad.abs().sum() > 0


def test_rollout_estimate_min_u_rewards_late_steps_only():
    """With min_u 0.7 of 4 top-stage steps (u = 0, 1/4, 1/2, 3/4), only the last is estimated: the
    sampling before it takes 3 of the top stage's calls, then one call with gradients."""
    pipe = M4VPipeline.from_preset(seed=0)
    for seed in range(3):
        grad_modes = []
        handle = pipe.transformer.register_forward_hook(lambda *args: grad_modes.append(torch.is_grad_enabled()))
        rollout_estimate(pipe, ["a red circle moving left"], 64, 64, 0, (1, 1, 4), 1.0,
                         torch.Generator().manual_seed(seed), min_u=0.7)
        handle.remove()
        assert grad_modes == [False] * (1 + 1 + 3) + [True]


def test_reward_tuner_rejects_min_u_out_of_range(tmp_path):
    from m4v.training import TrainConfig, Trainer
    from m4v.training.reward import RewardTuner

    trainer = Trainer(M4VPipeline.from_preset(seed=0), TrainConfig(out_dir=str(tmp_path), batch_size=1, frames=9,
                                                            precision="fp32"))
    with pytest.raises(ValueError, match="min_u"):
        RewardTuner(trainer, [], min_u=1.0)


def test_realism_critic_separates_real_from_noise():
    data = ShapesVideoDataset(24, frames=2, height=32, width=32, seed=5)
    real = torch.stack([(data[i][0].permute(1, 0, 2, 3) + 1) / 2 for i in range(24)])  # (n, frames, 3, H, W)
    fake = torch.rand_like(real)
    critic = train_realism_critic(real[:16], fake[:16], steps=60)
    assert critic(real[16:]).mean() > critic(fake[16:]).mean() + 1.0


def test_reward_tuner_steps_move_the_weights(tmp_path):
    from m4v.training import TrainConfig, Trainer
    from m4v.training.reward import RewardTuner

    trainer = Trainer(M4VPipeline.from_preset(seed=0), TrainConfig(out_dir=str(tmp_path), batch_size=1, frames=9,
                                                            precision="fp32"))
    critic = RealismCritic().requires_grad_(False)
    tuner = RewardTuner(trainer, [(critic, 1.0)], flow_weight=0.5, max_unit=1, steps_per_stage=(1, 1, 2))
    before = [p.detach().clone() for p in trainer.params]
    logs = [tuner.step() for _ in range(2)]
    assert trainer.step == 2 and all(0 <= log["unit"] <= 1 for log in logs)
    assert all(torch.isfinite(torch.tensor([log["reward"], log["flow"]])).all() for log in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))


def test_clip_like_reward_scores_matching_pairs_higher_and_is_differentiable():
    """With towers that embed an image by its mean colour and a prompt by its colour word, the
    reward ranks the matching prompt first, and its gradient reaches the frames."""
    from m4v.rewards import ClipLikeReward
    from m4v.rewards.clip import CLIP_MEAN, CLIP_STD

    colours = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3), torch.tensor(CLIP_STD).view(1, 3)

    def encode_image(pixels):
        return pixels.mean((2, 3)) * std + mean  # back to [0, 1] colour

    def encode_text(prompts):
        return torch.tensor([colours[p.split()[1]] for p in prompts])

    reward = ClipLikeReward(encode_image, encode_text, image_size=16, scale=100.0)
    frames = torch.zeros(2, 3, 3, 24, 24)
    frames[0, :, 0] = 1.0  # red
    frames[1, :, 2] = 1.0  # blue
    frames.requires_grad_(True)
    match = reward(frames, ["a red circle moving left", "a blue square moving up"])
    swap = reward(frames, ["a blue circle moving left", "a red square moving up"])
    assert match.shape == (2, 3) and (match > swap + 50).all()
    match.sum().backward()
    assert frames.grad.abs().sum() > 0


def test_clip_score_reward_loads_a_local_clip_directory(tmp_path):
    """A tiny random CLIP written to disk (no hub access): the adapter loads it and returns
    differentiable per-frame scores."""
    transformers = pytest.importorskip("transformers")
    import json

    from m4v.rewards import clip_score_reward

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {token: i for i, token in enumerate(["<|startoftext|>", "<|endoftext|>", *letters,
                                                 *(f"{c}</w>" for c in letters)])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = transformers.CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    reward = clip_score_reward(tmp_path / "clip")
    frames = torch.rand(2, 3, 3, 64, 64, requires_grad=True)
    scores = reward(frames, ["a red circle moving left", "a blue square moving up"])
    assert scores.shape == (2, 3) and torch.isfinite(scores).all() and scores.abs().max() <= 100
    scores.sum().backward()
    assert frames.grad.abs().sum() > 0


def test_rewarded_step_sees_the_history_as_generation_does():
    """The step taken with gradients at unit 3 gets the same history pyramid (shapes and stage) as
    generation's own top-stage calls for unit 3."""
    pipe = M4VPipeline.from_preset(seed=0)
    calls = []

    def record(module, args, kwargs, output):
        calls.append((torch.is_grad_enabled(), [tuple(h.shape) for h in kwargs["history"]], kwargs["stage"]))

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    critic = RealismCritic().requires_grad_(False)
    reward_loss(pipe, ["a red circle moving left"], [(critic, 1.0)], 64, 64, unit=3, steps=(1, 1, 2),
                generator=torch.Generator().manual_seed(4))
    rewarded = [c for c in calls if c[0]]
    calls.clear()
    pipe("a red circle moving left", num_frames=25, num_inference_steps=1, video_num_inference_steps=1,
         guidance_scale=1.0, video_guidance_scale=1.0, progress=False)
    handle.remove()
    generated = [c for c in calls if c[2] == 2 and len(c[1]) == 3]
    assert len(rewarded) == 1 and len(generated) == 1
    assert rewarded[0][1:] == generated[0][1:]


def test_critic_real_frames_keep_objects_in_view():
    """The realism critic's real clips span the rollout with the training clip's path, so no real
    frame is empty (empty real frames taught a tuned model to make objects vanish)."""
    from m4v.eval.quality import object_presence, real_frames
    from m4v.training.reward import in_view_speed

    default, _ = real_frames(16, 33, 32, seed=5)
    in_view, _ = real_frames(16, 33, 32, seed=5, speed=in_view_speed(17, 33))
    assert object_presence(default).min() == 0  # the dataset's paths fit 17 frames, not 33
    assert object_presence(in_view).min() == 1


def test_built_realism_critic_calls_over_sharpened_real_frames_fake():
    """The critic's negatives include over-sharpened copies of its real frames, so the reward
    cannot pay for realism with halos (the 240-step tuning made frames 2.7x as sharp as real)."""
    from m4v.eval.quality import real_frames, sharpen

    config = RewardTuneConfig(height=64, width=64, max_unit=1, steps_per_stage=(1, 1, 1), classifier_steps=1,
                              critic_steps=120, critic_videos=4)
    rewards, trainer = build_rewards(M4VPipeline.from_preset(seed=0), config)
    critic = next(reward for reward, _ in rewards if isinstance(reward, RealismReward)).critic
    assert critic is trainer.critic
    held_out, _ = real_frames(8, 5, 64, seed=99)
    with torch.no_grad():
        assert critic(held_out).mean() > critic(sharpen(held_out, 2.0)).mean() + 1.0


def test_gradient_penalty_flattens_the_critic_at_real_frames_and_it_still_separates():
    data = ShapesVideoDataset(24, frames=2, height=32, width=32, seed=5)
    real = torch.stack([(data[i][0].permute(1, 0, 2, 3) + 1) / 2 for i in range(24)])
    fake = torch.rand_like(real)

    def slope_at(critic, frames):
        frames = frames.clone().requires_grad_(True)
        grad, = torch.autograd.grad(critic(frames).sum(), frames)
        return grad.pow(2).flatten(1).sum(1).mean()

    plain = train_realism_critic(real[:16], fake[:16], steps=60)
    smooth = train_realism_critic(real[:16], fake[:16], steps=60, gradient_penalty=10.0)
    assert smooth(real[16:]).mean() > smooth(fake[16:]).mean() + 1.0
    assert slope_at(smooth, real[16:]) < slope_at(plain, real[16:])
    with pytest.raises(ValueError, match="gradient_penalty"):
        train_realism_critic(real, fake, steps=1, gradient_penalty=-1.0)


def test_degraded_negatives_teach_the_reward_critic_colour_casts_and_noise():
    """With critic_degraded_negatives, the generic corruptions are negatives as well: the critic
    calls noisy frames fake (the tuned models it was gamed by had a noisy, cast background)."""
    from m4v.eval.quality import real_frames

    config = RewardTuneConfig(height=64, width=64, max_unit=1, steps_per_stage=(1, 1, 1), classifier_steps=1,
                              critic_steps=150, critic_videos=4, critic_degraded_negatives=True)
    rewards, trainer = build_rewards(M4VPipeline.from_preset(seed=0), config)
    assert len(trainer.corrupted) == 2 * len(trainer.real)
    critic = next(reward for reward, _ in rewards if isinstance(reward, RealismReward)).critic
    held_out, _ = real_frames(8, 5, 64, seed=99)
    noisy = (held_out + 0.15 * torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        assert critic(held_out).mean() > critic(noisy).mean() + 1.0


def test_critic_refresh_retrains_the_reward_critic_on_new_rollouts():
    """refresh() continues training the reward's own critic (in place) on rollouts of the pipeline
    as it is now, and reports how real it found them before and after."""

    config = RewardTuneConfig(height=64, width=64, max_unit=1, steps_per_stage=(1, 1, 1), classifier_steps=1,
                              critic_steps=5, critic_videos=2, critic_refresh_steps=40)
    rewards, trainer = build_rewards(M4VPipeline.from_preset(seed=0), config)
    reward = next(reward for reward, _ in rewards if isinstance(reward, RealismReward))
    before = [p.detach().clone() for p in reward.critic.parameters()]
    metrics = trainer.refresh()
    assert reward.critic is trainer.critic and not reward.critic.training
    assert all(not p.requires_grad for p in reward.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, reward.critic.parameters()))
    assert set(metrics) == {"critic_p_rollouts_before", "critic_p_rollouts_after", "critic_p_real"}
    assert all(0 < v < 1 for v in metrics.values())
    # 40 full-batch steps on 2 rollouts of a random model: it calls them fake, the real frames real.
    assert metrics["critic_p_rollouts_after"] < metrics["critic_p_rollouts_before"]
    assert metrics["critic_p_real"] > metrics["critic_p_rollouts_after"] + 0.2


def test_reward_tuner_refreshes_every_n_steps(tmp_path):
    from m4v.training import TrainConfig, Trainer
    from m4v.training.reward import RewardTuner

    trainer = Trainer(M4VPipeline.from_preset(seed=0), TrainConfig(out_dir=str(tmp_path), batch_size=1, frames=9,
                                                            precision="fp32"))
    calls = []
    tuner = RewardTuner(trainer, [(RealismCritic().requires_grad_(False), 1.0)], max_unit=0,
                        steps_per_stage=(1, 1, 1), refresh=lambda: calls.append(trainer.step) or {"refreshed": 1.0},
                        refresh_every=2)
    logs = [tuner.step() for _ in range(4)]
    assert calls == [2, 4]
    assert ["refreshed" in log for log in logs] == [False, True, False, True]
    with pytest.raises(ValueError, match="refresh_every"):
        RewardTuner(trainer, [], refresh=lambda: {}, refresh_every=0)


def test_build_rewards_skips_zero_weight_rewards():
    config = RewardTuneConfig(height=64, width=64, max_unit=1, steps_per_stage=(1, 1, 1), classifier_steps=1,
                              realism_weight=0.0)
    rewards, critic = build_rewards(M4VPipeline.from_preset(seed=0), config)
    assert critic is None and [type(reward) for reward, _ in rewards] == [AttributeReward]
    with pytest.raises(ValueError, match="critic_refresh_every"):
        build_rewards(M4VPipeline.from_preset(seed=0), RewardTuneConfig(realism_weight=0.0, critic_refresh_every=5))


def test_regulariser_config_carries_the_source_hint():
    config = regulariser_config(RewardTuneConfig(source_hint_max=0.3, coarse_shape_swap=1.0, lr=1e-5, batch_size=3))
    assert (config.source_hint_max, config.coarse_shape_swap, config.lr, config.batch_size) == (0.3, 1.0, 1e-5, 3)
    assert regulariser_config(RewardTuneConfig()).source_hint_max == 0.0


class _Counting:
    """A reward that counts its calls and scores the mean pixel."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frames, prompts):
        self.calls += 1
        return frames.mean((2, 3, 4))


def test_up_to_unit_leaves_a_reward_out_after_its_last_unit():
    pipe = M4VPipeline.from_preset(seed=0)
    everywhere, early = _Counting(), _Counting()
    rewards = [(everywhere, 1.0), (UpToUnit(early, max_unit=1), 1.0)]
    args = (pipe, ["a red circle moving left"])
    kwargs = dict(height=64, width=64, steps=(1, 1, 1), generator=torch.Generator().manual_seed(0))
    both = reward_loss(*args, rewards, unit=1, **kwargs)
    assert (everywhere.calls, early.calls) == (1, 1)
    one = reward_loss(*args, rewards, unit=2, **kwargs)
    assert (everywhere.calls, early.calls) == (2, 1)
    assert torch.isfinite(both) and torch.isfinite(one) and one.requires_grad
    # With every reward left out there is nothing to roll out: the loss is a plain 0.
    none = reward_loss(*args, [(UpToUnit(early, max_unit=1), 1.0)], unit=2, **kwargs)
    assert early.calls == 1 and float(none) == 0.0 and not none.requires_grad
    assert UpToUnit(RealismReward(RealismCritic(context=1)), max_unit=0).context == 1
    with pytest.raises(ValueError, match="max_unit"):
        UpToUnit(early, max_unit=-1)


def test_build_rewards_limits_the_attribute_reward_to_attribute_max_unit():
    config = RewardTuneConfig(height=32, width=32, max_unit=4, attribute_weight=0.5, attribute_max_unit=2,
                              realism_weight=0.0, classifier_steps=1)
    rewards, _ = build_rewards(M4VPipeline.from_preset(seed=0), config)
    (reward, weight), = rewards
    assert isinstance(reward, UpToUnit) and reward.max_unit == 2 and isinstance(reward.reward, AttributeReward)
    assert weight == 0.5
