"""Per-frame quality and drift metrics on known inputs: real frames score high, degraded ones low,
and a video that decays over time shows late-frame drift."""

from __future__ import annotations

import torch

from m4v.eval import drift_report, sharpness, train_attribute_classifier
from m4v.eval.quality import critic_check, degrade, degraded_frames, real_frames, sharpen, train_quality_critic


def test_sharpness_drops_under_blur():
    real, _ = real_frames(8, 3, 32, seed=3)
    blurred = torch.nn.functional.avg_pool2d(real.flatten(0, 1), 5, stride=1, padding=2).view(real.shape)
    assert (sharpness(blurred) < 0.7 * sharpness(real)).all()
    assert sharpness(torch.full_like(real, 0.5)).abs().max() == 0


def test_sharpen_raises_sharpness_and_is_the_identity_at_zero():
    real, _ = real_frames(8, 3, 32, seed=3)
    assert torch.equal(sharpen(real, 0.0), real)
    assert (sharpness(sharpen(real, 2.0)) > 1.15 * sharpness(real)).all()
    amounts = torch.tensor([0.0, 2.0, 0.0]).repeat(8)  # one per frame, videos first
    mixed = sharpen(real, amounts)
    assert torch.equal(mixed[:, 0], real[:, 0]) and (sharpness(mixed[:, 1:2]) > sharpness(real[:, 1:2])).all()


def test_degraded_frames_leave_out_copies_that_did_not_change():
    """Blurring or sharpening an empty frame changes nothing: such a copy labelled fake would be a
    real frame labelled fake, so the critic never trains on it."""
    from m4v.data.shapes import BACKGROUND

    real, _ = real_frames(6, 3, 32, seed=14)
    empty = torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1).expand(6, 3, 3, 32, 32)
    frames, degraded = degraded_frames(torch.cat([real, empty]), seed=0)
    assert frames.shape == (36, 1, 3, 32, 32) and 0 < len(degraded) < 36
    for copy in degraded:
        assert ((copy - frames).abs().flatten(1).amax(1) > 1e-3).all()
    _, degraded_empty = degraded_frames(empty, seed=0)
    assert len(degraded_empty) < 18  # blur, contrast and sharpening leave a flat frame as it was


def test_quality_critic_prefers_real_frames_to_degraded_ones():
    train, _ = real_frames(32, 2, 32, seed=4)
    critic = train_quality_critic(train, steps=80, seed=0)
    held_out, _ = real_frames(16, 2, 32, seed=5)
    degraded = degrade(held_out, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.sigmoid(critic(held_out)).mean() > torch.sigmoid(critic(degraded)).mean() + 0.15
    check = critic_check(critic, held_out, seed=1)
    assert check["real"] > check["degraded"] + 0.15


def test_drift_report_flags_a_video_that_fades():
    """Real videos (temporal factor 4, 2 training units): early and late agree; the same videos
    fading to grey after the training length score lower late than early."""
    videos, captions = real_frames(12, 17, 32, seed=6)
    critic = train_quality_critic(real_frames(32, 2, 32, seed=7)[0], steps=80)
    judge = train_attribute_classifier(seed=11, steps=60, frames=5)
    real_sharp = float(sharpness(videos).mean())
    steady = drift_report(videos, captions, critic, judge, real_sharp, temporal_factor=4, train_units=3)
    assert len(steady.critic) == 5 and abs(steady.late["sharpness"] - steady.early["sharpness"]) < 0.2
    fade = torch.ones(17).clone()
    fade[9:] = torch.linspace(0.8, 0.1, 8)
    faded = 0.5 + (videos - 0.5) * fade.view(1, 17, 1, 1, 1)
    drifted = drift_report(faded, captions, critic, judge, real_sharp, temporal_factor=4, train_units=3)
    assert abs(drifted.early["sharpness"] - steady.early["sharpness"]) < 1e-6
    assert drifted.late["sharpness"] < steady.late["sharpness"] - 0.3
    assert drifted.late["critic"] < steady.late["critic"]


def test_background_error_is_zero_for_real_frames_and_sees_a_colour_cast():
    from m4v.eval.quality import background_error

    real, _ = real_frames(6, 3, 32, seed=8)
    assert background_error(real).max() < 1e-6
    cast = (real + torch.tensor([0.3, 0.0, -0.05]).view(1, 1, 3, 1, 1)).clamp(0, 1)
    assert (background_error(cast) > 0.09).all()


def test_object_presence_sees_objects_that_vanish_in_place():
    from m4v.data.shapes import BACKGROUND
    from m4v.eval.quality import object_presence
    from m4v.training.reward import in_view_speed

    videos, _ = real_frames(6, 17, 32, seed=9, speed=in_view_speed(17, 17))
    assert object_presence(videos).min() == 1  # every training-length frame shows its object
    vanished = videos.clone()
    vanished[:, 9:] = torch.tensor(BACKGROUND).view(1, 1, 3, 1, 1)
    presence = object_presence(vanished)
    assert presence[:, :9].min() == 1 and presence[:, 9:].max() == 0
    noisy = vanished + 0.03 * torch.randn_like(vanished)  # sampling noise is not an object
    assert object_presence(noisy)[:, 9:].max() == 0


def test_in_view_statistics_separate_blur_from_absence():
    """Objects that leave (or vanish) take their edges with them: overall sharpness falls, sharpness
    over the frames that still show an object does not; blur lowers both. A span with no object in
    view has no in-view statistics."""
    from m4v.data.shapes import BACKGROUND
    from m4v.training.reward import in_view_speed

    videos, captions = real_frames(8, 17, 32, seed=12, speed=in_view_speed(17, 17))
    critic = train_quality_critic(real_frames(8, 2, 32, seed=13)[0], steps=5)
    judge = train_attribute_classifier(seed=14, steps=5, frames=5)

    def report(clips, names):
        return drift_report(clips, names, critic, judge, 1.0, temporal_factor=4, train_units=3)

    vanished = videos.clone()
    vanished[:4, 9:] = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    gone, kept = report(vanished, captions), report(videos[4:], captions[4:])
    assert gone.late["sharpness"] < 0.6 * kept.late["sharpness"]
    assert abs(gone.late["sharpness_in_view"] - kept.late["sharpness_in_view"]) < 1e-5
    assert gone.sharpness_in_view[:3] == report(videos, captions).sharpness_in_view[:3]

    blurred = videos.clone()
    late = blurred[:, 9:].flatten(0, 1)
    blurred[:, 9:] = torch.nn.functional.avg_pool2d(late, 3, stride=1, padding=1).view(blurred[:, 9:].shape)
    assert report(blurred, captions).late["sharpness_in_view"] < 0.7 * report(videos, captions).late["sharpness_in_view"]

    empty = videos.clone()
    empty[:, 9:] = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    nothing_late = report(empty, captions)
    assert all(nothing_late.late[f"{name}_in_view"] is None for name in ("critic", "sharpness", "attributes"))
    assert nothing_late.critic_in_view[:3] == report(videos, captions).critic_in_view[:3]
