"""Triton fallback of the selective scan: forward, and the same three-pass deterministic backward
as the CUDA kernels (chunk summaries, adjoint carries, then independent chunks).

A program owns a (channels x states x time) tile of BLOCK_D x BLOCK_N x CHUNK and scans the time
axis with ``tl.associative_scan`` over the affine maps x -> a * x + b. For ``reverse`` the forward
loads each tile in memory order (coalesced) and flips it into scan order in registers (tl.flip), which
measured faster than the scan's own reverse mode; the backward uses the reverse mode. No input is
flipped in memory.

Packed (varlen) sequences start their chunk grids at the SEQ_ALIGN boundary at or below their first
step, as the CUDA kernels do, and a chunk that lies wholly inside its sequence takes a copy of the
code with no mask along time: the loads and stores along time then stay 16-byte vectors, where a
mask from a length read at run time makes them scalar.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from m4v.kernels.selective_scan import CHECKPOINT_CHUNK, SEQ_ALIGN, checkpoint_rows

CHUNK = CHECKPOINT_CHUNK["triton"]
LOG2E = 1.4426950408889634
MAX_BLOCKS_PER_GROUP = 16


@triton.jit
def _compose(a1, b1, a2, b2):
    # (a1, b1) acts first: x -> a2 * (a1 * x + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _seq_span(s, seqlen, cu_ptr, chunk_off_ptr, chunks_per_seq, VARLEN: tl.constexpr, ALIGN: tl.constexpr):
    """(batch, start, lead, end, first_chunk, num_chunks) of sequence s. Its chunk grid starts at
    `start`, the ALIGN boundary at or below its first step, so that the grid's loads are aligned
    vectors; grid steps t in [lead, end) are the sequence's, the `lead` steps before belong to the
    previous one and are masked like steps past the end."""
    if VARLEN:
        first = tl.load(cu_ptr + s)
        start = tl.multiple_of((first // ALIGN) * ALIGN, ALIGN)
        lead = first - start
        end = tl.load(cu_ptr + s + 1) - start
        first_chunk = tl.load(chunk_off_ptr + s)
        num_chunks = tl.load(chunk_off_ptr + s + 1) - first_chunk
        batch = 0
    else:
        start = 0
        lead = 0
        end = seqlen
        first_chunk = s * chunks_per_seq
        num_chunks = chunks_per_seq
        batch = s
    return batch, start, lead, end, first_chunk, num_chunks


@triton.jit
def _in_sequence(t, lead, end, FULL: tl.constexpr, VARLEN: tl.constexpr):
    """Which grid steps t belong to the sequence. For a chunk known to lie inside it (FULL) the mask
    is a constant, so the compiler keeps the loads and stores along time as 16-byte vectors."""
    if FULL:
        return tl.full(t.shape, 1, tl.int1)
    if VARLEN:
        return (t >= lead) & (t < end)
    return t < end


@triton.jit
def _chunk_is_full(c, lead, end, CHUNK_L: tl.constexpr):
    # The backward's programs take one chunk each, so choosing a copy per chunk costs no pipelining.
    return (c * CHUNK_L >= lead) & (c * CHUNK_L + CHUNK_L <= end)


@triton.jit
def _load_dt(delta_ptr, row_off, t, valid, s_l, bias, SOFTPLUS: tl.constexpr):
    """delta + bias with softplus, zero outside the sequence; also d(softplus)/d(pre)."""
    pre = tl.load(delta_ptr + row_off + t[None, :] * s_l, mask=valid, other=0.0).to(tl.float32) + bias[:, None]
    if SOFTPLUS:
        dt = tl.where(pre <= 20.0, tl.log(1.0 + tl.exp(pre)), pre)
        grad = tl.sigmoid(pre)
    else:
        dt = pre
        grad = tl.full(pre.shape, 1.0, tl.float32)
    return tl.where(valid, dt, 0.0), grad


@triton.jit
def _fwd_chunk(
    u_ptr, delta_ptr, z_ptr, out_ptr, pre_ptr, B_ptr, C_ptr, ck_ptr,
    batch, start, lead, end, c, chunk_row, d, g, n, d_ok, dn_ok, A2, bias, Dv, carry, dim, dstate,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_Z: tl.constexpr, SAVE_CK: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    FULL: tl.constexpr, VARLEN: tl.constexpr, CHUNK_L: tl.constexpr,
):
    """Scans chunk c of a block of channels from `carry`, stores its outputs; returns the new carry.

    With SAVE_CK and a gate it also stores y before the gate at `pre_ptr` (out's strides), which the
    backward reads for dz instead of replaying the scan.
    """
    steps = tl.arange(0, CHUNK_L)
    t = c * CHUNK_L + steps
    in_seq = _in_sequence(t, lead, end, FULL, VARLEN)
    valid = d_ok[:, None] & in_seq[None, :]
    pos = start + t
    u = tl.load(u_ptr + batch * su_b + d[:, None] * su_d + pos[None, :] * su_l, mask=valid, other=0.0)
    u = u.to(tl.float32)
    dt, _ = _load_dt(delta_ptr, batch * sdl_b + d[:, None] * sdl_d, pos, valid, sdl_l, bias, SOFTPLUS)
    if SAVE_CK:
        tl.store(ck_ptr + (chunk_row * dim + d[:, None]) * dstate + n[None, :], carry, mask=dn_ok)
    tile_ok = dn_ok[:, :, None] & in_seq[None, None, :]
    Bt = tl.load(B_ptr + batch * sB_b + g[:, None, None] * sB_g + n[None, :, None] * sB_n + pos[None, None, :] * sB_l,
                 mask=tile_ok, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + batch * sC_b + g[:, None, None] * sC_g + n[None, :, None] * sC_n + pos[None, None, :] * sC_l,
                 mask=tile_ok, other=0.0).to(tl.float32)
    dtu = dt * u
    if REVERSE:  # the tile's columns into scan order after memory-order (coalesced) loads
        dt = tl.flip(dt, 1)
        dtu = tl.flip(dtu, 1)
        Bt = tl.flip(Bt, 2)
        Ct = tl.flip(Ct, 2)
    decay = tl.exp2(dt[:, None, :] * A2[:, :, None])
    drive = dtu[:, None, :] * Bt
    scan_decay, scan_drive = tl.associative_scan((decay, drive), 2, _compose)
    x = scan_decay * carry[:, :, None] + scan_drive
    y = tl.sum(Ct * x, 1)
    if REVERSE:
        y = tl.flip(y, 1)
    y = y + Dv[:, None] * u
    if HAS_Z:
        if SAVE_CK:
            tl.store(pre_ptr + batch * so_b + d[:, None] * so_d + pos[None, :] * so_l,
                     y.to(pre_ptr.dtype.element_ty), mask=valid)
        z = tl.load(z_ptr + batch * sz_b + d[:, None] * sz_d + pos[None, :] * sz_l, mask=valid, other=0.0)
        z = z.to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(out_ptr + batch * so_b + d[:, None] * so_d + pos[None, :] * so_l, y.to(out_ptr.dtype.element_ty),
             mask=valid)
    return tl.sum(tl.where(steps[None, None, :] == CHUNK_L - 1, x, 0.0), 2)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, z_ptr, out_ptr, pre_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, init_ptr, last_ptr, ck_ptr,
    cu_ptr, chunk_off_ptr,
    dim, seqlen, dstate, channels_per_group, chunks_per_seq,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
    VARLEN: tl.constexpr, SAVE_CK: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_L: tl.constexpr, ALIGN: tl.constexpr,
):
    s = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok = d < dim
    dn_ok = d_ok[:, None] & (n[None, :] < dstate)
    batch, start, lead, end, first_chunk, num_chunks = _seq_span(s, seqlen, cu_ptr, chunk_off_ptr, chunks_per_seq,
                                                                 VARLEN, ALIGN)
    g = d // channels_per_group
    A2 = tl.load(A_ptr + d[:, None] * sA_d + n[None, :] * sA_n, mask=dn_ok, other=0.0) * 1.4426950408889634
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    Dv = tl.load(D_ptr + d, mask=d_ok, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
    state_off = (s * dim + d[:, None]) * dstate + n[None, :]
    if HAS_INIT:
        carry = tl.load(init_ptr + state_off, mask=dn_ok, other=0.0)
    else:
        carry = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    if VARLEN:
        # A packed sequence starts and ends inside chunks: those two take the masked copy of the
        # chunk's code, the whole chunks between them the copy with no mask along time (vector loads).
        for q in range(0, num_chunks):
            c = num_chunks - 1 - q if REVERSE else q
            if _chunk_is_full(c, lead, end, CHUNK_L):
                carry = _fwd_chunk(
                    u_ptr, delta_ptr, z_ptr, out_ptr, pre_ptr, B_ptr, C_ptr, ck_ptr,
                    batch, start, lead, end, c, first_chunk + c, d, g, n, d_ok, dn_ok, A2, bias, Dv, carry,
                    dim, dstate, su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                    HAS_Z, SAVE_CK, SOFTPLUS, REVERSE, True, True, CHUNK_L)
            else:
                carry = _fwd_chunk(
                    u_ptr, delta_ptr, z_ptr, out_ptr, pre_ptr, B_ptr, C_ptr, ck_ptr,
                    batch, start, lead, end, c, first_chunk + c, d, g, n, d_ok, dn_ok, A2, bias, Dv, carry,
                    dim, dstate, su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                    HAS_Z, SAVE_CK, SOFTPLUS, REVERSE, False, True, CHUNK_L)
    else:
        # One sequence per program: the mask `t < seqlen` keeps the loads vectors (the compiler knows
        # seqlen's divisibility). A branch per chunk, as above, stops it pipelining the loads: with one
        # the anchor shape's forward took 1.51 ms against 1.09 (h200-scan-twelfth-branch.json).
        for q in range(0, num_chunks):
            c = num_chunks - 1 - q if REVERSE else q
            carry = _fwd_chunk(
                u_ptr, delta_ptr, z_ptr, out_ptr, pre_ptr, B_ptr, C_ptr, ck_ptr,
                batch, start, lead, end, c, first_chunk + c, d, g, n, d_ok, dn_ok, A2, bias, Dv, carry,
                dim, dstate, su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, so_b, so_d, so_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
                HAS_Z, SAVE_CK, SOFTPLUS, REVERSE, False, False, CHUNK_L)
    tl.store(last_ptr + state_off, carry, mask=dn_ok)


@triton.jit
def _chunk_gradient_rows(
    delta_ptr, z_ptr, dout_ptr, C_ptr, batch, start, lead, end, c, d, g, n, d_ok, dn_ok, bias,
    sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l,
    HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, FULL: tl.constexpr, CHUNK_L: tl.constexpr,
):
    """What both backward passes load of chunk c for a block of channels: dt and d dt / d(delta + bias),
    dout, z (zeros without a gate), the mask and positions of the steps in the sequence, all
    (BLOCK_D, CHUNK_L), and C, (BLOCK_D, BLOCK_N, CHUNK_L)."""
    t = c * CHUNK_L + tl.arange(0, CHUNK_L)
    in_seq = _in_sequence(t, lead, end, FULL, True)
    valid = d_ok[:, None] & in_seq[None, :]
    pos = start + t
    dt, dt_grad = _load_dt(delta_ptr, batch * sdl_b + d[:, None] * sdl_d, pos, valid, sdl_l, bias, SOFTPLUS)
    dout = tl.load(dout_ptr + batch * sg_b + d[:, None] * sg_d + pos[None, :] * sg_l, mask=valid, other=0.0)
    dout = dout.to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + batch * sz_b + d[:, None] * sz_d + pos[None, :] * sz_l, mask=valid, other=0.0)
        z = z.to(tl.float32)
    else:
        z = tl.zeros(dout.shape, tl.float32)
    Ct = tl.load(C_ptr + batch * sC_b + g[:, None, None] * sC_g + n[None, :, None] * sC_n + pos[None, None, :] * sC_l,
                 mask=dn_ok[:, :, None] & in_seq[None, None, :], other=0.0).to(tl.float32)
    return dt, dt_grad, dout, z, Ct, valid, pos


@triton.jit
def _chunk_tile(
    u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, ck_ptr,
    batch, start, lead, end, c, global_chunk, d, g, n, d_ok, dn_ok, A2, bias, dim, dstate,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, FULL: tl.constexpr, CHUNK_L: tl.constexpr,
):
    """Loads one chunk for a block of channels and replays its forward states from the checkpoint.

    Tiles are (BLOCK_D, CHUNK_L) per channel and (BLOCK_D, BLOCK_N, CHUNK_L) per state.
    """
    dt, dt_grad, dout, z, Ct, valid, pos = _chunk_gradient_rows(
        delta_ptr, z_ptr, dout_ptr, C_ptr, batch, start, lead, end, c, d, g, n, d_ok, dn_ok, bias,
        sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l,
        HAS_Z, SOFTPLUS, FULL, CHUNK_L)
    u = tl.load(u_ptr + batch * su_b + d[:, None] * su_d + pos[None, :] * su_l, mask=valid, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + batch * sB_b + g[:, None, None] * sB_g + n[None, :, None] * sB_n + pos[None, None, :] * sB_l,
                 mask=dn_ok[:, :, None] & valid[:, None, :], other=0.0).to(tl.float32)
    decay = tl.exp2(dt[:, None, :] * A2[:, :, None])
    drive = (dt * u)[:, None, :] * Bt
    entry = tl.load(ck_ptr + (global_chunk * dim + d[:, None]) * dstate + n[None, :], mask=dn_ok, other=0.0)
    scan_decay, scan_drive = tl.associative_scan((decay, drive), 2, _compose, reverse=REVERSE)
    x = scan_decay * entry[:, :, None] + scan_drive
    return u, dt, dt_grad, dout, z, Bt, Ct, drive, x, valid, pos


@triton.jit
def _next_decay(delta_ptr, batch, start, lead, end, c, d, d_ok, A2, bias, sdl_b, sdl_d, sdl_l,
                SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr, CHUNK_L: tl.constexpr):
    """Decay of the step after each step in scan order, (BLOCK_D, BLOCK_N, CHUNK_L); 1 past the chunk's
    end, where the carry covers it."""
    t = c * CHUNK_L + tl.arange(0, CHUNK_L)
    t_next = t - 1 if REVERSE else t + 1
    next_in_chunk = (t_next >= c * CHUNK_L) & (t_next < c * CHUNK_L + CHUNK_L) & (t_next >= lead) & (t_next < end)
    next_valid = d_ok[:, None] & next_in_chunk[None, :]
    dt_next, _ = _load_dt(delta_ptr, batch * sdl_b + d[:, None] * sdl_d, start + t_next, next_valid, sdl_l, bias,
                          SOFTPLUS)
    return tl.exp2(dt_next[:, None, :] * A2[:, :, None])


@triton.jit
def _adjoint(decay_next, forcing, entering, REVERSE: tl.constexpr):
    """h_k = forcing_k + decay_next_k * h_{k+1} (scan order), with the adjoint `entering` from the right."""
    scan_decay, scan_h = tl.associative_scan((decay_next, forcing), 2, _compose, reverse=not REVERSE)
    return scan_h + scan_decay * entering[:, :, None]


@triton.jit
def _bwd_summary_chunk(
    delta_ptr, z_ptr, dout_ptr, pre_ptr, C_ptr, A_ptr, bias_ptr, dz_ptr,
    chunk_decay_ptr, chunk_adjoint_ptr, batch, start, lead, end, c, global_chunk,
    dim, seqlen, dstate, channels_per_group,
    sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, FULL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_L: tl.constexpr,
):
    """Chunk c's decay and the adjoint it hands the chunk before it (with no adjoint entering), and dz
    from the pre-gate output the forward kept (pre_ptr, contiguous (batch, dim, seqlen))."""
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_ok = d < dim
    dn_ok = d_ok[:, None] & (n[None, :] < dstate)
    g = d // channels_per_group
    A2 = tl.load(A_ptr + d[:, None] * sA_d + n[None, :] * sA_n, mask=dn_ok, other=0.0) * 1.4426950408889634
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
    dt, _, dout, z, Ct, valid, pos = _chunk_gradient_rows(
        delta_ptr, z_ptr, dout_ptr, C_ptr, batch, start, lead, end, c, d, g, n, d_ok, dn_ok, bias,
        sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l,
        HAS_Z, SOFTPLUS, FULL, CHUNK_L)
    if HAS_Z:
        row = batch * dim + d[:, None]
        y = tl.load(pre_ptr + row * seqlen + pos[None, :], mask=valid, other=0.0).to(tl.float32)
        sg = tl.sigmoid(z)
        dz = dout * y * sg * (1.0 + z * (1.0 - sg))
        tl.store(dz_ptr + row * seqlen + pos[None, :], dz.to(dz_ptr.dtype.element_ty), mask=valid)
        gy = dout * z * sg
    else:
        gy = dout
    # The adjoint at the chunk's first step in scan order is sum_t exp2(A2 * P_t) * C_t * gy_t, with
    # P_t the chunk's dt summed from that step through t: independent terms (each an exact product
    # of the chunk's decays), where an adjoint scan per state would be an associative scan.
    through = tl.cumsum(dt, 1, reverse=REVERSE)
    adjoint = tl.sum(tl.exp2(through[:, None, :] * A2[:, :, None]) * Ct * gy[:, None, :], 2)
    chunk_decay = tl.exp2(tl.sum(dt, 1)[:, None] * A2)
    out_off = (global_chunk * dim + d[:, None]) * dstate + n[None, :]
    tl.store(chunk_decay_ptr + out_off, chunk_decay, mask=dn_ok)
    tl.store(chunk_adjoint_ptr + out_off, adjoint, mask=dn_ok)


@triton.jit
def _selective_scan_bwd_summary_kernel(
    delta_ptr, z_ptr, dout_ptr, pre_ptr, C_ptr, A_ptr, bias_ptr, dz_ptr,
    chunk_decay_ptr, chunk_adjoint_ptr, cu_ptr, chunk_off_ptr,
    num_seqs, dim, seqlen, dstate, channels_per_group, chunks_per_seq,
    sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, VARLEN: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_L: tl.constexpr, ALIGN: tl.constexpr,
):
    global_chunk = tl.program_id(0)
    s, c = _locate_chunk(global_chunk, num_seqs, chunks_per_seq, chunk_off_ptr, VARLEN)
    if s >= 0:
        batch, start, lead, end, _, _ = _seq_span(s, seqlen, cu_ptr, chunk_off_ptr, chunks_per_seq, VARLEN, ALIGN)
        if _chunk_is_full(c, lead, end, CHUNK_L):
            _bwd_summary_chunk(
                delta_ptr, z_ptr, dout_ptr, pre_ptr, C_ptr, A_ptr, bias_ptr, dz_ptr,
                chunk_decay_ptr, chunk_adjoint_ptr, batch, start, lead, end, c, global_chunk,
                dim, seqlen, dstate, channels_per_group,
                sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
                HAS_Z, HAS_BIAS, SOFTPLUS, REVERSE, True, BLOCK_D, BLOCK_N, CHUNK_L)
        else:
            _bwd_summary_chunk(
                delta_ptr, z_ptr, dout_ptr, pre_ptr, C_ptr, A_ptr, bias_ptr, dz_ptr,
                chunk_decay_ptr, chunk_adjoint_ptr, batch, start, lead, end, c, global_chunk,
                dim, seqlen, dstate, channels_per_group,
                sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
                HAS_Z, HAS_BIAS, SOFTPLUS, REVERSE, False, BLOCK_D, BLOCK_N, CHUNK_L)


@triton.jit
def _locate_chunk(global_chunk, num_seqs, chunks_per_seq, chunk_off_ptr, VARLEN: tl.constexpr):
    """(sequence, chunk within it) of a global chunk index; sequence -1 past the last chunk."""
    if VARLEN:
        s = global_chunk * 0 - 1
        c = global_chunk * 0
        for i in range(0, num_seqs):
            lo = tl.load(chunk_off_ptr + i)
            hi = tl.load(chunk_off_ptr + i + 1)
            owns = (global_chunk >= lo) & (global_chunk < hi)
            s = tl.where(owns, i, s)
            c = tl.where(owns, global_chunk - lo, c)
    else:
        s = tl.where(global_chunk < num_seqs * chunks_per_seq, global_chunk // chunks_per_seq, -1)
        c = global_chunk % chunks_per_seq
    return s, c


@triton.jit
def _selective_scan_bwd_carry_kernel(
    chunk_decay_ptr, chunk_adjoint_ptr, carry_ptr, dlast_ptr, dinit_ptr, cu_ptr, chunk_off_ptr,
    dim, seqlen, dstate, chunks_per_seq,
    HAS_DLAST: tl.constexpr, VARLEN: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr, ALIGN: tl.constexpr,
):
    s = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    per_seq = dim * dstate
    ok = idx < per_seq
    _, _, _, _, first_chunk, num_chunks = _seq_span(s, seqlen, cu_ptr, chunk_off_ptr, chunks_per_seq, VARLEN, ALIGN)
    if HAS_DLAST:
        v = tl.load(dlast_ptr + s * per_seq + idx, mask=ok, other=0.0)
    else:
        v = tl.zeros([BLOCK], tl.float32)
    for q in range(0, num_chunks):
        c = q if REVERSE else num_chunks - 1 - q  # adjoint order: last chunk in scan order first
        at = (first_chunk + c) * per_seq + idx
        tl.store(carry_ptr + at, v, mask=ok)
        v = tl.load(chunk_decay_ptr + at, mask=ok, other=0.0) * v + tl.load(chunk_adjoint_ptr + at, mask=ok, other=0.0)
    tl.store(dinit_ptr + s * per_seq + idx, v, mask=ok)


@triton.jit
def _bwd_main_chunk(
    u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, ck_ptr, carry_ptr,
    du_ptr, ddelta_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, dB_part_ptr, dC_part_ptr,
    batch, start, lead, end, c, global_chunk,
    batch_rows, dim, seqlen, dstate, groups, channels_per_group, blocks_per_group, channels_per_block,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, FULL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_L: tl.constexpr,
):
    """Chunk c's input gradients, and its per-chunk partials of the parameter gradients."""
    g = tl.program_id(1) // blocks_per_group
    block = tl.program_id(1) % blocks_per_group
    d_begin = g * channels_per_group + block * channels_per_block
    d_end = tl.minimum(d_begin + channels_per_block, (g + 1) * channels_per_group)
    n = tl.arange(0, BLOCK_N)
    dB_acc = tl.zeros([BLOCK_N, CHUNK_L], tl.float32)
    dC_acc = tl.zeros([BLOCK_N, CHUNK_L], tl.float32)
    in_seq = _in_sequence(c * CHUNK_L + tl.arange(0, CHUNK_L), lead, end, FULL, True)
    # Channels in a fixed order: the sums over channels are reproducible bit for bit.
    for d0 in range(d_begin, d_end, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < d_end
        dn_ok = d_ok[:, None] & (n[None, :] < dstate)
        A = tl.load(A_ptr + d[:, None] * sA_d + n[None, :] * sA_n, mask=dn_ok, other=0.0)
        A2 = A * 1.4426950408889634
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_D], tl.float32)
        Dv = tl.load(D_ptr + d, mask=d_ok, other=0.0) if HAS_D else tl.zeros([BLOCK_D], tl.float32)
        u, dt, dt_grad, dout, z, Bt, Ct, drive, x, valid, pos = _chunk_tile(
            u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, ck_ptr,
            batch, start, lead, end, c, global_chunk, d, tl.zeros([BLOCK_D], tl.int32) + g, n, d_ok, dn_ok, A2,
            bias, dim, dstate,
            su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
            sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
            HAS_Z, SOFTPLUS, REVERSE, FULL, CHUNK_L)
        gy = dout * z * tl.sigmoid(z) if HAS_Z else dout
        state_off = (global_chunk * dim + d[:, None]) * dstate + n[None, :]
        entering = tl.load(carry_ptr + state_off, mask=dn_ok, other=0.0)
        decay_next = _next_decay(delta_ptr, batch, start, lead, end, c, d, d_ok, A2, bias, sdl_b, sdl_d, sdl_l,
                                 SOFTPLUS, REVERSE, CHUNK_L)
        h = _adjoint(decay_next, Ct * gy[:, None, :], entering, REVERSE)
        decay_term = x - drive  # a_t * x_{t-1}
        du = Dv[:, None] * gy + tl.sum(h * Bt, 1) * dt
        ddt = tl.sum(h * (A[:, :, None] * decay_term + Bt * u[:, None, :]), 1)
        ddt = tl.where(valid, ddt * dt_grad, 0.0)
        tl.store(dA_part_ptr + state_off, tl.sum(h * dt[:, None, :] * decay_term, 2), mask=dn_ok)
        dB_acc += tl.sum(h * (dt * u)[:, None, :], 0)
        dC_acc += tl.sum(gy[:, None, :] * x, 0)
        row = batch * dim + d[:, None]
        tl.store(du_ptr + row * seqlen + pos[None, :], du.to(du_ptr.dtype.element_ty), mask=valid)
        tl.store(ddelta_ptr + row * seqlen + pos[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=valid)
        tl.store(dD_part_ptr + global_chunk * dim + d, tl.sum(gy * u, 1), mask=d_ok)
        tl.store(dbias_part_ptr + global_chunk * dim + d, tl.sum(ddt, 1), mask=d_ok)
    t = c * CHUNK_L + tl.arange(0, CHUNK_L)
    part = (((block * batch_rows + batch) * groups + g) * dstate + n[:, None]) * seqlen + start + t[None, :]
    # The lead steps' partial rows belong to the previous sequence's chunk: not stored here.
    ok = (n[:, None] < dstate) & in_seq[None, :]
    tl.store(dB_part_ptr + part, dB_acc, mask=ok)
    tl.store(dC_part_ptr + part, dC_acc, mask=ok)


@triton.jit
def _selective_scan_bwd_main_kernel(
    u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, ck_ptr, carry_ptr,
    du_ptr, ddelta_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, dB_part_ptr, dC_part_ptr, cu_ptr, chunk_off_ptr,
    num_seqs, batch_rows, dim, seqlen, dstate, groups, channels_per_group, chunks_per_seq, blocks_per_group,
    channels_per_block,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, VARLEN: tl.constexpr,
    SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_L: tl.constexpr, ALIGN: tl.constexpr,
):
    global_chunk = tl.program_id(0)
    s, c = _locate_chunk(global_chunk, num_seqs, chunks_per_seq, chunk_off_ptr, VARLEN)
    if s >= 0:
        batch, start, lead, end, _, _ = _seq_span(s, seqlen, cu_ptr, chunk_off_ptr, chunks_per_seq, VARLEN, ALIGN)
        if _chunk_is_full(c, lead, end, CHUNK_L):
            _bwd_main_chunk(
                u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, ck_ptr, carry_ptr,
                du_ptr, ddelta_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, dB_part_ptr, dC_part_ptr,
                batch, start, lead, end, c, global_chunk,
                batch_rows, dim, seqlen, dstate, groups, channels_per_group, blocks_per_group, channels_per_block,
                su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
                HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, REVERSE, True, BLOCK_D, BLOCK_N, CHUNK_L)
        else:
            _bwd_main_chunk(
                u_ptr, delta_ptr, z_ptr, dout_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, ck_ptr, carry_ptr,
                du_ptr, ddelta_ptr, dA_part_ptr, dD_part_ptr, dbias_part_ptr, dB_part_ptr, dC_part_ptr,
                batch, start, lead, end, c, global_chunk,
                batch_rows, dim, seqlen, dstate, groups, channels_per_group, blocks_per_group, channels_per_block,
                su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sz_b, sz_d, sz_l, sg_b, sg_d, sg_l,
                sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sA_d, sA_n,
                HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, REVERSE, False, BLOCK_D, BLOCK_N, CHUNK_L)


def _new_output(shape, device, dtype):
    """An output buffer; NaN-filled under M4V_POISON_OUTPUTS=1 so unwritten elements show up."""
    if os.environ.get("M4V_POISON_OUTPUTS") == "1":
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def _block_sizes(dstate: int, tile_elements: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N): all states, and as many channels as fit in ``tile_elements``."""
    block_n = triton.next_power_of_2(dstate)
    block_d = max(1, min(16, tile_elements // (block_n * CHUNK)))
    return block_d, block_n


# The forward's tile: one warp over at most 2,048 elements (BLOCK_D * BLOCK_N * CHUNK). In one warp
# the chunk scan and the sums over states stay in shuffles; spread over 4 warps they go through shared
# memory. H200 sweep (benchmarks/results/h200-triton-tile-sweep.json, bf16, (1, 3072, 16384, dstate)):
# 1.09 ms against 1.52 for 8 channels over 4 warps at dstate 16; 1.93 against 3.60 at 32; 5.86 against
# 8.50 at 64.
FORWARD_TILE_ELEMENTS = 2048
FORWARD_NUM_WARPS = 1
# The forward's registers per thread (Triton's `maxnreg`) when its one-warp programs outnumber what the
# SMs hold at the compiler's own choice (~168 at dstate 16: 12 programs per SM on sm_90). Capped at 128,
# 16 fit, so (2, 2048, seqlen)'s 2,048 programs run in one wave instead of 1.3: H100, same run as the
# CUDA kernel (benchmarks/results/h100-triton-max-registers.json), (2, 2048, 32768) 4.353 -> 2.983 ms
# (2.85x -> 1.95x CUDA's). Where the grid fits one wave anyway the cap only spills: the anchor 1.029 ->
# 1.168 ms, (1, 3072, 65536) 4.449 -> 4.937. Measured at dstate 16 only, so only taken there.
FORWARD_CAPPED_REGISTERS = 128
FORWARD_UNCAPPED_PROGRAMS_PER_SM = 12


def forward_max_registers(programs: int, dstate: int, device: torch.device) -> int | None:
    """The default tile's register cap (None: the compiler's choice) for a grid of ``programs``."""
    if device.type != "cuda" or dstate > 16:
        return None
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return FORWARD_CAPPED_REGISTERS if programs > FORWARD_UNCAPPED_PROGRAMS_PER_SM * sms else None


def default_forward_tile(num_seqs: int, dim: int, dstate: int, device: torch.device) -> tuple[int, int, int | None]:
    """(channels per program, warps per program, register cap) of the forward's default launch."""
    block_d = _block_sizes(dstate, FORWARD_TILE_ELEMENTS)[0]
    programs = num_seqs * triton.cdiv(dim, block_d)
    return block_d, FORWARD_NUM_WARPS, forward_max_registers(programs, dstate, device)


# The backward kernels' tile: at most 2,048 elements, 1,024 per warp. Its sweep (H200, same shape,
# h200-triton-bwd-sweep.json): at dstate 16, 2 channels over 2 warps 9.14 ms against 13.85 for 8 over
# 4, and one warp is slower (10.8 ms for 1 channel, 12.1 for 2): the backward holds about three times
# the forward's live tiles. At dstate 32 the rule's 1 channel over 2 warps is best, 17.8 ms (next: 2 over
# 4, 21.6; h200-triton-bwd-sweep-dstate32.json); at dstate 64 its 1 channel over 4 warps took 39.4 ms,
# against 57.7 over 2 and 57.3 over 8 (h200-triton-bwd-sweep-dstate64.json).
BACKWARD_TILE_ELEMENTS = 2048
BACKWARD_ELEMENTS_PER_WARP = 1024


def backward_tile(dstate: int) -> tuple[int, int]:
    """(channels per program, warps per program) of the backward kernels."""
    block_d, block_n = _block_sizes(dstate, BACKWARD_TILE_ELEMENTS)
    return block_d, max(1, block_d * block_n * CHUNK // BACKWARD_ELEMENTS_PER_WARP)


def _chunk_offsets(cu_seqlens):
    """First chunk of each packed sequence's grid, which starts at the SEQ_ALIGN boundary at or below it."""
    if cu_seqlens is None:
        return None
    grid_starts = torch.div(cu_seqlens[:-1], SEQ_ALIGN, rounding_mode="floor") * SEQ_ALIGN
    counts = torch.div(cu_seqlens[1:] - grid_starts + CHUNK - 1, CHUNK, rounding_mode="floor")
    return torch.cat([cu_seqlens.new_zeros(1), torch.cumsum(counts, 0).to(torch.int32)])


def _row_strides(t):
    return (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)


def selective_scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                              reverse, save_checkpoints, tile=None, max_registers=None):
    """Same contract as the m4v::selective_scan_fwd op (B, C in (batch, groups, dstate, seqlen)):
    (out, last_state, checkpoints, out_pre), out_pre (y before the gate, for the backward's dz) only
    with save_checkpoints and z, else empty.

    tile: (channels per program, warps per program), and max_registers a cap on registers per thread,
    for the tuning sweep (benchmarks/tune_triton_selective_scan.py); with neither given, the default
    tile and its cap (default_forward_tile). Given either, the other is as given (no cap: None).
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    num_seqs = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    f32 = dict(device=u.device, dtype=torch.float32)
    out = _new_output(u.shape, u.device, u.dtype)
    keeps_pre_gate = save_checkpoints and z is not None
    out_pre = _new_output(u.shape, u.device, u.dtype) if keeps_pre_gate else u.new_empty((0,))
    last = _new_output((num_seqs, dim, dstate), **f32)
    rows = checkpoint_rows("triton", batch, seqlen, cu_seqlens) if save_checkpoints else 0
    checkpoints = _new_output((rows, dim, dstate), **f32)
    block_n = _block_sizes(dstate, FORWARD_TILE_ELEMENTS)[1]
    default_d, default_warps, default_cap = default_forward_tile(num_seqs, dim, dstate, u.device)
    block_d, num_warps = tile if tile is not None else (default_d, default_warps)
    if tile is None and max_registers is None:
        max_registers = default_cap
    offsets = _chunk_offsets(cu_seqlens)
    dummy = last
    grid = (num_seqs, triton.cdiv(dim, block_d))
    _selective_scan_fwd_kernel[grid](
        u, delta, z if z is not None else u, out, out_pre if keeps_pre_gate else out, B, C, A,
        D if D is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        initial_state.contiguous() if initial_state is not None else dummy, last, checkpoints,
        cu_seqlens if cu_seqlens is not None else dummy, offsets if offsets is not None else dummy,
        dim, seqlen, dstate, dim // B.shape[1], triton.cdiv(seqlen, CHUNK),
        *_row_strides(u), *_row_strides(delta), *_row_strides(z), *_row_strides(out),
        *B.stride(), *C.stride(), *A.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_INIT=initial_state is not None, VARLEN=cu_seqlens is not None, SAVE_CK=save_checkpoints,
        SOFTPLUS=delta_softplus, REVERSE=reverse, BLOCK_D=block_d, BLOCK_N=block_n, CHUNK_L=CHUNK,
        ALIGN=SEQ_ALIGN, num_warps=num_warps, **({"maxnreg": max_registers} if max_registers else {}),
    )
    return out, last, checkpoints, out_pre


def selective_scan_bwd_triton(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                              checkpoints, out_pre, delta_softplus, reverse, tile=None):
    """Same contract as the m4v::selective_scan_bwd op; out_pre is the forward's (contiguous, u's
    shape, when z is given).

    tile: (channels per program, warps per program) of the summary and main kernels in place of the
    defaults, for the tuning sweep (benchmarks/tune_triton_selective_scan.py --backward).
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    groups = B.shape[1]
    channels_per_group = dim // groups
    varlen = cu_seqlens is not None
    num_seqs = cu_seqlens.shape[0] - 1 if varlen else batch
    rows = checkpoint_rows("triton", batch, seqlen, cu_seqlens)
    if checkpoints.shape != (rows, dim, dstate):
        raise ValueError(f"selective_scan: checkpoints must be ({rows}, {dim}, {dstate}) for the triton backend, "
                         f"got {tuple(checkpoints.shape)}")
    if z is not None and (out_pre.shape != u.shape or out_pre.dtype != u.dtype or not out_pre.is_contiguous()):
        raise ValueError(f"selective_scan: out_pre must be a contiguous {tuple(u.shape)} {u.dtype} tensor for the "
                         f"triton backend's backward with z, got {tuple(out_pre.shape)} {out_pre.dtype}")
    f32 = dict(device=u.device, dtype=torch.float32)
    block_n = _block_sizes(dstate, BACKWARD_TILE_ELEMENTS)[1]
    block_d, num_warps = tile if tile is not None else backward_tile(dstate)
    offsets = _chunk_offsets(cu_seqlens)
    chunks_per_seq = triton.cdiv(seqlen, CHUNK)
    dummy = checkpoints
    common = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, VARLEN=varlen,
                  SOFTPLUS=delta_softplus, REVERSE=reverse, BLOCK_D=block_d, BLOCK_N=block_n, CHUNK_L=CHUNK,
                  ALIGN=SEQ_ALIGN, num_warps=num_warps)
    D_arg = D if D is not None else dummy
    bias_arg = delta_bias if delta_bias is not None else dummy
    cu_arg = cu_seqlens if varlen else dummy
    off_arg = offsets if varlen else dummy
    strides = (*_row_strides(u), *_row_strides(delta), *_row_strides(z), *_row_strides(dout),
               *B.stride(), *C.stride(), *A.stride())

    gated = z is not None
    dz = _new_output((batch, dim, seqlen), u.device, u.dtype) if gated else u.new_empty((0,))
    chunk_decay = torch.zeros((rows, dim, dstate), **f32)
    chunk_adjoint = torch.zeros_like(chunk_decay)
    _selective_scan_bwd_summary_kernel[(rows, triton.cdiv(dim, block_d))](
        delta, z if gated else u, dout, out_pre if gated else u, C, A, bias_arg, dz if gated else u,
        chunk_decay, chunk_adjoint, cu_arg, off_arg,
        num_seqs, dim, seqlen, dstate, channels_per_group, chunks_per_seq,
        *_row_strides(delta), *_row_strides(z), *_row_strides(dout), *C.stride(), *A.stride(), **common)

    carry = _new_output((rows, dim, dstate), **f32)
    dinit = _new_output((num_seqs, dim, dstate), **f32)
    carry_block = 256
    _selective_scan_bwd_carry_kernel[(num_seqs, triton.cdiv(dim * dstate, carry_block))](
        chunk_decay, chunk_adjoint, carry, dlast_state.contiguous() if dlast_state is not None else dummy, dinit,
        cu_arg, off_arg, dim, seqlen, dstate, chunks_per_seq,
        HAS_DLAST=dlast_state is not None, VARLEN=varlen, REVERSE=reverse, BLOCK=carry_block,
        ALIGN=SEQ_ALIGN)

    # Few channel blocks per group keep the dB/dC partial buffers small; enough chunks keep the
    # GPU busy.
    blocks_per_group = max(1, min(MAX_BLOCKS_PER_GROUP, triton.cdiv(channels_per_group, block_d),
                                  triton.cdiv(512, max(1, rows * groups))))
    channels_per_block = triton.cdiv(triton.cdiv(channels_per_group, blocks_per_group), block_d) * block_d
    blocks_per_group = triton.cdiv(channels_per_group, channels_per_block)
    du = _new_output((batch, dim, seqlen), u.device, u.dtype)
    ddelta = _new_output((batch, dim, seqlen), u.device, u.dtype)
    dA_part = torch.zeros((rows, dim, dstate), **f32)
    dD_part = torch.zeros((rows, dim), **f32)
    dbias_part = torch.zeros((rows, dim), **f32)
    dB_part = torch.zeros((blocks_per_group, batch, groups, dstate, seqlen), **f32)
    dC_part = torch.zeros_like(dB_part)
    _selective_scan_bwd_main_kernel[(rows, groups * blocks_per_group)](
        u, delta, z if gated else u, dout, B, C, A, D_arg, bias_arg, checkpoints, carry,
        du, ddelta, dA_part, dD_part, dbias_part, dB_part, dC_part, cu_arg, off_arg,
        num_seqs, batch, dim, seqlen, dstate, groups, channels_per_group, chunks_per_seq, blocks_per_group,
        channels_per_block, *strides, HAS_D=D is not None, **common)

    return [du, ddelta, dA_part.sum(0), dB_part.sum(0), dC_part.sum(0),
            dD_part.sum(0) if D is not None else u.new_empty((0,)), dz,
            dbias_part.sum(0) if delta_bias is not None else u.new_empty((0,)), dinit]
