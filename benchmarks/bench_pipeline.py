"""Generation time at 768x1280 on the GPU: one autoregressive unit (latent frame) of
``M4VPipeline.sample_unit`` with m4v-768p against attn-768p, and the causal VAE's decode.

Each unit runs all three pyramid stages with ``--steps`` Euler steps per stage and batched CFG
(two samples per model call), random bf16 weights. The first unit has no history, the last unit of
a 241-frame video has 30 history frames. The whole-video transformer time is estimated as
31 units whose cost grows linearly from the first to the last (history tokens grow linearly).
Writes JSON records {"model", "history", "steps", "seconds"} and {"model": "causal_vae", ...}.

    python benchmarks/bench_pipeline.py [--steps 10,10,10] [--no-decode] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _report import emit_records

HEIGHT, WIDTH, FRAMES = 768, 1280, 241


def seconds_of(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def build_pipeline(preset: str):
    from m4v.autoencoders import CausalVideoVAE
    from m4v.models import M4VTransformer
    from m4v.pipelines import M4VPipeline
    from m4v.text import HashingTextEncoder

    with torch.device("cuda"):
        transformer = M4VTransformer.from_preset(preset).to(torch.bfloat16).eval()
        config = transformer.config
        text = HashingTextEncoder(config.text_dim, config.pooled_dim, config.max_text_len)
        autoencoder = CausalVideoVAE(config.latent_channels).to(torch.bfloat16).eval()
    return M4VPipeline(transformer, text, autoencoder)


def time_preset(preset: str, steps: tuple[int, ...], guidance: float, decode: bool) -> list[dict]:
    """The first and last unit of a 241-frame video, the whole-video estimate, and the decode."""
    pipe = build_pipeline(preset)
    text = pipe.text_encoder.encode(["a red circle moving right", ""], "cuda")
    shape = (1, pipe.autoencoder.latent_channels, HEIGHT // 8, WIDTH // 8)
    generator = torch.Generator("cuda").manual_seed(0)
    latent_frames = 1 + (FRAMES - 1) // 8
    history = [torch.randn(shape, device="cuda", generator=generator) for _ in range(latent_frames - 1)]
    records = []
    for count in (0, latent_frames - 1):
        pipe.sample_unit(text, history[:count], shape, (1,) * len(steps), guidance, generator)  # warm-up
        seconds = seconds_of(lambda: pipe.sample_unit(text, history[:count], shape, steps, guidance, generator))
        records.append({"model": preset, "history": count, "steps": list(steps), "seconds": round(seconds, 3)})
    first, last = records[0]["seconds"], records[1]["seconds"]
    records.append({"model": preset, "history": "whole video (estimate)", "steps": list(steps),
                    "seconds": round(latent_frames * (first + last) / 2, 1)})
    if decode:
        latents = torch.stack(history + [history[-1]], dim=2).to(torch.bfloat16)
        with torch.no_grad():
            pipe.autoencoder.decode(latents[:, :, :2], chunk=4)  # warm-up
            seconds = seconds_of(lambda: pipe.autoencoder.decode(latents, chunk=4, tile=40))
        records.append({"model": "causal_vae", "history": f"decode {FRAMES} frames, chunk 4, tile 40",
                        "steps": [], "seconds": round(seconds, 3)})
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="10,10,10", help="Euler steps per stage (PyramidFlow's video default)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_pipeline: needs a CUDA GPU", file=sys.stderr)
        return 1
    steps = tuple(int(s) for s in args.steps.split(","))
    records = []
    for preset in ("attn-768p", "m4v-768p"):
        records += time_preset(preset, steps, args.guidance, decode=not args.no_decode and preset == "m4v-768p")
        torch.cuda.empty_cache()
    print(f"{'model':11} {'unit':28} {'steps':10} {'seconds':>8}")
    for r in records:
        print(f"{r['model']:11} {str(r['history']):28} {','.join(map(str, r['steps'])):10} {r['seconds']:8.2f}")
    emit_records(records, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
