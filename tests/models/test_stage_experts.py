"""Stage experts: each pyramid stage runs its own transformer, and the pair saves and loads as one."""

from __future__ import annotations

import pytest
import torch

from m4v.models import M4VTransformer, StageExperts, load_transformer
from m4v.pipelines import M4VPipeline


def tiny(seed: int) -> M4VTransformer:
    torch.manual_seed(seed)
    model = M4VTransformer.from_preset("m4v-tiny")
    with torch.no_grad():  # non-zero output layer, so the experts' outputs differ
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def inputs(stage: int, seed: int = 0):
    """One unit's transformer inputs at ``stage`` of m4v-tiny's 3-stage pyramid (8 x 8 latents on top)."""
    gen = torch.Generator().manual_seed(seed)
    c = M4VTransformer.from_preset("m4v-tiny").config
    side = 2 * 2 ** stage
    latent = torch.randn(2, c.latent_channels, side, side, generator=gen)
    text = torch.randn(2, 5, c.text_dim, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    return latent, torch.rand(2, generator=gen), text, mask, torch.randn(2, c.pooled_dim, generator=gen)


@pytest.fixture(scope="module")
def pair():
    return tiny(0), tiny(1)


@torch.no_grad()
def test_each_stage_runs_its_expert(pair):
    base, expert = pair
    experts = StageExperts([base, expert], route=(0, 0, 1))
    for stage in range(3):
        args = inputs(stage)
        got = experts(*args, stage=stage)
        want = (expert if stage == 2 else base)(*args, stage=stage)
        other = (base if stage == 2 else expert)(*args, stage=stage)
        assert torch.equal(got, want) and not torch.allclose(got, other)
    assert torch.equal(experts(*inputs(2)), expert(*inputs(2)))  # the default stage is the top one


@torch.no_grad()
def test_save_and_load_round_trip(pair, tmp_path):
    experts = StageExperts(list(pair), route=(1, 0, 1))
    experts.save_pretrained(tmp_path)
    loaded = load_transformer(tmp_path)
    assert isinstance(loaded, StageExperts) and loaded.route == (1, 0, 1)
    for stage in range(3):
        args = inputs(stage, seed=stage)
        assert torch.equal(loaded(*args, stage=stage), experts(*args, stage=stage))
    pair[0].save_pretrained(tmp_path / "single")
    assert type(load_transformer(tmp_path / "single")) is M4VTransformer


def test_bad_routes_are_refused(pair):
    base, expert = pair
    with pytest.raises(ValueError, match="one expert per stage"):
        StageExperts([base, expert], route=(0, 1))
    with pytest.raises(ValueError, match="every one of the 2 experts"):
        StageExperts([base, expert], route=(0, 0, 0))
    with pytest.raises(ValueError, match="every one of the 2 experts"):
        StageExperts([base, expert], route=(0, 1, 2))
    with pytest.raises(ValueError, match="another config"):
        StageExperts([base, M4VTransformer.from_preset("m4v-tiny", num_stages=1)], route=(0, 1, 1))
    with pytest.raises(ValueError, match="must not be empty"):
        StageExperts([], route=())
    with pytest.raises(ValueError, match="stage must be in"):
        StageExperts([base, expert], route=(0, 0, 1))(*inputs(2), stage=3)


@torch.no_grad()
def test_pipeline_with_a_stage_expert_generates_saves_and_loads(pair, tmp_path):
    pipe = M4VPipeline.from_preset(seed=0)
    hybrid = pipe.with_stage_expert(pair[1], stages=[2])
    assert hybrid.transformer.route == (0, 0, 1) and hybrid.transformer.experts[0] is pipe.transformer
    kwargs = dict(num_frames=9, height=64, width=64, num_inference_steps=(1, 1, 2), video_num_inference_steps=1,
                  progress=False, output_type="latent")
    got = hybrid("a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.isfinite(got).all() and not torch.allclose(got, plain)
    hybrid.save_pretrained(tmp_path)
    again = M4VPipeline.from_pretrained(tmp_path)("a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(again, got)
    # Serving every stage of one expert leaves only that expert.
    whole = hybrid.with_stage_expert(pair[0], stages=[0, 1, 2])
    assert len(whole.transformer.experts) == 1 and whole.transformer.experts[0] is pair[0]
    with pytest.raises(ValueError, match="pyramid stages"):
        pipe.with_stage_expert(pair[1], stages=[3])
    with pytest.raises(TypeError, match="M4VTransformer"):
        pipe.with_stage_expert(hybrid.transformer, stages=[1])
    with pytest.raises(ValueError, match="single transformer"):
        hybrid.restaged((0.0, 1.0))


def test_stage_expert_command(tmp_path, capsys):
    """`m4v stage-expert` joins an expert trained against the base's text encoder, and refuses one
    whose text encoder differs."""
    from m4v.cli import main

    base, expert = tmp_path / "base", tmp_path / "expert"
    assert main(["create-tiny", str(base), "--seed", "0"]) == 0
    pipe = M4VPipeline.from_pretrained(base)
    pipe.transformer = tiny(3)  # the base's text encoder, another transformer
    pipe.save_pretrained(expert)
    assert main(["stage-expert", "--model", str(base), "--expert", str(expert), "--stages", "0,2",
                 "--out", str(tmp_path / "joined")]) == 0
    joined = M4VPipeline.from_pretrained(tmp_path / "joined")
    assert joined.transformer.route == (1, 0, 1)
    for a, b in zip(joined.transformer.experts[1].parameters(), pipe.transformer.parameters()):
        assert torch.equal(a, b)
    assert main(["create-tiny", str(tmp_path / "other"), "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["stage-expert", "--model", str(base), "--expert", str(tmp_path / "other"), "--stages", "2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "another text encoder" in capsys.readouterr().err
    assert main(["stage-expert", "--model", str(base), "--expert", str(tmp_path / "joined" / "transformer"),
                 "--stages", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "stage experts already" in capsys.readouterr().err
