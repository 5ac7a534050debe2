"""A caption-motion reward for the shapes videos: each frame should be the video's first frame
with every captioned object carried along its caption's direction at the dataset's speed.

The learned rewards (the per-frame realism critic, the pair motion critic, the attribute
classifier) were each raised more cheaply by changing the object than by moving it right: tuning
emptied frames early, faded objects, or over-sharpened them (NOTES.md). This reward is not
learned: its target is a concrete frame, built from the model's own first frame, so the way to
score is to draw that frame's objects where the caption's motion has taken them by then, and
let them leave when their path does. Its first version took the last frame before the rewarded
unit as the anchor instead, and tuning found the way out that anchor leaves open: a faded or
empty anchor asks for nothing, so fading early scored ever better (NOTES.md, twenty-ninth session).
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from m4v.data.shapes import BACKGROUND, COLOURS, DEFAULT_SPEED, DIRECTIONS
from m4v.eval.attributes import caption_objects


ALL_FRAMES = sys.maxsize  # a reward's ``context`` asking for every frame before the rewarded unit


class TranslationReward:
    """Scores frames against the video's first frame moved as the caption says.

    A pixel of the first frame belongs to its foreground as far as it is from the background
    colour (fully from ``foreground`` on, not at all below a third of it: the decoder's faint noise
    is not an object). Each foreground pixel goes to the captioned object of the nearest colour;
    each object's share moves ``t * speed * (size - 1)`` pixels along its direction for frame t
    (the dataset's motion: ``ShapesVideoDataset`` moves centres by ``speed`` of the frame per
    frame), over the plain background. Objects keep their first colour, shape and size, leave the
    frame when their path does, and nothing else appears.

    Args:
        speed: travel per frame as a fraction of the frame size (the training data's).
        scale: the error that scores -1: about the mean deviation from the background of one
            object of the dataset's mean size, at any resolution (its share of the area).
        foreground: colour distance from the background at which a pixel counts fully as object.

    Call with frames (batch, 1 + count, 3, H, W) in [0, 1], frame 0 the video's first (no gradient
    flows into it; ``reward_loss`` passes every frame before the unit, ``context`` = ``ALL_FRAMES``),
    and one caption per video. Returns (batch, count) scores of frames 1..count, -(mean absolute
    error per pixel and channel) / ``scale``. A scene of two objects of one colour going different
    ways is ambiguous: its scores are 0 (no gradient).
    """

    context = ALL_FRAMES

    def __init__(self, speed: float = DEFAULT_SPEED, scale: float = 0.02, foreground: float = 0.1):
        if speed < 0 or scale <= 0 or foreground <= 0:
            raise ValueError(f"speed must be >= 0, scale and foreground > 0, got {speed}, {scale}, {foreground}")
        self.speed, self.scale, self.foreground = speed, scale, foreground

    def __call__(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (batch, frames, 3, H, W), got {tuple(frames.shape)}")
        if len(prompts) != frames.shape[0]:
            raise ValueError(f"prompts must hold one caption per video: {len(prompts)} for {frames.shape[0]} videos")
        if frames.shape[1] < 2:
            return frames.new_zeros(frames.shape[0], 0)
        targets, ambiguous = self.targets(frames[:, 0].detach(), prompts, frames.shape[1] - 1)
        error = (frames[:, 1:] - targets).abs().mean((2, 3, 4)) / self.scale
        return -error.masked_fill(ambiguous[:, None], 0.0)

    def targets(self, anchor: Tensor, prompts: Sequence[str], count: int) -> tuple[Tensor, Tensor]:
        """Frames 1..count (batch, count, 3, H, W) that the caption's motion makes of the first frame
        ``anchor`` (batch, 3, H, W), and which videos (batch,) are ambiguous."""
        batch, _, height, width = anchor.shape
        device, dtype = anchor.device, anchor.dtype
        background = torch.tensor(BACKGROUND, device=device, dtype=dtype).view(1, 3, 1, 1)
        deviation = anchor - background
        distance = deviation.norm(dim=1, keepdim=True)
        share = ((distance - self.foreground / 3) / (self.foreground * 2 / 3)).clamp(0, 1)  # (batch, 1, H, W)

        scenes = [caption_objects(p) for p in prompts]
        slots = max(len(objects) for objects in scenes)
        colour = torch.zeros(batch, slots, 3, device=device, dtype=dtype)
        step = torch.zeros(batch, slots, 2, device=device, dtype=dtype)  # pixels per frame, (rows, cols)
        present = torch.zeros(batch, slots, dtype=torch.bool, device=device)
        ambiguous = torch.zeros(batch, dtype=torch.bool, device=device)
        for b, objects in enumerate(scenes):
            for s, obj in enumerate(objects):
                colour[b, s] = torch.tensor(COLOURS[obj["colour"]], dtype=dtype)
                dy, dx = DIRECTIONS[obj["direction"]]
                step[b, s] = torch.tensor((dy * self.speed * (height - 1), dx * self.speed * (width - 1)), dtype=dtype)
                present[b, s] = True
            ambiguous[b] = any(a["colour"] == o["colour"] and a["direction"] != o["direction"]
                               for i, a in enumerate(objects) for o in objects[i + 1:])

        # Each pixel to the present object of the nearest colour.
        colour_distance = (anchor[:, None] - colour[:, :, :, None, None]).norm(dim=2)  # (batch, slots, H, W)
        colour_distance = colour_distance.masked_fill(~present[:, :, None, None], float("inf"))
        owner = F.one_hot(colour_distance.argmin(1), slots).permute(0, 3, 1, 2).to(dtype)  # (batch, slots, H, W)
        layers = (share * owner)[:, :, None] * deviation[:, None]  # (batch, slots, 3, H, W)

        # Frame t moves each layer by t steps: output(p) = layer(p - shift), zeros (background) moving in.
        time = torch.arange(1, count + 1, device=device, dtype=dtype).view(1, count, 1, 1)
        shift = time * step[:, None]  # (batch, count, slots, 2)
        theta = torch.zeros(batch, count, slots, 2, 3, device=device, dtype=dtype)
        theta[..., 0, 0] = theta[..., 1, 1] = 1
        theta[..., 0, 2] = -2 * shift[..., 1] / max(width - 1, 1)   # x: columns, align_corners=True units
        theta[..., 1, 2] = -2 * shift[..., 0] / max(height - 1, 1)  # y: rows
        moved_input = layers[:, None].expand(batch, count, slots, 3, height, width).reshape(-1, 3, height, width)
        grid = F.affine_grid(theta.view(-1, 2, 3), list(moved_input.shape), align_corners=True)
        moved = F.grid_sample(moved_input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        moved = moved.view(batch, count, slots, 3, height, width).sum(2)
        return (background[:, None] + moved).clamp(0, 1), ambiguous


__all__ = ["TranslationReward", "ALL_FRAMES"]
