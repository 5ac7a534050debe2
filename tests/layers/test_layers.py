"""Model layers: the Mamba mixer against an independent composition, the text sandwich of MM-DiM,
MM-DiT causality, the temporal branch and the drop-in mixer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from m4v.cuda_graphs import capture_step
from m4v.kernels import available_backends, selective_scan_ref
from m4v.kernels.recompose import FrameSpec
from m4v.layers import (MambaMixer, MMDiMBlock, MMDiTBlock, MultiModalMamba, SingleStreamAttentionBlock,
                        TemporalBranch, TokenContext)
from m4v.layers import mm_dim
from m4v.layers.temporal import time_causal_attention

HIDDEN, HEADS, ROPE = 32, 2, (4, 6, 6)
FRAMES = [FrameSpec(2, 2, 0), FrameSpec(2, 2, 0), FrameSpec(4, 4, 1), FrameSpec(4, 4, 1)]


def randomize(module: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Replace the zero inits (adaLN-Zero, gates) so that every path carries signal."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("A_log") and not name.endswith(".D"):
                p.copy_(torch.randn_like(p) * std)
    return module


def context(batch=2, text_len=5):
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    mask[1, 3:] = False
    return TokenContext(FRAMES, mask, "cpu")


def tokens(ctx, batch=2, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    text = torch.randn(batch, ctx.text_len, HIDDEN, generator=g, dtype=torch.float64)
    video = torch.randn(batch, ctx.video_len, HIDDEN, generator=g, dtype=torch.float64)
    c = torch.randn(batch, HIDDEN, generator=g, dtype=torch.float64)
    return text.requires_grad_(requires_grad), video.requires_grad_(requires_grad), c


# ------------------------------------------------------------------------------------------------
# Mamba mixer.


def test_mixer_matches_independent_composition():
    torch.manual_seed(0)
    mixer = MambaMixer(HIDDEN, d_state=4, expand=1.5, backend="reference").double()
    x = torch.randn(2, 11, HIDDEN, dtype=torch.float64, requires_grad=True)
    xz = x @ mixer.in_proj.weight.T
    xs, z = xz[..., :mixer.d_inner], xz[..., mixer.d_inner:]
    xs = F.silu(F.conv1d(xs.mT, mixer.conv_weight[:, None], mixer.conv_bias, padding=3,
                         groups=mixer.d_inner)[..., :11])  # (batch, d_inner, seqlen)
    proj = xs.mT @ mixer.x_proj.weight.T
    dt, B, C = proj.split([mixer.dt_rank, 4, 4], dim=-1)
    delta = (dt @ mixer.dt_proj.weight.T).mT
    y = selective_scan_ref(xs, delta, -torch.exp(mixer.A_log), B.mT, C.mT, mixer.D, z.mT, mixer.dt_proj.bias,
                           delta_softplus=True)
    expected = y.mT @ mixer.out_proj.weight.T
    out = mixer(x)
    torch.testing.assert_close(out, expected)
    # The gradients too: the mixer's in_proj and x_proj run their own backward (projections.py).
    wrt = [x, *mixer.parameters()]
    cotangent = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, wrt, cotangent), torch.autograd.grad(expected, wrt, cotangent)):
        torch.testing.assert_close(got, want)


def test_mixer_mamba1_init():
    mixer = MambaMixer(64, d_state=16, expand=1.5)
    assert mixer.d_inner == 96 and mixer.dt_rank == 4
    torch.testing.assert_close(mixer.A_log[7], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert bool((mixer.D == 1).all())
    dt = F.softplus(mixer.dt_proj.bias)
    assert bool((dt >= 1e-3 * 0.999).all()) and bool((dt <= 0.1 * 1.001).all())


def test_mixer_passes_initial_state_and_packed_sequences():
    torch.manual_seed(0)
    mixer = MambaMixer(HIDDEN, d_state=4, backend="reference").double()
    x = torch.randn(1, 12, HIDDEN, dtype=torch.float64)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    packed, last = mixer(x, cu_seqlens=cu, return_last_state=True)
    assert last.shape == (2, mixer.d_inner, 4)
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        alone, alone_last = mixer(x[:, start:end], return_last_state=True)
        torch.testing.assert_close(packed[:, start:end], alone)
        torch.testing.assert_close(last[i], alone_last[0])
    init = torch.randn(1, mixer.d_inner, 4, dtype=torch.float64, requires_grad=True)
    seeded = mixer(x, initial_state=init)
    assert not torch.allclose(seeded, mixer(x))
    (grad,) = torch.autograd.grad(seeded.sum(), init)
    assert grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# MM-DiM.


def _jacobian_norm(out: torch.Tensor, wrt: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    """|d out[:, rows].sum() / d wrt| per token of wrt: (batch, tokens)."""
    (grad,) = torch.autograd.grad(out[:, rows].sum(), wrt, retain_graph=True)
    return grad.abs().sum(-1)


def test_mmdim_text_sandwich_mixes_both_ways():
    block = randomize(MMDiMBlock(HIDDEN, layer_index=3, d_state=4, temporal=False, backend="reference")).double()
    ctx = context()
    text, video, c = tokens(ctx, requires_grad=True)
    text_out, video_out = block(text, video, c, ctx)
    # Video reads the text through the left copy (the first video tokens depend on the text) ...
    video_on_text = _jacobian_norm(video_out, text, slice(0, FRAMES[0].tokens))
    assert bool((video_on_text[0] > 0).all())
    assert bool((video_on_text[1, :3] > 0).all()) and bool((video_on_text[1, 3:] == 0).all())  # padding
    # ... and the text reads the video through the right copy, up to the last tokens of the current frame.
    text_on_video = _jacobian_norm(text_out, video, slice(0, ctx.text_len))
    assert bool((text_on_video[:, -FRAMES[-1].tokens:] > 0).all())


def test_mmdim_layout_follows_layer_index():
    assert MMDiMBlock(HIDDEN, layer_index=11, temporal=False).path == 3
    mixer = MultiModalMamba(HIDDEN, layer_index=2)
    with pytest.raises(ValueError, match="layout path"):
        mixer(torch.randn(1, 4, HIDDEN), layout=MultiModalMamba(HIDDEN, layer_index=1).layout([(2, 2, 0)]))


def test_multimodal_mamba_drop_in_on_plain_video_tokens():
    mixer = MultiModalMamba(HIDDEN, layer_index=5, num_stages=1, d_state=4, backend="reference")
    x = torch.randn(2, 3 * 12, HIDDEN, requires_grad=True)
    out = mixer(x, frames=[(3, 4, 0)] * 3)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and mixer.registers.grad.abs().sum() > 0


def test_temporal_branch_updates_the_current_frame_from_history():
    branch = TemporalBranch(HIDDEN, channels=4, tokens_per_side=2, heads=2).double()
    video = torch.randn(2, sum(f.tokens for f in FRAMES), HIDDEN, dtype=torch.float64, requires_grad=True)
    assert bool((branch(video, FRAMES) == 0).all())  # zero-initialised gate
    randomize(branch).double()
    update = branch(video, FRAMES)
    assert update.shape == (2, FRAMES[-1].tokens, HIDDEN)
    dependence = _jacobian_norm(update, video, slice(None))
    assert bool((dependence[:, :FRAMES[0].tokens] > 0).all())  # the oldest frame reaches the current one


# ------------------------------------------------------------------------------------------------
# Attention blocks.


@pytest.mark.parametrize("make_block", [
    lambda: MMDiTBlock(HIDDEN, HEADS, rope_axes=ROPE),
    lambda: SingleStreamAttentionBlock(HIDDEN, HEADS, rope_axes=ROPE),
], ids=["mmdit", "single_stream"])
def test_attention_blocks_are_temporally_causal(make_block):
    block = randomize(make_block()).double()
    ctx = context()
    text, video, c = tokens(ctx)
    text_out, video_out = block(text, video, c, ctx)
    changed = video.clone()
    changed[:, -FRAMES[-1].tokens:] += 1.0  # a later frame
    text_changed, video_changed = block(text, changed, c, ctx)
    earlier = sum(f.tokens for f in FRAMES[:-1])
    torch.testing.assert_close(video_changed[:, :earlier], video_out[:, :earlier], rtol=0, atol=0)
    torch.testing.assert_close(text_changed, text_out, rtol=0, atol=0)
    assert not torch.allclose(video_changed[:, earlier:], video_out[:, earlier:])
    # Earlier frames still read the text.
    text_g = text.clone().requires_grad_()
    _, video_out = block(text_g, video, c, ctx)
    assert _jacobian_norm(video_out, text_g, slice(0, FRAMES[0].tokens)).sum() > 0


def test_rope_positions_align_pyramid_stages():
    ctx = TokenContext([FrameSpec(2, 2, 0), FrameSpec(4, 4, 1)], torch.ones(1, 0, dtype=torch.bool), "cpu")
    pos = ctx.video_positions
    assert pos.shape == (20, 3)
    # The centre of a coarse cell is the centre of the 2x2 fine cells it covers.
    torch.testing.assert_close(pos[0, 1:], pos[4:, 1:].view(4, 4, 2)[:2, :2].reshape(-1, 2).mean(0))
    cos, sin = ctx.rope(ROPE)
    assert cos.shape == (20, sum(ROPE) // 2)
    assert math.isclose(float(cos[0, 0]), 1.0)  # frame 0: no rotation along time


def test_full_attention_context_needs_no_mask_unless_text_is_padded():
    frames = [FrameSpec(2, 2, 0), FrameSpec(2, 2, 0)]
    assert TokenContext(frames, torch.ones(2, 3, dtype=torch.bool), "cpu", temporal_causal=False).attention_mask is None
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    full = TokenContext(frames, mask, "cpu", temporal_causal=False).attention_mask
    assert full.shape == (2, 1, 11, 11)
    assert bool(full[0].all()) and not bool(full[1, 0, 0, 2]) and bool(full[1, 0, 2, 2])  # itself only
    assert bool(full[1, 0, :, 3:].all())  # text sees video too


def test_mmdim_block_runs_on_plain_video_tokens():
    """No text at all: a (batch, tokens, dim) video sequence with a frame grid and a conditioning vector."""
    block = randomize(MMDiMBlock(HIDDEN, layer_index=4, d_state=4, backend="reference"))
    frames = [FrameSpec(3, 4, 0)] * 3
    ctx = TokenContext(frames, torch.ones(2, 0, dtype=torch.bool), "cpu")
    text, video = block(torch.zeros(2, 0, HIDDEN), torch.randn(2, 36, HIDDEN), torch.randn(2, HIDDEN), ctx)
    assert text.shape == (2, 0, HIDDEN) and video.shape == (2, 36, HIDDEN) and torch.isfinite(video).all()


def test_mmdim_block_temporal_update_matches_autograds_in_place_add(monkeypatch):
    """The block adds the temporal branch to the current frame through its own in-place Function;
    outputs and every gradient must equal autograd's in-place add on the slice, bit for bit."""
    block = randomize(MMDiMBlock(HIDDEN, layer_index=3, d_state=4, backend="reference")).double()
    frames = [FrameSpec(2, 3, 0), FrameSpec(2, 3, 0), FrameSpec(4, 6, 1)]
    ctx = TokenContext(frames, torch.tensor([[True, True, False], [True, False, False]]), "cpu")
    inputs = [torch.randn(2, 3, HIDDEN, dtype=torch.float64), torch.randn(2, 36, HIDDEN, dtype=torch.float64),
              torch.randn(2, HIDDEN, dtype=torch.float64)]

    def slice_add(video, update):
        video[:, -update.shape[1]:] += update
        return video

    results = []
    for autograds_add in (False, True):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with monkeypatch.context() as patch:
            if autograds_add:
                patch.setattr(mm_dim._AddToLastTokens, "apply", slice_add)
            text, video = block(*leaves, ctx)
        weights = torch.randn(video.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad((video * weights).sum() + text.sum(), leaves + list(block.parameters()))
        results.append([text, video, *grads])
    assert results[0][1].grad_fn.name() == "_AddToLastTokensBackward"
    for got, ref in zip(*results):
        assert not ref.isnan().any()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_mmdim_block_traces_whole_and_matches_eager():
    """torch.compile(fullgraph=True) sees the registered ops and the block's in-place Function; its
    outputs and gradients equal the eager block's, which runs the eager op path. The eager run goes
    first: it builds the context's layouts, which read the text mask's values on the host (a trace
    cannot)."""
    block = randomize(MMDiMBlock(HIDDEN, layer_index=5, d_state=4, backend="reference"))
    frames = [FrameSpec(2, 3, 0), FrameSpec(2, 3, 0), FrameSpec(4, 6, 1)]
    ctx = TokenContext(frames, torch.tensor([[True, True, False], [True, False, False]]), "cpu")
    inputs = [torch.randn(2, 3, HIDDEN), torch.randn(2, 36, HIDDEN), torch.randn(2, HIDDEN)]

    def run(call):
        leaves = [t.clone().requires_grad_() for t in inputs]
        text, video = call(*leaves, ctx)
        grads = torch.autograd.grad(video.square().sum() + text.sum(), leaves + list(block.parameters()))
        return [text, video, *grads]

    expected = run(block)
    for got, ref in zip(run(torch.compile(block, fullgraph=True, backend="aot_eager")), expected):
        assert not ref.isnan().any()
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor with the CUDA kernels needs a GPU")
def test_mixer_compiles_with_inductor_at_odd_length():
    """Inductor asserts every custom op's output strides against its fake kernel: the token-major
    views MambaMixer passes and an odd length (padded scan rows) must agree in both."""
    torch.manual_seed(0)
    mixer = MambaMixer(64, d_state=8, expand=1.5).cuda().to(torch.bfloat16)
    hidden = torch.randn(2, 301, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    expected = mixer(hidden)
    expected.float().square().sum().backward()
    eager_grad, hidden.grad = hidden.grad, None
    compiled = torch.compile(mixer, fullgraph=True)
    out = compiled(hidden)
    out.float().square().sum().backward()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(hidden.grad, eager_grad, atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(not available_backends()["cuda"].usable, reason="CUDA graphs of the CUDA kernels")
def test_mm_dim_block_step_replays_in_a_cuda_graph():
    """A whole MM-DiM training step (forward, then the gradients of inputs and parameters) captured
    in one CUDA graph, as torch.compile's reduce-overhead mode or a graphed training loop runs it,
    replays to the eager step's values on new inputs copied into the captured ones."""
    torch.manual_seed(0)
    block = randomize(MMDiMBlock(64, layer_index=3, d_state=16, num_stages=2)).cuda()
    frames = [FrameSpec(6, 10, 0), FrameSpec(6, 10, 0), FrameSpec(12, 20, 1)]
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    ctx = TokenContext(frames, mask, "cuda")
    inputs = [torch.randn(2, 7, 64, device="cuda"), torch.randn(2, ctx.video_len, 64, device="cuda"),
              torch.randn(2, 64, device="cuda")]
    leaves = [t.clone().requires_grad_(True) for t in inputs[:2]] + [inputs[2]]
    results = []

    def step():
        text, video = block(*leaves, ctx)
        grads = torch.autograd.grad([text, video], [*leaves[:2], *block.parameters()],
                                    [torch.ones_like(text), torch.ones_like(video)])
        results[:] = [text, video, *grads]

    graph = capture_step(step)
    with torch.no_grad():
        for leaf in leaves:
            leaf.copy_(torch.randn_like(leaf))
    graph.replay()
    replayed = [t.clone() for t in results]
    step()  # eager, on the same new inputs
    assert len(replayed) == 4 + len(list(block.parameters()))
    # Not bitwise: the temporal branch's pooling and upsampling backward accumulate with atomics,
    # whose order moves a float32 sum by a few ulps of its terms: bounded by 1e-5 of each tensor's
    # largest element. A replay of stale inputs or unwritten buffers misses by O(1).
    for a, b in zip(replayed, results):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("n_history, n_current, d", [(0, 1, 8), (3, 1, 30), (5, 4, 7)])
def test_time_causal_attention_matches_sdpa(n_history, n_current, d):
    """The temporal branch's attention against SDPA with the same boolean mask, float64."""
    time = torch.cat([torch.arange(n_history), torch.full((n_current,), n_history)])
    n = time.numel()
    q, key, v = (torch.randn(2, 3, n, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = time_causal_attention(q, key, v, time)
    expected = F.scaled_dot_product_attention(q, key, v, attn_mask=time[:, None] >= time[None, :])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, key, v), g)
    expected_grads = torch.autograd.grad(expected, (q, key, v), g)
    for a, b in zip(grads, expected_grads):
        assert not torch.isnan(a).any()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
