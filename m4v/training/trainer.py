"""Flow-matching training of the M4V transformer on one autoregressive unit at a time.

Each step draws videos and captions, encodes them to latents, picks a unit (latent frame) and a
pyramid stage for the batch (one batched model call) and a local flow time per sample, corrupts
the history pyramid with noise of level sigma ~ U(0, history_noise_max) per sample, drops a share
of the captions for classifier-free guidance, and regresses the scheduler's velocity (the
convention lives in m4v/pipelines/scheduler.py). AdamW, bf16 autocast, an EMA copy, optional gradient checkpointing,
and atomic checkpoints from which a resumed run continues bit for bit: all randomness comes from
one generator whose state is saved with the weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from m4v.data import ShapesVideoDataset
from m4v.data.shapes import SHAPE_AREA, SHAPE_CENTROID_ROW, SHAPES, ShapeScene
from m4v.eval.quality import box_blur
from m4v.models.configs import config_from_dict
from m4v.pipelines import M4VPipeline
from m4v.pipelines.scheduler import PyramidFlowScheduler, downsample, history_pyramid, randn, shift_time
from m4v.training.lora import has_lora, merged_copy


@dataclass
class TrainConfig:
    out_dir: str = "runs/m4v-tiny"
    # From scratch (no starting pipeline): this transformer preset, a pixel patch autoencoder with
    # these factors fitted to the data by PCA, and a hashing text encoder.
    preset: str = "m4v-tiny"
    # M4VConfig fields that replace the preset's (e.g. {"patch_size": 1}), for a run from scratch.
    model_overrides: dict = dataclasses.field(default_factory=dict)
    spatial_factor: int = 8
    temporal_factor: int = 8
    autoencoder_fit_videos: int = 256
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    lr_schedule: str = "constant"      # or "cosine": from lr down to lr * min_lr_ratio at `steps`
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    frames: int = 17
    height: int = 64
    width: int = 64
    dataset_size: int = 100_000
    history_noise_max: float = 1.0 / 3.0
    caption_dropout: float = 0.1       # share of captions replaced by "" (the CFG unconditional branch)
    # Relative frequency of each pyramid stage in the batches (coarse first); empty = uniform. The
    # coarse stages decide where an object is and what its outline is.
    stage_weights: tuple[float, ...] = ()
    # Empty: keep the pipeline's scheduler. Otherwise its re-noise level at each jump (stages 1, 2,
    # ...; see m4v/pipelines/scheduler.py), saved with the trained pipeline.
    renoise_sigma: tuple[float, ...] = ()
    # Empty: keep the pipeline's pyramid. Otherwise retrain it over these stage windows (0 ... 1;
    # M4VPipeline.restaged): [0, 1] is one stage at full latent size, where a shape is drawable
    # from the first step (at the default pyramid's 4 x 4 stage 0 an object is about one cell).
    stage_range: tuple[float, ...] = ()
    # The local flow time is drawn as shift_time(U(0, 1), time_shift), and the pipeline's sampler
    # places its steps the same way (saved with it). > 1 trains more near the noise, where a sparse
    # scene (one small object) is decided; 1: uniform, and the pipeline's placement is kept.
    time_shift: float = 1.0
    # Share of samples whose stage >= 1 start point is the coarse copy of the same scene drawn with
    # every object's shape changed (colour, place, size and motion kept); the others start from
    # their own scene's copy (until the twenty-first session a whole batch was swapped or not). At
    # sampling time the coarse stages cannot carry a shape (an object is about one 4 x 4 cell), so a model trained
    # only on true coarse copies learns to copy shape from them and never reads the shape word.
    # With source_hint_max, the same copy is also stage 0's hint.
    coarse_shape_swap: float = 0.0
    # The swapped copy covers the true shape's area around its centroid (other_shapes'
    # same_footprint): a plain swap also changes how much colour a coarse cell holds. Measured
    # (benchmarks/NOTES.md, eleventh session): objects stay in view, but shape stays at chance.
    coarse_swap_same_footprint: bool = False
    # > 0: every stage >= 1 start point is the coarse copy (swapped or true) after this many 3 x 3 box
    # blurs (m4v.eval.quality.box_blur; 14 passes ~ a Gaussian of 3 pixels), so its footprint says
    # where an object is and how much of it there is but not which shape it is: the shape must come
    # from the caption, and the copy is never a wrong shape (a swapped copy is; models trained on
    # it drew faint objects).
    coarse_blur_passes: int = 0
    # The stages (>= 1) whose start point is that coarse copy; empty = all of them. The others start
    # from the true video. The shape word is read at the finest stage (m4v probe-text), so a swap
    # there alone may teach it while the coarser stages keep trusting where objects are.
    coarse_stages: tuple[int, ...] = ()
    # > 0: each latent cell's flow-matching error weighs 1 + this x the share of its pixels that
    # show an object (object_cover; normalised per sample): an object covers 1-5% of a frame.
    # Measured (benchmarks/NOTES.md, eighteenth session): at 10 and 30 objects come out over-sharp
    # and shape falls below chance.
    object_loss_weight: float = 0.0
    # > 0: the stage-0 start point is noise plus a faint copy of the sample's coarse-copy scene (its
    # coarse_shape_swap copy, else the true scene), scaled by a strength drawn from U(0, this), and
    # the path runs from there to the true latent. Sampling starts from noise, and its first steps
    # grow a blob whose outline is noise; a model trained only on true paths completes whatever
    # outline it sees at small u, since there the true path's own outline is always right
    # (benchmarks/NOTES.md, eighteenth session). Faint wrong outlines at small u make it take the
    # outline from the caption instead.
    source_hint_max: float = 0.0
    # False: the text encoder stays as loaded, so the trained transformer reads the same text states
    # as its starting pipeline's and can serve as that pipeline's expert for some stages
    # (M4VPipeline.with_stage_expert).
    train_text_encoder: bool = True
    precision: str = "bf16"            # "bf16" (autocast on CUDA) or "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    time_limit_s: float = 0.0          # > 0: checkpoint and stop after this long (run again to resume)

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        with open(path) as f:
            return config_from_dict(cls, json.load(f), f"training config {path}")


def initial_pipeline(config: TrainConfig) -> M4VPipeline:
    """The pipeline a run from scratch starts from (see the TrainConfig fields)."""
    pipe = M4VPipeline.from_preset(config.preset, config.seed, config.spatial_factor, config.temporal_factor,
                                   **config.model_overrides)
    data = ShapesVideoDataset(config.autoencoder_fit_videos, config.frames, config.height, config.width,
                              seed=config.seed + 7919)  # not the training items themselves
    pipe.autoencoder.fit_pca(torch.stack([data[i][0] for i in range(len(data))]))
    return pipe


def other_shapes(scene: ShapeScene, generator: torch.Generator, same_footprint: bool = False,
                 row_per_radius: float = 1.0) -> ShapeScene:
    """``scene`` with each object's shape replaced by one of the other shapes, drawn uniformly.

    same_footprint: also rescale and shift each object so the new shape covers the same area with
    the same centroid (``SHAPE_AREA``, ``SHAPE_CENTROID_ROW``), so that its coarse footprint (mass
    and position) is the true one's and only the outline differs. row_per_radius: one radius in
    units of the frame's height (the shorter side over the height).
    """
    objects = []
    for obj in scene.objects:
        others = [s for s in SHAPES if s != obj.shape]
        new_shape = others[int(torch.randint(len(others), (1,), generator=generator))]
        new = dataclasses.replace(obj, shape=new_shape)
        if same_footprint:
            size = obj.size * math.sqrt(SHAPE_AREA[obj.shape] / SHAPE_AREA[new_shape])
            centroid_row = obj.start[0] + SHAPE_CENTROID_ROW[obj.shape] * obj.size * row_per_radius
            start = (centroid_row - SHAPE_CENTROID_ROW[new_shape] * size * row_per_radius, obj.start[1])
            new = dataclasses.replace(new, size=size, start=start)
        objects.append(new)
    return dataclasses.replace(scene, objects=tuple(objects))


class FlowMatchingLoss(nn.Module):
    """The training objective as a module (so DistributedDataParallel can wrap it): the trainable
    transformer and text encoder, the frozen autoencoder and the scheduler."""

    def __init__(self, pipe: M4VPipeline, history_noise_max: float, bf16: bool, caption_dropout: float = 0.0,
                 stage_weights: tuple[float, ...] = (), coarse_stages: tuple[int, ...] = (),
                 object_loss_weight: float = 0.0, time_shift: float = 1.0, source_hint_max: float = 0.0):
        super().__init__()
        if not 0 <= source_hint_max <= 1:
            raise ValueError(f"source_hint_max must be in [0, 1], got {source_hint_max}")
        self.source_hint_max = source_hint_max
        if not time_shift > 0:
            raise ValueError(f"time_shift must be > 0, got {time_shift}")
        self.time_shift = time_shift
        if not object_loss_weight >= 0:
            raise ValueError(f"object_loss_weight must be >= 0, got {object_loss_weight}")
        self.object_loss_weight = object_loss_weight
        self.transformer, self.text_encoder, self.autoencoder = pipe.transformer, pipe.text_encoder, pipe.autoencoder
        self.autoencoder.requires_grad_(False)
        self.scheduler, self.history_noise_max, self.bf16 = pipe.scheduler, history_noise_max, bf16
        self.caption_dropout = caption_dropout
        stages = self.scheduler.num_stages
        if stage_weights and (len(stage_weights) != stages or min(stage_weights) < 0 or sum(stage_weights) <= 0):
            raise ValueError(f"stage_weights must be {stages} non-negative numbers, not all 0, got {stage_weights}")
        self.stage_weights = torch.tensor(stage_weights, dtype=torch.float64) if stage_weights else None
        if any(not (isinstance(k, int) and 1 <= k < stages) for k in coarse_stages):
            raise ValueError(f"coarse_stages must be stages from 1 to {stages - 1}, got {coarse_stages}")
        self.coarse_stages = frozenset(coarse_stages or range(1, stages))

    def starts_from_copy(self, stage: int) -> bool:
        """Whether ``stage``'s start point is drawn from the batch's copy of its scenes (swapped or
        blurred): a coarse stage's start, or stage 0's source hint."""
        return stage in self.coarse_stages or (stage == 0 and self.source_hint_max > 0)

    def draw_stage(self, generator: torch.Generator) -> int:
        """The batch's pyramid stage: uniform, or by ``stage_weights``."""
        if self.stage_weights is None:
            return int(torch.randint(self.scheduler.num_stages, (1,), generator=generator))
        return int(torch.multinomial(self.stage_weights, 1, generator=generator))

    def forward(self, video: Tensor, captions: list[str], generator: torch.Generator,
                coarse_video: Optional[Tensor] = None, stage: Optional[int] = None) -> Tensor:
        """One random unit and stage per batch (one batched model call), a flow time and a history
        noise level per sample; all draws from ``generator`` (CPU). Captions are dropped to "" with
        probability ``caption_dropout``, which teaches the unconditional branch of CFG.
        ``coarse_video`` (same shape as ``video``): where a stage in ``coarse_stages`` starts
        from, in place of ``video`` itself (the history is always ``video``'s), and the scene of
        stage 0's source hint (``source_hint_max``). ``stage``: the
        batch's pyramid stage when the caller drew it already (``draw_stage``), else drawn here."""
        with torch.no_grad():
            latents = self.autoencoder.encode(video)  # (batch, C, frames, h, w)
        batch, stages, device = video.shape[0], self.scheduler.num_stages, video.device
        keep = torch.rand(batch, generator=generator) >= self.caption_dropout
        text = self.text_encoder.encode([c if k else "" for c, k in zip(captions, keep.tolist())], device)
        unit = int(torch.randint(latents.shape[2], (1,), generator=generator))
        stage = self.draw_stage(generator) if stage is None else stage
        u = torch.rand(batch, generator=generator)
        if self.time_shift != 1.0:
            u = shift_time(u, self.time_shift)
        current = downsample(latents[:, :, unit], 2 ** (stages - 1 - stage))
        coarse = None
        if coarse_video is not None and stage in self.coarse_stages:
            with torch.no_grad():
                coarse = downsample(self.autoencoder.encode(coarse_video)[:, :, unit], 2 ** (stages - stage))
        hint = None
        if stage == 0 and self.source_hint_max > 0:
            strength = (torch.rand(batch, generator=generator) * self.source_hint_max).to(device).view(-1, 1, 1, 1)
            hinted = current
            if coarse_video is not None:
                with torch.no_grad():
                    hinted = downsample(self.autoencoder.encode(coarse_video)[:, :, unit], 2 ** (stages - 1))
            hint = strength * hinted
        x_u, tau, target = self.scheduler.training_sample(current, stage, u.to(device), generator, coarse, hint)
        history = []
        for clean in history_pyramid([latents[:, :, frame] for frame in range(unit)], stage, stages):
            sigma = (torch.rand(batch, generator=generator) * self.history_noise_max).to(device).view(-1, 1, 1, 1)
            history.append((1 - sigma) * clean + sigma * randn(clean.shape, generator, device, clean.dtype))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16 and device.type == "cuda"):
            velocity = self.transformer(x_u, tau, text.states, text.mask, text.pooled, history=history, stage=stage)
        if not self.object_loss_weight:
            return F.mse_loss(velocity.float(), target.float())
        cell = self.autoencoder.spatial_factor * 2 ** (stages - 1 - stage)
        cover = object_cover(video, unit, self.autoencoder.temporal_factor, cell)
        return object_weighted_mse(velocity.float(), target.float(), cover, self.object_loss_weight)


def object_weighted_mse(velocity: Tensor, target: Tensor, cover: Tensor, object_weight: float) -> Tensor:
    """The mean squared error of (batch, C, h, w) velocities, each cell weighted by
    ``1 + object_weight * cover`` (cover: (batch, 1, h, w)) and normalised per sample, so that the
    loss keeps plain MSE's scale (and equals it at weight 0)."""
    weight = 1 + object_weight * cover
    error = (velocity - target).square().mean(1, keepdim=True)
    return ((weight * error).sum((1, 2, 3)) / weight.sum((1, 2, 3))).mean()


def object_cover(video: Tensor, unit: int, temporal_factor: int, cell: int) -> Tensor:
    """(batch, 1, h, w): the share of each latent cell's pixels (``cell`` x ``cell`` of them, over
    the frames of latent frame ``unit``) that show an object rather than the background, for
    ``video`` (batch, 3, frames, H, W) of a causal autoencoder (frame 0 alone, then groups of
    ``temporal_factor``). The background is each video's median colour (objects cover a few
    percent of a frame)."""
    background = video.flatten(2).median(dim=2).values[:, :, None, None, None]
    shows = ((video - background).abs().amax(dim=1) > 0.05).float()  # (batch, frames, H, W)
    start = 0 if unit == 0 else 1 + (unit - 1) * temporal_factor
    frames = shows[:, start:1 if unit == 0 else start + temporal_factor]
    return F.avg_pool2d(frames.mean(1, keepdim=True), cell)


class Trainer:
    """Owns the pipeline's trainable parts (transformer, text encoder), the optimizer, the EMA
    weights, the data and the one random generator; ``run()`` trains to ``config.steps``."""

    def __init__(self, pipe: M4VPipeline, config: TrainConfig):
        if config.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {config.precision!r}")
        if config.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")
        if config.stage_range:
            pipe = pipe.restaged(config.stage_range)
        self.pipe, self.config = pipe.to(config.device), config
        if not 0 <= config.coarse_shape_swap <= 1:
            raise ValueError(f"coarse_shape_swap must be in [0, 1], got {config.coarse_shape_swap}")
        if not (isinstance(config.coarse_blur_passes, int) and config.coarse_blur_passes >= 0):
            raise ValueError(f"coarse_blur_passes must be a non-negative integer, got {config.coarse_blur_passes!r}")
        # Sampler settings the training decides are saved with the trained pipeline.
        sampler = {**({"renoise_sigma": tuple(config.renoise_sigma)} if config.renoise_sigma else {}),
                   **({"time_shift": config.time_shift} if config.time_shift != 1.0 else {})}
        if sampler:
            pipe.scheduler = PyramidFlowScheduler(dataclasses.replace(pipe.scheduler.config, **sampler))
        self.model = pipe.transformer
        if not config.train_text_encoder:
            pipe.text_encoder.requires_grad_(False)
        self.model.gradient_checkpointing = config.gradient_checkpointing
        # The trainable weights only: with LoRA adapters (m4v.training.lora) the rest is frozen.
        self.params = [p for p in [*self.model.parameters(), *pipe.text_encoder.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.ema = [p.detach().clone() for p in self.params]
        self.data = ShapesVideoDataset(config.dataset_size, config.frames, config.height, config.width, config.seed)
        self.objective = FlowMatchingLoss(pipe, config.history_noise_max, config.precision == "bf16",
                                          config.caption_dropout, tuple(config.stage_weights),
                                          tuple(config.coarse_stages), config.object_loss_weight,
                                          config.time_shift, config.source_hint_max)
        # Several processes (torchrun): DDP averages the gradients; each rank draws its own batches.
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.wrapped = (DistributedDataParallel(self.objective, find_unused_parameters=True) if self.world > 1
                        else self.objective)
        self.generator = torch.Generator().manual_seed(config.seed * 1009 + self.rank)
        self.step = 0

    # --------------------------------------------------------------------------------------------

    def batch(self, stage: Optional[int] = None) -> tuple[Tensor, list[str], Optional[Tensor]]:
        """(videos, captions, the coarse stages' videos or None): see ``coarse_shape_swap`` and
        ``coarse_blur_passes``. ``stage``: the batch's pyramid stage, when drawn already; then the
        coarse copy is only rendered if that stage starts from it. Both are drawn on the training
        device."""
        index = [int(i) for i in torch.randint(len(self.data), (self.config.batch_size,), generator=self.generator)]
        scenes = [self.data.scene(i) for i in index]
        device = self.config.device
        video = self.data.render_batch(scenes, device)
        coarse = None
        wanted = stage is None or self.objective.starts_from_copy(stage)
        if self.config.coarse_shape_swap > 0 and wanted:
            swap = (torch.rand(len(scenes), generator=self.generator) < self.config.coarse_shape_swap).nonzero()[:, 0]
            if len(swap):  # only the swapped scenes are drawn again; the others' copy is their video
                row_per_radius = min(self.config.height, self.config.width) / self.config.height
                coarse = video.clone()
                coarse[swap.to(device)] = self.data.render_batch(
                    [other_shapes(scenes[i], self.generator, self.config.coarse_swap_same_footprint, row_per_radius)
                     for i in swap.tolist()], device)
        if self.config.coarse_blur_passes > 0 and wanted:
            coarse = box_blur(video if coarse is None else coarse, self.config.coarse_blur_passes)
        return video, [s.caption for s in scenes], coarse

    def loss(self, video: Tensor, captions: list[str], coarse_video: Optional[Tensor] = None,
             stage: Optional[int] = None) -> Tensor:
        """The flow-matching loss of one batch (through DDP when several processes train)."""
        return self.wrapped(video, captions, self.generator, coarse_video, stage)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based); a function of the step alone, so a
        resumed run follows the same schedule."""
        config = self.config
        if config.lr_schedule == "constant":
            return config.lr
        progress = min(step / max(config.steps - 1, 1), 1.0)
        floor = config.lr * config.min_lr_ratio
        return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def optimize(self, loss: Tensor) -> None:
        """One optimizer step on ``loss``: clipped gradients, AdamW, then the EMA update."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - self.config.ema_decay)
        self.step += 1

    @contextlib.contextmanager
    def ema_weights(self):
        """The EMA weights in place of the trained ones, for the duration (sampling, export)."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            for p, shadow in zip(self.params, self.ema):
                p.copy_(shadow)
        try:
            yield self.pipe
        finally:
            with torch.no_grad():
                for p, saved in zip(self.params, trained):
                    p.copy_(saved)

    def export_pipeline(self, directory: str) -> None:
        """Saves the pipeline users sample from: EMA weights, LoRA adapters merged."""
        with self.ema_weights():
            if has_lora(self.model):
                pipe = copy.copy(self.pipe)
                pipe.transformer = merged_copy(self.model)
                pipe.save_pretrained(directory)
            else:
                self.pipe.save_pretrained(directory)

    def train_step(self) -> dict:
        stage = self.objective.draw_stage(self.generator)
        video, captions, coarse = self.batch(stage)
        loss = self.loss(video, captions, coarse, stage)
        self.optimize(loss)
        return {"loss": float(loss.detach())}

    def run(self, progress: bool = True, step_fn: Optional[Callable[[], dict]] = None) -> list[dict]:
        """Runs ``step_fn`` (default: a flow-matching step; it returns the step's metrics) until
        ``config.steps``, logging to out_dir/metrics.jsonl and checkpointing on schedule."""
        step_fn = step_fn or self.train_step
        os.makedirs(self.config.out_dir, exist_ok=True)
        log_path = os.path.join(self.config.out_dir, "metrics.jsonl")
        records = []
        bar = tqdm(total=self.config.steps, initial=self.step, desc="train", disable=not progress)
        start = time.monotonic()
        while self.step < self.config.steps:
            if self.config.time_limit_s > 0 and time.monotonic() - start > self.config.time_limit_s:
                self.save_checkpoint()
                break
            metrics = step_fn()
            bar.update(1)
            if self.rank == 0 and (self.step % self.config.log_every == 0 or self.step == self.config.steps):
                record = {"step": self.step, **metrics, "lr": self.optimizer.param_groups[0]["lr"],
                          "elapsed_s": round(time.monotonic() - start, 1)}
                records.append(record)
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if isinstance(v, float)})
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save_checkpoint()
        bar.close()
        return records

    # --------------------------------------------------------------------------------------------
    # Checkpoints: one directory, replaced atomically.

    def checkpoint_dir(self) -> str:
        return os.path.join(self.config.out_dir, "checkpoint")

    def save_checkpoint(self) -> None:
        """Rank 0 writes (with every rank's generator state); the others wait for it."""
        states = [self.generator.get_state()]
        if self.world > 1:
            states = [None] * self.world
            dist.all_gather_object(states, self.generator.get_state())
        if self.rank == 0:
            self._write_checkpoint(states)
        if self.world > 1:
            dist.barrier()

    def _write_checkpoint(self, generator_states: list[Tensor]) -> None:
        target = self.checkpoint_dir()
        os.makedirs(self.config.out_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".checkpoint-", dir=self.config.out_dir)
        try:
            state = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(self.params)}
            state.update({f"ema.{i}": p.cpu().contiguous() for i, p in enumerate(self.ema)})
            optimizer = self.optimizer.state_dict()
            for index, values in optimizer["state"].items():
                for name, value in values.items():
                    state[f"optimizer.{index}.{name}"] = torch.as_tensor(value).cpu().contiguous()
            state.update({f"generator.{rank}": g for rank, g in enumerate(generator_states)})
            save_file(state, os.path.join(staging, "state.safetensors"))
            with open(os.path.join(staging, "trainer.json"), "w") as f:
                json.dump({"step": self.step, "param_groups": optimizer["param_groups"],
                           "config": dataclasses.asdict(self.config)}, f, indent=1)
            self.export_pipeline(os.path.join(staging, "pipeline"))
            previous = target + ".old"
            if os.path.exists(target):
                os.replace(target, previous)
            os.replace(staging, target)
            shutil.rmtree(previous, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def load_checkpoint(self) -> bool:
        """Restores the last checkpoint if there is one; returns whether it did."""
        target = self.checkpoint_dir()
        if not os.path.isdir(target) and os.path.isdir(target + ".old"):
            target += ".old"  # killed between the two renames
        if not os.path.isdir(target):
            return False
        state = load_file(os.path.join(target, "state.safetensors"))
        with open(os.path.join(target, "trainer.json")) as f:
            meta = json.load(f)
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(state[f"param.{i}"])
                self.ema[i].copy_(state[f"ema.{i}"])
        optimizer_state: dict = {}
        for key, value in state.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value.to(self.params[int(index)].device) \
                    if name != "step" else value
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": meta["param_groups"]})
        self.generator.set_state(state[f"generator.{self.rank}"])
        self.step = meta["step"]
        return True


__all__ = ["Trainer", "TrainConfig", "FlowMatchingLoss", "initial_pipeline", "object_cover", "object_weighted_mse"]
