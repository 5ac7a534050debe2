"""Moving coloured shapes with captions ("a red circle moving left"), deterministic by seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 0.85, 0.2), "blue": (0.2, 0.35, 1.0),
           "yellow": (1.0, 0.9, 0.1), "white": (1.0, 1.0, 1.0)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
BACKGROUND = (0.08, 0.08, 0.1)
DEFAULT_SPEED = 0.03  # travel per frame as a fraction of the frame size
# An object's radius, as a fraction of the shorter side: MIN_RADIUS + U(0, 1) * RADIUS_SPREAD.
MIN_RADIUS, RADIUS_SPREAD = 0.08, 0.06


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    direction: str
    start: tuple[float, float]  # centre (row, col) as a fraction of the frame at the first frame
    size: float                 # radius as a fraction of the shorter side

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


@dataclass(frozen=True)
class ShapeScene:
    objects: tuple[ShapeObject, ...]

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects)


# Each shape's drawn area per squared radius and its centroid's row below the centre per radius
# (from _mask: a circle, a square of half-side 0.85, an upward triangle whose mass sits low).
SHAPE_AREA = {"circle": torch.pi, "square": 1.7 ** 2, "triangle": 2 * 0.58 * 2}
SHAPE_CENTROID_ROW = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def _mask(shape: str, rows: Tensor, cols: Tensor, centre: tuple[Tensor, Tensor], radius: Tensor) -> Tensor:
    """Where ``shape`` covers the pixel grid; ``centre`` and ``radius`` broadcast against it."""
    dy, dx = rows - centre[0], cols - centre[1]
    if shape == "circle":
        return dy.square() + dx.square() <= radius.square()
    if shape == "square":
        half_side = radius * 0.85
        return (dy.abs() <= half_side) & (dx.abs() <= half_side)
    # An upward triangle: below the apex, above the base, inside the two slanted sides.
    return (dy >= -radius) & (dy <= radius) & (dx.abs() <= (dy + radius) * 0.58)


class ShapesVideoDataset(Dataset):
    """Item i is a video (3, frames, height, width) in [-1, 1] and its caption, the same for the
    same (seed, i) on every machine.

    Args:
        length: number of items. frames, height, width: video size (any).
        seed: the dataset seed. two_object_fraction: share of scenes with two objects.
        speed: travel per frame as a fraction of the frame size.
        path_frames: the clip length over which every path stays in view (default: ``frames``).
            Longer clips of the same scenes continue their motion, so objects leave the frame as
            they would in a longer real video: the true continuation of ``path_frames``-long
            training clips.
    """

    def __init__(self, length: int = 1000, frames: int = 17, height: int = 64, width: int = 64, seed: int = 0,
                 two_object_fraction: float = 0.25, speed: float = DEFAULT_SPEED, path_frames: int | None = None):
        path_frames = frames if path_frames is None else path_frames
        if min(length, frames, height, width, path_frames) < 1:
            raise ValueError(f"length, frames, height, width and path_frames must be positive, got "
                             f"{(length, frames, height, width, path_frames)}")
        self.length, self.frames, self.height, self.width = length, frames, height, width
        self.seed, self.two_object_fraction, self.speed = seed, two_object_fraction, speed
        self.path_frames = path_frames

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> ShapeScene:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=gen))]  # noqa: E731
        count = 2 if float(torch.rand((), generator=gen)) < self.two_object_fraction else 1
        objects = []
        for _ in range(count):
            direction = pick(tuple(DIRECTIONS))
            travel = self.speed * (self.path_frames - 1)
            dy, dx = DIRECTIONS[direction]
            # Start so that the whole path stays inside the frame.
            low = [0.2 + max(0.0, -d * travel) for d in (dy, dx)]
            high = [0.8 - max(0.0, d * travel) for d in (dy, dx)]
            start = tuple(float(lo + (hi - lo) * torch.rand((), generator=gen)) if hi > lo else 0.5
                          for lo, hi in zip(low, high))
            objects.append(ShapeObject(pick(SHAPES), pick(tuple(COLOURS)), direction, start,
                                       MIN_RADIUS + RADIUS_SPREAD * float(torch.rand((), generator=gen))))
        return ShapeScene(tuple(objects))

    def render(self, scene: ShapeScene, device: torch.device | str = "cpu") -> Tensor:
        """The video (3, frames, height, width) of ``scene``, drawn on ``device``."""
        return self.render_batch([scene], device)[0]

    def render_batch(self, scenes: list[ShapeScene], device: torch.device | str = "cpu") -> Tensor:
        """The videos (len(scenes), 3, frames, height, width) of ``scenes``, drawn on ``device`` in
        one pass per object slot and shape: a trainer draws its batches where it trains, and a
        loop over scenes would launch a few dozen small kernels per video."""
        if not scenes:
            raise ValueError("scenes must not be empty")
        unit = min(self.height, self.width)
        rows = (torch.linspace(0, 1, self.height, device=device) * self.height / unit).view(1, 1, -1, 1)
        cols = (torch.linspace(0, 1, self.width, device=device) * self.width / unit).view(1, 1, 1, -1)
        time = torch.arange(self.frames, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        video = torch.tensor(BACKGROUND, device=device).view(1, 3, 1, 1, 1).repeat(
            len(scenes), 1, self.frames, self.height, self.width)
        per_scene = lambda values: torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).to(device)  # noqa: E731
        for slot in range(max(len(scene.objects) for scene in scenes)):  # later objects over earlier ones
            drawn = [(i, scene.objects[slot]) for i, scene in enumerate(scenes) if slot < len(scene.objects)]
            index = torch.tensor([i for i, _ in drawn], device=device)
            step = [DIRECTIONS[o.direction] for _, o in drawn]
            centre = ((per_scene([o.start[0] for _, o in drawn]) + per_scene([d[0] * self.speed for d in step]) * time)
                      * self.height / unit,
                      (per_scene([o.start[1] for _, o in drawn]) + per_scene([d[1] * self.speed for d in step]) * time)
                      * self.width / unit)
            radius = per_scene([o.size for _, o in drawn])
            mask = torch.zeros(len(drawn), self.frames, self.height, self.width, dtype=torch.bool, device=device)
            for shape in SHAPES:
                of_shape = per_scene([o.shape == shape for _, o in drawn]).bool()
                mask |= of_shape & _mask(shape, rows, cols, centre, radius)
            colour = per_scene([c for _, o in drawn for c in COLOURS[o.colour]]).view(-1, 3, 1, 1, 1)
            video[index] = torch.where(mask[:, None], colour, video[index])
        return video * 2 - 1

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        scene = self.scene(index)
        return self.render(scene), scene.caption
