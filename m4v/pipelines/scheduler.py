"""Pyramidal flow matching (PyramidFlow-style): Euler steps over resolution stages (three by default).

Conventions (the one place they are written down; training and the reward one-step estimate use
the same ones):

- Generation time ``tau`` runs from 0 (pure noise, lowest resolution) to 1 (clean data, full
  resolution). Stage ``s`` owns the window ``[stage_range[s], stage_range[s+1]]``; the model is
  given ``tau`` as its timestep.
- Inside stage s the latent moves on a straight line from its start point ``x_start`` (noise for
  stage 0; the re-noised, upsampled end of the previous stage otherwise) to the clean latent
  ``x_end`` at that resolution: ``x(u) = (1 - u) x_start + u x_end`` with local time
  ``u = (tau - a_s) / (b_s - a_s)``.
- The model predicts the **velocity** ``v = dx/du = x_end - x_start``: it points from noise
  towards data. An Euler step is ``x <- x + (u_next - u) v``, and the one-step clean estimate from
  any point is ``x_end_hat = x + (1 - u) v``.
- At a stage jump the end latent is upsampled 2x (nearest) and re-noised::

      x_start = (1 - sigma_s) * up(x_end) + sigma_s * n,    n = sqrt(rho) up(n_low) + sqrt(1 - rho) n_high

  where ``n_low`` is noise at the coarse resolution (so each 2x2 block shares that part) and
  ``n_high`` is independent at the fine resolution: ``n`` has unit variance and correlation
  ``rho`` inside a block, which keeps the re-noised field from looking blocky. ``sigma_s`` is one
  value for every jump or one per jump into stage s: a larger one lets stage s redraw more of what
  the coarser stage decided.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from m4v.models import history_stages


@dataclass
class PyramidFlowSchedulerConfig:
    stage_range: tuple[float, ...] = (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)
    # The noise level at which stages 1, 2, ... start: one number for all, or one per stage from 1.
    renoise_sigma: float | tuple[float, ...] = 1.0 / 3.0
    block_correlation: float = 0.5         # rho: correlation of the re-noise inside a 2x2 block
    # The sampler's step placement inside a stage: step k of N starts at local time
    # u = t / (t + shift (1 - t)), t = k / N (shift 1: uniform; > 1: more steps near the noise,
    # SD3's timestep shift). Sparse, high-contrast latents (a small bright object on a flat
    # background) are decided at small u, where uniform steps leave one or two steps.
    time_shift: float = 1.0
    # The Euler steps per stage the model was made for (the pipeline's and `m4v generate`'s
    # defaults): of the first frame, and of every later one. Empty: 10 and 5 per stage.
    num_inference_steps: tuple[int, ...] = ()
    video_num_inference_steps: tuple[int, ...] = ()
    # Classifier-free guidance acts on the steps whose generation time tau lies in [lo, hi); the
    # others run the conditional branch alone (guidance in a limited interval, Kynkaenniemi et al.
    # 2024). Guidance near the noise sets what the caption asks for; past it, it inflates objects
    # (the shipped model at CFG 4: ~3x a real object's area).
    guidance_interval: tuple[float, float] = (0.0, 1.0)

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("stage_range", "num_inference_steps", "video_num_inference_steps", "guidance_interval"):
            out[name] = list(getattr(self, name))
        if not isinstance(self.renoise_sigma, (int, float)):
            out["renoise_sigma"] = list(self.renoise_sigma)
        return out


class PyramidFlowScheduler:
    """Euler sampler over the pyramid stages (see the module docstring for the conventions).

    Typical loop for one latent frame::

        x = scheduler.initial_noise(shape_at_stage0, generator)
        for stage in range(scheduler.num_stages):
            if stage:
                x = scheduler.jump(x, generator)
            for tau, u, u_next in scheduler.steps(stage, num_steps[stage]):
                x = scheduler.step(x, model_velocity(x, tau), u, u_next)
    """

    def __init__(self, config: Optional[PyramidFlowSchedulerConfig] = None):
        self.config = config or PyramidFlowSchedulerConfig()
        bounds = self.config.stage_range
        if len(bounds) < 2 or any(b <= a for a, b in zip(bounds, bounds[1:])) or bounds[0] != 0 or bounds[-1] != 1:
            raise ValueError(f"stage_range must rise strictly from 0 to 1, got {bounds}")
        if not self.config.time_shift > 0:
            raise ValueError(f"time_shift must be > 0, got {self.config.time_shift}")
        if not 0 <= self.config.block_correlation <= 1:
            raise ValueError(f"block_correlation must be in [0, 1], got {self.config.block_correlation}")
        sigma = self.config.renoise_sigma
        sigmas = (sigma,) * (len(bounds) - 2) if isinstance(sigma, (int, float)) else tuple(sigma)
        if len(sigmas) != len(bounds) - 2 or not all(0 < value <= 1 for value in sigmas):
            raise ValueError(f"renoise_sigma must be one number or {len(bounds) - 2} (one per stage from 1), "
                             f"each in (0, 1], got {sigma}")
        self.renoise_sigmas = sigmas
        interval = tuple(self.config.guidance_interval)
        if len(interval) != 2 or not 0 <= interval[0] < interval[1] <= 1:
            raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo < hi <= 1, got {interval}")
        for name in ("num_inference_steps", "video_num_inference_steps"):
            steps = getattr(self.config, name)
            if steps and (len(steps) != len(bounds) - 1 or any(not isinstance(s, int) or s < 1 for s in steps)):
                raise ValueError(f"{name} must be empty or {len(bounds) - 1} positive ints (one per stage), "
                                 f"got {steps}")

    def guidance_at(self, tau: float, guidance: float) -> float:
        """The CFG scale of a step at generation time ``tau``: ``guidance`` inside
        ``guidance_interval``, 1 (the conditional branch alone) outside it."""
        lo, hi = self.config.guidance_interval
        return guidance if lo <= tau < hi else 1.0

    def default_steps(self, video: bool = False) -> tuple[int, ...]:
        """Euler steps per stage of the first frame (``video``: of every later frame)."""
        steps = self.config.video_num_inference_steps if video else self.config.num_inference_steps
        return tuple(steps) or ((5 if video else 10),) * self.num_stages

    @property
    def num_stages(self) -> int:
        return len(self.config.stage_range) - 1

    def window(self, stage: int) -> tuple[float, float]:
        return self.config.stage_range[stage], self.config.stage_range[stage + 1]

    def steps(self, stage: int, num_steps: int) -> list[tuple[float, float, float]]:
        """(tau, u, u_next) of each Euler step of ``stage``, placed by ``time_shift`` (1: uniform in u)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        a, b = self.window(stage)
        u = [shift_time(k / num_steps, self.config.time_shift) for k in range(num_steps + 1)]
        return [(a + (b - a) * u[k], u[k], u[k + 1]) for k in range(num_steps)]

    @staticmethod
    def step(x: Tensor, velocity: Tensor, u: float, u_next: float) -> Tensor:
        return x + (u_next - u) * velocity.to(x.dtype)

    @staticmethod
    def clean_estimate(x: Tensor, velocity: Tensor, u: float) -> Tensor:
        """The one-step estimate of the stage's clean latent from x at local time u."""
        return x + (1 - u) * velocity.to(x.dtype)

    @staticmethod
    def initial_noise(shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        return randn(shape, generator, device, dtype)

    def block_noise(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """Unit-variance noise of ``shape`` (..., H, W) with correlation rho inside each 2x2 block."""
        *lead, height, width = shape
        rho = self.config.block_correlation
        coarse = randn((*lead, height // 2, width // 2), generator, device, dtype)
        fine = randn(shape, generator, device, dtype)
        return rho ** 0.5 * upsample(coarse) + (1 - rho) ** 0.5 * fine

    def jump(self, x_end: Tensor, stage: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """The start point of ``stage`` (>= 1) from the end of the one before (2x nearest + re-noise)."""
        if not 1 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [1, {self.num_stages - 1}] for a jump, got {stage}")
        up = upsample(x_end)
        sigma = self.renoise_sigmas[stage - 1]
        return (1 - sigma) * up + sigma * self.block_noise(up.shape, generator, up.device, up.dtype)

    def training_sample(self, x_end: Tensor, stage: int, u: Tensor, generator: Optional[torch.Generator] = None,
                        coarse: Optional[Tensor] = None,
                        source_hint: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_u, tau, target velocity) for flow-matching training at ``stage`` and local times u
        (batch,): the start point is noise for stage 0 and a re-noised coarser copy otherwise, of
        ``x_end`` or of ``coarse`` (at half ``x_end``'s size) where given. ``source_hint`` (stage 0
        only, ``x_end``'s shape) is added to stage 0's noise: the path then runs from that noisy
        hint to ``x_end``."""
        if stage == 0:
            x_start = randn(x_end.shape, generator, x_end.device, x_end.dtype)
            if source_hint is not None:
                if source_hint.shape != x_end.shape:
                    raise ValueError(f"source_hint must have x_end's shape {tuple(x_end.shape)}, "
                                     f"got {tuple(source_hint.shape)}")
                x_start = x_start + source_hint
        elif source_hint is not None:
            raise ValueError(f"source_hint is for stage 0 only, got stage {stage}")
        else:
            if coarse is None:
                coarse = downsample(x_end)
            elif coarse.shape != (*x_end.shape[:-2], x_end.shape[-2] // 2, x_end.shape[-1] // 2):
                raise ValueError(f"coarse must be x_end at half size, got {tuple(coarse.shape)} for "
                                 f"{tuple(x_end.shape)}")
            x_start = self.jump(coarse, stage, generator)
        u_ = u.view(-1, *([1] * (x_end.dim() - 1))).to(x_end.dtype)
        a, b = self.window(stage)
        return (1 - u_) * x_start + u_ * x_end, a + (b - a) * u, x_end - x_start


def shift_time(t, shift: float):
    """``t / (t + shift (1 - t))``: maps [0, 1] onto itself, 0 and 1 fixed; ``shift`` > 1 moves
    every point towards 0 (the noise). A float or a tensor."""
    return t / (t + shift * (1 - t))


def randn(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device | str,
          dtype: torch.dtype) -> Tensor:
    """Standard normal noise on ``device``, drawn where the generator lives (a CPU generator can
    then drive a GPU run, and a seed gives the same noise on every device)."""
    source = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


def history_pyramid(history: Sequence[Tensor], stage: int, num_stages: int) -> list[Tensor]:
    """The history frames (oldest first, each (batch, C, h, w) at full latent size) as the
    transformer sees them at ``stage``: the newest at ``stage``'s size, the next older one a stage
    lower, every older one at stage 0 (``history_stages``). Sampling and training share it."""
    top = num_stages - 1
    return [downsample(h, 2 ** (top - level)) for h, level in zip(history, history_stages(len(history), stage))]


def upsample(x: Tensor) -> Tensor:
    """2x nearest upsampling of the last two dims."""
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def downsample(x: Tensor, factor: int = 2) -> Tensor:
    """Average pooling of the last two dims (the pyramid's coarser copies)."""
    if factor == 1:
        return x
    lead = x.shape[:-2]
    pooled = F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), factor)
    return pooled.reshape(*lead, *pooled.shape[-2:])


__all__ = ["PyramidFlowScheduler", "PyramidFlowSchedulerConfig", "randn", "shift_time", "upsample", "downsample"]
