"""The procedural shapes dataset: deterministic, and captions that match the pixels."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m4v.data import COLOURS, DIRECTIONS, ShapesVideoDataset


def test_deterministic_by_seed():
    a, b = ShapesVideoDataset(10, seed=3), ShapesVideoDataset(10, seed=3)
    for i in range(10):
        va, ca = a[i]
        vb, cb = b[i]
        assert ca == cb and torch.equal(va, vb)
    assert ShapesVideoDataset(10, seed=4)[0][1] != a[0][1] or not torch.equal(ShapesVideoDataset(10, seed=4)[0][0],
                                                                               a[0][0])


@pytest.mark.parametrize("frames, height, width", [(1, 16, 16), (17, 64, 64), (9, 48, 80)])
def test_any_size(frames, height, width):
    video, caption = ShapesVideoDataset(3, frames, height, width)[1]
    assert video.shape == (3, frames, height, width) and video.min() >= -1 and video.max() <= 1
    assert caption.startswith("a ")


def test_render_batch_matches_each_scene():
    # A batch mixes one- and two-object scenes; each video must be the one its scene draws alone
    # (a two-object scene's second object lies over its first).
    data = ShapesVideoDataset(length=24, frames=5, height=24, width=40, seed=7, two_object_fraction=0.5)
    scenes = [data.scene(i) for i in range(len(data))]
    assert {len(s.objects) for s in scenes} == {1, 2}
    batch = data.render_batch(scenes)
    assert batch.shape == (24, 3, 5, 24, 40)
    for scene, video in zip(scenes, batch):
        assert torch.equal(video, data.render(scene))
        top = data.render_batch([dataclasses.replace(scene, objects=scene.objects[-1:])])[0]
        covered = (top != data.render_batch([dataclasses.replace(scene, objects=())])[0]).any(0)
        assert covered.any() and torch.equal(video[:, covered], top[:, covered])
    with pytest.raises(ValueError, match="scenes"):
        data.render_batch([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_render_matches_cpu():
    # Trainers draw their batches on the GPU; the videos must be the dataset's own.
    data = ShapesVideoDataset(length=16, frames=9, height=40, width=56, seed=3, two_object_fraction=0.5)
    scenes = [data.scene(index) for index in range(len(data))]
    for index, (scene, gpu) in enumerate(zip(scenes, data.render_batch(scenes, "cuda").cpu())):
        cpu = data.render(scene)
        # Pixels on an outline may flip where float rounding differs; at most a handful per clip.
        assert (cpu != gpu).any(0).sum() <= 0.002 * cpu[0].numel(), index


def test_captions_match_colour_and_motion():
    data = ShapesVideoDataset(40, frames=9, height=64, width=64, seed=1, two_object_fraction=0.0)
    for i in range(40):
        video, caption = data[i]
        obj = data.scene(i).objects[0]
        assert caption == f"a {obj.colour} {obj.shape} moving {obj.direction}"
        colour = torch.tensor(COLOURS[obj.colour]) * 2 - 1
        hits = (video - colour.view(3, 1, 1, 1)).abs().amax(0) < 1e-6  # (frames, H, W) pixels of the shape
        assert bool(hits[0].any()) and bool(hits[-1].any())
        rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        centre = lambda m: torch.stack([rows[m].mean(), cols[m].mean()])  # noqa: E731
        moved = centre(hits[-1]) - centre(hits[0])
        dy, dx = DIRECTIONS[obj.direction]
        assert moved[0] * dy + moved[1] * dx > 5  # travelled along the caption's direction
        assert abs(moved[0] * dx - moved[1] * dy) < 2  # and not sideways


def test_two_object_captions():
    data = ShapesVideoDataset(30, seed=2, two_object_fraction=1.0)
    assert all(" and a " in data[i][1] for i in range(5))


def test_longer_clips_continue_the_training_paths():
    """path_frames: a 33-frame clip of the 17-frame scenes starts as the training clip does, then
    keeps the motion going; without it the 33-frame scenes are drawn to fit 33 frames."""
    short = ShapesVideoDataset(12, frames=17, seed=4)
    continued = ShapesVideoDataset(12, frames=33, seed=4, path_frames=17)
    refit = ShapesVideoDataset(12, frames=33, seed=4)
    for i in range(12):
        (video, caption), (long_video, long_caption) = short[i], continued[i]
        assert long_caption == caption and torch.equal(long_video[:, :17], video)
    assert any(not torch.equal(refit[i][0][:, :17], short[i][0]) for i in range(12))


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        ShapesVideoDataset(0)
    with pytest.raises(ValueError, match="path_frames"):
        ShapesVideoDataset(2, path_frames=0)
    with pytest.raises(IndexError):
        ShapesVideoDataset(2).scene(2)
