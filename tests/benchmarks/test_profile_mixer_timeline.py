"""The timeline analysis of benchmarks/profile_mixer_timeline.py on a hand-built trace: steps split
at the device syncs, busy time as the union of the GPU ops, gaps with how late their launch came,
and the host windows of the middle step."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def timeline():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling bench_mixer_vs_attention
    try:
        path = BENCHMARKS / "profile_mixer_timeline.py"
        spec = importlib.util.spec_from_file_location("profile_mixer_timeline", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def runtime(name, ts, dur, correlation=None):
    return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur,
            "args": {} if correlation is None else {"correlation": correlation}}


def kernel(name, ts, dur, correlation):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": correlation}}


def trace(steps=3, period=1000):
    """Each step: a sync ending at base + 10, kernel a launched at +50 and run at +60..+160, kernel b
    launched in time and run back to back with a (+160..+200, overlapping +190..+210 by a copy), and
    kernel c launched at +230, 30 us after the GPU went idle at +210 and run +240..+260."""
    events = []
    for s in range(steps):
        base = s * period
        events += [runtime("cudaDeviceSynchronize", base, 10),
                   runtime("cudaLaunchKernel", base + 50, 5, base + 1), kernel("a", base + 60, 100, base + 1),
                   runtime("cudaLaunchKernel", base + 70, 5, base + 2), kernel("b", base + 160, 40, base + 2),
                   runtime("cudaMemcpyAsync", base + 80, 5, base + 3),
                   {"ph": "X", "cat": "gpu_memcpy", "name": "copy", "ts": base + 190, "dur": 20,
                    "args": {"correlation": base + 3}},
                   runtime("cudaLaunchKernel", base + 230, 5, base + 4), kernel("c", base + 240, 20, base + 4),
                   {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": base + 215, "dur": 12, "args": {}}]
    events.append(runtime("cudaDeviceSynchronize", steps * period, 10))
    return events


def test_steps_are_split_at_syncs_with_busy_time_as_a_union(timeline):
    steps, gaps = timeline.analyse_steps(trace(), gap_us=4)
    assert len(steps) == 3
    first = steps[0]
    assert first["wall_us"] == 1000
    assert first["first_launch_us"] == 40 and first["lead_in_us"] == 50
    assert first["busy_us"] == 170  # 60..210 and 240..260: the copy's overlap counted once
    assert first["idle_gaps_us"] == 30 and first["tail_us"] == 750 and first["gpu_ops"] == 4
    assert [(g["step"], g["gap_us"], g["host_late_us"], g["after"], g["before"]) for g in gaps] == [
        (s, 30, 20, "copy", "c") for s in range(3)]


def test_host_windows_of_the_middle_step(timeline, capsys):
    events = trace()
    windows = timeline.host_windows(events)
    assert windows == [("lead-in", 1010, 1050), ("GPU idle 20 us before c", 1210, 1230)]
    timeline.print_host_window(events, *windows[1])
    assert "aten::mm" in capsys.readouterr().out
