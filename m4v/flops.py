"""The paper's efficiency claim (Table 4), counted: mixer FLOPs of M4V against attention.

Accounting (DESIGN.md section 4): one forward pass at the largest autoregressive unit (the last
latent frame at the top pyramid stage, with its full history pyramid), all 24 mixer layers, no
CFG. A mixer layer is its projections plus its core:

- attention (MM-DiT and single-stream blocks): the QKV and output projections and the attention
  core, 8 L C^2 + 4 L^2 C;
- MM-DiM: re-composition, in_proj, the causal conv, x_proj, dt_proj, the selective scan and
  out_proj, plus the temporal branch, which gets its own column.

Every model is built on the meta device and run under ``torch.utils.flop_counter.FlopCounterMode``
(every custom op has a registered formula), so nothing is allocated and it runs on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from m4v.models import M4VTransformer, get_config, history_stages

# Table 4 of the paper (768p, 241 frames): mixer TFLOPs and the A100 time in seconds.
PAPER_TFLOPS = {"Full attention": 55.44, "Attention || Mamba": 82.03, "Pure Mamba": 26.64,
                "Final (Mamba + temporal)": 29.52}
PAPER_SECONDS = {"Full attention": 812, "Attention || Mamba": 858, "Pure Mamba": 570,
                 "Final (Mamba + temporal)": 613}
VAE_SPATIAL, VAE_TEMPORAL = 8, 8


@dataclass
class Unit:
    """The token layout of one forward pass."""

    name: str
    frames: int          # video frames
    height: int
    width: int
    full_sequence: bool  # every latent frame at the top stage, no pyramid (non-autoregressive)

    @property
    def latent_frames(self) -> int:
        return 1 + (self.frames - 1) // VAE_TEMPORAL

    def latent_sizes(self, num_stages: int) -> tuple[list[tuple[int, int]], list[int]]:
        """Latent (H, W) of every frame of the last unit (history oldest first, current last), and
        the history stages."""
        top = (self.height // VAE_SPATIAL, self.width // VAE_SPATIAL)
        history = self.latent_frames - 1
        stages = [num_stages - 1] * history if self.full_sequence else history_stages(history, num_stages - 1)
        scale = lambda s: 2 ** (num_stages - 1 - s)  # noqa: E731
        sizes = [(top[0] // scale(s), top[1] // scale(s)) for s in stages] + [top]
        return sizes, stages


def count_unit(preset: str, unit: Unit, **overrides) -> dict:
    """Runs one forward of ``preset`` on the meta device; returns FLOPs per component."""
    config = get_config(preset, **overrides)
    sizes, stages = unit.latent_sizes(config.num_stages)
    with torch.device("meta"):
        model = M4VTransformer(config).to(torch.bfloat16)
        latents = [torch.empty(1, config.latent_channels, h, w, dtype=torch.bfloat16) for h, w in sizes]
        text = torch.empty(1, config.max_text_len, config.text_dim, dtype=torch.bfloat16)
        mask = torch.ones(1, config.max_text_len, dtype=torch.bool)
        with FlopCounterMode(display=False) as counter:
            model(latents[-1], torch.empty(1), text, mask, torch.empty(1, config.pooled_dim), history=latents[:-1],
                  history_stage=stages)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    def flops(name: str) -> int:
        return per_module.get(f"M4VTransformer.{name}", 0)

    attention = 0
    for i in range(config.num_dit_blocks):
        block = f"dit_blocks.{i}"
        attention += sum(flops(f"{block}.{s}.{p}") for s in ("text_stream", "video_stream") for p in ("qkv", "proj"))
        attention += flops(f"{block}.attention")
    mamba = temporal = 0
    for i in range(config.num_mixer_blocks):
        block = f"mixer_blocks.{i}"
        if config.mixer == "attention":
            attention += sum(flops(f"{block}.{p}") for p in ("qkv", "proj", "attention"))
        else:
            mamba += flops(f"{block}.mamba")
            temporal += flops(f"{block}.temporal")
    tokens = sum((h // config.patch_size) * (w // config.patch_size) for h, w in sizes)
    return {"preset": preset, "tokens": tokens, "attention": attention, "mamba": mamba, "temporal": temporal,
            "mixer": attention + mamba + temporal, "model": counter.get_total_flops(),
            "overrides": overrides}


def report(frames: int = 241, height: int = 768, width: int = 1280) -> dict:
    """Table 4 rows at (frames, height, width), plus 121 frames, full-sequence and expand-2 rows."""
    main = Unit(f"{height}p, {frames} frames", frames, height, width, full_sequence=False)
    rows = []

    def add(name: str, unit: Unit, counts: dict, mixer: int, paper: float | None, note: str = "") -> None:
        rows.append({"name": name, "unit": unit.name, "frames": unit.frames, "tokens": counts["tokens"],
                     "mixer_tflops": mixer / 1e12, "paper_tflops": paper, "model_tflops": counts["model"] / 1e12,
                     "attention_tflops": counts["attention"] / 1e12, "mamba_tflops": counts["mamba"] / 1e12,
                     "temporal_tflops": counts["temporal"] / 1e12, "note": note})

    units = [main, dataclasses.replace(main, name=f"{height}p, 121 frames", frames=121),
             dataclasses.replace(main, name=f"{height}p, {frames} frames, full sequence", full_sequence=True)]
    reductions = {}
    for unit in units:
        is_main = unit is main
        attn = count_unit("attn-768p", unit)
        pure = count_unit("pure-mamba-768p", unit)
        final = count_unit("m4v-768p", unit)
        paper = PAPER_TFLOPS if is_main and (frames, height, width) == (241, 768, 1280) else {}
        add("Full attention", unit, attn, attn["mixer"], paper.get("Full attention"))
        if is_main:
            add("Attention || Mamba", unit, attn, attn["mixer"] + pure["mamba"], paper.get("Attention || Mamba"),
                "attention and Mamba mixers both run in the 16 blocks")
        add("Pure Mamba", unit, pure, pure["mixer"], paper.get("Pure Mamba"))
        add("Final (Mamba + temporal)", unit, final, final["mixer"], paper.get("Final (Mamba + temporal)"))
        if is_main:
            wide = count_unit("m4v-768p", unit, expand=2.0)
            add("Final, expand 2", unit, wide, wide["mixer"], None, "Mamba's usual expand (d_inner 3840)")
        reductions[unit.name] = 100.0 * (1 - final["mixer"] / attn["mixer"])
    return {"rows": rows, "reduction_pct": reductions[main.name], "reduction_pct_by_unit": reductions}


def format_report(result: dict) -> str:
    lines = [f"{'row':28} {'unit':36} {'tokens':>8} {'mixer TFLOPs':>13} {'paper':>7} {'model TFLOPs':>13}"]
    for row in result["rows"]:
        paper = f"{row['paper_tflops']:.2f}" if row["paper_tflops"] is not None else "-"
        lines.append(f"{row['name']:28} {row['unit']:36} {row['tokens']:8d} {row['mixer_tflops']:13.2f} {paper:>7} "
                     f"{row['model_tflops']:13.2f}")
    for unit, pct in result["reduction_pct_by_unit"].items():
        lines.append(f"mixer FLOPs cut, final design vs full attention ({unit}): {pct:.1f}%")
    main = next(r for r in result["rows"] if r["name"] == "Full attention")
    if main["paper_tflops"]:
        gap = 100.0 * (main["mixer_tflops"] / main["paper_tflops"] - 1)
        lines.append(f"full-attention row vs the paper's {main['paper_tflops']}: {gap:+.1f}% "
                     "(8 L C^2 + 4 L^2 C per layer, L = video + 128 text tokens, no CFG)")
    return "\n".join(lines)


__all__ = ["report", "format_report", "count_unit", "Unit", "PAPER_TFLOPS"]
