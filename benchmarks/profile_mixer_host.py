"""Where the MM-DiM mixer's and block's host time goes, next to their GPU time.

For each case: the host time to issue a step (steps issued back to back, no sync), the wall time
per step of those queued steps, and the median wall time of steps synced one by one (what
bench_mixer_vs_attention.py and a training step see); then cProfile (Python) and torch.profiler's
CPU table (ops) of the same steps. A synced step longer than its kernels while the issue time is
shorter means the GPU waits on the host in stretches of the step.

``--paths eager op-by-op registered`` times each case's step the ways the package's ops can be
called, alternating for ``--rounds`` rounds in the same process (the profiles are taken of the
first path): "eager", the default (the mixer as one autograd node, m4v/layers/mixer_autograd.py,
and the other ops on the eager path of m4v/kernels/_eager.py); "op-by-op", the mixer's ops recorded
one by one on the eager path; "registered", every op through its registration, as under
torch.compile.

    python benchmarks/profile_mixer_host.py [--tokens 15360] [--steps 20] [--cases mixer:fwd_bwd ...]
        [--paths eager op-by-op registered] [--rounds 3]
"""

import argparse
import contextlib
import cProfile
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_mixer_vs_attention import build_cases, make_step

from m4v.kernels._eager import registered_ops
from m4v.layers.mixer_autograd import mixer_op_by_op


PATHS = ("eager", "op-by-op", "registered")


@contextlib.contextmanager
def call_path(path: str):
    """The ops called the way ``path`` names (see the module docstring)."""
    with registered_ops(path == "registered"), mixer_op_by_op(path == "op-by-op"):
        yield


def host_times(step, sync, steps: int) -> tuple[float, float, float]:
    """(issue ms, queued wall ms, synced wall median ms) per step."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    issued = time.perf_counter()
    sync()
    done = time.perf_counter()
    synced = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        synced.append(time.perf_counter() - t0)
    return 1e3 * (issued - start) / steps, 1e3 * (done - start) / steps, 1e3 * sorted(synced)[steps // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=15360)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cases", nargs="*", default=["mixer:fwd_bwd", "block:fwd_bwd", "block:fwd"],
                        help="scope:pass of the mmdim cases")
    parser.add_argument("--paths", nargs="+", default=["eager"], choices=list(PATHS),
                        help="how the package's ops are called (see above)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the paths, alternating")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cases = build_cases(args.tokens, device, dtype, "auto")
    for case in args.cases:
        scope, pass_name = case.split(":")
        module, call, inputs = cases[(scope, "mmdim")]
        step = make_step(module.to(device=device, dtype=dtype), call, inputs, pass_name)
        for _ in range(3):
            step()
        sync()
        for _ in range(args.rounds):
            for path in args.paths:
                with call_path(path):
                    issue, queued, synced = host_times(step, sync, args.steps)
                print(f"### {scope} mmdim {args.tokens} {pass_name} ({path} ops): issue {issue:.3f} ms/step, "
                      f"queued wall {queued:.3f}, synced wall median {synced:.3f}")
        with call_path(args.paths[0]):
            profile_step(step, sync, args.steps)


def profile_step(step, sync, steps: int) -> None:
    """cProfile (Python) and torch.profiler's CPU table (ops) of the step."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    sync()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    with profile(activities=[ProfilerActivity.CPU]) as ops:
        for _ in range(5):
            step()
        sync()
    print(ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=35, max_name_column_width=60))


if __name__ == "__main__":
    main()
