"""MM-DiM against single-stream attention in wall time: one mixer layer and one full block (GPU).

bf16, hidden 1920, 128 text tokens plus 4,096 to 119,040 visual tokens (15,360 is the 768p last
unit, 119,040 a full 241-frame sequence), forward and forward+backward.

- mixer scope: ``mmdim`` is re-composition + MambaMixer (expand 1.5, N 16) + inverse;
  ``attn_<backend>`` is QKV projection + QK-norm + RoPE + SDPA + output projection, with SDPA
  pinned to one backend (cuDNN, flash); ``mamba_ssm`` is mamba_ssm's Mamba module (same d_inner)
  on the same token count, when importable.
- block scope: ``MMDiMBlock`` against ``SingleStreamAttentionBlock`` (full attention, the paper's
  FLOP accounting), each with its MLP and modulation.

Reports median ms, the ratio against cuDNN attention and peak memory; writes JSON records
{"mixer", "tokens", "pass", "scope", "mode", "ms", "peak_mib"} and, with matplotlib, a log-log plot.
``mode`` is "eager" (each op issued from Python, as a plain training loop runs) or, with
``--cuda-graphs``, also "cuda_graph": the same step captured once and replayed, as
``torch.compile(mode="reduce-overhead")`` or a ``torch.cuda.graph`` training loop runs it. The
MM-DiM mixer's eager step is bound by the host's issue time at 15,360 tokens (NOTES.md, the
thirty-eighth session); the graph shows what its kernels take when the host is out of the way.

    python benchmarks/bench_mixer_vs_attention.py [--tokens 4096 15360 ...] [--json out.json] [--png out.png]
    python benchmarks/bench_mixer_vs_attention.py --plot-only results.json --png out.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from _report import emit_records

from m4v.cuda_graphs import capture_step

HIDDEN, HEADS, TEXT = 1920, 30, 128
DEFAULT_TOKENS = [4096, 15360, 32768, 65536, 119040]


def frames_for(tokens: int) -> list[tuple[int, int, int]]:
    """Whole 768p latent frames (48 x 80) when they fit the count, else 64 x 64 frames."""
    if tokens % 3840 == 0:
        return [(48, 80, 0)] * (tokens // 3840)
    if tokens % 4096 == 0:
        return [(64, 64, 0)] * (tokens // 4096)
    raise ValueError(f"token count {tokens} is neither a multiple of 3840 nor of 4096")


def median_ms(fn, budget_s: float = 1.0) -> float:
    """Median wall time of fn on the current device, with a repeat count fitted to the budget."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - start
    repeats = max(3, min(50, int(budget_s / max(once, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


class AttentionMixer(torch.nn.Module):
    """The attention mixer of a single-stream block, with SDPA pinned to one backend."""

    def __init__(self, sdpa_backend):
        super().__init__()
        from m4v.layers.attention import QKNorm

        self.qkv = torch.nn.Linear(HIDDEN, 3 * HIDDEN)
        self.norm = QKNorm(HIDDEN // HEADS)
        self.proj = torch.nn.Linear(HIDDEN, HIDDEN)
        self.sdpa_backend = sdpa_backend

    def forward(self, x, ctx):
        from torch.nn.attention import sdpa_kernel

        from m4v.layers.attention import JointAttention, split_heads

        q, k, v = split_heads(self.qkv(x), HEADS)
        q, k = self.norm(q, k)
        with sdpa_kernel([self.sdpa_backend]):
            return self.proj(JointAttention()(q, k, v, ctx))


def build_cases(tokens: int, device: str, dtype: torch.dtype, scan_backend: str):
    """(scope, name) -> (module, call(module, *inputs) -> output(s), inputs) for one token count."""
    from torch.nn.attention import SDPBackend

    from m4v.layers import MMDiMBlock, MultiModalMamba, SingleStreamAttentionBlock, TokenContext

    frames = frames_for(tokens)
    ctx = TokenContext(frames, torch.ones(1, TEXT, dtype=torch.bool), device, temporal_causal=False)
    text = torch.randn(1, TEXT, HIDDEN, device=device, dtype=dtype)
    video = torch.randn(1, tokens, HIDDEN, device=device, dtype=dtype)
    joint = torch.cat([text, video], dim=1)
    c = torch.randn(1, HIDDEN, device=device, dtype=dtype)
    cases = {}
    mmdim_mixer = MultiModalMamba(HIDDEN, layer_index=1, num_stages=1, expand=1.5, backend=scan_backend)
    layout = ctx.layout(mmdim_mixer.path)
    cases[("mixer", "mmdim")] = (mmdim_mixer, lambda m, t, v: m(v, text=t, layout=layout), (text, video))
    backends = {"attn_cudnn": SDPBackend.CUDNN_ATTENTION, "attn_flash": SDPBackend.FLASH_ATTENTION}
    if device == "cpu":
        backends = {"attn_math": SDPBackend.MATH}
    for name, backend in backends.items():
        cases[("mixer", name)] = (AttentionMixer(backend), lambda m, x: m(x, ctx), (joint,))
    try:
        from mamba_ssm.modules.mamba_simple import Mamba

        cases[("mixer", "mamba_ssm")] = (Mamba(HIDDEN, d_state=16, d_conv=4, expand=1.5),
                                         lambda m, x: m(x), (joint,))
    except ImportError as exc:
        print(f"# mamba_ssm not importable ({exc}); no mamba_ssm line", file=sys.stderr)
    cases[("block", "mmdim")] = (MMDiMBlock(HIDDEN, layer_index=1, num_stages=1, expand=1.5, backend=scan_backend),
                                 lambda m, t, v: m(t, v, c, ctx), (text, video))
    cases[("block", "attn_auto")] = (SingleStreamAttentionBlock(HIDDEN, HEADS), lambda m, t, v: m(t, v, c, ctx),
                                     (text, video))
    return cases


def print_kernel_table(step, title: str, rows: int = 30) -> None:
    """The GPU kernels of one call of ``step`` (after a warm-up call), by total device time."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"# kernels of {title}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))
    print_op_table(step, title)


def print_op_table(step, title: str, rows: int = 20) -> None:
    """The PyTorch ops of one call of ``step`` by the GPU time of the kernels each launched
    itself, grouped by input shapes: names the elementwise kernels of the kernel table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        step()
        torch.cuda.synchronize()

    def self_device_us(event):
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)

    ops = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::") and self_device_us(e)]
    ops.sort(key=self_device_us, reverse=True)
    print(f"# ops of {title} (by their own kernels' GPU time)")
    print(f"{'us':>9} {'calls':>5}  op, input shapes")
    for e in ops[:rows]:
        print(f"{self_device_us(e):9.1f} {e.count:5d}  {e.key} {e.input_shapes}")


def make_step(module, call, inputs, pass_name: str):
    """One timed step of a case: the forward under no_grad ("fwd"), or forward and backward from
    empty gradients ("fwd_bwd")."""
    leaves = [t.detach().requires_grad_(pass_name == "fwd_bwd") for t in inputs]
    # A training step's gradients start empty: the optimizer's zero_grad sets them to None, from its
    # list of parameters (Module.zero_grad walks the module tree instead: ~0.15 ms per MM-DiM mixer
    # step on the H100's host, forty-first session). Accumulating into the last repeat's gradients
    # would time adds no step makes.
    cleared = list(module.parameters()) + leaves

    def step():
        if pass_name == "fwd":
            with torch.no_grad():
                call(module, *leaves)
            return
        for tensor in cleared:
            tensor.grad = None
        out = call(module, *leaves)
        outs = (out,) if isinstance(out, torch.Tensor) else out
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return step


def run(tokens_list, device, dtype, scan_backend, passes, json_path, profile_mmdim=False, only=None,
        cuda_graphs=False):
    records = []
    modes = ["eager", "cuda_graph"] if cuda_graphs else ["eager"]
    for tokens in tokens_list:
        for (scope, name), (module, call, inputs) in build_cases(tokens, device, dtype, scan_backend).items():
            if only is not None and name not in only:
                continue
            module = module.to(device=device, dtype=dtype)
            for pass_name in passes:
                for mode in modes:
                    step = make_step(module, call, inputs, pass_name)
                    if device == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    try:
                        ms = median_ms(capture_step(step).replay if mode == "cuda_graph" else step)
                    except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. a backend without this shape
                        print(f"# {scope} {name} {tokens} {pass_name} {mode}: {type(exc).__name__}: "
                              f"{str(exc)[:160]}", file=sys.stderr)
                        continue
                    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
                    if profile_mmdim and device == "cuda" and name == "mmdim" and mode == "eager":
                        print_kernel_table(step, f"{scope} {name} {tokens} tokens {pass_name}")
                    records.append({"mixer": name, "tokens": tokens, "pass": pass_name, "scope": scope,
                                    "mode": mode, "ms": round(ms, 4), "peak_mib": round(peak, 1)})
                    module.zero_grad(set_to_none=True)
            if json_path:  # keep partial results if a long run is cut short
                with open(json_path, "w") as f:
                    json.dump(records, f, indent=1)
    return records


def print_table(records):
    """Each record against cuDNN attention's mixer in the same pass and mode (records written
    before the graph mode have none and count as eager)."""
    print(f"{'scope':6} {'pass':8} {'mode':10} {'tokens':>7} {'mixer':11} {'ms':>9} {'vs attn_cudnn':>14} "
          f"{'peak MiB':>9}")
    for r in records:
        mode = r.get("mode", "eager")
        peer = next((p["ms"] for p in records if p["mixer"] == "attn_cudnn" and p["tokens"] == r["tokens"]
                     and p["pass"] == r["pass"] and p["scope"] == "mixer" and p.get("mode", "eager") == mode),
                    None)
        ratio = f"{peer / r['ms']:.2f}x" if peer else "-"
        print(f"{r['scope']:6} {r['pass']:8} {mode:10} {r['tokens']:7d} {r['mixer']:11} {r['ms']:9.3f} "
              f"{ratio:>14} {r['peak_mib']:9.0f}")


def plot(records, png_path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not importable: no plot (run again with --plot-only where it is)", file=sys.stderr)
        return
    records = [r for r in records if r.get("mode", "eager") == "eager"]  # one curve per case
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, pass_name in zip(axes, ("fwd", "fwd_bwd")):
        for scope, style in (("mixer", "-"), ("block", "--")):
            for name in sorted({r["mixer"] for r in records if r["scope"] == scope}):
                pts = sorted((r["tokens"], r["ms"]) for r in records
                             if r["scope"] == scope and r["mixer"] == name and r["pass"] == pass_name)
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", label=f"{scope}: {name}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("visual tokens (+128 text)")
        ax.set_title(f"{pass_name}, bf16, hidden {HIDDEN}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median ms")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    print(f"# wrote {png_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="*", default=DEFAULT_TOKENS)
    parser.add_argument("--passes", nargs="*", default=["fwd", "fwd_bwd"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    parser.add_argument("--plot-only", default=None, help="draw the PNG from an earlier JSON and exit")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of the script itself")
    parser.add_argument("--profile", action="store_true", help="print the kernel table of each MM-DiM case")
    parser.add_argument("--only", nargs="*", default=None,
                        help="time only these cases (mmdim, attn_cudnn, attn_flash, mamba_ssm, attn_auto), "
                             "e.g. for A/B runs of one change")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time each step captured in a CUDA graph (mode cuda_graph)")
    args = parser.parse_args(argv)
    if args.plot_only:
        with open(args.plot_only) as f:
            records = json.load(f)
        print_table(records)
        plot(records, args.png or args.plot_only.replace(".json", ".png"))
        return 0
    if args.cpu_smoke:
        records = run([4096], "cpu", torch.float32, "reference", ["fwd"], args.json)
    elif not torch.cuda.is_available():
        print("bench_mixer_vs_attention: needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 1
    else:
        records = run(args.tokens, "cuda", torch.bfloat16, "auto", args.passes, args.json, args.profile, args.only,
                      args.cuda_graphs)
    print_table(records)
    emit_records(records, args.json)
    if args.png:
        plot(records, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
