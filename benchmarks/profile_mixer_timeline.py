"""Where a synced MM-DiM step's wall time goes on the GPU's timeline: the lead-in before its first
kernel, the idle gaps between kernels (and whether the host's launch came late), and the tail.

A step synced one by one (as bench_mixer_vs_attention.py and a training step run it) takes longer
than its kernels when the GPU waits: before the first launch, and wherever a kernel's launch comes
after the previous kernel ended. torch.profiler records the CUDA runtime calls and the kernels only
(no CPU op events, whose recording would slow the host it measures); a kernel is matched to its
launch by CUPTI's correlation id, and the steps are split at the host's device synchronizations.

Also runs one step under ``torch.cuda.set_sync_debug_mode("warn")`` and prints any synchronizing
call it reports (a hidden sync drains the queue and turns the rest of the step host-bound).
``--host-detail`` profiles a few more steps with CPU ops and Python calls recorded, and prints what
the host ran in the lead-in and in the longest gaps of the middle step (absolute times there are
inflated by the recording; the proportions are what to read).

    python benchmarks/profile_mixer_timeline.py [--tokens 15360] [--cases mixer:fwd_bwd ...]
        [--steps 8] [--gap-us 4] [--host-detail] [--json FILE]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench_mixer_vs_attention import build_cases, make_step

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_NAMES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaMemcpyAsync", "cudaMemsetAsync", "cudaMemcpy", "cudaMemset")
SYNC_NAMES = ("cudaDeviceSynchronize",)


def trace_events(prof) -> list[dict]:
    """The complete ('X') events of a finished profile's chrome trace."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "ts" in e]


def short_name(name: str, width: int = 70) -> str:
    name = name.split("(")[0] if name.startswith("void ") else name
    return name if len(name) <= width else name[:width - 3] + "..."


def timeline_parts(events: list[dict]) -> tuple[dict, list[float], list[dict]]:
    """(launch calls by correlation id, end times of the device syncs, GPU ops by start time)."""
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and e["name"] in LAUNCH_NAMES
                and "correlation" in e.get("args", {})}
    syncs = sorted(e["ts"] + e["dur"] for e in events
                   if e.get("cat") in ("cuda_runtime", "cuda_driver") and e["name"] in SYNC_NAMES)
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    return launches, syncs, gpu


def analyse_steps(events: list[dict], gap_us: float) -> tuple[list[dict], list[dict]]:
    """Per step: wall, lead-in, kernel busy time, idle gaps, tail (us); and every gap over gap_us,
    with the kernels around it and how late the next kernel's launch came after the GPU went idle."""
    launches, syncs, gpu = timeline_parts(events)
    steps, gaps = [], []
    for start, end in zip(syncs, syncs[1:]):
        ops = [e for e in gpu if start <= e["ts"] < end]
        if not ops:
            continue
        busy, idle, cursor, previous = 0.0, 0.0, ops[0]["ts"], None
        for op in ops:
            if op["ts"] > cursor:
                gap = op["ts"] - cursor
                idle += gap
                if gap >= gap_us and previous is not None:
                    launch = launches.get(op.get("args", {}).get("correlation"))
                    late = launch["ts"] - cursor if launch is not None else float("nan")
                    gaps.append({"step": len(steps), "gap_us": gap, "host_late_us": late,
                                 "after": short_name(previous["name"]), "before": short_name(op["name"])})
            busy += max(0.0, op["ts"] + op["dur"] - max(cursor, op["ts"]))
            cursor = max(cursor, op["ts"] + op["dur"])
            previous = op
        first_launch = launches.get(ops[0].get("args", {}).get("correlation"))
        steps.append({
            "wall_us": end - start,
            "first_launch_us": first_launch["ts"] - start if first_launch is not None else float("nan"),
            "lead_in_us": ops[0]["ts"] - start,
            "busy_us": busy,
            "idle_gaps_us": idle,
            "tail_us": end - cursor,
            "gpu_ops": len(ops),
        })
    return steps, gaps


def host_windows(events: list[dict], gaps: int = 3) -> list[tuple[str, float, float]]:
    """(label, start, end) host-time windows of the middle step: the lead-in (sync end to first
    launch) and, for its longest GPU gaps, the stretch from the GPU going idle to the late launch."""
    launches, syncs, gpu = timeline_parts(events)
    if len(syncs) < 3:
        return []
    middle = len(syncs) // 2
    start, end = syncs[middle - 1], syncs[middle]
    ops = [e for e in gpu if start <= e["ts"] < end]
    if not ops:
        return []
    windows = []
    first = launches.get(ops[0].get("args", {}).get("correlation"))
    if first is not None:
        windows.append(("lead-in", start, first["ts"]))
    late, cursor = [], ops[0]["ts"] + ops[0]["dur"]
    for previous, op in zip(ops, ops[1:]):
        launch = launches.get(op.get("args", {}).get("correlation"))
        if launch is not None and launch["ts"] > cursor:
            late.append((launch["ts"] - cursor, cursor, launch["ts"], short_name(op["name"], 40)))
        cursor = max(cursor, op["ts"] + op["dur"])
    for wait, lo, hi, name in sorted(late, reverse=True)[:gaps]:
        windows.append((f"GPU idle {wait:.0f} us before {name}", lo, hi))
    return windows


def print_host_window(events: list[dict], label: str, lo: float, hi: float, min_us: float = 10.0,
                      rows: int = 40) -> None:
    """The CPU ops and Python calls of at least min_us that overlap [lo, hi], nested by containment."""
    spans = sorted((e for e in events if e.get("cat") in ("cpu_op", "python_function", "user_annotation")
                    and e["dur"] >= min_us and e["ts"] < hi and e["ts"] + e["dur"] > lo),
                   key=lambda e: (e["ts"], -e["dur"]))
    print(f"-- host during {label} ({hi - lo:.0f} us):")
    stack = []
    for e in spans[:rows]:
        while stack and e["ts"] >= stack[-1]:
            stack.pop()
        inside = max(0.0, min(hi, e["ts"] + e["dur"]) - max(lo, e["ts"]))
        print(f"   {e['ts'] - lo:8.0f} {e['dur']:8.0f} {inside:8.0f}  {'  ' * len(stack)}{short_name(e['name'], 90)}")
        stack.append(e["ts"] + e["dur"])


def hidden_syncs(step) -> list[str]:
    """Messages of the synchronizing calls one step makes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    # The mode's own notice that it is a prototype is not a sync.
    return [str(w.message).splitlines()[0] for w in caught if "prototype" not in str(w.message)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=15360)
    parser.add_argument("--cases", nargs="*", default=["mixer:fwd_bwd", "mixer:fwd", "block:fwd_bwd"],
                        help="scope:pass of the mmdim cases")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gap-us", type=float, default=4.0, help="list idle gaps at least this long")
    parser.add_argument("--host-detail", action="store_true",
                        help="also record CPU ops and Python calls, and print the host's work in the lead-in and "
                             "the longest gaps")
    parser.add_argument("--json", help="write the per-step records and gaps here")
    parser.add_argument("--blas", choices=["cublas", "cublaslt"], default=None,
                        help="torch's preferred BLAS library for the run (the host cost of in_proj's first GEMM "
                             "launch is in the step's critical path)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_mixer_timeline.py needs a CUDA device (the timeline is the GPU's)")
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    dtype = torch.bfloat16
    cases = build_cases(args.tokens, "cuda", dtype, "auto")
    records = {}
    for case in args.cases:
        scope, pass_name = case.split(":")
        module, call, inputs = cases[(scope, "mmdim")]
        step = make_step(module.to(device="cuda", dtype=dtype), call, inputs, pass_name)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        syncs = hidden_syncs(step)
        walls = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            walls.append(1e3 * (time.perf_counter() - t0))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.cuda.synchronize()
            for _ in range(args.steps + 1):
                step()
                torch.cuda.synchronize()
        steps, gaps = analyse_steps(trace_events(prof), args.gap_us)
        # The first profiled step carries the profiler's start-up.
        steps, gaps = steps[1:], [g for g in gaps if g["step"] > 0]
        name = f"{scope} mmdim {args.tokens} {pass_name}"
        print(f"\n### {name}: synced wall median {statistics.median(walls):.3f} ms unprofiled; "
              f"{len(syncs)} synchronizing calls in a step" + "".join(f"\n#   sync: {s}" for s in syncs[:8]))
        print(f"{'wall':>8} {'1st launch':>10} {'lead-in':>8} {'busy':>8} {'idle gaps':>9} {'tail':>6} {'ops':>4}"
              "   (us, profiled steps)")
        for s in steps:
            print(f"{s['wall_us']:8.0f} {s['first_launch_us']:10.0f} {s['lead_in_us']:8.0f} {s['busy_us']:8.0f} "
                  f"{s['idle_gaps_us']:9.0f} {s['tail_us']:6.0f} {s['gpu_ops']:4d}")
        by_place = defaultdict(list)
        for g in gaps:
            by_place[(g["after"], g["before"])].append(g)
        per_step = max(1, len(steps))
        print(f"gaps >= {args.gap_us:g} us, summed over the steps, per step (host late: the next launch came "
              "this long after the GPU went idle; negative: launched in time, GPU-side latency):")
        ranked = sorted(by_place.items(), key=lambda kv: -sum(g["gap_us"] for g in kv[1]))
        for (after, before), group in ranked[:25]:
            total = sum(g["gap_us"] for g in group) / per_step
            late = statistics.median(g["host_late_us"] for g in group)
            print(f"{total:8.1f} us/step  x{len(group) / per_step:4.1f}  host late {late:7.1f}  {after}  ->  {before}")
        records[name] = {"synced_wall_ms": walls, "syncs": syncs, "steps": steps, "gaps": gaps}
        if args.host_detail:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
                torch.cuda.synchronize()
                for _ in range(3):
                    step()
                    torch.cuda.synchronize()
            events = trace_events(prof)
            for label, lo, hi in host_windows(events):
                print_host_window(events, label, lo, hi)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
