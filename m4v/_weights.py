"""config.json + model.safetensors for every m4v module that is saved: one format, never pickle."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_module(module: nn.Module, config: dict, directory: str | os.PathLike) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})


def load_module(directory: str | os.PathLike, build: Callable[[dict], nn.Module], device: torch.device | str = "cpu",
                dtype: Optional[torch.dtype] = None) -> Any:
    """Builds the module from config.json on the meta device, then assigns the safetensors weights."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    with open(path) as f:
        config = json.load(f)
    with torch.device("meta"):
        module = build(config)
    module.load_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME), device=str(device)), strict=True,
                           assign=True)
    return module.to(dtype) if dtype is not None else module


def load_by_kind(directory: str | os.PathLike, kinds: dict[str, Callable[..., nn.Module]], what: str,
                 device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> Any:
    """``load_module`` for a family of classes: the config's "kind" picks the class, the rest of
    the config are its constructor arguments."""

    def build(config: dict) -> nn.Module:
        config = dict(config)
        kind = config.pop("kind", None)
        if kind not in kinds:
            raise ValueError(f"unknown {what} kind {kind!r} in {directory}; known: {sorted(kinds)}")
        return kinds[kind](**config)

    return load_module(directory, build, device, dtype)


__all__ = ["save_module", "load_module", "load_by_kind", "CONFIG_NAME", "WEIGHTS_NAME"]
