"""Per-frame quality and long-rollout drift of generated shapes videos (issue 6, DESIGN.md section 5).

Per-frame statistics:
- a quality critic's probability that the frame is real. The critic learns real frames against
  generic degradations of them (blur, colour cast, noise, washed-out contrast, over-sharpening),
  never against any model's samples, so it favours neither a base model nor its reward-tuned
  version; ``critic_check`` shows it apart on held-out frames;
- background error: how far the frame's median colour is from the dataset's background (colour
  casts and noise, the usual drift of autoregressive rollouts, show up here; objects are small);
- sharpness, the mean absolute Laplacian of the luma, as a ratio to real frames;
- the held-out attribute judge's confidence in the caption's colour and shape, frame by frame;
- the share of frames with an object in view (``object_presence``), and the critic, sharpness and
  judge confidence over those frames only.

``evaluate`` generates videos ``rollout_factor`` times longer than training and reports each
statistic per latent unit, and averaged over the units within the training length ("early") and
beyond it ("late"). ``evaluate_real`` scores real videos of the same captions and length, the
reference: their scenes are drawn as for training clips and continue past them
(``continued_real_frames``), so objects leave the frame late, as the motion the model learned
would take them out, and real sharpness and attribute confidence fall late too; the background
error does not depend on where (or whether) the object is. ``evaluate_reconstruction`` scores
the same real videos after an autoencoder round trip: the best a model on those latents can do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from m4v.data import DEFAULT_SPEED, ShapesVideoDataset
from m4v.data.shapes import BACKGROUND
from m4v.eval.attributes import AttributeClassifier, parse_caption, score_attributes, train_attribute_classifier

_LUMA = (0.299, 0.587, 0.114)


def sharpness(frames: Tensor) -> Tensor:
    """(batch, frames, 3, H, W) in [0, 1] -> (batch, frames) mean |Laplacian| of the luma."""
    luma = (frames * torch.tensor(_LUMA, device=frames.device).view(1, 1, 3, 1, 1)).sum(2, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=frames.device)
    response = F.conv2d(luma.flatten(0, 1), kernel.view(1, 1, 3, 3))
    return response.abs().mean((1, 2, 3)).view(frames.shape[:2])


def background_error(frames: Tensor) -> Tensor:
    """(batch, frames, 3, H, W) in [0, 1] -> (batch, frames): mean over channels of |median colour -
    background colour|."""
    median = frames.flatten(3).median(dim=3).values  # (batch, frames, 3)
    return (median - torch.tensor(BACKGROUND, device=frames.device)).abs().mean(-1)


def object_presence(frames: Tensor, threshold: float = 0.3) -> Tensor:
    """(batch, frames, 3, H, W) in [0, 1] -> (batch, frames): 1 where some pixel differs from the
    background colour by more than ``threshold`` in a channel, i.e. an object is in view. Objects
    that vanish in place show up here; the critic alone cannot see them (empty frames look real)."""
    background = torch.tensor(BACKGROUND, device=frames.device).view(1, 1, 3, 1, 1)
    return ((frames - background).abs().amax(dim=2) > threshold).flatten(2).any(-1).float()


def box_blur(flat: Tensor, passes: int = 1) -> Tensor:
    """``flat`` (..., H, W) after ``passes`` 3 x 3 box filters; the border averages only what is inside
    the frame, so a flat background stays flat. Each pass adds 2/3 pixel^2 of variance per axis, so
    many passes approach a Gaussian of standard deviation sqrt(2 * passes / 3) pixels."""
    planes = flat.reshape(-1, *flat.shape[-2:])
    for _ in range(passes):
        planes = F.avg_pool2d(planes, 3, stride=1, padding=1, count_include_pad=False)
    return planes.view(flat.shape)


def sharpen(frames: Tensor, amount: Tensor | float) -> Tensor:
    """Unsharp masking of frames (..., 3, H, W) in [0, 1]: ``frames + amount * (frames - blur)``,
    clamped. Over-sharpened edges (halos, ringing) are how generated frames of this model differ
    from real ones at the judges' size (1.5-2.9x the real sharpness)."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    amount = torch.as_tensor(amount, dtype=flat.dtype, device=flat.device).reshape(-1, 1, 1, 1)
    return (flat + amount * (flat - box_blur(flat))).clamp(0, 1).view(frames.shape)


def degrade(frames: Tensor, generator: torch.Generator) -> Tensor:
    """Generic corruptions of real frames (batch, frames, 3, H, W) in [0, 1], one per frame: blur,
    a colour cast, noise, lost contrast or over-sharpening, at a random strength."""
    flat = frames.flatten(0, 1)
    n = flat.shape[0]
    kind = torch.randint(5, (n,), generator=generator)
    strength = torch.rand(n, generator=generator).view(n, 1, 1, 1) * 0.5 + 0.5
    blurred = box_blur(flat, passes=3)
    cast = (flat + (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.6).clamp(0, 1)
    noisy = (flat + torch.randn(flat.shape, generator=generator) * 0.15).clamp(0, 1)
    washed = flat.mean((1, 2, 3), keepdim=True) + (flat - flat.mean((1, 2, 3), keepdim=True)) * 0.4
    sharpened = sharpen(flat, 3.0)
    options = torch.stack([blurred, cast, noisy, washed, sharpened])  # (5, n, 3, H, W)
    picked = options[kind, torch.arange(n)]
    return ((1 - strength) * flat + strength * picked).view(frames.shape)


def real_frames(count: int, frames: int, size: int, seed: int, speed: float = DEFAULT_SPEED,
                path_frames: int | None = None, two_object_fraction: float = 0.0) -> tuple[Tensor, list[str]]:
    """``count`` dataset videos (single-object unless ``two_object_fraction``) as (count, frames,
    3, size, size) in [0, 1], their paths in view for ``path_frames`` frames (default: all); at the
    default speed an object whose path does not fit the clip leaves the frame."""
    data = ShapesVideoDataset(count, frames, size, size, seed=seed, two_object_fraction=two_object_fraction,
                              speed=speed, path_frames=path_frames)
    items = [data[i] for i in range(count)]
    return torch.stack([(v.permute(1, 0, 2, 3) + 1) / 2 for v, _ in items]), [c for _, c in items]


def train_quality_critic(real: Tensor, steps: int = 300, seed: int = 0):
    """The evaluation critic (a ``RealismCritic``): real frames (batch, frames, 3, H, W) against
    ``degrade``d copies of them, frame by frame. A corruption that leaves its frame unchanged
    (blurring, sharpening or washing out an empty background) is left out: labelled fake, it would
    teach the critic that real frames are fake, and pull every score towards 0.5."""
    from m4v.rewards.builtin import train_realism_critic  # m4v.rewards imports m4v.eval

    frames, degraded = degraded_frames(real, seed)
    return train_realism_critic(frames, degraded, steps=steps, seed=seed)


def degraded_frames(real: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Real frames (batch, frames, 3, H, W) as (n, 1, 3, H, W) one-frame clips, and the ``degrade``d
    copies that differ from their frame (some pixel by more than 1e-3)."""
    frames = real.flatten(0, 1)[:, None]
    degraded = degrade(frames, torch.Generator().manual_seed(seed))
    return frames, degraded[(degraded - frames).abs().flatten(1).amax(1) > 1e-3]


@torch.no_grad()
def critic_check(critic, real: Tensor, seed: int) -> dict[str, float]:
    """The critic's mean P(real) on held-out real frames and on their ``degraded_frames``: how far
    apart it keeps them says how much its scores can be read."""
    frames, degraded = degraded_frames(real, seed)
    return {"real": float(torch.sigmoid(critic(frames)).mean()),
            "degraded": float(torch.sigmoid(critic(degraded)).mean())}


@dataclass
class DriftReport:
    """Per latent unit (index 0 is the first frame) and averaged early / late."""

    critic: list[float]          # mean P(real) of the quality critic
    background: list[float]      # background error
    sharpness: list[float]       # ratio to real frames
    attributes: list[float]      # judge's mean confidence in the caption's colour and shape
    presence: list[float]        # share of frames with an object in view
    # The same three over the frames with an object in view only (None: no such frame).
    critic_in_view: list[float | None]
    sharpness_in_view: list[float | None]
    attributes_in_view: list[float | None]
    early: dict[str, float | None]  # None: an *_in_view statistic of a span with no object in view
    late: dict[str, float | None]

    def as_dict(self) -> dict:
        return asdict(self)


def frame_attribute_confidence(judge: AttributeClassifier, frames: Tensor, captions: Sequence[str]) -> Tensor:
    """(batch, frames, 3, H, W) -> (batch, frames): the judge's mean probability of the caption's
    colour and shape, each frame judged alone."""
    batch, count = frames.shape[:2]
    logits = judge((frames * 2 - 1).flatten(0, 1)[:, :, None])
    targets = [parse_caption(c) for c in captions]
    total = torch.zeros(batch * count, device=frames.device)
    for name in ("colour", "shape"):
        target = torch.tensor([t[name] for t in targets], device=frames.device).repeat_interleave(count)
        total += logits[name].softmax(1).gather(1, target[:, None]).squeeze(1)
    return (total / 2).view(batch, count)


@torch.no_grad()
def drift_report(videos: Tensor, captions: Sequence[str], critic, judge: AttributeClassifier,
                 real_sharpness: float, temporal_factor: int, train_units: int) -> DriftReport:
    """videos (batch, frames, 3, H, W) in [0, 1] at the judges' resolution."""
    per_frame = {"critic": torch.sigmoid(critic(videos)), "background": background_error(videos),
                 "sharpness": sharpness(videos) / real_sharpness,
                 "attributes": frame_attribute_confidence(judge, videos, captions),
                 "presence": object_presence(videos)}
    units = 1 + (videos.shape[1] - 1) // temporal_factor
    bounds = [(0, 1)] + [(1 + (k - 1) * temporal_factor, 1 + k * temporal_factor) for k in range(1, units)]
    series = {name: [float(values[:, a:b].mean()) for a, b in bounds] for name, values in per_frame.items()}
    early = {name: sum(v[:train_units]) / len(v[:train_units]) for name, v in series.items()}
    late = {name: sum(v[train_units:]) / max(1, len(v[train_units:])) for name, v in series.items()}
    # Objects leave the frame late (real ones too) and take their edges and attributes with them:
    # the statistics over the frames that show an object separate drift from absence.
    in_view = per_frame["presence"] > 0
    split = bounds[min(train_units, units) - 1][1]
    for name in ("critic", "sharpness", "attributes"):
        values = per_frame[name]
        series[f"{name}_in_view"] = [_masked_mean(values[:, a:b], in_view[:, a:b]) for a, b in bounds]
        early[f"{name}_in_view"] = _masked_mean(values[:, :split], in_view[:, :split])
        late[f"{name}_in_view"] = _masked_mean(values[:, split:], in_view[:, split:])
    return DriftReport(series["critic"], series["background"], series["sharpness"], series["attributes"],
                       series["presence"], series["critic_in_view"], series["sharpness_in_view"],
                       series["attributes_in_view"], early, late)


def _masked_mean(values: Tensor, mask: Tensor) -> float | None:
    return float(values[mask].mean()) if mask.any() else None


@dataclass
class EvalConfig:
    train_frames: int = 17       # the training clip length; rollouts run rollout_factor times longer
    rollout_factor: int = 2
    size: int = 64
    judge_size: int = 32         # the judges see frames at this size
    judge_frames: int = 9        # attribute accuracy on the first judge_frames frames
    num_videos: int = 48
    # Euler steps per stage of the first / later frames; empty: each model's own, as `m4v generate`.
    steps: tuple[int, ...] = ()
    video_steps: tuple[int, ...] = ()
    guidance: float = 4.0
    video_guidance: float = 3.0
    seed: int = 1234
    judge_seed: int = 1          # held out: the reward classifier trains on seed 0
    judge_steps: int = 900        # shape needs it: 300 steps reach 0.64 on real clips, 900 reach 0.90
    critic_steps: int = 300


class Judges:
    """The held-out attribute judge, the quality critic and the real-data sharpness (of frames with
    the object in view), built once."""

    def __init__(self, config: EvalConfig, device: torch.device | str = "cpu"):
        """``device``: where the attribute judge trains (it scores on the CPU, like the critic)."""
        self.config = config
        self.judge = train_attribute_classifier(config.judge_seed, steps=config.judge_steps, frames=config.judge_frames,
                                                size=config.judge_size, device=device).cpu()
        # Real frames across the whole rollout length (every 4th), objects leaving the frame included.
        real = continued_real_frames(config, 64, config.judge_size, seed=config.judge_seed + 100)[0][:, ::4]
        self.critic = train_quality_critic(real, steps=config.critic_steps, seed=config.judge_seed)
        held_out = continued_real_frames(config, 16, config.judge_size, seed=config.judge_seed + 200)[0][:, ::4]
        self.critic_check = critic_check(self.critic, held_out, seed=config.judge_seed + 200)
        self.real_sharpness = float(sharpness(real[:, :config.judge_frames // 4 + 1]).mean())  # objects in view


def continued_real_frames(config: EvalConfig, count: int, size: int, seed: int) -> tuple[Tensor, list[str]]:
    """Real videos of the rollout length whose scenes are drawn as for training clips: each
    object's path fits ``train_frames``, and the clip continues it, so objects leave the frame
    when the motion a training clip shows would take them out. This is what a drift-free model's
    long rollouts should look like."""
    return real_frames(count, rollout_frames(config), size, seed=seed, path_frames=config.train_frames)


def rollout_frames(config: EvalConfig) -> int:
    return 1 + (config.train_frames - 1) * config.rollout_factor


def eval_captions(config: EvalConfig) -> list[str]:
    """The held-out captions: single objects of dataset seed ``config.seed``, drawn as
    ``evaluate_real`` draws its scenes."""
    return continued_real_frames(config, config.num_videos, 8, seed=config.seed)[1]


def score_videos(videos: Tensor, captions: Sequence[str], judges: Judges, temporal_factor: int,
                 train_units: int) -> dict:
    """Attribute accuracy (first ``judge_frames`` frames) and drift of videos (batch, frames, 3, H, W)
    in [0, 1], seen at the judges' size."""
    config = judges.config
    size = (config.judge_size,) * 2
    video = F.interpolate(videos.flatten(0, 1), size=size, mode="area").view(*videos.shape[:3], *size)
    clip = video[:, :config.judge_frames].permute(0, 2, 1, 3, 4) * 2 - 1  # (batch, 3, frames, H, W)
    attributes = score_attributes(judges.judge, clip, captions)
    drift = drift_report(video, captions, judges.critic, judges.judge, judges.real_sharpness, temporal_factor,
                         train_units)
    return {"frames": videos.shape[1], "videos": len(captions), "attributes": attributes.as_dict(),
            "drift": drift.as_dict()}


def evaluate(pipe, judges: Judges, guidance: tuple[float, float] | None = None, progress: bool = False) -> dict:
    """Attribute accuracy and drift of ``pipe`` on the held-out captions, generated
    ``rollout_factor`` times longer than training. ``guidance``: the CFG scales of the first and the
    later frames (default: the config's, those of ``m4v generate``)."""
    config = judges.config
    first_guidance, later_guidance = guidance or (config.guidance, config.video_guidance)
    captions, frames = eval_captions(config), rollout_frames(config)
    generator = torch.Generator(device=pipe.device).manual_seed(config.seed)
    videos = []
    for start in range(0, len(captions), 16):
        out = pipe(captions[start:start + 16], num_frames=frames, height=config.size, width=config.size,
                   num_inference_steps=config.steps or None, video_num_inference_steps=config.video_steps or None,
                   guidance_scale=first_guidance, video_guidance_scale=later_guidance,
                   generator=generator, progress=progress)
        videos.append(torch.from_numpy(out).permute(0, 1, 4, 2, 3))  # (batch, frames, 3, H, W)
    ae = pipe.autoencoder
    return score_videos(torch.cat(videos), captions, judges, ae.temporal_factor, ae.latent_frames(config.train_frames))


def evaluate_real(judges: Judges, temporal_factor: int = 4) -> dict:
    """The same scores for real dataset videos of the held-out captions (the reference of each
    metric), and the quality critic's check on held-out frames."""
    config = judges.config
    videos, captions = continued_real_frames(config, config.num_videos, config.size, seed=config.seed)
    scores = score_videos(videos, captions, judges, temporal_factor, 1 + (config.train_frames - 1) // temporal_factor)
    return {**scores, "critic_check": judges.critic_check}


def evaluate_reconstruction(judges: Judges, autoencoder) -> dict:
    """The same scores for the real videos after a round trip through ``autoencoder``: what a
    model that sampled the data's latents exactly would score, the ceiling its autoencoder sets
    (the shipped one keeps shape: the judge's shape accuracy on its round trips is that of the
    real videos)."""
    config = judges.config
    videos, captions = continued_real_frames(config, config.num_videos, config.size, seed=config.seed)
    weight = next(autoencoder.parameters())
    with torch.no_grad():
        clips = videos.permute(0, 2, 1, 3, 4).to(weight.device, weight.dtype) * 2 - 1  # (batch, 3, frames, H, W)
        decoded = autoencoder.decode(autoencoder.encode(clips)).float().clamp(-1, 1)
    round_trip = ((decoded + 1) / 2).permute(0, 2, 1, 3, 4).cpu()
    return score_videos(round_trip, captions, judges, autoencoder.temporal_factor,
                        autoencoder.latent_frames(config.train_frames))


__all__ = ["sharpness", "background_error", "object_presence", "degrade", "sharpen", "train_quality_critic",
           "critic_check", "degraded_frames", "drift_report", "DriftReport", "EvalConfig", "Judges", "evaluate",
           "evaluate_real", "evaluate_reconstruction", "score_videos", "eval_captions", "real_frames",
           "continued_real_frames"]
