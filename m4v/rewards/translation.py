"""A caption-motion reward for the shapes videos: each frame should be an early frame of the
video (the anchor) with every captioned object carried along its caption's direction at the
dataset's speed.

The learned rewards (the per-frame realism critic, the pair motion critic, the attribute
classifier) were each raised more cheaply by changing the object than by moving it right: tuning
emptied frames early, faded objects, or over-sharpened them (NOTES.md). This reward is not
learned: its target is a concrete frame, built from the model's own anchor frame, so the way to
score is to draw that frame's objects where the caption's motion has taken them by then, and
let them leave when their path does. The anchor is not the first frame for the m4v models: their
first frame is a unit of its own, drawn worse than the frames after it (stray blobs, broken
shapes), and a run anchored there copied its flaws into every frame (NOTES.md, thirtieth
session). Frames before the anchor are not scored: they share its video unit, so while tuning
they and the anchor are one estimate, and targets built from a faint estimate of the anchor pull
its own unit toward empty (a device run emptied two videos of eight from the anchor on that way,
thirty-first session). Two ways out of a plain distance to that target were found by tuning (NOTES.md,
twenty-ninth and thirtieth sessions), and each is priced here:

- An uncertain object scores better faint or gone than drawn in a slightly wrong place (a
  misplaced object costs its area twice in L1, a missing one once). So each object's colour mass
  is compared with the target's as well: a missing object then costs as much as a misplaced one.
- A faint or empty anchor asks for faint or empty frames around it. So the anchor is scored
  too: by how far each captioned object's solid area falls short of the dataset's smallest
  object. Area, not mass: a faint haze over the whole frame has the mass of an object, and a
  harsh CPU pilot found that way out of a mass guard in 16 steps.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from m4v.data.shapes import BACKGROUND, COLOURS, DEFAULT_SPEED, DIRECTIONS, MIN_RADIUS, SHAPE_AREA
from m4v.eval.attributes import caption_objects


ALL_FRAMES = sys.maxsize  # a reward's ``context`` asking for every frame before the rewarded unit


class TranslationReward:
    """Scores frames against the video's anchor frame moved as the caption says.

    A pixel belongs to the foreground as far as it is from the background colour (fully from
    ``foreground`` on, not at all below a third of it: the decoder's faint noise is not an object),
    and to the captioned object of the nearest colour. Each object's share of the anchor frame a
    moves ``(t - a) * speed * (size - 1)`` pixels along its direction for frame t > a (the dataset's
    motion: ``ShapesVideoDataset`` moves centres by ``speed`` of the frame per frame), over the plain
    background: objects keep the anchor's colour, shape and size, leave the frame when their path
    does, and nothing else appears. An object's mass in a frame is the mean over pixels of its
    share times the pixel's mean absolute deviation from the background; its solid area, the mean
    over its pixels of how close each is to the full colour (nothing below ``solid[0]`` of the
    colour's distance from the background, fully from ``solid[1]``).

    Args:
        speed: travel per frame as a fraction of the frame size (the training data's).
        scale: the error that scores -1: about the mean deviation from the background of one
            object of the dataset's mean size, at any resolution (its share of the area).
        foreground: colour distance from the background at which a pixel counts fully as object.
        mass_weight: weight of the mass term, in the L1 term's units. At 1 an object left out costs
            as much as one drawn wholly in the wrong place; a fade costs twice its L1.
        least_share: the share of the area of the dataset's smallest object of its shape
            (``MIN_RADIUS``) each captioned object must cover solidly in the anchor: a little
            under 1, as pixel edges and the decoder's blur take some.
        solid: the shares of a colour's distance from the background between which a pixel's
            solidity ramps from 0 to 1.
        anchor_frame: the anchor's index in the video (``build_rewards``: the last frame of the
            m4v models' first video unit).

    Call with frames (batch, frames, 3, H, W) in [0, 1] from the video's first frame on, and one
    caption per video; ``reward_loss`` passes every frame before the unit (``context`` =
    ``ALL_FRAMES``). Returns (batch, frames) scores, all 0 (nothing to score) while the video
    does not reach the anchor yet:

    - the anchor: -(1 + mass_weight) * the sum over captioned objects of the share of
      ``least_share`` of the smallest object's area that its solid area falls short of: 0 for a
      real frame, -(1 + mass_weight) per object for an empty or hazy one;
    - every later frame: -(mean absolute error per pixel and channel + mass_weight * the objects'
      summed absolute mass errors) / ``scale``, against targets that carry no gradient;
    - the frames before the anchor: 0.

    A scene of two objects of one colour going different ways is ambiguous: its scores are 0 (no
    gradient).
    """

    context = ALL_FRAMES

    def __init__(self, speed: float = DEFAULT_SPEED, scale: float = 0.02, foreground: float = 0.1,
                 mass_weight: float = 1.0, least_share: float = 0.75, solid: tuple[float, float] = (0.2, 0.7),
                 anchor_frame: int = 0):
        if speed < 0 or scale <= 0 or foreground <= 0 or mass_weight < 0 or not 0 <= least_share <= 1:
            raise ValueError(f"speed and mass_weight must be >= 0, scale and foreground > 0, least_share in [0, 1], "
                             f"got speed {speed}, scale {scale}, foreground {foreground}, mass_weight {mass_weight}, "
                             f"least_share {least_share}")
        if not 0 <= solid[0] < solid[1] <= 1:
            raise ValueError(f"solid must be two increasing shares in [0, 1], got {solid}")
        if anchor_frame < 0:
            raise ValueError(f"anchor_frame must be >= 0, got {anchor_frame}")
        self.speed, self.scale, self.foreground = speed, scale, foreground
        self.mass_weight, self.least_share, self.solid = mass_weight, least_share, solid
        self.anchor_frame = anchor_frame

    def __call__(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3 or frames.shape[1] == 0:
            raise ValueError(f"frames must be (batch, frames >= 1, 3, H, W), got {tuple(frames.shape)}")
        if len(prompts) != frames.shape[0]:
            raise ValueError(f"prompts must hold one caption per video: {len(prompts)} for {frames.shape[0]} videos")
        batch, length, anchor = frames.shape[0], frames.shape[1], self.anchor_frame
        if length <= anchor:
            return frames.new_zeros(batch, length)
        scene = self.scene(prompts, *frames.shape[-2:], device=frames.device, dtype=frames.dtype)
        area = self.solid_area(frames[:, anchor], scene["colour"], scene["present"])
        shortfall = (1 - area / scene["least_area"].clamp_min(1e-12)).clamp_min(0)
        scores = frames.new_zeros(batch, length)
        scores[:, anchor] = -(1 + self.mass_weight) * (shortfall * (scene["least_area"] > 0)).sum(1)
        later, count = frames[:, anchor + 1:], length - anchor - 1
        if count:
            targets = self.targets(frames[:, anchor].detach(), scene, count)
            colour = scene["colour"].repeat_interleave(count, 0)
            present = scene["present"].repeat_interleave(count, 0)
            mass = self.object_mass(later.flatten(0, 1), colour, present).view(batch, count, -1)
            target_mass = self.object_mass(targets.flatten(0, 1), colour, present).view(batch, count, -1)
            error = (later - targets).abs().mean((2, 3, 4))
            error = error + self.mass_weight * (mass - target_mass).abs().sum(2)
            scores[:, anchor + 1:] = -error / self.scale
        return scores.masked_fill(scene["ambiguous"][:, None], 0.0)

    def scene(self, prompts: Sequence[str], height: int, width: int, device: torch.device,
              dtype: torch.dtype) -> dict[str, Tensor]:
        """The captions' objects, one slot each (batch, slots): ``colour`` (.., 3), ``step`` (.., 2)
        in pixels per frame (rows, cols), ``present``, ``least_area`` (``least_share`` of the share
        of the frame the dataset's smallest such object covers, all on the first slot of its colour,
        which the nearest-colour assignment gives every pixel of that colour), and ``ambiguous``
        (batch,)."""
        scenes = [caption_objects(p) for p in prompts]
        batch, slots = len(scenes), max(len(objects) for objects in scenes)
        colour = torch.zeros(batch, slots, 3, dtype=torch.float64)
        step = torch.zeros(batch, slots, 2, dtype=torch.float64)
        present = torch.zeros(batch, slots, dtype=torch.bool)
        least_area = torch.zeros(batch, slots, dtype=torch.float64)
        ambiguous = torch.zeros(batch, dtype=torch.bool)
        # The smallest radius's squared share of the frame, times least_share; times SHAPE_AREA, an area share.
        least_radius_area = self.least_share * MIN_RADIUS ** 2 * min(height, width) ** 2 / (height * width)
        for b, objects in enumerate(scenes):
            for s, obj in enumerate(objects):
                colour[b, s] = torch.tensor(COLOURS[obj["colour"]], dtype=torch.float64)
                dy, dx = DIRECTIONS[obj["direction"]]
                step[b, s] = torch.tensor((dy * self.speed * (height - 1), dx * self.speed * (width - 1)))
                present[b, s] = True
                first_of_colour = next(i for i, o in enumerate(objects) if o["colour"] == obj["colour"])
                least_area[b, first_of_colour] += least_radius_area * SHAPE_AREA[obj["shape"]]
            ambiguous[b] = any(a["colour"] == o["colour"] and a["direction"] != o["direction"]
                               for i, a in enumerate(objects) for o in objects[i + 1:])
        scene = {"colour": colour, "step": step, "present": present, "least_area": least_area, "ambiguous": ambiguous}
        return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in scene.items()}

    def layers(self, frames: Tensor, colour: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """Each object's share (N, slots, H, W) of frames (N, 3, H, W), given its colour (N, slots,
        3) and whether its slot is used (N, slots); and the frames' deviation (N, 3, H, W) from the
        background."""
        background = torch.tensor(BACKGROUND, device=frames.device, dtype=frames.dtype).view(1, 3, 1, 1)
        deviation = frames - background
        share = ((deviation.norm(dim=1, keepdim=True) - self.foreground / 3) / (self.foreground * 2 / 3)).clamp(0, 1)
        colour_distance = (frames[:, None] - colour[:, :, :, None, None]).norm(dim=2)  # (N, slots, H, W)
        colour_distance = colour_distance.masked_fill(~present[:, :, None, None], float("inf"))
        owner = F.one_hot(colour_distance.argmin(1), colour.shape[1]).permute(0, 3, 1, 2).to(frames.dtype)
        return share * owner, deviation

    def object_mass(self, frames: Tensor, colour: Tensor, present: Tensor) -> Tensor:
        """Each object's mass (N, slots) in frames (N, 3, H, W) (``layers`` gives the arguments)."""
        shares, deviation = self.layers(frames, colour, present)
        return (shares * deviation.abs().mean(1, keepdim=True)).mean((2, 3))

    def solid_area(self, frames: Tensor, colour: Tensor, present: Tensor) -> Tensor:
        """Each object's solid area (N, slots) in frames (N, 3, H, W), as a share of the frame
        (``layers`` gives the arguments)."""
        shares, deviation = self.layers(frames, colour, present)
        background = torch.tensor(BACKGROUND, device=frames.device, dtype=frames.dtype).view(1, 1, 3)
        reach = (colour - background).norm(dim=2)[:, :, None, None]  # (N, slots, 1, 1)
        strength = deviation.norm(dim=1, keepdim=True) / reach
        solidity = ((strength - self.solid[0]) / (self.solid[1] - self.solid[0])).clamp(0, 1)
        return ((shares > 0) * solidity).mean((2, 3))

    def targets(self, anchor: Tensor, scene: dict[str, Tensor], count: int) -> Tensor:
        """The ``count`` frames (batch, count, 3, H, W) that the caption's motion makes of the frame
        ``anchor`` (batch, 3, H, W) after it, for the objects of ``scene`` (``TranslationReward.scene``)."""
        batch, _, height, width = anchor.shape
        shares, deviation = self.layers(anchor, scene["colour"], scene["present"])
        slots = shares.shape[1]
        layers = shares[:, :, None] * deviation[:, None]  # (batch, slots, 3, H, W)

        # The t-th frame after the anchor moves each layer by t steps: output(p) = layer(p - shift),
        # zeros (background) moving in.
        time = torch.arange(1, count + 1, device=anchor.device, dtype=anchor.dtype).view(1, count, 1, 1)
        shift = time * scene["step"][:, None]  # (batch, count, slots, 2)
        theta = torch.zeros(batch, count, slots, 2, 3, device=anchor.device, dtype=anchor.dtype)
        theta[..., 0, 0] = theta[..., 1, 1] = 1
        theta[..., 0, 2] = -2 * shift[..., 1] / max(width - 1, 1)   # x: columns, align_corners=True units
        theta[..., 1, 2] = -2 * shift[..., 0] / max(height - 1, 1)  # y: rows
        moved_input = layers[:, None].expand(batch, count, slots, 3, height, width).reshape(-1, 3, height, width)
        grid = F.affine_grid(theta.view(-1, 2, 3), list(moved_input.shape), align_corners=True)
        moved = F.grid_sample(moved_input, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        moved = moved.view(batch, count, slots, 3, height, width).sum(2)
        background = torch.tensor(BACKGROUND, device=anchor.device, dtype=anchor.dtype).view(1, 1, 3, 1, 1)
        return (background + moved).clamp(0, 1)


__all__ = ["TranslationReward", "ALL_FRAMES"]
