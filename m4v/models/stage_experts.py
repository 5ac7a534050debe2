"""Pyramid stages served by different M4V transformers (stage experts).

A pyramid's coarse stages decide where an object is, what colour it has and how it moves; the
later ones draw its outline. A transformer can be trained for some stages only, e.g. on starts
that force it to read the caption (``coarse_shape_swap``), while the other stages keep the weights
that place objects well (measured: benchmarks/NOTES.md, twenty-first session). ``StageExperts``
runs each stage through its expert, behind the ``M4VTransformer`` call signature, and saves as one
config.json + model.safetensors.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from m4v._weights import CONFIG_NAME, load_module, save_module
from m4v.models.configs import M4VConfig
from m4v.models.m4v import M4VTransformer

KIND = "stage_experts"


class StageExperts(nn.Module):
    """Stage ``s`` runs ``experts[route[s]]``.

    Args:
        experts: M4V transformers of one config (they read the same text encoder's states: train
            an expert with ``TrainConfig.train_text_encoder`` false).
        route: one expert index per pyramid stage (coarse first); every expert must serve a stage.
    """

    def __init__(self, experts: Sequence[M4VTransformer], route: Sequence[int]):
        super().__init__()
        if len(experts) < 1:
            raise ValueError("experts must not be empty")
        config = experts[0].config
        for index, expert in enumerate(experts[1:], 1):
            if expert.config != config:
                raise ValueError(f"experts[{index}] has another config than experts[0]: {expert.config} vs {config}")
        route = tuple(int(r) for r in route)
        if len(route) != config.num_stages:
            raise ValueError(f"route must name one expert per stage ({config.num_stages}), got {route}")
        if sorted(set(route)) != list(range(len(experts))):
            raise ValueError(f"route {route} must use every one of the {len(experts)} experts and no other")
        self.experts = nn.ModuleList(experts)
        self.route = route

    @property
    def config(self) -> M4VConfig:
        return self.experts[0].config

    @property
    def gradient_checkpointing(self) -> bool:
        return self.experts[0].gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        for expert in self.experts:
            expert.gradient_checkpointing = value

    def forward(self, latent: Tensor, timestep: Tensor, text: Tensor, text_mask: Tensor, pooled: Tensor,
                history: Sequence[Tensor] = (), stage: Optional[int] = None,
                history_stage: Optional[Sequence[int]] = None) -> Tensor:
        """``M4VTransformer.forward`` of the expert that serves ``stage`` (default: the top stage)."""
        stage = self.config.num_stages - 1 if stage is None else stage
        if not 0 <= stage < self.config.num_stages:
            raise ValueError(f"stage must be in [0, {self.config.num_stages}), got {stage}")
        return self.experts[self.route[stage]](latent, timestep, text, text_mask, pooled, history=history,
                                               stage=stage, history_stage=history_stage)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_module(self, {"kind": KIND, "route": list(self.route),
                           "experts": [expert.config.to_dict() for expert in self.experts]}, directory)


def load_transformer(directory: str | os.PathLike, device: torch.device | str = "cpu",
                     dtype: Optional[torch.dtype] = None) -> M4VTransformer | StageExperts:
    """An ``M4VTransformer`` or ``StageExperts`` directory (config.json + model.safetensors)."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    with open(path) as f:
        if json.load(f).get("kind") != KIND:
            return M4VTransformer.from_pretrained(directory, device, dtype)
    return load_module(directory, lambda config: StageExperts(
        [M4VTransformer(M4VConfig.from_dict(c)) for c in config["experts"]], config["route"]), device, dtype)


__all__ = ["StageExperts", "load_transformer"]
