"""The FLOPs report: the paper's claim, and the counts against closed forms."""

from __future__ import annotations

import json
import math

import pytest

from m4v.cli import main as cli_main
from m4v.flops import Unit, count_unit, report

TEXT, C, N, WIDTH = 128, 1920, 16, 4


@pytest.fixture(scope="module")
def result():
    return report()


def test_final_design_cuts_mixer_flops_by_at_least_45_percent(result):
    assert result["reduction_pct"] >= 45.0
    rows = {(r["name"], r["unit"]): r for r in result["rows"]}
    full = rows[("Full attention", "768p, 241 frames")]
    assert abs(full["mixer_tflops"] / 55.44 - 1) < 0.05
    assert full["tokens"] == 15360
    assert rows[("Full attention", "768p, 241 frames, full sequence")]["tokens"] == 31 * 3840
    assert rows[("Full attention", "768p, 121 frames")]["tokens"] == 2 * 3840 + 960 + 13 * 240
    # The cut grows with the sequence: attention is quadratic, the scan linear.
    by_unit = result["reduction_pct_by_unit"]
    assert by_unit["768p, 241 frames, full sequence"] > by_unit["768p, 241 frames"] > by_unit["768p, 121 frames"]


def test_counts_match_closed_forms():
    unit = Unit("768p, 241 frames", 241, 768, 1280, full_sequence=False)
    L = 15360 + TEXT
    attention = count_unit("attn-768p", unit)
    assert attention["attention"] == 24 * (8 * L * C * C + 4 * L * L * C)
    pure = count_unit("pure-mamba-768p", unit)
    S = 2 * TEXT + 31 + 15360  # the re-composed sequence: two text copies, one register per frame
    d_inner, rank = 2880, math.ceil(C / 16)
    mixer = (2 * S * C * 2 * d_inner + 2 * S * d_inner * WIDTH + 2 * S * d_inner * (rank + 2 * N)
             + 2 * S * rank * d_inner + 9 * S * d_inner * N + 2 * S * d_inner + 2 * S * d_inner * C)
    assert pure["mamba"] == 16 * (mixer + TEXT * C)  # + the text sum of the inverse
    assert pure["attention"] == 8 * (8 * L * C * C + 4 * L * L * C)


def test_cli_json(capsys):
    assert cli_main(["flops", "--frames", "121", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"rows", "reduction_pct"} <= set(out)
    for row in out["rows"]:
        assert {"name", "frames", "tokens", "mixer_tflops", "paper_tflops"} <= set(row)
    assert out["reduction_pct"] > 40
