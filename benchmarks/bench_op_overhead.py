"""Host time per call of the package's ops: the eager path against the registered custom op.

In plain eager mode the public functions (``selective_scan``, ``causal_conv1d``, ``recompose`` and
``inverse_recompose``) call their implementation through one classic ``autograd.Function``
(``m4v/kernels/_eager.py``); everything else (compile, fake tensors, FLOP counting) goes through
the registered op. This times both paths in the same run on inputs so small that the host's work
is what is measured: forward, and forward + backward, per call. The floor is a plain autograd op of
the same kind (``x * 1``, and its backward), which no wrapper can undercut; its two columns time
the same code, so their ratio shows the run's noise.

Runs on the GPU (the CUDA backend, the case that matters) or on the CPU (the reference backend; its
compute on the tiny inputs is included in both paths alike).

    python benchmarks/bench_op_overhead.py [--calls 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import emit_records

from m4v.kernels import available_backends
from m4v.kernels._eager import registered_ops
from m4v.kernels.conv1d import causal_conv1d
from m4v.kernels.recompose import FrameSpec, ScanLayout, inverse_recompose, recompose
from m4v.kernels.selective_scan import selective_scan


def build_calls(device: str, dtype: torch.dtype, backend: str) -> dict:
    """name -> (call(leaves) -> output, leaves): one op each, at a few hundred elements."""
    def leaf(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    dim, seqlen, dstate = 8, 16, 16
    A = -torch.rand(dim, dstate, device=device) - 0.5
    layout = ScanLayout([FrameSpec(4, 4, 0), FrameSpec(4, 4, 0)], path=1, text_len=4)
    return {
        "selective_scan": (lambda u, delta, B, C, z: selective_scan(u, delta, A, B, C, z=z, delta_softplus=True,
                                                                     backend=backend),
                           [leaf(1, dim, seqlen), leaf(1, dim, seqlen), leaf(1, dstate, seqlen),
                            leaf(1, dstate, seqlen), leaf(1, dim, seqlen)]),
        "causal_conv1d": (lambda x, w: causal_conv1d(x, w, activation="silu", backend=backend),
                          [leaf(1, seqlen, dim), leaf(dim, 4)]),
        "recompose": (lambda text, video, registers: recompose(text, video, layout, registers, backend=backend),
                      [leaf(1, 4, dim), leaf(1, layout.video_len, dim), leaf(1, dim)]),
        "inverse_recompose": (lambda seq: inverse_recompose(seq, layout, backend=backend)[1],
                              [leaf(1, layout.seq_len, dim)]),
        "floor (x * 1)": (lambda x: x * 1, [leaf(1, dim, seqlen)]),
    }


def host_us(fn, calls: int, sync) -> float:
    """Best of five rounds, microseconds per call (host time: the GPU work is queued, then drained)."""
    for _ in range(calls // 10):
        fn()
    sync()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
        sync()
    return 1e6 * best / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args(argv)
    on_gpu = available_backends()["cuda"].usable
    device, dtype, backend = ("cuda", torch.bfloat16, "cuda") if on_gpu else ("cpu", torch.float32, "reference")
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    records = []
    print(f"# host us per call, {backend} backend on {device}, best of 5 x {args.calls} calls")
    print(f"{'op':<20} {'pass':<8} {'registered op':>14} {'eager path':>11} {'op / eager':>10} {'eager / floor':>14}")
    floors = {}
    for name, (call, leaves) in reversed(build_calls(device, dtype, backend).items()):  # the floor first
        def forward():
            with torch.no_grad():
                call(*leaves)

        def forward_backward():
            out = call(*leaves)
            out.sum().backward()

        for pass_name, fn in (("fwd", forward), ("fwd+bwd", forward_backward)):
            times = {}
            for path in ("registered", "eager"):
                with registered_ops(path == "registered"):
                    times[path] = host_us(fn, args.calls, sync)
            floors.setdefault(pass_name, times["eager"])
            record = {"op": name, "pass": pass_name, "backend": backend, "device": device,
                      "registered_us": round(times["registered"], 2), "eager_us": round(times["eager"], 2),
                      "registered_over_eager": round(times["registered"] / times["eager"], 3),
                      "eager_over_floor": round(times["eager"] / floors[pass_name], 3)}
            records.append(record)
            print(f"{name:<20} {pass_name:<8} {record['registered_us']:>14.1f} {record['eager_us']:>11.1f} "
                  f"{record['registered_over_eager']:>9.2f}x {record['eager_over_floor']:>13.2f}x")
    emit_records(records, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
