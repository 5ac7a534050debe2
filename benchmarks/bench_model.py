"""The whole model in wall time: m4v-768p against attn-768p, one forward at the last autoregressive
unit of a 241-frame 768p video (15,360 visual + 128 text tokens), random bf16 weights (GPU).

Reports median ms and peak memory, eager and with ``torch.compile``; the ratio is against attn-768p
measured in the same run. Writes JSON records {"model", "compile", "ms", "peak_mib"}. ``--profile DIR``
also writes, per model, the torch.profiler table of one eager forward (the top CUDA kernels and the
host time), to find where a block's time goes inside the model.

    python benchmarks/bench_model.py [--no-compile] [--json out.json] [--profile DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import warnings

import torch
from _report import emit_records
from bench_mixer_vs_attention import median_ms


def unit_inputs(config, device, dtype):
    from m4v.flops import Unit

    sizes, stages = Unit("768p, 241 frames", 241, 768, 1280, full_sequence=False).latent_sizes(config.num_stages)
    latents = [torch.randn(1, config.latent_channels, h, w, device=device, dtype=dtype) for h, w in sizes]
    return dict(latent=latents[-1], timestep=torch.rand(1, device=device),
                text=torch.randn(1, config.max_text_len, config.text_dim, device=device, dtype=dtype),
                text_mask=torch.ones(1, config.max_text_len, dtype=torch.bool, device=device),
                pooled=torch.randn(1, config.pooled_dim, device=device, dtype=dtype),
                history=latents[:-1], history_stage=stages)


def host_syncs(fn) -> collections.Counter:
    """Where one call of fn makes the host wait for the GPU: torch's sync debug mode warns at every
    synchronising call; count the warnings by source line."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message))


def write_profile(fn, path: str) -> None:
    """One forward under torch.profiler: kernels sorted by CUDA time, then host ops by CPU time,
    then the source lines that synchronise with the GPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    syncs = host_syncs(fn)
    with open(path, "w") as f:
        f.write(events.table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
        f.write("\n")
        f.write(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=90))
        f.write(f"\nhost syncs per forward: {sum(syncs.values())}\n")
        f.writelines(f"{count:6d}  {line}\n" for line, count in syncs.most_common())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", default=None, metavar="DIR", help="write one profiled forward per model here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_model: needs a CUDA GPU", file=sys.stderr)
        return 1
    from m4v.models import M4VTransformer

    dtype, records = torch.bfloat16, []
    for preset in ("attn-768p", "m4v-768p"):
        with torch.device("cuda"):  # initialise on the GPU: 2 B parameters are slow to fill on a CPU
            model = M4VTransformer.from_preset(preset).to(dtype).eval()
        inputs = unit_inputs(model.config, "cuda", dtype)
        for compiled in ([False] if args.no_compile else [False, True]):
            fn = torch.compile(model) if compiled else model
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                ms = median_ms(lambda: fn(**inputs), budget_s=3.0)
            records.append({"model": preset, "compile": compiled, "ms": round(ms, 3),
                            "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)})
            if args.profile and not compiled:
                os.makedirs(args.profile, exist_ok=True)
                with torch.no_grad():
                    write_profile(lambda: fn(**inputs), os.path.join(args.profile, f"profile-{preset}.txt"))
        del model
        torch.cuda.empty_cache()
    print(f"{'model':12} {'compile':8} {'ms':>9} {'vs attn-768p':>13} {'peak MiB':>9}")
    for r in records:
        peer = next(p["ms"] for p in records if p["model"] == "attn-768p" and p["compile"] == r["compile"])
        print(f"{r['model']:12} {str(r['compile']):8} {r['ms']:9.2f} {peer / r['ms']:12.2f}x {r['peak_mib']:9.0f}")
    emit_records(records, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
