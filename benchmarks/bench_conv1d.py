"""Causal conv1d + SiLU speed at the mixer's shape (GPU): m4v's CUDA kernels against cuDNN's depthwise
conv, measured in the same run.

Shape: the 768p last unit's MambaMixer, 15,360 tokens, d_inner 2880, width 4, bf16; x is the first
half of the (1, 15360, 2 * 2880) in_proj output (row stride 5760), as the mixer passes it. The peer is
what a user without a fused kernel writes: F.conv1d with groups = channels on the channel-first view,
padding width - 1, then SiLU (cuDNN), forward and its autograd backward. Ideal bytes count x read and
the output written once (forward), x and dout read and dx written once (backward); the ceiling is a
torch copy of the same bytes in the same run.

    python benchmarks/bench_conv1d.py [--tokens 15360] [--channels 2880] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from _report import emit_records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=15360)
    parser.add_argument("--channels", type=int, default=2880)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_conv1d: needs a CUDA GPU", file=sys.stderr)
        return 1
    from triton.testing import do_bench

    from m4v.kernels import available_backends
    from m4v.kernels.conv1d import causal_conv1d_bwd_op, causal_conv1d_op

    if not available_backends()["cuda"].usable:
        print(f"bench_conv1d: no CUDA backend ({available_backends()['cuda'].reason})", file=sys.stderr)
        return 1
    dev, dtype = "cuda", torch.bfloat16
    tokens, channels, width = args.tokens, args.channels, args.width
    x = torch.randn(1, tokens, 2 * channels, dtype=dtype, device=dev)[..., :channels]
    weight = torch.randn(channels, width, dtype=dtype, device=dev)
    bias = torch.randn(channels, dtype=dtype, device=dev)
    dout = torch.randn(1, tokens, channels, dtype=dtype, device=dev)
    tensor_bytes = tokens * channels * dtype.itemsize
    ideal = {"fwd": 2 * tensor_bytes, "bwd": 3 * tensor_bytes}

    def bench(fn):
        return do_bench(fn, warmup=25, rep=200, return_mode="median")

    times = {"m4v cuda": {
        "fwd": bench(lambda: causal_conv1d_op(x, weight, bias, None, True, "cuda")),
        "bwd": bench(lambda: causal_conv1d_bwd_op(dout, x, weight, bias, None, True, "cuda")),
    }}

    x_cf = x.detach().mT.requires_grad_(True)  # (batch, channels, tokens) view
    w_cf = weight.unsqueeze(1).requires_grad_(True)
    b_cf = bias.clone().requires_grad_(True)

    def cudnn_fwd():
        return F.silu(F.conv1d(x_cf, w_cf, b_cf, padding=width - 1, groups=channels)[..., :tokens])

    with torch.no_grad():
        peer_fwd = bench(cudnn_fwd)
    out_cf = cudnn_fwd()
    dout_cf = dout.mT
    peer_bwd = bench(lambda: torch.autograd.grad(out_cf, (x_cf, w_cf, b_cf), dout_cf, retain_graph=True))
    times["cudnn depthwise"] = {"fwd": peer_fwd, "bwd": peer_bwd}

    src = torch.empty(ideal["bwd"] // 2, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))  # reads and writes ideal["bwd"] / 2 bytes each
    ceiling = ideal["bwd"] / copy_ms / 1e6  # GB/s

    print(f"causal conv1d + SiLU, {tokens} tokens x {channels} channels, width {width}, bf16 "
          f"(copy ceiling {ceiling:.0f} GB/s)")
    print(f"{'backend':16} {'pass':4} {'ms':>8} {'GB/s':>7} {'of copy':>8} {'vs cudnn':>9}")
    records = []
    for name, passes in times.items():
        for pass_name, ms in passes.items():
            gbps = ideal[pass_name] / ms / 1e6
            speedup = times["cudnn depthwise"][pass_name] / ms
            print(f"{name:16} {pass_name:4} {ms:8.4f} {gbps:7.0f} {gbps / ceiling:8.0%} {speedup:8.2f}x")
            records.append({"backend": name, "pass": pass_name, "tokens": tokens, "channels": channels,
                            "width": width, "dtype": "bfloat16", "ms": round(ms, 5), "gbps": round(gbps, 1),
                            "of_copy": round(gbps / ceiling, 3), "vs_cudnn": round(speedup, 3)})
    emit_records(records, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
