"""Built-in offline rewards: text alignment from the attribute classifier, and a realism critic."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m4v.eval.attributes import AttributeClassifier, parse_caption


class AttributeReward:
    """log p(colour) + log p(shape) of the prompt's first object, frame by frame (a single frame
    carries no motion, so the direction head is left to the video-level metric). ``size``: the
    classifier's input size, to which frames are area-resized (None: as they come)."""

    def __init__(self, classifier: AttributeClassifier, size: Optional[int] = None):
        self.classifier = classifier.eval().requires_grad_(False)
        self.size = size

    def __call__(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        batch, count = frames.shape[:2]
        flat = frames.flatten(0, 1)
        if self.size is not None and flat.shape[-2:] != (self.size, self.size):
            flat = F.interpolate(flat, size=(self.size, self.size), mode="area")
        video = (flat * 2 - 1)[:, :, None]  # every frame as a 1-frame clip
        logits = self.classifier(video)
        score = torch.zeros(batch * count, device=frames.device)
        for name in ("colour", "shape"):
            target = torch.tensor([parse_caption(p)[name] for p in prompts], device=frames.device)
            score = score + logits[name].log_softmax(1).gather(1, target.repeat_interleave(count)[:, None]).squeeze(1)
        return score.view(batch, count)


class RealismReward:
    """log sigmoid of a ``RealismCritic``'s logit: bounded above by 0, so a fooled critic cannot
    pay without limit. ``context``: the frames before the scored ones that the critic needs (its own)."""

    def __init__(self, critic: "RealismCritic"):
        self.critic = critic.eval().requires_grad_(False)
        self.context = critic.context

    def __call__(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        return F.logsigmoid(self.critic(frames))


class RealismCritic(nn.Module):
    """frames (batch, frames, 3, H, W) in [0, 1] -> (batch, frames - context) logits of "real".

    ``context`` 0 judges each frame alone; 1 judges each frame after the first together with the
    frame before it (a motion critic: ``m4v.rewards.motion``), so a jump, an object appearing or
    vanishing in mid-frame, is something it can see.

    The features are pooled by their mean and their max over the frame: an artifact at a small
    object's edge is a few positions of 64, which a mean alone dilutes (with mean pooling only,
    300 full-batch steps left real and degraded held-out frames at P(real) 0.50 and 0.50; with
    both, 0.67 and 0.31)."""

    def __init__(self, width: int = 32, context: int = 0):
        super().__init__()
        if context not in (0, 1):
            raise ValueError(f"context must be 0 or 1, got {context}")
        self.context = context
        self.features = nn.Sequential(
            nn.Conv2d(3 * (1 + context), width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(4 * width, 1)

    def forward(self, frames: Tensor, prompts: Sequence[str] | None = None) -> Tensor:
        if self.context:  # each frame stacked on the one before it, along channels
            frames = torch.cat([frames[:, :-1], frames[:, 1:]], dim=2)
        batch, count = frames.shape[:2]
        if count == 0:
            return frames.new_zeros(batch, 0)
        h = self.features(frames.flatten(0, 1) * 2 - 1)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)).view(batch, count)


def train_realism_critic(real: Tensor, fake: Tensor, steps: int = 200, lr: float = 1e-3, seed: int = 0,
                         critic: Optional[RealismCritic] = None, gradient_penalty: float = 0.0) -> RealismCritic:
    """Trains a critic to tell real frames (n, frames, 3, H, W) from generated ones (same layout),
    full batch. ``critic``: continue training this one (in place; its ``context`` decides what it
    judges) instead of a fresh frame critic.
    ``gradient_penalty`` > 0 adds the R1 penalty ``gradient_penalty / 2 * E_real |d logit / d frame|^2``
    (Mescheder et al. 2018): a critic that is flat at the real frames has no steep direction there for
    a tuned generator to climb without becoming more like them."""
    if gradient_penalty < 0:
        raise ValueError(f"gradient_penalty must be >= 0, got {gradient_penalty}")
    torch.manual_seed(seed)
    critic = (critic if critic is not None else RealismCritic()).to(real.device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=lr)
    inputs = torch.cat([real, fake.to(real.device)]).requires_grad_(gradient_penalty > 0)
    scored = real.shape[1] - critic.context  # logits per clip
    labels = torch.cat([torch.ones(len(real), scored), torch.zeros(len(fake), scored)]).to(real.device)
    for _ in range(steps):
        logits = critic(inputs)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if gradient_penalty > 0:
            grad, = torch.autograd.grad(logits[:len(real)].sum(), inputs, create_graph=True)
            loss = loss + gradient_penalty / 2 * grad[:len(real)].pow(2).flatten(1).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return critic.eval().requires_grad_(False)


__all__ = ["AttributeReward", "RealismCritic", "RealismReward", "train_realism_critic"]
