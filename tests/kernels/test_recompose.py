"""Token re-composition: zigzag paths, the layout's structure, the round trip, every backend against
the reference (forward and gradients), registration and argument checking."""

from __future__ import annotations

import pytest
import torch

from m4v.kernels import available_backends
from m4v.kernels.recompose import (NUM_PATHS, FrameSpec, ScanLayout, inverse_recompose, inverse_recompose_ref,
                                   recompose, recompose_bytes, recompose_ref, zigzag_order)

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"
BACKENDS = [b for b in ("cuda", "triton") if available_backends()[b].usable]
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if HAS_GPU else [torch.float32]
# The forward is a pure copy (exact in every dtype); the text sum rounds once in the output dtype.
SUM_TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 0.0}


@pytest.fixture
def poison_outputs(monkeypatch):
    monkeypatch.setenv("M4V_POISON_OUTPUTS", "1")


def pyramid_layout(path=0, batch=2, text_len=6, seed=0):
    """A mixed-resolution history (lowest stage first), a current top-stage frame and ragged text."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, text_len + 1, (batch,), generator=gen)
    lengths[0] = text_len  # one sample without padding
    if batch > 1:
        lengths[1] = 0     # and one with no text at all
    mask = torch.arange(text_len)[None, :] < lengths[:, None]
    frames = [(2, 3, 0), (2, 3, 0), (4, 6, 1), (8, 12, 2)]
    return ScanLayout(frames, path=path, text_len=text_len, text_mask=mask)


def inputs(layout, channels=24, dtype=torch.float32, device=DEVICE, requires_grad=False):
    text = torch.randn(layout.batch, layout.text_len, channels, dtype=dtype, device=device)
    video = torch.randn(layout.batch, layout.video_len, channels, dtype=dtype, device=device)
    registers = torch.randn(layout.num_stages, channels, dtype=dtype, device=device)
    return [t.requires_grad_(requires_grad) for t in (text, video, registers)]


# ------------------------------------------------------------------------------------------------
# Zigzag paths.


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (6, 1), (4, 4), (3, 5), (6, 4), (7, 9)])
@pytest.mark.parametrize("path", range(NUM_PATHS))
def test_zigzag_visits_every_cell_once_through_neighbours(h, w, path):
    order = zigzag_order(h, w, path)
    assert sorted(order.tolist()) == list(range(h * w))
    rows, cols = order // w, order % w
    steps = (rows[1:] - rows[:-1]).abs() + (cols[1:] - cols[:-1]).abs()
    assert bool((steps == 1).all())


@pytest.mark.parametrize("h, w", [(2, 2), (3, 5), (6, 4)])
def test_the_eight_paths_are_distinct(h, w):
    orders = {tuple(zigzag_order(h, w, p).tolist()) for p in range(NUM_PATHS)}
    assert len(orders) == NUM_PATHS


def test_zigzag_start_corners_and_axes():
    h, w = 3, 4
    corners = {0: 0, 1: w - 1, 2: (h - 1) * w, 3: h * w - 1}
    for path in range(NUM_PATHS):
        order = zigzag_order(h, w, path)
        assert order[0] == corners[path % 4]
        second = order[1].item()
        moved_along_row = second // w == order[0].item() // w
        assert moved_along_row == (path < 4)  # row-major paths sweep a row first


# ------------------------------------------------------------------------------------------------
# Layout structure and the round trip (reference semantics).


@pytest.mark.parametrize("path", [0, 5])
def test_sequence_structure(path):
    layout = pyramid_layout(path)
    text, video, registers = inputs(layout, device="cpu", dtype=torch.float64)
    seq = recompose(text, video, layout, registers, backend="reference")
    T, S = layout.text_len, layout.seq_len
    assert seq.shape == (layout.batch, S, 24)
    for b in range(layout.batch):
        real = text[b, layout.text_mask[b]]
        n = real.shape[0]
        assert torch.equal(seq[b, T - n:T], real)                    # Z_l: real text right before video
        assert torch.equal(seq[b, :T - n], torch.zeros_like(seq[b, :T - n]))
        assert torch.equal(seq[b, S - T:S - T + n], real)            # Z_r: real text right after video
        assert torch.equal(seq[b, S - T + n:], torch.zeros_like(seq[b, S - T + n:]))
    slot, start = T, 0
    for f in layout.frames:
        assert torch.equal(seq[:, slot], registers[f.stage].expand(layout.batch, -1))
        order = zigzag_order(f.height, f.width, path)
        assert torch.equal(seq[:, slot + 1:slot + 1 + f.tokens], video[:, start + order])
        slot, start = slot + 1 + f.tokens, start + f.tokens
    assert slot == S - T


def test_register_map_points_at_the_register_tokens():
    layout = pyramid_layout(path=2, seed=4)
    gather_index, _ = layout.maps("cpu")
    slots, stage_one_hot = layout.register_map("cpu")
    first_register_row = layout.text_len + layout.video_len
    expected_slots = (gather_index[0] >= first_register_row).nonzero().flatten()
    assert torch.equal(slots, expected_slots)
    assert (gather_index[:, slots] >= first_register_row).all()  # the same slots in every sample
    stages = gather_index[0, slots].long() - first_register_row
    assert torch.equal(stage_one_hot, torch.nn.functional.one_hot(stages, layout.num_stages).T.float())
    assert stage_one_hot.sum(0).eq(1).all() and stage_one_hot.shape == (layout.num_stages, len(layout.frames))


@pytest.mark.parametrize("path", range(NUM_PATHS))
def test_round_trip_returns_video_and_doubled_text(path):
    layout = pyramid_layout(path, seed=path)
    text, video, registers = inputs(layout, device="cpu", dtype=torch.float64)
    text_out, video_out = inverse_recompose(recompose(text, video, layout, registers, backend="reference"), layout,
                                            backend="reference")
    assert torch.equal(video_out, video)
    assert torch.equal(text_out, 2 * text * layout.text_mask[..., None])


@pytest.mark.parametrize("batch", [1, 2])
def test_gradients_match_reference_in_float64(batch):
    layout = pyramid_layout(3, batch=batch, text_len=3)
    text, video, registers = inputs(layout, channels=5, device="cpu", dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t, v, r: recompose(t, v, layout, r, backend="reference"),
                             (text, video, registers))
    seq = torch.randn(layout.batch, layout.seq_len, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda s: inverse_recompose(s, layout, backend="reference"), (seq,))


def test_register_gradient_sums_each_stage_slots():
    """Against a loop over the frames; rows past the layout's stages get a zero gradient."""
    layout = pyramid_layout(5, text_len=2)
    text, video, _ = inputs(layout, channels=5, device="cpu", dtype=torch.float64)
    registers = torch.randn(layout.num_stages + 2, 5, dtype=torch.float64, requires_grad=True)
    seq = recompose(text, video, layout, registers, backend="reference")
    dseq = torch.randn_like(seq)
    (grad,) = torch.autograd.grad(seq, registers, dseq)
    expected = torch.zeros_like(registers)
    for f, (first_token, _) in zip(layout.frames, layout.frame_slices):
        expected[f.stage] += dseq[:, first_token - 1].sum(0)  # the register sits just before its frame
    assert torch.equal(grad[layout.num_stages:], expected[layout.num_stages:])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_video_only_layout():
    layout = ScanLayout([(3, 4, 0), (3, 4, 0)], path=1, batch=3)
    video = torch.randn(3, layout.video_len, 8)
    registers = torch.randn(1, 8)
    seq = recompose(None, video, layout, registers, backend="reference")
    assert seq.shape == (3, 2 + 24, 8)
    text_out, video_out = inverse_recompose(seq, layout, backend="reference")
    assert text_out.shape == (3, 0, 8) and torch.equal(video_out, video)


# ------------------------------------------------------------------------------------------------
# Backends against the reference.


def _assert_close(actual, expected, tol):
    assert not torch.isnan(actual).any()
    assert torch.allclose(actual.double(), expected.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [24, 13, 1920] if HAS_GPU else [24, 13])
def test_backend_matches_reference(backend, dtype, channels, poison_outputs):
    layout = pyramid_layout(path=6, seed=channels)
    text, video, registers = inputs(layout, channels, dtype, requires_grad=True)
    seq = recompose(text, video, layout, registers, backend=backend)
    gather_index, scatter_index = layout.maps(DEVICE)
    expected_seq = recompose_ref(text.detach(), video.detach(), registers.detach(), gather_index)
    assert torch.equal(seq.detach(), expected_seq)  # a copy is exact
    dseq = torch.randn_like(seq)
    grads = torch.autograd.grad(seq, (text, video, registers), dseq)
    leaves = [t.detach().double().requires_grad_() for t in (text, video, registers)]
    ref_seq = recompose(*leaves[:2], layout, leaves[2], backend="reference")
    ref_grads = torch.autograd.grad(ref_seq, leaves, dseq.double())
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        _assert_close(g, r, SUM_TOLERANCE[dtype] * 4 + 1e-6)

    seq_in = torch.randn(layout.batch, layout.seq_len, channels, dtype=dtype, device=DEVICE, requires_grad=True)
    text_out, video_out = inverse_recompose(seq_in, layout, backend=backend)
    ref_text, ref_video = inverse_recompose_ref(seq_in.detach(), scatter_index, layout.text_len)
    assert torch.equal(video_out.detach(), ref_video)
    _assert_close(text_out.detach(), ref_text, SUM_TOLERANCE[dtype])
    dtext, dvideo = torch.randn_like(text_out), torch.randn_like(video_out)
    (dseq_in,) = torch.autograd.grad((text_out, video_out), seq_in, (dtext, dvideo))
    expected = recompose_ref(dtext, dvideo, torch.zeros_like(registers), gather_index)
    assert torch.equal(dseq_in, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend):
    layout = pyramid_layout(path=2)
    text, video, registers = inputs(layout, 40, requires_grad=True)
    dseq = torch.randn(layout.batch, layout.seq_len, 40, device=DEVICE)
    runs = [torch.autograd.grad(recompose(text, video, layout, registers, backend=backend),
                                (text, video, registers), dseq) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.skipif(not HAS_GPU, reason="long layouts on the GPU only")
@pytest.mark.parametrize("backend", BACKENDS)
def test_last_unit_layout_at_768p(backend):
    """The 768p last-unit history pyramid: 28 lowest-stage frames, one middle, one top, current top."""
    frames = [(12, 20, 0)] * 28 + [(24, 40, 1), (48, 80, 2), (48, 80, 2)]
    layout = ScanLayout(frames, path=7, text_len=128,
                        text_mask=torch.arange(128)[None] < torch.tensor([[77]]))
    assert layout.video_len == 15360
    text, video, registers = inputs(layout, 1920, torch.bfloat16)
    seq = recompose(text, video, layout, registers, backend=backend)
    text_out, video_out = inverse_recompose(seq, layout, backend=backend)
    assert torch.equal(video_out, video)
    _assert_close(text_out, 2 * text.double() * layout.text_mask.to(DEVICE)[..., None], 1e-2)


# ------------------------------------------------------------------------------------------------
# Registration and argument checks.


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_opcheck(backend):
    device = "cpu" if backend == "reference" else DEVICE
    layout = pyramid_layout(path=4, text_len=3)
    text, video, registers = inputs(layout, 8, device=device, requires_grad=True)
    maps = (*layout.maps(device), *layout.register_map(device))
    torch.library.opcheck(torch.ops.m4v.recompose.default, (text, video, registers, *maps, backend))
    seq = torch.randn(layout.batch, layout.seq_len, 8, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.m4v.inverse_recompose.default, (seq, *maps, layout.text_len, backend))


def test_torch_compile_fullgraph():
    layout = pyramid_layout(path=1)
    text, video, registers = inputs(layout, 8)

    def round_trip(t, v, r):
        text_out, video_out = inverse_recompose(recompose(t, v, layout, r) * 2.0, layout)
        return text_out.sum() + video_out.sum()

    compiled = torch.compile(round_trip, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(text, video, registers), round_trip(text, video, registers))


def test_flop_and_byte_formulas():
    from torch.utils.flop_counter import FlopCounterMode

    layout = pyramid_layout()
    text, video, registers = inputs(layout, 16, device="cpu")
    with FlopCounterMode(display=False) as counter:
        inverse_recompose(recompose(text, video, layout, registers, backend="reference"), layout,
                          backend="reference")
    assert counter.get_total_flops() == layout.batch * layout.text_len * 16
    forward, inverse = recompose_bytes(layout, 16, torch.bfloat16)
    real_text = int(layout.text_mask.sum())
    assert forward == 2 * (real_text + layout.batch * layout.video_len + layout.num_stages
                           + layout.batch * layout.seq_len) * 16
    assert inverse == 2 * (2 * real_text + layout.batch * layout.video_len
                           + layout.batch * (layout.text_len + layout.video_len)) * 16


def test_bad_layouts_get_clear_errors():
    with pytest.raises(ValueError, match="path"):
        ScanLayout([(2, 2, 0)], path=8)
    with pytest.raises(ValueError, match="path"):
        zigzag_order(2, 2, -1)
    with pytest.raises(ValueError, match="text_mask"):
        ScanLayout([(2, 2, 0)], text_len=4, text_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_mask must be bool"):
        ScanLayout([(2, 2, 0)], text_len=3, text_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="grid"):
        ScanLayout([(0, 2, 0)])
    with pytest.raises(ValueError, match="at least one frame"):
        ScanLayout([])
    layout = ScanLayout([FrameSpec(2, 3, 0), FrameSpec(2, 2, 1)], text_len=2, batch=1)
    text, registers = torch.randn(1, 2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match="video has 11 tokens but the layout expects 10"):
        recompose(text, torch.randn(1, 11, 4), layout, registers)
    with pytest.raises(ValueError, match="batch"):
        recompose(text, torch.randn(2, 10, 4), layout, registers)
    with pytest.raises(ValueError, match="registers has 1 rows"):
        recompose(text, torch.randn(1, 10, 4), layout, registers[:1])
    with pytest.raises(ValueError, match="text has 3 channels"):
        recompose(torch.randn(1, 2, 3), torch.randn(1, 10, 4), layout, registers)
    with pytest.raises(ValueError, match="text is None"):
        recompose(None, torch.randn(1, 10, 4), layout, registers)
    with pytest.raises(ValueError, match="dtype"):
        recompose(text.double(), torch.randn(1, 10, 4), layout, registers)
    with pytest.raises(ValueError, match="seq has 5 tokens"):
        inverse_recompose(torch.randn(1, 5, 4), layout)


@pytest.mark.skipif(not HAS_GPU, reason="the compiled op's own checks need a GPU")
def test_cuda_op_checks_and_poisons_corrupt_maps():
    text = torch.randn(1, 2, 8, device="cuda")
    video = torch.randn(1, 4, 8, device="cuda")
    registers = torch.randn(1, 8, device="cuda")
    index = torch.tensor([[0, 99, -1, 2, -5]], dtype=torch.int32, device="cuda")
    seq = torch.ops.m4v.recompose_cuda(text, video, registers, index)
    assert torch.equal(seq[0, 0], text[0, 0]) and torch.equal(seq[0, 3], video[0, 0])
    assert bool((seq[0, 2] == 0).all())
    assert bool(seq[0, 1].isnan().all()) and bool(seq[0, 4].isnan().all())  # out of range: NaN, not a read
    with pytest.raises(RuntimeError, match="gather_index must be int32"):
        torch.ops.m4v.recompose_cuda(text, video, registers, index.long())
    with pytest.raises(RuntimeError, match="text must have dtype"):
        torch.ops.m4v.recompose_cuda(text.half(), video, registers, index)
    with pytest.raises(RuntimeError, match="scatter_index must be"):
        torch.ops.m4v.inverse_recompose_cuda(seq, index, 1)
