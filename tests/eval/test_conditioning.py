"""The caption-sensitivity probe: the data side sees every attribute, a text-blind model scores 0."""

from __future__ import annotations

import math

import pytest

from m4v.cli import main
from m4v.eval.conditioning import PROBED, caption_sensitivity
from m4v.pipelines import M4VPipeline
from m4v.text.encoders import TextEmbeddings


@pytest.fixture(scope="module")
def pipe():
    return M4VPipeline.from_preset(seed=0)


def test_report_covers_every_stage_and_attribute(pipe):
    report = caption_sensitivity(pipe, num_scenes=3, local_times=(0.0, 0.5))
    assert list(report) == [f"stage {s}" for s in range(pipe.scheduler.num_stages)]
    for row in report.values():
        assert set(row) == {"data", "model @ u=0", "model @ u=0.5"}
        for values in row.values():
            assert set(values) == set(PROBED) and all(math.isfinite(v) and v >= 0 for v in values.values())
        # Changing the video's colour or shape moves its latent at every resolution.
        assert all(v > 1e-3 for v in row["data"].values())
    # A random model is not blind to its caption either (its text path is live).
    assert report["stage 0"]["model @ u=0"]["colour"] > 0


def test_a_text_blind_model_scores_zero(pipe, monkeypatch):
    encode = pipe.text_encoder.encode
    def same_for_all(prompts, device="cpu"):  # every caption encoded as one fixed prompt
        one = encode(["a scene"], device)
        n = len(prompts)
        return TextEmbeddings(one.states.expand(n, -1, -1), one.mask.expand(n, -1), one.pooled.expand(n, -1))
    monkeypatch.setattr(pipe.text_encoder, "encode", same_for_all)
    report = caption_sensitivity(pipe, num_scenes=2, local_times=(0.5,))
    assert all(v == 0.0 for row in report.values() for v in row["model @ u=0.5"].values())
    assert all(v > 1e-3 for row in report.values() for v in row["data"].values())


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="num_scenes"):
        caption_sensitivity(pipe, num_scenes=0)
    with pytest.raises(ValueError, match="local_times"):
        caption_sensitivity(pipe, local_times=(1.0,))


def test_probe_text_command(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "model")
    assert main(["probe-text", "--model", str(tmp_path / "model"), "--num-scenes", "2",
                 "--json", str(tmp_path / "probe.json")]) == 0
    out = capsys.readouterr().out
    assert "| stage 0 | data |" in out and (tmp_path / "probe.json").exists()
