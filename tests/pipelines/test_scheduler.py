"""The pyramidal flow-matching scheduler against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from m4v.pipelines import PyramidFlowScheduler, PyramidFlowSchedulerConfig
from m4v.pipelines.scheduler import downsample, upsample


def test_stage_windows_and_steps():
    scheduler = PyramidFlowScheduler()
    assert scheduler.num_stages == 3
    assert scheduler.window(1) == pytest.approx((1 / 3, 2 / 3))
    steps = scheduler.steps(1, 4)
    assert [s[0] for s in steps] == pytest.approx([1 / 3, 1 / 3 + 1 / 12, 1 / 3 + 2 / 12, 1 / 3 + 3 / 12])
    assert [(s[1], s[2]) for s in steps] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    with pytest.raises(ValueError, match="num_steps"):
        scheduler.steps(0, 0)


def test_euler_steps_follow_the_straight_path_exactly():
    """With the true velocity v = x_end - x_start, Euler lands on x_end, and every intermediate point
    (and the one-step estimate from it) is exact."""
    scheduler = PyramidFlowScheduler()
    start, end = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x = start
    for _, u, u_next in scheduler.steps(2, 5):
        torch.testing.assert_close(scheduler.clean_estimate(x, end - start, u), end)
        x = scheduler.step(x, end - start, u, u_next)
        torch.testing.assert_close(x, (1 - u_next) * start + u_next * end)
    torch.testing.assert_close(x, end)


def test_jump_upsamples_and_renoises_with_block_correlation():
    scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(renoise_sigma=0.25, block_correlation=0.5))
    generator = torch.Generator().manual_seed(0)
    end = torch.full((64, 4, 16, 16), 2.0)
    start = scheduler.jump(end, 1, generator)
    assert start.shape == (64, 4, 32, 32)
    noise = (start - 0.75 * 2.0) / 0.25          # x_start = (1 - sigma) up(x_end) + sigma n
    assert abs(noise.mean().item()) < 0.02
    assert abs(noise.var().item() - 1.0) < 0.02
    blocks = noise.unfold(-2, 2, 2).unfold(-2, 2, 2).reshape(-1, 4)  # the 4 values of each 2x2 block
    inside = torch.corrcoef(blocks.T)[0, 1:]
    assert torch.allclose(inside, torch.full_like(inside, 0.5), atol=0.03)
    right_of_block, left_of_next = noise[..., 1:-1:2].flatten(), noise[..., 2::2].flatten()
    across = torch.corrcoef(torch.stack([right_of_block, left_of_next]))[0, 1]
    assert abs(across.item()) < 0.03  # neighbouring blocks are independent


def test_per_stage_renoise_sigma():
    scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(renoise_sigma=(0.6, 0.2)))
    end = torch.full((16, 4, 16, 16), 2.0)
    for stage, sigma in ((1, 0.6), (2, 0.2)):
        noise = (scheduler.jump(end, stage, torch.Generator().manual_seed(stage)) - (1 - sigma) * 2.0) / sigma
        assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1.0) < 0.03
    # The training start of stage s re-noises by the same sigma_s: at u = 0 the sample is the start.
    x_u, _, velocity = scheduler.training_sample(end, 1, torch.zeros(16), torch.Generator().manual_seed(3))
    assert abs((end - x_u).mean().item() - 0.6 * 2.0) < 0.03  # E[x_start] = (1 - sigma_1) * 2
    torch.testing.assert_close(velocity, end - x_u)
    assert scheduler.config.to_dict()["renoise_sigma"] == [0.6, 0.2]
    # A given coarse copy replaces downsample(x_end) as the start's source.
    coarse = torch.full((16, 4, 8, 8), -1.0)
    x_u, _, _ = scheduler.training_sample(end, 1, torch.zeros(16), torch.Generator().manual_seed(3), coarse)
    assert abs(x_u.mean().item() - 0.4 * -1.0) < 0.03
    with pytest.raises(ValueError, match="half size"):
        scheduler.training_sample(end, 1, torch.zeros(16), coarse=torch.zeros(16, 4, 16, 16))


def test_source_hint_is_added_to_stage_zero_noise():
    scheduler = PyramidFlowScheduler()
    end, hint = torch.randn(16, 4, 8, 8), torch.full((16, 4, 8, 8), 3.0)
    x_u, _, velocity = scheduler.training_sample(end, 0, torch.zeros(16), torch.Generator().manual_seed(2),
                                                 source_hint=hint)
    noise = x_u - hint  # at u = 0 the sample is the start: the hint plus unit noise
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1.0) < 0.05
    torch.testing.assert_close(velocity, end - x_u)
    with pytest.raises(ValueError, match="x_end's shape"):
        scheduler.training_sample(end, 0, torch.zeros(16), source_hint=hint[:, :, :4])
    with pytest.raises(ValueError, match="stage 0 only"):
        scheduler.training_sample(torch.randn(16, 4, 16, 16), 1, torch.zeros(16),
                                  source_hint=torch.zeros(16, 4, 16, 16))


def test_upsample_and_downsample():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert torch.equal(upsample(x)[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]))
    assert torch.equal(downsample(upsample(x)), x)
    assert torch.equal(downsample(x, 1), x)


def test_training_sample_is_on_the_path():
    scheduler = PyramidFlowScheduler()
    end = torch.randn(3, 2, 8, 8)
    u = torch.tensor([0.0, 0.5, 1.0])
    x_u, tau, velocity = scheduler.training_sample(end, 2, u, torch.Generator().manual_seed(1))
    assert tau == pytest.approx(torch.tensor([2 / 3, 5 / 6, 1.0]))
    torch.testing.assert_close(x_u[2], end[2])
    torch.testing.assert_close(scheduler.clean_estimate(x_u[1], velocity[1], 0.5), end[1])


def test_bad_configs():
    with pytest.raises(ValueError, match="stage_range"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(stage_range=(0.0, 0.5, 0.4, 1.0)))
    with pytest.raises(ValueError, match="block_correlation"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(block_correlation=1.5))
    with pytest.raises(ValueError, match="renoise_sigma"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(renoise_sigma=(0.5,)))  # 2 jumps in 3 stages
    with pytest.raises(ValueError, match="renoise_sigma"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(renoise_sigma=(0.5, 0.0)))
    with pytest.raises(ValueError, match="stage"):
        PyramidFlowScheduler().jump(torch.zeros(1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="time_shift"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(time_shift=0.0))
    with pytest.raises(ValueError, match="num_inference_steps must be empty or 3"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(num_inference_steps=(10, 10)))
    with pytest.raises(ValueError, match="video_num_inference_steps"):
        PyramidFlowScheduler(PyramidFlowSchedulerConfig(video_num_inference_steps=(5, 0, 5)))


def test_time_shift_places_more_steps_near_the_noise():
    """time_shift s puts step k of N at u = t / (t + s (1 - t)), t = k / N: from 0 to 1, rising,
    denser near u = 0 for s > 1; Euler on the straight path stays exact."""
    scheduler = PyramidFlowScheduler(PyramidFlowSchedulerConfig(time_shift=3.0))
    steps = scheduler.steps(2, 4)
    starts = [t / (t + 3 * (1 - t)) for t in (0.0, 0.25, 0.5, 0.75)]
    assert [s[1] for s in steps] == pytest.approx(starts)
    assert steps[-1][2] == 1.0 and all(a[2] == b[1] for a, b in zip(steps, steps[1:]))
    assert steps[0][2] - steps[0][1] < steps[-1][2] - steps[-1][1]
    a, b = scheduler.window(2)
    assert [s[0] for s in steps] == pytest.approx([a + (b - a) * u for u in starts])
    start, end = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(1, 2, 4, 4, dtype=torch.float64)
    x = start
    for _, u, u_next in steps:
        x = scheduler.step(x, end - start, u, u_next)
    torch.testing.assert_close(x, end)


def test_default_steps_are_the_models_own():
    assert PyramidFlowScheduler().default_steps() == (10, 10, 10)
    assert PyramidFlowScheduler().default_steps(video=True) == (5, 5, 5)
    one = PyramidFlowScheduler(PyramidFlowSchedulerConfig(stage_range=(0.0, 1.0), num_inference_steps=(20,),
                                                          video_num_inference_steps=(8,)))
    assert one.num_stages == 1 and one.default_steps() == (20,) and one.default_steps(video=True) == (8,)
    assert one.config.to_dict()["num_inference_steps"] == [20]
