"""Text-to-video generation with M4V: autoregressive over latent frames, pyramidal within each.

Multi-GPU: every model evaluation goes through ``M4VPipeline.guided_velocity``, which runs the
conditional and unconditional (CFG) branches as one batch. That is the single place to split them
over two devices (each holds a replica and gets half the batch), and the place where
sequence-parallel scanning slots in later: the MM-DiM scan of one long sequence can be cut into
contiguous pieces over ranks that pass the (d_inner x d_state) scan state forward
(``selective_scan(..., initial_state=..., return_last_state=True)`` already exposes it), instead
of exchanging keys and values as ring attention does. Neither is switched on here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from m4v.autoencoders import PixelPatchAutoencoder, VideoAutoencoder, load_autoencoder
from m4v.layers import MambaMixer
from m4v.models import M4VTransformer, StageExperts, get_config, load_transformer
from m4v.pipelines.scheduler import PyramidFlowScheduler, PyramidFlowSchedulerConfig, history_pyramid
from m4v.text import HashingTextEncoder, TextEmbeddings, TextEncoder, load_text_encoder

OUTPUT_TYPES = ("np", "pil", "latent")


class M4VPipeline:
    """prompt -> text encoder -> (per latent frame: pyramid stages x Euler steps of the transformer
    with classifier-free guidance) -> autoencoder decode -> frames.

    Args:
        transformer: the ``M4VTransformer``, or ``StageExperts`` (one per pyramid stage group).
        text_encoder: a ``TextEncoder`` whose state and pooled sizes match the transformer's.
        autoencoder: a ``VideoAutoencoder`` with the transformer's latent channels.
        scheduler: the ``PyramidFlowScheduler`` (default config if None).
    """

    def __init__(self, transformer: M4VTransformer | StageExperts, text_encoder: TextEncoder,
                 autoencoder: VideoAutoencoder, scheduler: Optional[PyramidFlowScheduler] = None):
        config = transformer.config
        if text_encoder.state_dim != config.text_dim or text_encoder.pooled_dim != config.pooled_dim:
            raise ValueError(f"text encoder gives ({text_encoder.state_dim}, {text_encoder.pooled_dim}) but the "
                             f"transformer expects ({config.text_dim}, {config.pooled_dim})")
        if text_encoder.max_length > config.max_text_len:
            raise ValueError(f"text encoder max_length {text_encoder.max_length} exceeds the transformer's "
                             f"{config.max_text_len}")
        if autoencoder.latent_channels != config.latent_channels:
            raise ValueError(f"autoencoder has {autoencoder.latent_channels} latent channels, the transformer "
                             f"{config.latent_channels}")
        self.transformer, self.text_encoder, self.autoencoder = transformer, text_encoder, autoencoder
        self.scheduler = scheduler or PyramidFlowScheduler()
        if self.scheduler.num_stages != config.num_stages:
            raise ValueError(f"scheduler has {self.scheduler.num_stages} stages, the transformer {config.num_stages}")

    # --------------------------------------------------------------------------------------------
    # Construction and files.

    @classmethod
    def from_preset(cls, preset: str = "m4v-tiny", seed: int = 0, spatial_factor: int = 8,
                    temporal_factor: int = 8, **overrides) -> "M4VPipeline":
        """A transformer preset (``overrides``: M4VConfig fields replacing its own) + pixel patch
        autoencoder + hashing text encoder, with random weights (CPU tests, and the start of
        training from scratch)."""
        torch.manual_seed(seed)
        config = get_config(preset, **overrides)
        transformer = M4VTransformer(config)
        with torch.no_grad():  # break adaLN-Zero so that an untrained model still draws something
            for name, p in transformer.named_parameters():
                if p.dim() >= 2 or name.endswith("gate"):
                    p.normal_(0, 0.02)
        # Mamba's A_log, conv and dt_proj weights are 2-D too, and N(0, 0.02) there gives every
        # state the same decay (A = -1) and a dt that barely depends on the input: a scan neither
        # multi-scale nor selective, which training does not undo (the first shipped model's A_log
        # was still 0 +- 0.04 after 6,850 steps). They get Mamba-1's init back.
        for module in transformer.modules():
            if isinstance(module, MambaMixer):
                module.reset_ssm_parameters()
        text = HashingTextEncoder(config.text_dim, config.pooled_dim, config.max_text_len)
        autoencoder = PixelPatchAutoencoder(config.latent_channels, spatial_factor, temporal_factor)
        return cls(transformer, text, autoencoder)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """transformer/, text_encoder/, autoencoder/ (config.json + model.safetensors each) and
        scheduler.json."""
        self.transformer.save_pretrained(os.path.join(directory, "transformer"))
        self.text_encoder.save_pretrained(os.path.join(directory, "text_encoder"))
        self.autoencoder.save_pretrained(os.path.join(directory, "autoencoder"))
        with open(os.path.join(directory, "scheduler.json"), "w") as f:
            json.dump(self.scheduler.config.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str = "cpu",
                        dtype: Optional[torch.dtype] = None) -> "M4VPipeline":
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"model directory {directory} does not exist")
        transformer = load_transformer(os.path.join(directory, "transformer"), device, dtype)
        text = load_text_encoder(os.path.join(directory, "text_encoder"), device)
        autoencoder = load_autoencoder(os.path.join(directory, "autoencoder"), device)
        scheduler_path = os.path.join(directory, "scheduler.json")
        scheduler = None
        if os.path.isfile(scheduler_path):
            with open(scheduler_path) as f:
                values = json.load(f)
            for name in ("stage_range", "num_inference_steps", "video_num_inference_steps", "guidance_interval"):
                if name in values:
                    values[name] = tuple(values[name])
            if isinstance(values.get("renoise_sigma"), list):
                values["renoise_sigma"] = tuple(values["renoise_sigma"])
            scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(**values))
        return cls(transformer, text, autoencoder, scheduler)

    def restaged(self, stage_range: Sequence[float]) -> "M4VPipeline":
        """This model over another pyramid, to train from: the scheduler gets ``stage_range`` (0 to
        1, one window per stage; sampler defaults reset), the transformer that many stages. Each new
        stage keeps the register of the old stage at its resolution (counted from the finest; a
        pyramid deeper than the old one repeats the coarsest register); every other weight is
        copied. The text encoder and autoencoder are shared, not copied.

        A model whose coarsest stage cannot hold what the caption says (a shape at 4 x 4 latents)
        can be retrained on fewer, finer stages from its own weights.
        """
        if isinstance(self.transformer, StageExperts):
            raise ValueError("restaged needs a single transformer, not stage experts")
        stage_range = tuple(float(b) for b in stage_range)
        stages = len(stage_range) - 1
        config = dataclasses.replace(self.scheduler.config, stage_range=stage_range, num_inference_steps=(),
                                     video_num_inference_steps=())
        sigma = config.renoise_sigma
        if not isinstance(sigma, (int, float)):  # one per jump: the finest jumps keep theirs
            jumps = stages - 1
            config = dataclasses.replace(config, renoise_sigma=tuple(sigma)[len(sigma) - jumps:]
                                         if jumps <= len(sigma) else sigma[0])
        scheduler = PyramidFlowScheduler(config)
        old = self.transformer
        transformer = M4VTransformer(dataclasses.replace(old.config, num_stages=stages)).to(self.device, self.dtype)
        state = old.state_dict()
        offset = old.config.num_stages - stages
        keep = torch.tensor([max(offset + stage, 0) for stage in range(stages)])
        for name, tensor in state.items():
            if name.endswith("mamba.registers"):
                state[name] = tensor[keep.to(tensor.device)]
        transformer.load_state_dict(state)
        return M4VPipeline(transformer, self.text_encoder, self.autoencoder, scheduler)

    def with_stage_expert(self, expert: M4VTransformer, stages: Sequence[int]) -> "M4VPipeline":
        """This pipeline with ``expert`` serving pyramid ``stages`` (the others keep their
        transformer). The expert must have been trained against this pipeline's text encoder
        (``TrainConfig.train_text_encoder`` false); modules are shared, not copied."""
        if not isinstance(expert, M4VTransformer):
            raise TypeError(f"expert must be an M4VTransformer, got {type(expert).__name__}")
        current = self.transformer
        experts, route = (list(current.experts), list(current.route)) if isinstance(current, StageExperts) else (
            [current], [0] * current.config.num_stages)
        stages = sorted(set(int(s) for s in stages))
        if not stages or stages[0] < 0 or stages[-1] >= len(route):
            raise ValueError(f"stages must be pyramid stages in [0, {len(route)}), got {stages}")
        for stage in stages:
            route[stage] = len(experts)
        experts.append(expert)
        used = sorted(set(route))  # drop the experts no stage runs any more
        transformer = StageExperts([experts[i] for i in used], [used.index(r) for r in route])
        return M4VPipeline(transformer, self.text_encoder, self.autoencoder, self.scheduler)

    def to(self, device: torch.device | str) -> "M4VPipeline":
        for module in (self.transformer, self.text_encoder, self.autoencoder):
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # --------------------------------------------------------------------------------------------
    # Generation.

    def size_multiple(self) -> int:
        """Height and width must be multiples of this: autoencoder x patch x the pyramid's 2^(S-1)."""
        config = self.transformer.config
        return self.autoencoder.spatial_factor * config.patch_size * 2 ** (config.num_stages - 1)

    def _check_steps(self, name: str, steps) -> tuple[int, ...]:
        stages = self.scheduler.num_stages
        if isinstance(steps, int):
            steps = (steps,) * stages
        steps = tuple(steps)
        if len(steps) != stages or any(not isinstance(s, int) or s < 1 for s in steps):
            raise ValueError(f"{name} must be {stages} positive ints (one per stage), got {steps}")
        return steps

    def guided_velocity(self, x: Tensor, tau: float, text: TextEmbeddings, history: list[Tensor], stage: int,
                  guidance: float) -> Tensor:
        """One batched transformer call for both CFG branches (see the module docstring)."""
        guided = guidance != 1.0
        batch = x.shape[0]
        inputs = torch.cat([x, x]) if guided else x
        hist = [torch.cat([h, h]) if guided else h for h in history]
        timestep = torch.full((inputs.shape[0],), tau, device=x.device)
        states, mask, pooled = (text.states, text.mask, text.pooled) if guided else (
            text.states[:batch], text.mask[:batch], text.pooled[:batch])
        velocity = self.transformer(inputs.to(self.dtype), timestep, states.to(self.dtype), mask,
                                    pooled.to(self.dtype), history=[h.to(self.dtype) for h in hist],
                                    stage=stage).float()
        if not guided:
            return velocity
        cond, uncond = velocity.chunk(2)
        return uncond + guidance * (cond - uncond)

    @torch.no_grad()
    def sample_unit(self, text: TextEmbeddings, history: list[Tensor], shape: tuple[int, int, int, int],
                    steps: Sequence[int], guidance: float, generator: Optional[torch.Generator] = None,
                    on_step: Optional[Callable[[dict], None]] = None, stop_before: Optional[int] = None) -> Tensor:
        """One autoregressive unit (latent frame): every pyramid stage's Euler steps, with CFG.

        Args:
            text: ``text_encoder.encode(prompts + negatives)`` (the negatives are used when guidance != 1).
            history: the earlier latent frames, each (batch, C, h, w) at full latent size.
            shape: (batch, C, h, w) of the unit at full latent size.
            steps: Euler steps per stage. guidance: the CFG scale (1 = off), applied inside the
                scheduler's ``guidance_interval``.
            on_step: called after every step with {"stage", "step", "tau", "latent"}.
            stop_before: return the top stage's latent before its step ``stop_before`` (reward
                tuning takes that step itself, with gradients).
        Returns:
            (batch, C, h, w) float32.
        """
        stages = self.scheduler.num_stages
        scale = 2 ** (stages - 1)
        batch, channels, height, width = shape
        x = self.scheduler.initial_noise((batch, channels, height // scale, width // scale), generator, self.device)
        for stage in range(stages):
            if stage:
                x = self.scheduler.jump(x, stage, generator)
            pyramid = history_pyramid(history, stage, stages)
            for step, (tau, u, u_next) in enumerate(self.scheduler.steps(stage, steps[stage])):
                if stage == stages - 1 and step == stop_before:
                    return x
                scale = self.scheduler.guidance_at(tau, guidance)
                velocity = self.guided_velocity(x, tau, text, pyramid, stage, scale)
                x = self.scheduler.step(x, velocity, u, u_next)
                if on_step is not None:
                    on_step({"stage": stage, "step": step, "tau": tau, "latent": x})
        return x

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], negative_prompt: Optional[str | Sequence[str]] = None,
                 num_frames: int = 33, height: int = 64, width: int = 64,
                 num_inference_steps: Optional[int | Sequence[int]] = None,
                 video_num_inference_steps: Optional[int | Sequence[int]] = None, guidance_scale: float = 4.0,
                 video_guidance_scale: float = 3.0, generator: Optional[torch.Generator] = None,
                 output_type: str = "np", callback: Optional[Callable[[dict], None]] = None,
                 progress: bool = True):
        """Generates videos.

        Args:
            prompt: one prompt or a list (the batch). negative_prompt: the unconditional text of CFG
                ("" by default), one or one per prompt.
            num_frames: 1 + temporal_factor * k (e.g. 1 + 8 k). height, width: multiples of
                ``size_multiple()``.
            num_inference_steps: Euler steps per pyramid stage for the first frame (one int: the
                same for every stage); video_num_inference_steps: the same for every later frame.
                None: the model's own (``scheduler.default_steps``).
            guidance_scale, video_guidance_scale: CFG scales for the first / later frames (1 = off).
            generator: a torch.Generator for reproducible noise (on the pipeline's device).
            output_type: "np" -> (batch, frames, H, W, 3) float32 in [0, 1]; "pil" -> per prompt a
                list of PIL images; "latent" -> (batch, C, latent frames, H/s, W/s).
            callback: called after every step with {"frame", "stage", "step", "tau", "latent"}.
            progress: show a tqdm bar over all steps.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string or a list of non-empty strings")
        negatives = [""] * len(prompts) if negative_prompt is None else (
            [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt))
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        latent_frames = self.autoencoder.latent_frames(num_frames)  # checks the frame rule
        multiple = self.size_multiple()
        if height < multiple or width < multiple or height % multiple or width % multiple:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {height} x {width}")
        first_steps = self._check_steps("num_inference_steps", self.scheduler.default_steps()
                                        if num_inference_steps is None else num_inference_steps)
        later_steps = self._check_steps("video_num_inference_steps", self.scheduler.default_steps(video=True)
                                        if video_num_inference_steps is None else video_num_inference_steps)

        text = self.text_encoder.encode(prompts + negatives, self.device)
        batch, channels = len(prompts), self.autoencoder.latent_channels
        top = (height // self.autoencoder.spatial_factor, width // self.autoencoder.spatial_factor)
        history: list[Tensor] = []
        total = sum(first_steps) + (latent_frames - 1) * sum(later_steps)
        bar = tqdm(total=total, desc="m4v", unit="step", disable=not progress)
        for frame in range(latent_frames):

            def on_step(info: dict, frame=frame) -> None:
                bar.update(1)
                if callback is not None:
                    callback({"frame": frame, **info})

            history.append(self.sample_unit(text, history, (batch, channels, *top),
                                            first_steps if frame == 0 else later_steps,
                                            guidance_scale if frame == 0 else video_guidance_scale,
                                            generator, on_step))
        bar.close()
        latents = torch.stack(history, dim=2)
        if output_type == "latent":
            return latents
        video = self.autoencoder.decode(latents.to(next(self.autoencoder.parameters()).dtype))
        frames = ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()
        if output_type == "np":
            return frames.astype(np.float32)
        from PIL import Image

        return [[Image.fromarray((f * 255 + 0.5).astype(np.uint8)) for f in sample] for sample in frames]


__all__ = ["M4VPipeline"]
