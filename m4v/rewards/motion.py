"""A motion critic: consecutive frame pairs of real videos against jumps.

The shipped model's late drift is temporal: after the training length its object leaves the frame
and a new one appears in mid-frame (per unit, objects stay in view in 84% of its last frames where
the real continuations show 15%). A per-frame critic cannot see that, since a frame with an object
in it looks real; a critic of frame pairs can, because no real object appears, vanishes or jumps
in mid-frame.

Its negatives are real frames too, paired wrongly (``jumped_pairs``), and every pair, real or
not, goes through the same random corruption on both of its frames (``shared_corruption``), so
appearance says nothing about the label: only how the second frame follows the first does. A
critic that also learned appearance would hand the tuned model that appearance to game, as the
per-frame critics were (benchmarks/NOTES.md, twenty-fifth session).
"""

from __future__ import annotations

import torch
from torch import Tensor

from m4v.rewards.builtin import RealismCritic, train_realism_critic


def frame_pairs(videos: Tensor) -> Tensor:
    """(batch, frames, 3, H, W) -> (batch * (frames - 1), 2, 3, H, W): every consecutive pair."""
    return torch.stack([videos[:, :-1], videos[:, 1:]], dim=2).flatten(0, 1)


def jumped_pairs(videos: Tensor, generator: torch.Generator, min_jump: int = 4) -> Tensor:
    """Pairs no real video shows, as many as ``frame_pairs`` gives: a frame of each video followed
    by a frame at least ``min_jump`` frames away in the same video (the object jumps along its
    path) or any frame of another video (it changes, appears or vanishes). Pairs with no object
    in either frame look like real ones and are left out.

    Args:
        videos: (batch, frames, 3, H, W) in [0, 1], batch >= 2 and frames >= 2 * ``min_jump``.
    Returns:
        (n, 2, 3, H, W) with n <= batch * (frames - 1).
    """
    from m4v.eval.quality import object_presence  # m4v.eval imports m4v.rewards

    batch, frames = videos.shape[:2]
    if min_jump < 1 or batch < 2 or frames < 2 * min_jump:
        raise ValueError(f"jumped_pairs needs min_jump >= 1 and >= 2 videos of >= 2 * min_jump frames, "
                         f"got min_jump {min_jump} and (videos, frames) {tuple(videos.shape[:2])}")
    n = batch * (frames - 1)
    first_video = torch.arange(n) // (frames - 1)
    first_frame = torch.randint(frames, (n,), generator=generator)
    other_video = torch.rand(n, generator=generator) < 0.5
    offset = torch.randint(1, batch, (n,), generator=generator)  # another video, never the same one
    second_video = torch.where(other_video, (first_video + offset) % batch, first_video)
    # In the same video: a frame at distance >= min_jump, either side (wrapping, so one always exists).
    jump = torch.randint(min_jump, frames - min_jump + 1, (n,), generator=generator)
    second_frame = torch.where(other_video, torch.randint(frames, (n,), generator=generator),
                               (first_frame + jump) % frames)
    pairs = torch.stack([videos[first_video, first_frame], videos[second_video, second_frame]], dim=1)
    shown = object_presence(pairs).bool().any(1)
    return pairs[shown]


def faded_pairs(videos: Tensor, generator: torch.Generator, min_fade: float = 0.3) -> Tensor:
    """Pairs in which an object fades in place instead of moving: each consecutive pair of the
    ``videos`` whose second frame shows an object, that frame blended toward its background colour
    by a random ``min_fade``..1 (1: the object vanishes), half of them in reverse order (it fades in).
    Real objects leave across the border and never fade; a critic that has seen only jumps scores
    fades near chance. (They did not stop the tuned models from emptying their frames early: those
    objects vanish at once and stay gone, which costs one pair; benchmarks/NOTES.md, twenty-seventh
    session.)

    Args:
        videos: (batch, frames, 3, H, W) in [0, 1] with a flat background (its per-frame median).
    Returns:
        (n, 2, 3, H, W) with n <= batch * (frames - 1).
    """
    from m4v.eval.quality import object_presence

    if not 0 < min_fade <= 1:
        raise ValueError(f"min_fade must be in (0, 1], got {min_fade}")
    pairs = frame_pairs(videos)
    pairs = pairs[object_presence(pairs[:, 1:]).bool()[:, 0]].clone()
    n = len(pairs)
    background = pairs[:, 1].flatten(-2).median(-1).values[..., None, None]  # (n, 3, 1, 1)
    fade = min_fade + (1 - min_fade) * torch.rand(n, generator=generator)
    pairs[:, 1] = torch.lerp(pairs[:, 1], background.expand_as(pairs[:, 1]), fade.view(n, 1, 1, 1))
    fading_in = torch.rand(n, generator=generator) < 0.5
    pairs[fading_in] = pairs[fading_in].flip(1)
    return pairs


def shared_corruption(pairs: Tensor, generator: torch.Generator) -> Tensor:
    """``degrade`` each pair (n, 2, 3, H, W) with one corruption for both of its frames (they are
    degraded side by side, as one image), so the pair's appearance varies but its motion does not."""
    from m4v.eval.quality import degrade

    n, _, channels, height, width = pairs.shape
    side_by_side = pairs.permute(0, 2, 3, 1, 4).reshape(n, 1, channels, height, 2 * width)
    degraded = degrade(side_by_side, generator)
    return degraded.reshape(n, channels, height, 2, width).permute(0, 3, 1, 2, 4)


def train_motion_critic(real: Tensor, steps: int = 300, seed: int = 0, corrupted_share: float = 0.5,
                        faded_share: float = 0.0) -> RealismCritic:
    """A ``RealismCritic`` with context 1 trained on the consecutive pairs of ``real`` videos
    (batch, frames, 3, H, W) in [0, 1] against their ``jumped_pairs`` and, ``faded_share`` times as
    many as those, ``faded_pairs``; a ``corrupted_share`` of both sets goes through ``shared_corruption``."""
    if not 0 <= corrupted_share <= 1:
        raise ValueError(f"corrupted_share must be in [0, 1], got {corrupted_share}")
    if faded_share < 0:
        raise ValueError(f"faded_share must be >= 0, got {faded_share}")
    generator = torch.Generator().manual_seed(seed)
    device = real.device
    videos = real.cpu()
    real, fake = frame_pairs(videos), jumped_pairs(videos, generator)
    if faded_share > 0:
        faded = faded_pairs(videos, generator)
        picked = torch.randperm(len(faded), generator=generator)[:round(faded_share * len(fake))]
        fake = torch.cat([fake, faded[picked]])

    def corrupt_some(pairs: Tensor) -> Tensor:
        picked = torch.rand(len(pairs), generator=generator) < corrupted_share
        out = pairs.clone()
        if picked.any():
            out[picked] = shared_corruption(pairs[picked], generator)
        return out

    real, fake = corrupt_some(real).to(device), corrupt_some(fake).to(device)
    # A fresh critic's weights from the seed too, as train_realism_critic's own default critic: drawn
    # from the global generator as it stood, they made the result depend on whatever ran before.
    torch.manual_seed(seed)
    return train_realism_critic(real, fake, steps=steps, seed=seed, critic=RealismCritic(context=1))


__all__ = ["frame_pairs", "jumped_pairs", "faded_pairs", "shared_corruption", "train_motion_critic"]
