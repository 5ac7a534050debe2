"""Low-rank adapters (LoRA) for fine-tuning the transformer with few trainable weights.

``add_lora`` freezes a module and wraps the linear layers of its blocks; ``merge_lora`` folds the
adapters back, leaving plain ``nn.Linear`` layers (and a checkpoint format unchanged by tuning).
"""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * up(down(x))`` with ``base`` frozen; ``up`` starts at zero, so
    the wrapped layer first computes exactly what ``base`` did."""

    def __init__(self, base: nn.Linear, rank: int, alpha: Optional[float] = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.scale = (alpha if alpha is not None else rank) / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.down = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.up = nn.Linear(rank, base.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the adapter folded into its weight."""
        delta = self.scale * (self.up.weight.float() @ self.down.weight.float())
        self.base.weight.add_(delta.to(self.base.weight.dtype))
        return self.base


# Linear layers whose weight and bias the owner reads directly (the Mamba step projection feeds
# its bias to the scan's softplus), so they cannot be wrapped; it is rank dt_rank already.
SKIPPED = ("dt_proj",)


def add_lora(model: nn.Module, rank: int, alpha: Optional[float] = None) -> list[nn.Parameter]:
    """Freezes ``model`` and wraps every ``nn.Linear`` inside its ``dit_blocks`` and
    ``mixer_blocks`` (or inside the whole module when it has neither), except ``SKIPPED`` ones.
    Returns the adapter weights."""
    model.requires_grad_(False)
    roots = [getattr(model, name) for name in ("dit_blocks", "mixer_blocks") if hasattr(model, name)] or [model]
    params: list[nn.Parameter] = []
    for root in roots:
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and name not in SKIPPED:
                    wrapped = LoRALinear(child, rank, alpha)
                    setattr(parent, name, wrapped)
                    params += [wrapped.down.weight, wrapped.up.weight]
    if not params:
        raise ValueError("add_lora found no nn.Linear layers to adapt")
    return params


def merge_lora(model: nn.Module) -> nn.Module:
    """Replaces every ``LoRALinear`` in ``model`` by its merged base layer (in place)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its adapters merged; ``model`` keeps them."""
    return merge_lora(copy.deepcopy(model))


__all__ = ["LoRALinear", "add_lora", "merge_lora", "has_lora", "merged_copy"]
