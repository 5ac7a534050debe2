"""Video export and the command line."""

from __future__ import annotations

import os

import imageio.v2 as imageio
import numpy as np
import pytest

from m4v.cli import main as cli_main
from m4v.io import export_to_video


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_export_round_trip(tmp_path, suffix):
    frames = np.random.default_rng(0).random((9, 32, 48, 3)).astype(np.float32)
    path = export_to_video(frames, tmp_path / f"clip{suffix}", fps=8)
    read = [f for f in imageio.get_reader(path)]
    assert len(read) == 9 and read[0].shape[:2] == (32, 48)
    assert os.listdir(tmp_path) == [f"clip{suffix}"]  # no temporary file left behind


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import imageio.v2

    def broken_writer(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(imageio.v2, "get_writer", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        export_to_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "clip.mp4")
    assert os.listdir(tmp_path) == []


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        export_to_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="frames must be"):
        export_to_video(np.zeros((3, 8, 8)), tmp_path / "clip.mp4")


def test_cli_generates_a_playable_mp4(tmp_path, capsys):
    model = tmp_path / "tiny"
    assert cli_main(["create-tiny", str(model)]) == 0
    out = tmp_path / "x.mp4"
    assert cli_main(["generate", "a red circle moving right", "--model", str(model), "--out", str(out),
                     "--frames", "17", "--steps", "1,1,1", "--video-steps", "1,1,1", "--quiet"]) == 0
    assert len([f for f in imageio.get_reader(out)]) == 17


def test_cli_generates_with_the_shipped_model_and_no_flags(tmp_path, monkeypatch, capsys):
    """The README's main command: the shipped model, default settings, on the CPU."""
    monkeypatch.chdir(tmp_path)
    assert cli_main(["generate", "a red circle moving right", "--quiet"]) == 0
    frames = np.stack([f for f in imageio.get_reader(tmp_path / "m4v.mp4")])
    assert frames.shape == (33, 64, 64, 3)
    red = frames[..., 0].astype(int) - frames[..., 1:].astype(int).max(-1)
    assert (red > 100).any(axis=(1, 2)).mean() > 0.5  # a red object in most frames


@pytest.mark.parametrize("argv, message", [
    (["generate", " "], "prompt must be"),
    (["generate", "x", "--model", "/nonexistent"], "does not exist"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_info(capsys):
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend reference" in out and "devices: cpu" in out


def test_eval_table_prints_the_late_gap_to_real_videos():
    from m4v.cli import format_eval

    def result(critic_late, presence_late, check=None):
        late = {"critic": critic_late, "critic_in_view": None, "background": 0.0, "sharpness_in_view": 1.0,
                "attributes_in_view": 0.3, "presence": presence_late}
        early = dict(late, presence=1.0)
        out = {"attributes": {"accuracy": {"colour": 1.0, "shape": 0.5, "direction": 1.0}, "all_correct": 0.5},
               "drift": {"early": early, "late": late}, "videos": 100}
        return {**out, "critic_check": check} if check else out

    table = format_eval({"real": result(0.8, 0.2, {"real": 0.9, "degraded": 0.1}), "model": result(0.5, 0.7)})
    assert "P(real) 0.900; on degraded copies of them: 0.100" in table
    assert "over 100 videos has a standard error of at most ±0.050" in table
    gap_row = table.splitlines()[-1]
    assert gap_row.startswith("| model |") and "-0.300" in gap_row and "+0.500" in gap_row and "n/a" in gap_row


def test_eval_at_several_guidance_scales(tmp_path, capsys, monkeypatch):
    """`m4v eval --guidance` evaluates each model at each (first, later) CFG pair, passed through to
    the sampler, in rows named by the pair."""
    import m4v.pipelines.pipeline as pipeline_module

    assert cli_main(["create-tiny", str(tmp_path / "tiny")]) == 0
    seen = []
    sample = pipeline_module.M4VPipeline.__call__

    def recording_call(self, *args, **kwargs):
        seen.append((kwargs["guidance_scale"], kwargs["video_guidance_scale"]))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_module.M4VPipeline, "__call__", recording_call)
    model = str(tmp_path / "tiny")
    assert cli_main(["eval", "--model", model, "--guidance", "6,4.5", "--guidance", "1,1", "--num-videos", "2",
                     "--train-frames", "9", "--judge-steps", "2", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert f"| {model} @ cfg 6/4.5 |" in table and f"| {model} @ cfg 1/1 |" in table
    assert seen == [(6.0, 4.5), (1.0, 1.0)]
    with pytest.raises(SystemExit):
        cli_main(["eval", "--model", model, "--guidance", "0.5,1"])
    assert "guidance scales must be >= 1" in capsys.readouterr().err
