"""An attribute classifier for the shapes videos: colour, shape and direction of motion.

It serves twice (DESIGN.md section 5, issue 6): as a text-alignment reward (trained on one seed)
and, trained separately on another seed, as the held-out judge of attribute accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m4v.data import COLOURS, DIRECTIONS, SHAPES, ShapesVideoDataset

ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "direction": tuple(DIRECTIONS)}
_PHRASE = re.compile(r"a (\w+) (\w+) moving (\w+)")


def caption_objects(caption: str) -> list[dict[str, str]]:
    """Every object of a caption by attribute name, in drawing order, e.g. "a red circle moving
    left and a blue square moving up" -> [{"colour": "red", ...}, {"colour": "blue", ...}]."""
    objects = [dict(zip(ATTRIBUTES, match)) for match in _PHRASE.findall(caption)]
    if not objects:
        raise ValueError(f"caption {caption!r} does not describe a shape ('a <colour> <shape> moving <direction>')")
    for values in objects:
        for name, value in values.items():
            if value not in ATTRIBUTES[name]:
                raise ValueError(f"unknown {name} {value!r} in caption {caption!r}")
    return objects


def parse_caption(caption: str) -> dict[str, int]:
    """The first object's attributes as class indices, e.g. "a red circle moving left"."""
    return {name: ATTRIBUTES[name].index(value) for name, value in caption_objects(caption)[0].items()}


class AttributeClassifier(nn.Module):
    """video (batch, 3, frames, H, W) in [-1, 1] -> logits per attribute. A small 3D conv net: the
    frames must carry motion for the direction head, colour and shape come from any frame."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, width, (3, 5, 5), padding=(1, 2, 2)), nn.SiLU(), nn.AvgPool3d((1, 2, 2)),
            nn.Conv3d(width, width, 3, padding=1), nn.SiLU(), nn.AvgPool3d((1, 2, 2)),
            nn.Conv3d(width, 2 * width, 3, padding=1), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(4 * width, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        h = self.features(video)
        # Mean and max pooling: where a shape is, and what it looks like.
        pooled = torch.cat([h.mean((2, 3, 4)), h.amax((2, 3, 4))], dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}


@dataclass
class AttributeScores:
    accuracy: dict[str, float]  # per attribute
    all_correct: float          # share of videos with every attribute right
    confidence: float           # mean probability given to the caption's attributes

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "all_correct": self.all_correct, "confidence": self.confidence}


def train_attribute_classifier(seed: int, steps: int = 300, batch_size: int = 16, frames: int = 9, size: int = 32,
                               lr: float = 2e-3, device: torch.device | str = "cpu") -> AttributeClassifier:
    """Trains a classifier on single-object videos of dataset seed ``seed`` (300 steps: a minute
    on 2 CPU cores; ``device`` runs it elsewhere)."""
    torch.manual_seed(seed)
    data = ShapesVideoDataset(steps * batch_size, frames, size, size, seed=seed, two_object_fraction=0.0)
    model = AttributeClassifier().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        items = [data[step * batch_size + i] for i in range(batch_size)]
        video = torch.stack([v for v, _ in items]).to(device)
        targets = [parse_caption(c) for _, c in items]
        logits = model(video)
        loss = sum(F.cross_entropy(logits[name], torch.tensor([t[name] for t in targets], device=device))
                   for name in ATTRIBUTES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def score_attributes(classifier: AttributeClassifier, videos: Tensor, captions: Sequence[str]) -> AttributeScores:
    """How well videos (batch, 3, frames, H, W) show their captions' attributes."""
    logits = classifier(videos)
    targets = [parse_caption(c) for c in captions]
    accuracy, correct, confidence = {}, torch.ones(len(captions), dtype=torch.bool), []
    for name in ATTRIBUTES:
        target = torch.tensor([t[name] for t in targets])
        hit = logits[name].argmax(1) == target
        accuracy[name] = float(hit.float().mean())
        correct &= hit
        confidence.append(logits[name].softmax(1).gather(1, target[:, None]).squeeze(1))
    return AttributeScores(accuracy, float(correct.float().mean()), float(torch.stack(confidence).mean()))


__all__ = ["AttributeClassifier", "AttributeScores", "caption_objects", "parse_caption", "train_attribute_classifier",
           "score_attributes", "ATTRIBUTES"]
