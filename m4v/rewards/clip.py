"""Adapters for CLIP-family preference rewards whose weights the user has on disk: CLIP score
(a Hugging Face CLIP directory, through transformers) and HPSv2 (an OpenCLIP ViT-H-14 checkpoint,
through open_clip). Nothing is downloaded; both are differentiable in the frames.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# The normalisation every OpenAI-CLIP-derived image tower was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipLikeReward:
    """Per frame, the cosine similarity of the frame's and the prompt's embeddings, times ``scale``.

    Args:
        encode_image: (n, 3, size, size) normalised pixels -> (n, D).
        encode_text: prompts -> (len(prompts), D).
        image_size: the image tower's input size; frames are resized to it (bilinear, antialiased).
        scale: 100 for CLIP score (as in CLIPScore), 1 for HPSv2 (its published scale).
    """

    def __init__(self, encode_image: Callable[[Tensor], Tensor], encode_text: Callable[[Sequence[str]], Tensor],
                 image_size: int, scale: float):
        self.encode_image, self.encode_text = encode_image, encode_text
        self.image_size, self.scale = image_size, scale

    def __call__(self, frames: Tensor, prompts: Sequence[str]) -> Tensor:
        """frames (batch, frames, 3, H, W) in [0, 1] -> (batch, frames)."""
        batch, count = frames.shape[:2]
        pixels = F.interpolate(frames.flatten(0, 1), size=(self.image_size,) * 2, mode="bilinear",
                               antialias=True, align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=frames.device).view(1, 3, 1, 1)
        image = F.normalize(self.encode_image((pixels - mean) / std).float(), dim=-1)
        text = F.normalize(self.encode_text(list(prompts)).float(), dim=-1).to(image.device)
        return self.scale * (image * text.repeat_interleave(count, dim=0)).sum(-1).view(batch, count)


def _projected(output) -> Tensor:
    """CLIPModel.get_*_features returns the projected embeddings (transformers 4) or an output
    whose pooler_output holds them (transformers 5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


def clip_score_reward(model_dir: str | os.PathLike, device: torch.device | str = "cpu") -> ClipLikeReward:
    """CLIP score from a local Hugging Face CLIP directory (``CLIPModel`` + its tokenizer)."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(model_dir, local_files_only=True).to(device).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def encode_text(prompts: Sequence[str]) -> Tensor:
        tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(device)
        return _projected(model.get_text_features(**tokens))

    return ClipLikeReward(lambda pixels: _projected(model.get_image_features(pixel_values=pixels)), encode_text,
                          model.config.vision_config.image_size, scale=100.0)


def hpsv2_reward(checkpoint: str | os.PathLike, device: torch.device | str = "cpu",
                 architecture: str = "ViT-H-14") -> ClipLikeReward:
    """HPSv2 from its checkpoint file (``HPS_v2_compressed.pt``, or the same weights as
    .safetensors) through open_clip. A .pt file is read with ``weights_only=True``: tensors only,
    no code runs."""
    import open_clip

    model = open_clip.create_model(architecture, pretrained=None)
    if str(checkpoint).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(checkpoint))
    else:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    model.load_state_dict(state)
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(architecture)
    size = model.visual.image_size
    return ClipLikeReward(model.encode_image, lambda prompts: model.encode_text(tokenizer(prompts).to(device)),
                          size[0] if isinstance(size, (tuple, list)) else size, scale=1.0)


__all__ = ["ClipLikeReward", "clip_score_reward", "hpsv2_reward", "CLIP_MEAN", "CLIP_STD"]
