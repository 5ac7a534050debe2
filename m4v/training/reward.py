"""Reward fine-tuning through a one-step clean estimate (DESIGN.md section 5).

For the first latent frame of each prompt: sample without gradients down to a random Euler step
of the top stage, take that one step's velocity with gradients, form the one-step clean estimate
``x_hat = x + (1 - u) v`` (the scheduler's convention), decode it, and score the frames with the
rewards. Gradients flow through the decoder and the rewards into the transformer, through the last
step only. The flow-matching loss is mixed in as a regulariser.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from m4v.pipelines import M4VPipeline

Reward = Callable[[Tensor, Sequence[str]], Tensor]


def one_step_estimate(pipe: M4VPipeline, prompts: Sequence[str], height: int, width: int,
                      steps: Sequence[int], generator: torch.Generator) -> Tensor:
    """Decoded one-step estimate of the first frame: (batch, 1, 3, H, W) in [0, 1], with gradients
    through the last transformer call only."""
    scheduler, stages = pipe.scheduler, pipe.scheduler.num_stages
    device = pipe.device
    text = pipe.text_encoder.encode(list(prompts), device)
    spatial = pipe.autoencoder.spatial_factor
    scale = 2 ** (stages - 1)
    shape = (len(prompts), pipe.autoencoder.latent_channels, height // spatial // scale, width // spatial // scale)
    last = int(torch.randint(steps[-1], (1,), generator=generator))
    with torch.no_grad():
        x = scheduler.initial_noise(shape, generator, device)
        for stage in range(stages):
            if stage:
                x = scheduler.jump(x, generator)
            schedule = scheduler.steps(stage, steps[stage])
            for k, (tau, u, u_next) in enumerate(schedule):
                if stage == stages - 1 and k == last:
                    break
                timestep = torch.full((len(prompts),), tau, device=device)
                v = pipe.transformer(x, timestep, text.states, text.mask, text.pooled, stage=stage)
                x = scheduler.step(x, v, u, u_next)
    tau, u, _ = scheduler.steps(stages - 1, steps[-1])[last]
    timestep = torch.full((len(prompts),), tau, device=device)
    v = pipe.transformer(x, timestep, text.states, text.mask, text.pooled, stage=stages - 1)
    clean = scheduler.clean_estimate(x, v, u)
    frames = pipe.autoencoder.decode(clean[:, :, None])  # (batch, 3, 1, H, W)
    return ((frames.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)


def reward_loss(pipe: M4VPipeline, prompts: Sequence[str], rewards: Sequence[tuple[Reward, float]], height: int,
                width: int, steps: Sequence[int] = (2, 2, 2), generator: Optional[torch.Generator] = None) -> Tensor:
    """-(sum of weighted mean rewards) of the one-step estimates."""
    generator = generator or torch.Generator().manual_seed(0)
    frames = one_step_estimate(pipe, prompts, height, width, steps, generator)
    return -sum(weight * reward(frames, prompts).mean() for reward, weight in rewards)


class RewardTuner:
    """Reward fine-tuning steps: ``reward_loss`` of fresh prompts plus ``flow_weight`` times the
    flow-matching loss of a data batch (the regulariser), through the ``Trainer``'s optimizer, EMA
    and checkpoints.

    Args:
        trainer: a ``Trainer`` on the pipeline to tune (its config gives data, sizes and out_dir).
        rewards: (reward, weight) pairs; each reward maps (frames, prompts) -> (batch, frames).
        flow_weight: weight of the flow-matching regulariser.
        steps_per_stage: Euler steps per stage of the sampled estimate.
    """

    def __init__(self, trainer, rewards: Sequence[tuple[Reward, float]], flow_weight: float = 0.5,
                 steps_per_stage: Sequence[int] = (2, 2, 2)):
        self.trainer, self.rewards = trainer, list(rewards)
        self.flow_weight, self.steps_per_stage = flow_weight, tuple(steps_per_stage)

    def step(self) -> dict:
        trainer = self.trainer
        video, captions = trainer.batch()
        reward = reward_loss(trainer.pipe, captions, self.rewards, trainer.config.height, trainer.config.width,
                             self.steps_per_stage, trainer.generator)
        flow = trainer.loss(video, captions)
        trainer.optimize(reward + self.flow_weight * flow)
        return {"step": trainer.step, "reward": -float(reward.detach()), "flow": float(flow.detach())}


__all__ = ["one_step_estimate", "reward_loss", "RewardTuner"]
