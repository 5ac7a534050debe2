"""Reward fine-tuning through a one-step clean estimate of an autoregressive rollout (DESIGN.md section 5).

For a random unit k: roll out units 0..k-1 without gradients, exactly as generation does (CFG,
the pipeline's own history), then sample unit k down to a random Euler step of its top stage,
take that one step's (guided) velocity with gradients, form the one-step clean estimate
``x_hat = x + (1 - u) v`` (the scheduler's convention), decode it after its history, and score the
unit's frames with the rewards. Gradients flow through the decoder and the rewards into the
transformer, through the last step only. Rewarding late units of the model's own rollouts is what
counters drift: training only ever showed it clean (or lightly noised) data histories. The
flow-matching loss is mixed in as a regulariser.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from m4v.data import DEFAULT_SPEED
from m4v.eval.attributes import train_attribute_classifier
from m4v.models.configs import config_from_dict
from m4v.pipelines import M4VPipeline
from m4v.pipelines.scheduler import history_pyramid
from m4v.rewards import AttributeReward, RealismCritic, RealismReward, train_realism_critic
from m4v.rewards.motion import train_motion_critic
from m4v.rewards.translation import TranslationReward
from m4v.training.lora import add_lora
from m4v.training.trainer import TrainConfig, Trainer

Reward = Callable[[Tensor, Sequence[str]], Tensor]


def rollout_estimate(pipe: M4VPipeline, prompts: Sequence[str], height: int, width: int, unit: int,
                     steps: Sequence[int], guidance: float, generator: torch.Generator, min_u: float = 0.0,
                     context: int = 0) -> Tensor:
    """Decoded one-step estimate of latent frame ``unit`` after a rollout of the ones before it.

    The estimated step is drawn among the top stage's steps that start at local time u >= ``min_u``
    (the last step when none does): early estimates are blurred means of the videos the noise
    allows, late ones are close to the sample the rollout ends in. (On the source-hint model,
    scoring only late estimates did not keep the realism critic from being gamed; NOTES.md.)

    Returns:
        (batch, frames, 3, H, W) in [0, 1]: the unit's frames (1 for unit 0, ``temporal_factor``
        after it) after the last ``context`` decoded frames before them (none for unit 0: see
        ``context_frames``); gradients through the last transformer call only.
    """
    prompts = list(prompts)
    ae, scheduler = pipe.autoencoder, pipe.scheduler
    text = pipe.text_encoder.encode(prompts + [""] * len(prompts), pipe.device)
    shape = (len(prompts), ae.latent_channels, height // ae.spatial_factor, width // ae.spatial_factor)
    top = scheduler.num_stages - 1
    schedule = scheduler.steps(top, steps[-1])
    late = [k for k, (_, u, _) in enumerate(schedule) if u >= min_u] or [len(schedule) - 1]
    last = late[int(torch.randint(len(late), (1,), generator=generator))]
    history: list[Tensor] = []
    with torch.no_grad():
        for _ in range(unit):
            history.append(pipe.sample_unit(text, history, shape, steps, guidance, generator))
        x = pipe.sample_unit(text, history, shape, steps, guidance, generator, stop_before=last)
    tau, u, _ = schedule[last]
    pyramid = history_pyramid(history, top, scheduler.num_stages)
    velocity = pipe.guided_velocity(x, tau, text, pyramid, top, scheduler.guidance_at(tau, guidance))
    clean = scheduler.clean_estimate(x, velocity, u)
    latents = torch.stack(history + [clean], dim=2).to(next(ae.parameters()).dtype)
    count = (1 if unit == 0 else ae.temporal_factor) + context_frames(pipe, unit, context)
    frames = ae.decode(latents)[:, :, -count:]  # (batch, 3, count, H, W)
    return ((frames.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)


def context_frames(pipe: M4VPipeline, unit: int, context: int) -> int:
    """How many of the frames before unit ``unit`` a reward asking for ``context`` of them gets:
    all it asks for that exist (unit 0, the first frame, has none before it)."""
    return 0 if unit == 0 else min(context, pipe.autoencoder.num_frames(unit))


def reward_loss(pipe: M4VPipeline, prompts: Sequence[str], rewards: Sequence[tuple[Reward, float]], height: int,
                width: int, unit: int = 0, steps: Sequence[int] = (2, 2, 2), guidance: float = 1.0,
                generator: Optional[torch.Generator] = None, min_u: float = 0.0) -> Tensor:
    """-(sum of weighted mean rewards) of the estimate of unit ``unit`` (``rollout_estimate``).

    A reward with a ``context`` attribute (a motion critic; ``ALL_FRAMES``: the caption-motion
    reward) sees that many frames before the unit's as well, and only its scores of the unit's
    frames count; one that has nothing to score (unit 0 for a motion critic) adds nothing. A
    reward with a ``max_unit`` attribute (``UpToUnit``) is left out after that unit; with none
    left, nothing is rolled out and the loss is 0."""
    rewards = [(reward, weight) for reward, weight in rewards if unit <= getattr(reward, "max_unit", unit)]
    if not rewards:
        return torch.zeros((), device=pipe.device)
    generator = generator or torch.Generator().manual_seed(0)
    context = max((getattr(reward, "context", 0) for reward, _ in rewards), default=0)
    frames = rollout_estimate(pipe, prompts, height, width, unit, steps, guidance, generator, min_u, context)
    extra = context_frames(pipe, unit, context)
    loss = frames.new_zeros(())
    for reward, weight in rewards:
        wanted = context_frames(pipe, unit, getattr(reward, "context", 0))
        # The unit's own frames' scores only: a reward that scores its context frames too (the caption-motion
        # reward scores every frame) would only add constants, as their latents carry no gradient.
        scores = reward(frames[:, extra - wanted:], prompts)[:, -(frames.shape[1] - extra):]
        if scores.numel():
            loss = loss - weight * scores.mean()
    return loss


class UpToUnit:
    """``reward`` on units 0..``max_unit`` only (``reward_loss`` leaves it out after), e.g. an
    attribute reward that holds an object in view only as long as real videos keep theirs."""

    def __init__(self, reward: Reward, max_unit: int):
        if max_unit < 0:
            raise ValueError(f"max_unit must be >= 0, got {max_unit}")
        self.reward, self.max_unit = reward, max_unit
        self.context = getattr(reward, "context", 0)

    def __call__(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.reward(frames, prompts)


class RewardTuner:
    """Reward fine-tuning steps: ``reward_loss`` at a random unit of the batch's prompts plus
    ``flow_weight`` times the flow-matching loss of the batch (the regulariser), through the
    ``Trainer``'s optimizer, EMA and checkpoints.

    Args:
        trainer: a ``Trainer`` on the pipeline to tune (its config gives data, sizes and out_dir).
        rewards: (reward, weight) pairs; each reward maps (frames, prompts) -> (batch, frames).
        flow_weight: weight of the flow-matching regulariser.
        max_unit: units 0..max_unit are rewarded, uniformly (beyond the training length is the point).
        steps_per_stage, guidance: the sampler of the rollouts (as generation runs it).
        min_u: the rewarded estimate starts at a step of local time u >= min_u (``rollout_estimate``).
        refresh, refresh_every: called after every ``refresh_every``-th step (a critic's retraining
            on the tuned model's rollouts); the metrics it returns join that step's.
    """

    def __init__(self, trainer, rewards: Sequence[tuple[Reward, float]], flow_weight: float = 0.5, max_unit: int = 0,
                 steps_per_stage: Sequence[int] = (2, 2, 2), guidance: float = 1.0,
                 refresh: Optional[Callable[[], dict]] = None, refresh_every: int = 0, min_u: float = 0.0):
        if max_unit < 0:
            raise ValueError(f"max_unit must be >= 0, got {max_unit}")
        if not 0 <= min_u < 1:
            raise ValueError(f"min_u must be in [0, 1), got {min_u}")
        if refresh is not None and refresh_every <= 0:
            raise ValueError(f"refresh_every must be > 0 with a refresh, got {refresh_every}")
        if trainer.world > 1:  # the reward's transformer calls bypass the DDP wrapper
            raise NotImplementedError("reward tuning runs in one process; launch it without torchrun")
        self.trainer, self.rewards = trainer, list(rewards)
        self.flow_weight, self.max_unit = flow_weight, max_unit
        self.steps_per_stage, self.guidance = tuple(steps_per_stage), guidance
        self.refresh, self.refresh_every = refresh, refresh_every
        self.min_u = min_u

    def step(self) -> dict:
        trainer = self.trainer
        stage = trainer.objective.draw_stage(trainer.generator)
        video, captions, coarse = trainer.batch(stage)
        unit = int(torch.randint(self.max_unit + 1, (1,), generator=trainer.generator))
        reward = reward_loss(trainer.pipe, captions, self.rewards, trainer.config.height, trainer.config.width, unit,
                             self.steps_per_stage, self.guidance, trainer.generator, self.min_u)
        flow = trainer.loss(video, captions, coarse, stage)
        loss = reward + self.flow_weight * flow
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"reward tuning loss is {float(loss.detach())} at step {trainer.step}")
        trainer.optimize(loss)
        metrics = {"unit": unit, "reward": -float(reward.detach()), "flow": float(flow.detach())}
        if self.refresh is not None and trainer.step % self.refresh_every == 0:
            metrics.update(self.refresh())
        return metrics


@dataclass
class RewardTuneConfig:
    """``m4v reward-tune --config FILE``: what to tune, the rewards and the sampler of the rollouts."""

    model: str = "runs/m4v-shapes/checkpoint/pipeline"
    out_dir: str = "runs/m4v-shapes-reward"
    steps: int = 200
    batch_size: int = 4
    lr: float = 3e-5
    ema_decay: float = 0.99
    frames: int = 17                  # the regulariser's clips (the training length)
    height: int = 64
    width: int = 64
    max_unit: int = 8                 # rewarded units 0..max_unit: twice the training length
    steps_per_stage: tuple[int, ...] = (2, 2, 2)
    guidance: float = 5.0
    reward_min_u: float = 0.0         # reward estimates from steps at u >= this only (rollout_estimate)
    attribute_weight: float = 1.0
    attribute_max_unit: Optional[int] = None  # the attribute reward on units 0..this only (None: all rewarded)
    realism_weight: float = 1.0
    flow_weight: float = 1.0
    classifier_steps: int = 900       # the reward's attribute classifier (dataset seed 0; the judge uses 1);
                                      # shape needs the steps (300: 0.64 on real clips, 900: 0.90)
    critic_steps: int = 300           # the realism critic: real frames against the model's own rollouts
    critic_videos: int = 16
    critic_refresh_every: int = 0     # > 0: every this many steps, retrain the critic on the model's new rollouts
    critic_refresh_steps: int = 100
    # Hardening the critic against being gamed: generic corruptions of its real frames (blur, colour
    # cast, noise, lost contrast) join its negatives, and an R1 penalty on its gradient at the real
    # frames keeps it smooth there (train_realism_critic's gradient_penalty).
    critic_degraded_negatives: bool = False
    critic_gradient_penalty: float = 0.0
    # A motion critic (m4v.rewards.motion): consecutive frame pairs of critic_videos real videos of
    # the rollout length, continuing the training clips' paths (objects leave as they should),
    # against real frames paired wrongly; it scores each rewarded frame after the one before it.
    motion_weight: float = 0.0
    motion_critic_steps: int = 300
    motion_faded_share: float = 0.0   # objects fading in place join its fakes, this many per jump (faded_pairs)
    # The caption-motion reward (m4v.rewards.translation): each rewarded frame after the first video
    # unit's last frame against that anchor with its objects moved as the caption says, at the training
    # data's speed, and the anchor by how far its objects' solid area falls short of the dataset's smallest object.
    translation_weight: float = 0.0
    lora_rank: int = 0                # > 0: tune LoRA adapters of this rank instead of all weights
    # The flow regulariser's stage-0 source hint (TrainConfig's fields of the same names): a model
    # trained with it is regularised towards its own objective.
    source_hint_max: float = 0.0
    coarse_shape_swap: float = 0.0
    precision: str = "bf16"
    checkpoint_every: int = 50
    log_every: int = 5
    seed: int = 0
    device: str = "cpu"
    time_limit_s: float = 0.0

    @classmethod
    def from_json(cls, path: str) -> "RewardTuneConfig":
        with open(path) as f:
            values = json.load(f)
        if "steps_per_stage" in values:
            values["steps_per_stage"] = tuple(values["steps_per_stage"])
        return config_from_dict(cls, values, f"reward-tune config {path}")


def in_view_speed(train_frames: int, frames: int) -> float:
    """The speed at which a ``frames``-long real clip covers a training clip's path, so its objects
    stay in view: a realism critic shown real frames whose objects had left (the dataset's paths fit
    the training length only) rewards empty frames, and the tuned model learned to empty them."""
    return DEFAULT_SPEED * (train_frames - 1) / max(frames - 1, 1)


class RealismCriticTrainer:
    """The realism reward's critic and its data: real frames of the rollout length (objects kept in
    view) against ``pipe``'s own long rollouts (so it learns what drift looks like) and
    over-sharpened copies of the real frames. Without the rollouts, the critic can only tell that
    late frames are blurred blobs, and tuning pays for realism with halos (frames 2.7x as sharp as
    real ones after 240 steps); with the sharpened frames, sharper than real is fake too. With
    ``critic_degraded_negatives``, ``degrade``d copies (the generic corruptions) are negatives too.

    ``refresh()`` rolls the pipeline out again, as it is now, and continues training the critic on
    those rollouts: a critic fixed at the base model's rollouts judges frames unlike any it was
    shown once tuning has moved the model (a 50-step tuning against a fixed critic widened the
    late-frame gap to real on the eval's held-out critic, -0.50 -> -0.72). Refreshing did not cure
    that on the shapes model (every 10 of 100 steps: -0.81, and a colour cast; README), so it is
    off by default. The critic is not checkpointed: a resumed run starts again from the critic of
    the model it loads and catches up at the next refresh.
    """

    def __init__(self, pipe: M4VPipeline, config: RewardTuneConfig):
        from m4v.eval.quality import degrade, real_frames, sharpen

        self.pipe, self.config = pipe, config
        self.frames = pipe.autoencoder.num_frames(config.max_unit + 1)
        real, self.captions = real_frames(config.critic_videos, self.frames, config.height, seed=config.seed + 17,
                                          speed=in_view_speed(config.frames, self.frames))
        amount = 0.5 + 2.5 * torch.rand(real.shape[:2], generator=torch.Generator().manual_seed(config.seed + 18))
        self.real = real.to(pipe.device)
        corrupted = [sharpen(real, amount.flatten())]
        if config.critic_degraded_negatives:
            corrupted.append(degrade(real, torch.Generator().manual_seed(config.seed + 19)))
        self.corrupted = torch.cat(corrupted).to(pipe.device)
        self.generator = torch.Generator(device=pipe.device).manual_seed(config.seed + 17)
        self.refreshes = 0
        self.critic = train_realism_critic(self.real, self.negatives(), steps=config.critic_steps, seed=config.seed,
                                           gradient_penalty=config.critic_gradient_penalty)

    def negatives(self) -> Tensor:
        """(videos, frames, 3, H, W): rollouts of the pipeline as it is now, then the corrupted reals."""
        config = self.config
        fake = self.pipe(self.captions, num_frames=self.frames, height=config.height, width=config.width,
                         num_inference_steps=config.steps_per_stage, video_num_inference_steps=config.steps_per_stage,
                         guidance_scale=config.guidance, video_guidance_scale=config.guidance,
                         generator=self.generator, progress=False)
        fake = torch.from_numpy(fake).permute(0, 1, 4, 2, 3).to(self.pipe.device)
        return torch.cat([fake, self.corrupted])

    @torch.no_grad()
    def _p_real(self, frames: Tensor) -> float:
        return float(torch.sigmoid(self.critic(frames)).mean())

    def refresh(self) -> dict:
        """Continues training on fresh rollouts; returns P(real) the critic gave them before (how far
        the tuned model had fooled it) and after."""
        negatives = self.negatives()
        rollouts = negatives[:len(self.captions)]
        before = self._p_real(rollouts)
        self.refreshes += 1
        train_realism_critic(self.real, negatives, steps=self.config.critic_refresh_steps,
                             seed=self.config.seed + self.refreshes, critic=self.critic,
                             gradient_penalty=self.config.critic_gradient_penalty)
        return {"critic_p_rollouts_before": before, "critic_p_rollouts_after": self._p_real(rollouts),
                "critic_p_real": self._p_real(self.real)}


def build_rewards(pipe: M4VPipeline, config: RewardTuneConfig) -> tuple[list[tuple[Reward, float]],
                                                                        Optional[RealismCriticTrainer]]:
    """The built-in rewards of nonzero weight (the attribute classifier, the realism critic, the
    motion critic, the caption-motion reward), and the realism critic's trainer (for ``refresh``;
    None without a realism reward)."""
    if config.critic_refresh_every > 0 and config.realism_weight == 0:
        raise ValueError("critic_refresh_every > 0 needs a realism reward (realism_weight != 0)")
    rewards, critic = [], None
    if config.attribute_weight != 0:
        classifier = train_attribute_classifier(seed=0, steps=config.classifier_steps, device=pipe.device)
        attribute = AttributeReward(classifier, size=32)
        if config.attribute_max_unit is not None:
            attribute = UpToUnit(attribute, config.attribute_max_unit)
        rewards.append((attribute, config.attribute_weight))
    if config.realism_weight != 0:
        critic = RealismCriticTrainer(pipe, config)
        rewards.append((RealismReward(critic.critic), config.realism_weight))
    if config.motion_weight != 0:
        rewards.append((RealismReward(motion_critic(pipe, config).to(pipe.device)), config.motion_weight))
    if config.translation_weight != 0:
        # Anchored on the last frame of the first video unit: the first frame, a unit of its own, is drawn worse.
        anchor = pipe.autoencoder.num_frames(2) - 1  # units 0 and 1 hold num_frames(2) frames
        rewards.append((TranslationReward(speed=DEFAULT_SPEED, anchor_frame=anchor), config.translation_weight))
    return rewards, critic


def motion_critic(pipe: M4VPipeline, config: RewardTuneConfig) -> RealismCritic:
    """``train_motion_critic`` on ``config.critic_videos`` real videos as long as the rewarded
    rollouts, whose paths fit the training clips, drawn as the eval's reference videos are (another seed)."""
    from m4v.eval.quality import real_frames

    frames = pipe.autoencoder.num_frames(config.max_unit + 1)
    if frames < 8 or config.critic_videos < 2:  # jumped_pairs' jumps of >= 4 frames, within a video or across two
        raise ValueError(f"motion_weight needs rollouts of >= 8 frames and critic_videos >= 2, got {frames} frames "
                         f"(max_unit {config.max_unit}) and critic_videos {config.critic_videos}")
    real, _ = real_frames(config.critic_videos, frames, config.height, seed=config.seed + 23, path_frames=config.frames)
    # On the pipeline's device: the full-batch training of ~1,000 pairs outlasted a 600 s device call on its CPU.
    return train_motion_critic(real.to(pipe.device), steps=config.motion_critic_steps, seed=config.seed,
                               faded_share=config.motion_faded_share)


def regulariser_config(config: RewardTuneConfig) -> TrainConfig:
    """The trainer's settings: the fields both configs share (same names, same meaning)."""
    shared = [f.name for f in fields(TrainConfig) if hasattr(config, f.name)]
    return TrainConfig(**{name: getattr(config, name) for name in shared})


def run_reward_tuning(config: RewardTuneConfig, progress: bool = True) -> tuple[Trainer, list[dict]]:
    """Loads ``config.model``, builds the rewards, and tunes (resuming from out_dir/checkpoint).
    The tuned pipeline (EMA weights, adapters merged) lands in out_dir/checkpoint/pipeline."""
    pipe = M4VPipeline.from_pretrained(config.model, device=config.device, dtype=torch.float32)  # fp32 master weights
    if config.lora_rank > 0:
        add_lora(pipe.transformer, config.lora_rank)
        pipe.text_encoder.requires_grad_(False)
    rewards, critic = build_rewards(pipe, config)
    trainer = Trainer(pipe, regulariser_config(config))
    refresh = critic.refresh if critic is not None and config.critic_refresh_every > 0 else None
    tuner = RewardTuner(trainer, rewards, config.flow_weight, config.max_unit, config.steps_per_stage,
                        config.guidance, refresh=refresh, refresh_every=config.critic_refresh_every,
                        min_u=config.reward_min_u)
    trainer.load_checkpoint()
    return trainer, trainer.run(progress=progress, step_fn=tuner.step)


__all__ = ["rollout_estimate", "context_frames", "reward_loss", "UpToUnit", "RewardTuner", "RewardTuneConfig",
           "RealismCriticTrainer", "build_rewards", "motion_critic", "in_view_speed", "regulariser_config", "run_reward_tuning"]
