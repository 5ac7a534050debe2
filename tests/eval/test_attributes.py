"""The attribute metric on known inputs: real videos score high, noise scores low."""

from __future__ import annotations

import pytest
import torch

from m4v.data import ShapesVideoDataset
from m4v.eval import parse_caption, score_attributes, train_attribute_classifier


def test_parse_caption():
    assert parse_caption("a red circle moving left") == {"colour": 0, "shape": 0, "direction": 0}
    assert parse_caption("a blue triangle moving down and a red square moving up")["shape"] == 2
    with pytest.raises(ValueError, match="does not describe"):
        parse_caption("waves at sunset")
    with pytest.raises(ValueError, match="unknown colour"):
        parse_caption("a purple circle moving left")


def test_real_videos_score_high_and_noise_low():
    classifier = train_attribute_classifier(seed=11, steps=60, frames=5)
    held_out = ShapesVideoDataset(48, 5, 32, 32, seed=99, two_object_fraction=0.0)  # another seed
    videos = torch.stack([held_out[i][0] for i in range(48)])
    captions = [held_out[i][1] for i in range(48)]
    real = score_attributes(classifier, videos, captions)
    noise = score_attributes(classifier, torch.rand_like(videos) * 2 - 1, captions)
    assert real.accuracy["colour"] > 0.9 and real.accuracy["direction"] > 0.55
    assert real.confidence > noise.confidence + 0.2
    assert noise.all_correct < 0.15
