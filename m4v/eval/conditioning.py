"""Does the model listen to each caption word? A per-stage probe of the text conditioning.

For single-object scenes, swap one attribute (colour or shape) and measure, at each pyramid stage:

- **data**: how far the clean latent moves when the *video* changes that attribute (same scene
  otherwise): what the attribute is worth at that resolution;
- **model**: how far the model's one-step clean estimate moves when only the *caption word*
  changes, from the same noisy input (the training-time sample of the true scene at local time u).

A model that uses a word has ``model`` of the order of ``data`` once u is large enough to fix where
the object is; ``model`` near 0 with ``data`` large means the word is ignored and the stage copies
that attribute from its coarser input instead. The first latent frame (unit 0, no history) holds one
video frame and so no motion: direction is not probed.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch import Tensor

from m4v.data import ShapesVideoDataset
from m4v.data.shapes import COLOURS, SHAPES
from m4v.pipelines import M4VPipeline
from m4v.pipelines.scheduler import downsample

PROBED = {"colour": tuple(COLOURS), "shape": SHAPES}


def _pairwise_rms(tensors: list[Tensor]) -> float:
    """Root mean square difference over all pairs of same-shaped tensors."""
    squares = [(a - b).float().pow(2).mean() for a, b in itertools.combinations(tensors, 2)]
    return torch.stack(squares).mean().sqrt().item()


@torch.no_grad()
def caption_sensitivity(pipe: M4VPipeline, num_scenes: int = 8, local_times: tuple[float, ...] = (0.0, 0.5),
                        seed: int = 123, height: int = 64, width: int = 64) -> dict:
    """Returns {"stage S": {"data": {attr: rms}, "model @ u=U": {attr: rms}}} (see the module docstring).

    num_scenes single-object scenes of ``ShapesVideoDataset(seed=seed)``; one fixed noise draw per
    stage and local time, shared by every caption, so only the word differs between the estimates.
    """
    if num_scenes < 1:
        raise ValueError(f"num_scenes must be >= 1, got {num_scenes}")
    if not local_times or not all(0.0 <= u < 1.0 for u in local_times):
        raise ValueError(f"local_times must be values in [0, 1), got {local_times}")
    frames = 1 + pipe.autoencoder.temporal_factor  # the shortest clip the autoencoder encodes
    data = ShapesVideoDataset(50 * num_scenes, frames, height, width, seed=seed)
    scenes = [s for s in (data.scene(i) for i in range(len(data))) if len(s.objects) == 1][:num_scenes]
    if len(scenes) < num_scenes:
        raise ValueError(f"only {len(scenes)} single-object scenes among {len(data)}")
    device, stages = pipe.device, pipe.scheduler.num_stages

    def variant(attribute: str, value: str) -> tuple[Tensor, list[str]]:
        """First latent frames (scenes, C, h, w) and captions with ``attribute`` set to ``value``."""
        changed = [dataclasses.replace(s, objects=(dataclasses.replace(s.objects[0], **{attribute: value}),))
                   for s in scenes]
        video = data.render_batch(changed, device)
        return pipe.autoencoder.encode(video)[:, :, 0].float(), [s.caption for s in changed]

    variants = {a: [variant(a, v) for v in values] for a, values in PROBED.items()}
    true_latent = pipe.autoencoder.encode(data.render_batch(scenes, device))[:, :, 0].float()
    report = {}
    for stage in range(stages):
        factor = 2 ** (stages - 1 - stage)
        row = {"data": {a: _pairwise_rms([downsample(lat, factor) for lat, _ in vs]) for a, vs in variants.items()}}
        for u in local_times:
            generator = torch.Generator().manual_seed(seed + 17 * stage)
            x_u, tau, _ = pipe.scheduler.training_sample(downsample(true_latent, factor), stage,
                                                         torch.full((len(scenes),), u, device=device), generator)
            estimates = {}
            for attribute, vs in variants.items():
                outs = []
                for _, captions in vs:
                    text = pipe.text_encoder.encode(captions, device)
                    velocity = pipe.guided_velocity(x_u, float(tau[0]), text, [], stage, 1.0)
                    outs.append(pipe.scheduler.clean_estimate(x_u, velocity, u))
                estimates[attribute] = _pairwise_rms(outs)
            row[f"model @ u={u:g}"] = estimates
        report[f"stage {stage}"] = row
    return report


def format_sensitivity(reports: dict[str, dict]) -> str:
    """A table per model: rows stage x (data, model @ u), columns the probed attributes."""
    lines = ["| model | stage | change of | " + " | ".join(PROBED) + " |", "|---|---|---|" + "---|" * len(PROBED)]
    for name, report in reports.items():
        for stage, row in report.items():
            for what, values in row.items():
                lines.append(f"| {name} | {stage} | {what} | " + " | ".join(f"{values[a]:.3f}" for a in PROBED) + " |")
    return "\n".join(lines)


__all__ = ["caption_sensitivity", "format_sensitivity", "PROBED"]
