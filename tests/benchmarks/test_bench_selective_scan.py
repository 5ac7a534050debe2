"""The table of benchmarks/bench_selective_scan.py from fixed timings (no GPU): each backend's
ratios against mamba_ssm, against the CUDA scan (issue 7's Triton bound) and, for the variants,
against the plain scan of the same backend."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
FAKE_MS = {("cuda", "plain"): 1.0, ("triton", "plain"): 1.9, ("mamba_ssm", "plain"): 2.5,
           ("cuda", "reverse"): 1.05, ("triton", "reverse"): 2.09}


@pytest.fixture()
def bench(monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling _report
    try:
        spec = importlib.util.spec_from_file_location("bench_selective_scan", BENCHMARKS / "bench_selective_scan.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(module.torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(module, "scan_functions", lambda: {name: name for name in ("cuda", "triton", "mamba_ssm")})
    monkeypatch.setattr(module, "time_ms", lambda fn, pass_name, shape, dtype, variant="plain": FAKE_MS[fn, variant])
    return module


def test_table_gives_each_backend_its_ratios(bench, capsys, tmp_path):
    out = tmp_path / "records.json"
    assert bench.main(["--shapes", "1,64,256,16", "--passes", "fwd", "--variants", "plain", "reverse",
                       "--json", str(out)]) == 0
    columns = ("pass", "backend", "variant", "ms", "GB/s", "/floor", "vs mamba_ssm", "vs cuda", "vs plain")
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("(1, 64, 256, 16)"):
            row = dict(zip(columns, line.split()[4:]))  # after the shape's four words
            rows[row["backend"], row["variant"]] = row
    assert set(rows) == set(FAKE_MS)
    pick = ("ms", "vs mamba_ssm", "vs cuda", "vs plain")
    assert [rows["triton", "plain"][c] for c in pick] == ["1.900", "1.32x", "1.90x", "-"]
    assert [rows["cuda", "plain"][c] for c in pick] == ["1.000", "2.50x", "-", "-"]
    assert [rows["mamba_ssm", "plain"][c] for c in pick] == ["2.500", "1.00x", "2.50x", "-"]
    assert [rows["triton", "reverse"][c] for c in pick] == ["2.090", "-", "1.99x", "+10.0%"]
    assert [rows["cuda", "reverse"][c] for c in pick] == ["1.050", "-", "-", "+5.0%"]  # mamba_ssm has no reverse
    records = json.loads(out.read_text())
    assert {(r["backend"], r.get("variant", "plain")) for r in records} == set(FAKE_MS)
    assert all(r["ms"] == FAKE_MS[r["backend"], r.get("variant", "plain")] for r in records)
