// Selective scan (Mamba S6) forward and deterministic backward kernels.
//
// Layout of the work. A group of lanes owns one channel d of one sequence and walks its time axis
// in chunks of kScanChunk steps; the channels of a CTA belong to one group and share B and C chunks
// staged in shared memory. In the backward a warp owns a channel and lane l holds the kScanItems
// steps [l*8, l*8+8) of the chunk; in the forward half a warp owns a channel, 16 steps per lane.
// For each state n a lane first folds its own items, then a shuffle scan joins the lanes, then the
// lane replays its items from the state entering it. The state carried between chunks lives in
// shared memory (dstate can reach 256, too many for registers).
//
// Scan order. `reverse` scans right to left. Items are loaded in memory order and flipped in
// registers, and lanes are visited in descending order, so every loop below is written once, in
// scan order ("logical" order), and no memory is copied.
//
// Backward, in three deterministic passes (no float atomics anywhere):
//  1. chunk summary: per (chunk, channel, state), the product of the chunk's decays and the
//     adjoint the chunk produces on its own; also dz, from the pre-gate output the forward kept.
//  2. adjoint carry: a short sequential pass over chunks per (sequence, channel, state) that gives
//     the adjoint entering each chunk from the right, and the initial-state gradient.
//  3. main: every (chunk, channel block) is now independent. A CTA owns one chunk and a block of
//     channels of one group; its warps take the channels in turn and sum dB and dC across channels
//     in a fixed order in shared memory. The launcher sums the few channel blocks, and the
//     per-chunk partials of dA, dD and delta_bias, with ordinary (deterministic) reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "dtype_convert.cuh"
#include "selective_scan.h"

namespace m4v {
namespace scan_detail {

constexpr int K = kScanItems;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kBwdWarps = kScanBwdWarps;
// The forward stages B and C of this many states for one chunk in shared memory at a time; all
// warps of a CTA (channels of one group) read them from there.
constexpr int kFwdStateTile = 16;
// The backward stages all of B and C for its chunk up to this dstate; beyond it, it reads global.
constexpr int kBwdTileMaxDstate = kScanBwdStagedMaxDstate;
// dB/dC block accumulators stay in shared memory up to this dstate; beyond it they accumulate in
// the (CTA-private) slice of the global partial buffer.
constexpr int kSmemAccMaxDstate = 32;

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// kN items of a strided row, starting at `pos`; items outside [lo, len) read as 0. 16-byte loads
// when the row is contiguous, aligned and fully in range. kNoL1: cached in L2 only, for data a CTA
// reads once, which then does not evict what the kernel keeps in L1 (its register spills).
template <typename T, int kN, bool kNoL1 = false>
__device__ __forceinline__ void load_items(const T* row, int64_t stride, int pos, int lo, int len, float (&v)[kN]) {
  const T* p = row + pos * stride;
  constexpr int kVec = 16 / sizeof(T);
  if (stride == 1 && pos >= lo && pos + kN <= len && (reinterpret_cast<uintptr_t>(p) % 16) == 0) {
#pragma unroll
    for (int i = 0; i < kN / kVec; ++i) {
      const uint4* src = reinterpret_cast<const uint4*>(p) + i;
      const uint4 raw = kNoL1 ? __ldcg(src) : __ldg(src);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[i * kVec + j] = to_float(e[j]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) v[k] = pos + k >= lo && pos + k < len ? to_float(p[k * stride]) : 0.f;
  }
}

template <typename T, int kN>
__device__ __forceinline__ void store_items(T* row, int64_t stride, int pos, int lo, int len, const float (&v)[kN]) {
  T* p = row + pos * stride;
  constexpr int kVec = 16 / sizeof(T);
  if (stride == 1 && pos >= lo && pos + kN <= len && (reinterpret_cast<uintptr_t>(p) % 16) == 0) {
#pragma unroll
    for (int i = 0; i < kN / kVec; ++i) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) e[j] = from_float<T>(v[i * kVec + j]);
      reinterpret_cast<uint4*>(p)[i] = raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k)
      if (pos + k >= lo && pos + k < len) p[k * stride] = from_float<T>(v[k]);
  }
}

// Flip a lane's items between memory order and scan order (compile-time indices only, so the
// arrays stay in registers).
template <typename V, int kN>
__device__ __forceinline__ void flip_if(bool flip, V (&v)[kN]) {
  if (flip) {
#pragma unroll
    for (int k = 0; k < kN / 2; ++k) {
      const V t = v[k];
      v[k] = v[kN - 1 - k];
      v[kN - 1 - k] = t;
    }
  }
}

__device__ __forceinline__ float fast_lg2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// MUFU ex2 and rcp (__fdividef: 2 ulp): IEEE division and __expf's denormal fix-ups cost ~8
// instructions per item in code that runs once per element.
__device__ __forceinline__ float sigmoid(float x) { return __fdividef(1.f, 1.f + fast_exp2(-x * kLog2e)); }
__device__ __forceinline__ float silu(float x) { return __fdividef(x, 1.f + fast_exp2(-x * kLog2e)); }
// Same threshold as torch.nn.functional.softplus and mamba_ssm. For 16-bit inputs (whose own
// rounding is 2^-9 to 2^-12 relative) log(1 + e^x) comes from MUFU lg2, with a series where 1 + e^x
// would round, selected without branches: ~13 instructions instead of log1pf's ~27, at most ~5e-5
// relative error in dt.
template <typename T>
__device__ __forceinline__ float softplus(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x <= 20.f ? log1pf(__expf(x)) : x;
  } else {
    const float e = fast_exp2(x * kLog2e);
    const float series = e * fmaf(-e, fmaf(-e, 1.f / 3.f, 0.5f), 1.f);
    const float log1p_e = x < -5.f ? series : fast_lg2(1.f + e) * 0.6931471805599453f;
    return x > 20.f ? x : log1p_e;
  }
}

// PTX of one shuffle-scan step (direction `up` or `down`): compose this lane's map (%0 decay, %1
// value) after the one `%2` lanes earlier, where that lane is in range.
#define M4V_SCAN_STEP_PTX(direction)                                              \
  "{\n\t.reg .pred in_range;\n\t.reg .f32 prev_decay, prev_value;\n\t"         \
  "shfl.sync." #direction ".b32 prev_value|in_range, %1, %2, %3, -1;\n\t"         \
  "shfl.sync." #direction ".b32 prev_decay, %0, %2, %3, -1;\n\t"                  \
  "@in_range fma.rn.f32 %1, %0, prev_value, %1;\n\t"                              \
  "@in_range mul.rn.f32 %0, %0, prev_decay;\n\t}"
// PTX of the map one lane earlier (%0 decay, %1 value) of the map (%2, %3), the identity where
// there is none.
#define M4V_PREVIOUS_MAP_PTX(direction)                                           \
  "{\n\t.reg .pred in_range;\n\t"                                                \
  "shfl.sync." #direction ".b32 %1|in_range, %3, 1, %4, -1;\n\t"                  \
  "shfl.sync." #direction ".b32 %0, %2, 1, %4, -1;\n\t"                           \
  "@!in_range mov.f32 %1, 0f00000000;\n\t"                                       \
  "@!in_range mov.f32 %0, 0f3F800000;\n\t}"

// shfl's c operand for kWidth-lane segments: the segment mask in bits 8-12, the clamp lane in bits
// 0-4 (the segment's last lane for `down`).
template <bool kDescending, int kWidth>
constexpr int kShflClamp = ((32 - kWidth) << 8) | (kDescending ? kWidth - 1 : 0);

// One step of a shuffle scan of the affine maps x -> decay * x + value: compose this lane's map
// after the map of the lane `kOffset` places earlier in scan order, within segments of kWidth lanes
// (kDescending: earlier = higher lane). The shuffle's own in-range predicate picks the lanes that
// have such a neighbour, so the step needs no lane arithmetic, compare or select (written in PTX:
// the CUDA intrinsics drop that predicate).
template <bool kDescending, int kWidth, int kOffset>
__device__ __forceinline__ void scan_step(float& decay, float& value) {
  if constexpr (kDescending) {
    asm(M4V_SCAN_STEP_PTX(down) : "+f"(decay), "+f"(value) : "n"(kOffset), "n"(kShflClamp<true, kWidth>));
  } else {
    asm(M4V_SCAN_STEP_PTX(up) : "+f"(decay), "+f"(value) : "n"(kOffset), "n"(kShflClamp<false, kWidth>));
  }
}

// The map of the lane one place earlier in scan order (within kWidth-lane segments), or the
// identity for a segment's first lane.
template <bool kDescending, int kWidth>
__device__ __forceinline__ void previous_map(float decay, float value, float& prev_decay, float& prev_value) {
  if constexpr (kDescending) {
    asm(M4V_PREVIOUS_MAP_PTX(down) : "=f"(prev_decay), "=f"(prev_value)
        : "f"(decay), "f"(value), "n"(kShflClamp<true, kWidth>));
  } else {
    asm(M4V_PREVIOUS_MAP_PTX(up) : "=f"(prev_decay), "=f"(prev_value)
        : "f"(decay), "f"(value), "n"(kShflClamp<false, kWidth>));
  }
}

// Inclusive scan over the warp's lanes of the affine maps x -> decay * x + value, composed in scan
// order; kDescending visits physical lanes 31..0.
template <bool kDescending>
__device__ __forceinline__ void warp_scan(float& decay, float& value) {
  scan_step<kDescending, 32, 1>(decay, value);
  scan_step<kDescending, 32, 2>(decay, value);
  scan_step<kDescending, 32, 4>(decay, value);
  scan_step<kDescending, 32, 8>(decay, value);
  scan_step<kDescending, 32, 16>(decay, value);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Where one sequence lives: its batch row, where its chunk grid starts, the range [lo, len) of its
// steps on that grid, and its first global chunk. A packed sequence's grid starts at the
// kSeqAlign boundary at or below its first step, so that every chunk's rows are as aligned as the
// tensor's (the 16-byte vector and cp.async paths); the lo lead steps belong to the sequence
// before it and read as outside, like steps at or past len.
struct SeqSpan {
  int batch, start, lo, len, first_chunk, num_chunks;
};

__device__ __forceinline__ SeqSpan seq_span(const ScanParams& p, int s) {
  SeqSpan span;
  if (p.cu_seqlens != nullptr) {
    span.batch = 0;
    span.lo = p.cu_seqlens[s] % kSeqAlign;
    span.start = p.cu_seqlens[s] - span.lo;
    span.len = p.cu_seqlens[s + 1] - span.start;
    span.first_chunk = p.chunk_offsets[s];
    span.num_chunks = p.chunk_offsets[s + 1] - span.first_chunk;
  } else {
    span.batch = s;
    span.start = 0;
    span.lo = 0;
    span.len = p.seqlen;
    span.first_chunk = s * p.chunks_per_seq;
    span.num_chunks = p.chunks_per_seq;
  }
  return span;
}

// The sequence that owns global chunk `chunk`, or -1 past the last one.
__device__ __forceinline__ int seq_of_chunk(const ScanParams& p, int chunk) {
  if (p.cu_seqlens == nullptr) return chunk < p.num_seqs * p.chunks_per_seq ? chunk / p.chunks_per_seq : -1;
  if (chunk >= p.chunk_offsets[p.num_seqs]) return -1;
  int lo = 0, hi = p.num_seqs - 1;  // largest s with chunk_offsets[s] <= chunk
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (p.chunk_offsets[mid] <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename T>
__device__ __forceinline__ const T* row_ptr(const RowTensor& t, const SeqSpan& span, int d) {
  return static_cast<const T*>(t.ptr) + span.batch * t.batch_stride + d * t.dim_stride + span.start * t.len_stride;
}
template <typename T>
__device__ __forceinline__ T* row_ptr_mut(const RowTensor& t, const SeqSpan& span, int d) {
  return static_cast<T*>(t.ptr) + span.batch * t.batch_stride + d * t.dim_stride + span.start * t.len_stride;
}
template <typename T>
__device__ __forceinline__ const T* state_row(const StateTensor& t, const SeqSpan& span, int g, int n) {
  return static_cast<const T*>(t.ptr) + span.batch * t.batch_stride + g * t.group_stride + n * t.state_stride +
         span.start * t.len_stride;
}

// One lane's view of one chunk of one channel, in scan order.
struct ChunkInputs {
  float u[K], dt[K];  // dt: bias added, softplus applied, 0 outside the sequence
  float dt_sum;
};

template <typename T, bool kReverse>
__device__ __forceinline__ void load_chunk_inputs(const ScanParams& p, const SeqSpan& span, int d, int pos,
                                                  ChunkInputs& in) {
  load_items(row_ptr<T>(p.u, span, d), p.u.len_stride, pos, span.lo, span.len, in.u);
  load_items(row_ptr<T>(p.delta, span, d), p.delta.len_stride, pos, span.lo, span.len, in.dt);
  const float bias = p.delta_bias != nullptr ? p.delta_bias[d] : 0.f;
  in.dt_sum = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float pre = in.dt[k] + bias;
    in.dt[k] = pos + k >= span.lo && pos + k < span.len ? (p.delta_softplus ? softplus<T>(pre) : pre) : 0.f;
    in.dt_sum += in.dt[k];
  }
  flip_if(kReverse, in.u);
  flip_if(kReverse, in.dt);
}

// d dt / d (delta + bias) from dt itself: softplus' = sigmoid = 1 - exp(-softplus), so the main
// pass keeps no extra registers for it.
__device__ __forceinline__ float delta_grad_scale(bool delta_softplus, float dt) {
  return delta_softplus ? -expm1f(-dt) : 1.f;
}

template <typename T>
__device__ __forceinline__ void load_state_items(const StateTensor& t, const SeqSpan& span, int g, int n, int pos,
                                                 bool reverse, float (&v)[K]) {
  load_items(state_row<T>(t, span, g, n), t.len_stride, pos, span.lo, span.len, v);
  flip_if(reverse, v);
}

// The backward's shared rows of one chunk (B and C tiles, dB/dC contributions) hold a lane's K = 8
// steps as two float4 halves kScanChunk / 2 floats apart ("split" order), so the 16-byte accesses
// of a warp's 32 lanes are contiguous: no bank conflicts (lanes 32 bytes apart conflict 2-way).
static_assert(K == 8, "split rows hold a lane's items as two float4 halves");
constexpr int kSplitHalf = kScanChunk / 2;
__device__ __forceinline__ int split_index(int step) {
  return (step % K / 4) * kSplitHalf + step / K * 4 + step % 4;
}
// The chunk step at a split row's index (the inverse of split_index).
__device__ __forceinline__ int split_step(int index) {
  return (index % kSplitHalf) / 4 * K + index / kSplitHalf * 4 + index % 4;
}

// A lane's K items (memory order) into its place in a split row.
__device__ __forceinline__ void put_split_items(float* row, const float (&v)[K]) {
  float4* dst = reinterpret_cast<float4*>(row + (threadIdx.x & 31) * 4);
  dst[0] = make_float4(v[0], v[1], v[2], v[3]);
  dst[kSplitHalf / 4] = make_float4(v[4], v[5], v[6], v[7]);
}

// Rows [n0, n0 + rows) of one chunk of B or C, as float, into a split tile [row][kScanChunk] (zero
// past the sequence or past dstate). Cooperative over the CTA; the caller synchronises.
template <typename T>
__device__ __forceinline__ void load_state_tile(const StateTensor& t, const SeqSpan& span, int g, int n0, int rows,
                                                int dstate, int chunk_start, float* tile) {
  constexpr int kSegments = kScanChunk / K;
  for (int i = threadIdx.x; i < rows * kSegments; i += blockDim.x) {
    const int r = i / kSegments, l = i % kSegments;
    float v[K];
    if (n0 + r < dstate) {
      load_items(state_row<T>(t, span, g, n0 + r), t.len_stride, chunk_start + l * K, span.lo, span.len, v);
    } else {
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = 0.f;
    }
    float* dst = tile + r * kScanChunk + l * 4;
    *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(dst + kSplitHalf) = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// A lane's K items of one split row, in scan order.
__device__ __forceinline__ void tile_items(const float* row, bool reverse, float (&v)[K]) {
  const float* mine = row + (threadIdx.x & 31) * 4;
  const float4 a = *reinterpret_cast<const float4*>(mine), b = *reinterpret_cast<const float4*>(mine + kSplitHalf);
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  flip_if(reverse, v);
}

// ------------------------------------------------------------------------------------------------
// Forward.
//
// Half a warp owns one channel: its 16 lanes hold 16 consecutive steps each, so a chunk is still
// kScanChunk steps (the backward's checkpoints are unchanged), but the cross-lane scan per state is
// 4 shuffle steps for 16 items instead of 5 for 8. A CTA: kFwdWarps warps, kFwdChannels channels
// of one group, one sequence; B and C rows are staged per chunk in a padded layout (each lane's 16
// items start 20 floats apart) so that the lanes' 16-byte reads are free of bank conflicts.
constexpr int kFwdItems = 16;
constexpr int kFwdLanes = kScanChunk / kFwdItems;  // lanes per channel
constexpr int kFwdWarps = 4;
constexpr int kFwdThreads = kFwdWarps * 32;
// The token-major staging loops walk a chunk's steps kFwdThreads at a time with a compile-time trip
// count, so they unroll without loop branches (with blockDim.x they kept 2 branches and a
// BSSY/BSYNC pair per loop and chunk).
constexpr int kFwdStepsPerThread = kScanChunk / kFwdThreads;
static_assert(kScanChunk % kFwdThreads == 0, "whole time steps per thread");
constexpr int kFwdChannels = kFwdWarps * 32 / kFwdLanes;
constexpr int kFwdLanePitch = kFwdItems + 4;
constexpr int kFwdRowPitch = kFwdLanes * kFwdLanePitch;
static_assert(kFwdLanes == 16 && kFwdChannels == 8, "the launcher's grid assumes 8 channels per CTA");

// Position of chunk step t in a padded staged row.
__device__ __forceinline__ int padded_step(int t) { return (t / kFwdItems) * kFwdLanePitch + t % kFwdItems; }

// Time step `step`'s kRows values into padded rows [row][step].
template <int kRows>
__device__ __forceinline__ void put_step(float* rows, int step, const float (&v)[kRows]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) rows[r * kFwdRowPitch + padded_step(step)] = v[r];
}

// One chunk of kRows adjacent unit-stride values per time step (B/C states, or a CTA's channels)
// into padded rows [row][step], zero past the sequence: one thread per time step loads them with
// 16-byte vectors and scatters them. `first` points at the sequence's first step.
template <typename T, int kRows>
__device__ __forceinline__ void stage_vectors(const T* first, int64_t len_stride, int lo, int len, int chunk_start,
                                              float* rows) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(kRows % kVec == 0, "whole vectors only");
#pragma unroll
  for (int i = 0; i < kFwdStepsPerThread; ++i) {
    const int step = threadIdx.x + i * kFwdThreads;
    const int pos = chunk_start + step;
    float v[kRows];
    if (pos >= lo && pos < len) {
      const T* src = first + static_cast<int64_t>(pos) * len_stride;
#pragma unroll
      for (int i = 0; i < kRows / kVec; ++i) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src) + i);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[i * kVec + j] = to_float(e[j]);
      }
    } else {
#pragma unroll
      for (int r = 0; r < kRows; ++r) v[r] = 0.f;
    }
    put_step(rows, step, v);
  }
}

// The reverse: padded rows [channel][step] out to a token-major row tensor, in range steps only.
template <typename T>
__device__ __forceinline__ void write_rows_token_major(const float* rows, const RowTensor& t, const SeqSpan& span,
                                                       int lo, int d0, int chunk_start) {
  constexpr int kVec = 16 / sizeof(T);
#pragma unroll
  for (int k = 0; k < kFwdStepsPerThread; ++k) {
    const int step = threadIdx.x + k * kFwdThreads;
    const int pos = chunk_start + step;
    if (pos < lo || pos >= span.len) continue;
    T* dst = row_ptr_mut<T>(t, span, d0) + static_cast<int64_t>(pos) * t.len_stride;
#pragma unroll
    for (int i = 0; i < kFwdChannels / kVec; ++i) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) e[j] = from_float<T>(rows[(i * kVec + j) * kFwdRowPitch + padded_step(step)]);
      reinterpret_cast<uint4*>(dst)[i] = raw;
    }
  }
}

// A lane's 16 items (memory order) of one staged row into it, or the reverse.
__device__ __forceinline__ void put_fwd_tile_items(float* row, int sub_lane, const float (&v)[kFwdItems]) {
  float4* dst = reinterpret_cast<float4*>(row + sub_lane * kFwdLanePitch);
#pragma unroll
  for (int j = 0; j < kFwdItems / 4; ++j) dst[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
}

// A lane's 16 items of one staged row, in scan order.
__device__ __forceinline__ void fwd_tile_items(const float* row, int sub_lane, bool reverse, float (&v)[kFwdItems]) {
  const float4* src = reinterpret_cast<const float4*>(row + sub_lane * kFwdLanePitch);
#pragma unroll
  for (int j = 0; j < kFwdItems / 4; ++j) {
    const float4 q = src[j];
    v[4 * j] = q.x;
    v[4 * j + 1] = q.y;
    v[4 * j + 2] = q.z;
    v[4 * j + 3] = q.w;
  }
  flip_if(reverse, v);
}

// Rows [0, rows) of one chunk of B or C into padded rows (see padded_step), zero past the sequence
// and from `rows` to kFwdStateTile; `first` is the tile's first state row at the sequence's start.
// Each thread stages two fixed 16-step segments, so the addressing is a few integer ops per row.
template <typename T>
__device__ __forceinline__ void stage_state_tile(const T* first, int64_t state_stride, int64_t len_stride, int rows,
                                                 int lo, int len, int chunk_start, float* tile) {
  constexpr int kThreads = kFwdWarps * 32, kSegments = kFwdStateTile * kFwdLanes;
  static_assert(kSegments % kThreads == 0, "whole segments per thread");
#pragma unroll
  for (int j = 0; j < kSegments / kThreads; ++j) {
    const int segment = threadIdx.x + j * kThreads;
    const int r = segment / kFwdLanes, l = segment % kFwdLanes;
    float v[kFwdItems];
    if (r < rows) {
      load_items<T, kFwdItems, true>(first + r * state_stride, len_stride, chunk_start + l * kFwdItems, lo, len, v);
    } else {
#pragma unroll
      for (int k = 0; k < kFwdItems; ++k) v[k] = 0.f;
    }
    put_fwd_tile_items(tile + r * kFwdRowPitch, l, v);
  }
}

// The contiguous forward prefetches each lane's next-chunk items of u, delta and z with cp.async into
// its own shared slots ([tensor][vector][thread] uint4s, so a lane reads only what it copied and no
// barrier is needed); the global latency then overlaps a whole state loop instead of stalling the
// chunk's first use.
// 16-bit inputs only: fp32 slots would cost an SM a fourth CTA's shared memory. The token-major
// kernel prefetches whole time steps instead (see prefetch_steps).
template <typename T, bool kTokenMajor>
constexpr bool kFwdPrefetch = sizeof(T) == 2;
enum PrefetchTensor { kPrefetchU = 0, kPrefetchDelta = 1, kPrefetchZ = 2, kPrefetchTensors = 3 };
template <typename T>
constexpr int kPrefetchVectors = kFwdItems * sizeof(T) / 16;  // per lane and tensor

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Every group but the newest has landed (each chunk commits two groups, possibly empty).
__device__ __forceinline__ void cp_async_wait_older() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// cp.async of `bytes` (4 or 16), or zeros into the slot when !copy (then nothing is read: src may
// be any valid address).
template <int kBytes>
__device__ __forceinline__ void cp_async_or_zero(void* smem, const void* gmem, bool copy) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(copy ? 16 : 0) : "memory");
  } else {
    static_assert(kBytes == 4, "the 4-byte state entries");
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(gmem), "r"(copy ? 4 : 0) : "memory");
  }
}

// Whether a lane's kFwdItems items of a row at `pos` can be copied as whole 16-byte vectors.
template <typename T>
__device__ __forceinline__ bool vector_items(const T* row, int64_t stride, int pos, int lo, int len) {
  return stride == 1 && pos >= lo && pos + kFwdItems <= len && reinterpret_cast<uintptr_t>(row + pos) % 16 == 0;
}

template <typename T>
__device__ __forceinline__ uint4* prefetch_slots(float* base, PrefetchTensor tensor) {
  return reinterpret_cast<uint4*>(base) + tensor * kPrefetchVectors<T> * kFwdWarps * 32 + threadIdx.x;
}

template <typename T>
__device__ __forceinline__ void prefetch_items(const T* row, int pos, uint4* slots) {
  const uint4* src = reinterpret_cast<const uint4*>(row + pos);
#pragma unroll
  for (int i = 0; i < kPrefetchVectors<T>; ++i) cp_async_16(slots + i * kFwdWarps * 32, src + i);
}

template <typename T>
__device__ __forceinline__ void prefetched_items(const uint4* slots, float (&v)[kFwdItems]) {
  constexpr int kVec = 16 / sizeof(T);
#pragma unroll
  for (int i = 0; i < kPrefetchVectors<T>; ++i) {
    const uint4 raw = slots[i * kFwdWarps * 32];
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[i * kVec + j] = to_float(e[j]);
  }
}

// Token-major prefetch: the CTA's 8 channels at one time step are one 16-byte vector, copied into
// slot [step] of the tensor's kScanChunk slots; a thread copies, and later unpacks, the steps it
// stages (as stage_vectors walks them), so it again reads only its own copies.
__device__ __forceinline__ uint4* step_slots(float* base, PrefetchTensor tensor) {
  return reinterpret_cast<uint4*>(base) + tensor * kScanChunk;
}

template <typename T>
__device__ __forceinline__ void prefetch_steps(const T* first, int64_t len_stride, int lo, int len, int chunk_start,
                                               uint4* slots) {
  static_assert(kFwdChannels * sizeof(T) == 16, "one vector per time step");
#pragma unroll
  for (int i = 0; i < kFwdStepsPerThread; ++i) {
    const int step = threadIdx.x + i * kFwdThreads;
    const int pos = chunk_start + step;
    if (pos >= lo && pos < len) cp_async_16(slots + step, first + static_cast<int64_t>(pos) * len_stride);
  }
}

// stage_vectors from the prefetched steps (after cp_async_wait_older).
template <typename T>
__device__ __forceinline__ void stage_prefetched_steps(const uint4* slots, int lo, int len, int chunk_start,
                                                       float* rows) {
#pragma unroll
  for (int i = 0; i < kFwdStepsPerThread; ++i) {
    const int step = threadIdx.x + i * kFwdThreads;
    float v[kFwdChannels];
    if (chunk_start + step >= lo && chunk_start + step < len) {
      const uint4 raw = slots[step];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int r = 0; r < kFwdChannels; ++r) v[r] = to_float(e[r]);
    } else {
#pragma unroll
      for (int r = 0; r < kFwdChannels; ++r) v[r] = 0.f;
    }
    put_step(rows, step, v);
  }
}

// Inclusive scan, over the 16 lanes of each half-warp, of the affine maps x -> decay * x + value
// composed in scan order; `rank` is the lane's position in scan order within its half.
__device__ __forceinline__ void half_warp_scan(float& decay, float& value, int rank, bool descending) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int offset = 1; offset < kFwdLanes; offset <<= 1) {
    const int src = (descending ? lane + offset : lane - offset) & 31;  // same half whenever rank >= offset
    const float prev_decay = __shfl_sync(kFullMask, decay, src);
    const float prev_value = __shfl_sync(kFullMask, value, src);
    if (rank >= offset) {
      value = fmaf(decay, prev_value, value);
      decay *= prev_decay;
    }
  }
}

// kTokenMajor: p.rows_token_major, as a template argument so that each layout's kernel carries only
// its own staging code (runtime branches cost the contiguous layout 5% in register spills); the
// vector path for B and C (p.states_token_major) is taken in the token-major kernel only.
template <typename T, bool kReverse, bool kTokenMajor>
__global__ void __launch_bounds__(kFwdWarps * 32, 4) selective_scan_fwd_kernel(ScanParams p) {
  extern __shared__ float smem[];
  float* tile_B = smem;                                 // [kFwdStateTile][kFwdRowPitch]
  float* tile_C = tile_B + kFwdStateTile * kFwdRowPitch;  // [kFwdStateTile][kFwdRowPitch]
  const int lane = threadIdx.x & 31;
  const int half = threadIdx.x / kFwdLanes;  // the CTA's channel this lane works on
  const int sub_lane = lane % kFwdLanes;
  constexpr bool desc = kReverse;
  const int rank = desc ? kFwdLanes - 1 - sub_lane : sub_lane;
  const int prev_lane = (desc ? lane + 1 : lane - 1) & 31;
  const int last_lane = (lane & ~(kFwdLanes - 1)) + (desc ? 0 : kFwdLanes - 1);
  const int N = p.dstate;
  const int blocks_per_group = (p.channels_per_group + kFwdChannels - 1) / kFwdChannels;
  const int g = blockIdx.y / blocks_per_group;
  const int channel = (blockIdx.y % blocks_per_group) * kFwdChannels + half;
  const bool active = channel < p.channels_per_group;  // idle lanes still help stage B and C
  const int d = g * p.channels_per_group + min(channel, p.channels_per_group - 1);
  const int d0 = g * p.channels_per_group + (blockIdx.y % blocks_per_group) * kFwdChannels;
  // Token-major rows pass through tile_B's space, which is free outside the state loop:
  // [kFwdChannels][kFwdRowPitch] for u (then z, then the gated output) and as many for delta
  // (then the pre-gate output).
  float* staged_a = tile_B;
  float* staged_b = tile_B + kFwdChannels * kFwdRowPitch;
  static_assert(2 * kFwdChannels <= kFwdStateTile, "the staged rows must fit in tile_B");
  float* A2 = tile_C + kFwdStateTile * kFwdRowPitch + half * 2 * N;  // [N] per channel: A * log2(e)
  float* carry = A2 + N;                                               // [N] per channel
  constexpr bool kPrefetch = kFwdPrefetch<T, kTokenMajor>;
  float* prefetch = tile_C + kFwdStateTile * kFwdRowPitch + 2 * kFwdChannels * N;
  const int s = blockIdx.x;
  const SeqSpan span = seq_span(p, s);
  // The lead (SeqSpan) is re-read where it is used: kept in a register it spills.
  const auto seq_lo = [&p, s] { return p.cu_seqlens != nullptr ? __ldg(p.cu_seqlens + s) % kSeqAlign : 0; };
  const int64_t state_row_offset = (static_cast<int64_t>(s) * p.dim + d) * N;
  for (int n = sub_lane; n < N; n += kFwdLanes) {
    A2[n] = p.A[d * p.A_dim_stride + n * p.A_state_stride] * kLog2e;
    carry[n] = p.initial_state != nullptr ? p.initial_state[state_row_offset + n] : 0.f;
  }
  __syncwarp();

  const float Dd = p.D != nullptr ? p.D[d] : 0.f;
  const float bias = p.delta_bias != nullptr ? p.delta_bias[d] : 0.f;
  // Row pointers are recomputed where they are used: held in registers across the state loop they
  // spill, and at this kernel's shared-memory use the spills miss L1.
  const auto u_row = [&p, span, d] { return row_ptr<T>(p.u, span, d); };
  const auto delta_row = [&p, span, d] { return row_ptr<T>(p.delta, span, d); };
  const auto z_row = [&p, span, d] { return row_ptr<T>(p.z, span, d); };
  // The lane's items of chunk q (in visiting order) start here.
  const auto lane_pos = [&](int q) {
    return (desc ? span.num_chunks - 1 - q : q) * kScanChunk + sub_lane * kFwdItems;
  };
  // Prefetch state: which of the next chunk's rows are on their way to the lane's slots.
  bool ud_ready = false, z_ready = false;
  if constexpr (kPrefetch && kTokenMajor) {
    const int start = (desc ? span.num_chunks - 1 : 0) * kScanChunk;
    if (span.num_chunks > 0) {
      prefetch_steps(row_ptr<T>(p.u, span, d0), p.u.len_stride, seq_lo(), span.len, start,
                     step_slots(prefetch, kPrefetchU));
      prefetch_steps(row_ptr<T>(p.delta, span, d0), p.delta.len_stride, seq_lo(), span.len, start,
                     step_slots(prefetch, kPrefetchDelta));
    }
    cp_async_commit();
    if (span.num_chunks > 0 && p.z.ptr != nullptr) {
      prefetch_steps(row_ptr<T>(p.z, span, d0), p.z.len_stride, seq_lo(), span.len, start,
                     step_slots(prefetch, kPrefetchZ));
    }
    cp_async_commit();
  } else if constexpr (kPrefetch) {
    const int pos = lane_pos(0);
    ud_ready = span.num_chunks > 0 && vector_items(u_row(), p.u.len_stride, pos, seq_lo(), span.len) &&
               vector_items(delta_row(), p.delta.len_stride, pos, seq_lo(), span.len);
    if (ud_ready) {
      prefetch_items(u_row(), pos, prefetch_slots<T>(prefetch, kPrefetchU));
      prefetch_items(delta_row(), pos, prefetch_slots<T>(prefetch, kPrefetchDelta));
    }
    cp_async_commit();
    z_ready = span.num_chunks > 0 && p.z.ptr != nullptr &&
              vector_items(z_row(), p.z.len_stride, pos, seq_lo(), span.len);
    if (z_ready) prefetch_items(z_row(), pos, prefetch_slots<T>(prefetch, kPrefetchZ));
    cp_async_commit();
  }
  for (int q = 0; q < span.num_chunks; ++q) {
    const int c = desc ? span.num_chunks - 1 - q : q;
    const int chunk_start = c * kScanChunk;
    const int pos = chunk_start + sub_lane * kFwdItems;
    const bool has_next = q + 1 < span.num_chunks;
    const int next_pos = has_next ? lane_pos(q + 1) : 0;
    const int next_start = (desc ? c - 1 : c + 1) * kScanChunk;
    if (active && p.checkpoints != nullptr) {
      float* ck = p.checkpoints + (static_cast<int64_t>(span.first_chunk + c) * p.dim + d) * N;
      for (int n = sub_lane; n < N; n += kFwdLanes) ck[n] = carry[n];
    }
    // dt (bias, softplus; 0 outside the sequence), dt * u, and y's D term, in scan order.
    float dt[kFwdItems], dtu[kFwdItems], y[kFwdItems];
    if constexpr (kTokenMajor) {
      __syncthreads();  // the previous chunk's staged rows are consumed
      if constexpr (kPrefetch) {
        cp_async_wait_older();
        stage_prefetched_steps<T>(step_slots(prefetch, kPrefetchU), seq_lo(), span.len, chunk_start, staged_a);
        stage_prefetched_steps<T>(step_slots(prefetch, kPrefetchDelta), seq_lo(), span.len, chunk_start, staged_b);
        if (has_next) {  // the slots are read: start the next chunk's
          prefetch_steps(row_ptr<T>(p.u, span, d0), p.u.len_stride, seq_lo(), span.len, next_start,
                         step_slots(prefetch, kPrefetchU));
          prefetch_steps(row_ptr<T>(p.delta, span, d0), p.delta.len_stride, seq_lo(), span.len, next_start,
                         step_slots(prefetch, kPrefetchDelta));
        }
        cp_async_commit();
      } else {
        stage_vectors<T, kFwdChannels>(row_ptr<T>(p.u, span, d0), p.u.len_stride, seq_lo(), span.len, chunk_start,
                                       staged_a);
        stage_vectors<T, kFwdChannels>(row_ptr<T>(p.delta, span, d0), p.delta.len_stride, seq_lo(), span.len,
                                       chunk_start, staged_b);
      }
      __syncthreads();
      fwd_tile_items(staged_a + half * kFwdRowPitch, sub_lane, false, dtu);
      fwd_tile_items(staged_b + half * kFwdRowPitch, sub_lane, false, dt);
    } else if (kPrefetch && ud_ready) {
      cp_async_wait_older();
      prefetched_items<T>(prefetch_slots<T>(prefetch, kPrefetchU), dtu);
      prefetched_items<T>(prefetch_slots<T>(prefetch, kPrefetchDelta), dt);
    } else {
      load_items(u_row(), p.u.len_stride, pos, seq_lo(), span.len, dtu);
      load_items(delta_row(), p.delta.len_stride, pos, seq_lo(), span.len, dt);
    }
    if constexpr (kPrefetch && !kTokenMajor) {  // the slots are read: start the next chunk's
      ud_ready = has_next && vector_items(u_row(), p.u.len_stride, next_pos, seq_lo(), span.len) &&
                 vector_items(delta_row(), p.delta.len_stride, next_pos, seq_lo(), span.len);
      if (ud_ready) {
        prefetch_items(u_row(), next_pos, prefetch_slots<T>(prefetch, kPrefetchU));
        prefetch_items(delta_row(), next_pos, prefetch_slots<T>(prefetch, kPrefetchDelta));
      }
      cp_async_commit();
    }
    // Softplus runs on whole lanes, past the sequence too (those items read as 0), so that the
    // uniform flag is tested once rather than per item.
#pragma unroll
    for (int k = 0; k < kFwdItems; ++k) dt[k] += bias;
    if (p.delta_softplus) {
#pragma unroll
      for (int k = 0; k < kFwdItems; ++k) dt[k] = softplus<T>(dt[k]);
    }
    // Only a lane at a sequence's edge has items outside it: the others skip the per-item tests
    // (with the lead re-read per item they cost ~180 of the chunk's ~1,330 instructions per thread).
    if (const int lo = seq_lo(); pos < lo || pos + kFwdItems > span.len) {
#pragma unroll
      for (int k = 0; k < kFwdItems; ++k) dt[k] = pos + k >= lo && pos + k < span.len ? dt[k] : 0.f;
    }
    float dt_sum = 0.f;
#pragma unroll
    for (int k = 0; k < kFwdItems; ++k) {
      dt_sum += dt[k];
      y[k] = Dd * dtu[k];
      dtu[k] *= dt[k];
    }
    flip_if(desc, dt);
    flip_if(desc, dtu);
    flip_if(desc, y);
    for (int n0 = 0; n0 < N; n0 += kFwdStateTile) {
      const int rows = min(kFwdStateTile, N - n0);
      __syncthreads();  // the previous tile is consumed
      if (kTokenMajor && p.states_token_major) {
        stage_vectors<T, kFwdStateTile>(state_row<T>(p.B, span, g, n0), p.B.len_stride, seq_lo(), span.len,
                                        chunk_start, tile_B);
        stage_vectors<T, kFwdStateTile>(state_row<T>(p.C, span, g, n0), p.C.len_stride, seq_lo(), span.len,
                                        chunk_start, tile_C);
      } else {
        // state n0's row as state 0's plus an offset: state_row(..., n0) here spilled 42 bytes, not 10
        stage_state_tile(state_row<T>(p.B, span, g, 0) + n0 * p.B.state_stride, p.B.state_stride, p.B.len_stride,
                         rows, seq_lo(), span.len, chunk_start, tile_B);
        stage_state_tile(state_row<T>(p.C, span, g, 0) + n0 * p.C.state_stride, p.C.state_stride, p.C.len_stride,
                         rows, seq_lo(), span.len, chunk_start, tile_C);
      }
      __syncthreads();
#pragma unroll 2
      for (int r = 0; r < rows; ++r) {
        const int n = n0 + r;
        const float a2 = A2[n];
        float Bv[kFwdItems], a[kFwdItems], b[kFwdItems];
        fwd_tile_items(tile_B + r * kFwdRowPitch, sub_lane, desc, Bv);
        float value = 0.f;
#pragma unroll
        for (int k = 0; k < kFwdItems; ++k) {
          a[k] = fast_exp2(dt[k] * a2);
          b[k] = dtu[k] * Bv[k];
          value = fmaf(a[k], value, b[k]);
        }
        float decay = fast_exp2(dt_sum * a2);
        const float entry = carry[n];
        half_warp_scan(decay, value, rank, desc);
        // The state after this lane's items, then the one entering them (the previous lane's).
        const float x_end = fmaf(decay, entry, value);
        const float x_prev = __shfl_sync(kFullMask, x_end, prev_lane);
        const float next_carry = __shfl_sync(kFullMask, x_end, last_lane);
        float x = rank == 0 ? entry : x_prev;
        float Cv[kFwdItems];
        fwd_tile_items(tile_C + r * kFwdRowPitch, sub_lane, desc, Cv);
#pragma unroll
        for (int k = 0; k < kFwdItems; ++k) {
          x = fmaf(a[k], x, b[k]);
          y[k] = fmaf(Cv[k], x, y[k]);
        }
        __syncwarp();  // every lane of the half has read carry[n] (explicit, for racecheck)
        if (sub_lane == 0) carry[n] = next_carry;
      }
    }
    __syncwarp();  // carry (and the checkpoint reads of the next chunk) see this chunk's writes
    flip_if(desc, y);
    if constexpr (kTokenMajor) {
      __syncthreads();  // the state loop's tiles are consumed
      const bool keep_pre = p.z.ptr != nullptr && p.out_pre.ptr != nullptr;
      if (p.z.ptr != nullptr) {
        if constexpr (kPrefetch) {
          cp_async_wait_older();
          stage_prefetched_steps<T>(step_slots(prefetch, kPrefetchZ), seq_lo(), span.len, chunk_start, staged_a);
          if (has_next) {
            prefetch_steps(row_ptr<T>(p.z, span, d0), p.z.len_stride, seq_lo(), span.len, next_start,
                           step_slots(prefetch, kPrefetchZ));
          }
        } else {
          stage_vectors<T, kFwdChannels>(row_ptr<T>(p.z, span, d0), p.z.len_stride, seq_lo(), span.len, chunk_start,
                                         staged_a);
        }
        __syncthreads();
        float z[kFwdItems];
        fwd_tile_items(staged_a + half * kFwdRowPitch, sub_lane, false, z);
        if (keep_pre) put_fwd_tile_items(staged_b + half * kFwdRowPitch, sub_lane, y);
#pragma unroll
        for (int k = 0; k < kFwdItems; ++k) y[k] *= silu(z[k]);
        __syncthreads();  // every lane has read its z
      }
      if constexpr (kPrefetch) cp_async_commit();  // committed even without z: two groups per chunk
      put_fwd_tile_items(staged_a + half * kFwdRowPitch, sub_lane, y);
      __syncthreads();
      write_rows_token_major<T>(staged_a, p.out, span, seq_lo(), d0, chunk_start);
      if (keep_pre) write_rows_token_major<T>(staged_b, p.out_pre, span, seq_lo(), d0, chunk_start);
    } else {
      if (p.z.ptr != nullptr) {
        // The backward's dz needs y before the gate; keeping it costs one write instead of a replay.
        if (active && p.out_pre.ptr != nullptr) {
          store_items(row_ptr_mut<T>(p.out_pre, span, d), p.out_pre.len_stride, pos, seq_lo(), span.len, y);
        }
        float z[kFwdItems];
        if (kPrefetch && z_ready) {
          cp_async_wait_older();
          prefetched_items<T>(prefetch_slots<T>(prefetch, kPrefetchZ), z);
        } else {
          load_items(z_row(), p.z.len_stride, pos, seq_lo(), span.len, z);
        }
#pragma unroll
        for (int k = 0; k < kFwdItems; ++k) y[k] *= silu(z[k]);
      }
      if constexpr (kPrefetch) {  // committed even without z: every chunk commits two groups
        z_ready = has_next && p.z.ptr != nullptr && vector_items(z_row(), p.z.len_stride, next_pos, seq_lo(), span.len);
        if (z_ready) prefetch_items(z_row(), next_pos, prefetch_slots<T>(prefetch, kPrefetchZ));
        cp_async_commit();
      }
      if (active) store_items(row_ptr_mut<T>(p.out, span, d), p.out.len_stride, pos, seq_lo(), span.len, y);
    }
  }
  if (active) {
    for (int n = sub_lane; n < N; n += kFwdLanes) p.last_state[state_row_offset + n] = carry[n];
  }
}

// ------------------------------------------------------------------------------------------------
// Backward. A CTA owns one chunk and a block of channels of one group; its warps take the channels
// in turn (each warp a channel at a time, so eight channels' loads are in flight per CTA).

// The gradient reaching y (before the gate), in scan order.
template <typename T, bool kReverse>
__device__ __forceinline__ void load_output_gradient(const ScanBwdParams& p, const SeqSpan& span, int d, int pos,
                                                     float (&gy)[K]) {
  load_items(row_ptr<T>(p.dout, span, d), p.dout.len_stride, pos, span.lo, span.len, gy);
  flip_if(kReverse, gy);
  if (p.z.ptr != nullptr) {
    float z[K];
    load_items(row_ptr<T>(p.z, span, d), p.z.len_stride, pos, span.lo, span.len, z);
    flip_if(kReverse, z);
#pragma unroll
    for (int k = 0; k < K; ++k) gy[k] *= silu(z[k]);
  }
}

// dz (memory order) and, in gy, the gradient reaching y before the gate (still in memory order).
// All loads are issued together, so a channel costs one memory latency.
template <typename T>
__device__ __forceinline__ void load_gate_gradients(const ScanBwdParams& p, const SeqSpan& span, int d, int pos,
                                                    float (&gy)[K], float (&dz)[K]) {
  load_items(row_ptr<T>(p.dout, span, d), p.dout.len_stride, pos, span.lo, span.len, gy);
  float z[K];
  load_items(row_ptr<T>(p.z, span, d), p.z.len_stride, pos, span.lo, span.len, z);
  load_items(row_ptr<T>(p.out_pre, span, d), p.out_pre.len_stride, pos, span.lo, span.len, dz);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float sg = sigmoid(z[k]);
    dz[k] = gy[k] * dz[k] * sg * (1.f + z[k] * (1.f - sg));
    gy[k] *= z[k] * sg;
  }
}

template <typename T, bool kReverse>
__device__ __forceinline__ void load_gradient_and_write_dz(const ScanBwdParams& p, const SeqSpan& span, int d,
                                                           int pos, float (&gy)[K]) {
  float dz[K];
  load_gate_gradients<T>(p, span, d, pos, gy, dz);
  store_items(row_ptr_mut<T>(p.dz, span, d), p.dz.len_stride, pos, span.lo, span.len, dz);
  flip_if(kReverse, gy);
}

// Token-major gradients: the CTA's kBwdWarps channels of one tensor, staged as rows
// [channel][kScanChunk] (memory order), out to `t` as one or two vectors per time step; steps past
// the sequence are not written (they belong to the next packed sequence, or to no one).
template <typename T>
__device__ __forceinline__ void write_gradient_steps(const float* staged, const RowTensor& t, const SeqSpan& span,
                                                     int d0, int chunk_start) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(kBwdWarps % kVec == 0, "whole vectors of channels");
  for (int step = threadIdx.x; step < kScanChunk; step += kBwdWarps * 32) {
    const int pos = chunk_start + step;
    if (pos < span.lo || pos >= span.len) continue;
    T* dst = row_ptr_mut<T>(t, span, d0) + static_cast<int64_t>(pos) * t.len_stride;
#pragma unroll
    for (int i = 0; i < kBwdWarps / kVec; ++i) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec; ++j) e[j] = from_float<T>(staged[(i * kVec + j) * kScanChunk + step]);
      reinterpret_cast<uint4*>(dst)[i] = raw;
    }
  }
}

// A lane's K items (memory order) into its place of a staged row.
__device__ __forceinline__ void put_row_items(float* row, const float (&v)[K]) {
  float4* dst = reinterpret_cast<float4*>(row + (threadIdx.x & 31) * K);
  dst[0] = make_float4(v[0], v[1], v[2], v[3]);
  dst[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Token-major inputs (p.inputs_token_major, 16-bit inputs). A CTA's kBwdWarps channels [d0, d0 +
// kBwdWarps) at one time step are one 16-byte vector per tensor, so the thread of each step copies
// them with cp.async into its own slots of [kRawInputs][kScanChunk] uint4s, issued one round of
// channels ahead: no registers hold them in flight (held in registers, ptxas spilled them, and each
// spill store waited for its load), and the thread needs no barrier before it unpacks its own. It
// then stages the chunk's dt (bias added, softplus applied, 0 outside the sequence), u, and the
// gradient reaching y before the gate as split rows [kStagedInputs][kBwdWarps][kScanChunk] for each
// warp to read its channel from. 2-byte loads from 8 rows (a warp's 32 lanes in 32 different rows)
// cost the mixer's main pass twice the contiguous layout's time.
enum StagedInput { kStagedU, kStagedDt, kStagedGy, kStagedInputs };
enum RawInput { kRawU, kRawDelta, kRawDout, kRawZ, kRawOutPre, kRawInputs };
static_assert(kBwdWarps * 32 == kScanChunk, "one thread per time step of a chunk");
constexpr int kRawFloats = kRawInputs * kScanChunk * 4;  // the slots, in floats
template <typename T>
constexpr bool kTokenMajorStaging = sizeof(T) == 2;  // the launcher sets inputs_token_major for these only

template <typename T>
__device__ __forceinline__ void copy_step_vector(const RowTensor& t, const SeqSpan& span, int d0, int pos,
                                                 bool in_range, uint4* slot) {
  const T* src = in_range ? row_ptr<T>(t, span, d0) + static_cast<int64_t>(pos) * t.len_stride
                          : static_cast<const T*>(t.ptr);
  cp_async_or_zero<16>(slot, src, in_range);
}

// Issues this thread's step of the inputs of channels [d0, d0 + kBwdWarps) into `raw` (zeros out of
// the sequence); the caller commits the group. `main_pass`: also u and the pre-gate output (the
// summary needs neither: it reads dt, dout and z only).
template <typename T>
__device__ __forceinline__ void prefetch_token_major_inputs(const ScanBwdParams& p, const SeqSpan& span, int d0,
                                                            int chunk_start, bool main_pass, uint4* raw) {
  static_assert(kBwdWarps * sizeof(T) == 16, "one vector per time step and tensor");
  const int step = threadIdx.x, pos = chunk_start + step;
  const bool in_range = pos >= span.lo && pos < span.len;
  if (main_pass) copy_step_vector<T>(p.u, span, d0, pos, in_range, raw + kRawU * kScanChunk + step);
  copy_step_vector<T>(p.delta, span, d0, pos, in_range, raw + kRawDelta * kScanChunk + step);
  copy_step_vector<T>(p.dout, span, d0, pos, in_range, raw + kRawDout * kScanChunk + step);
  if (p.z.ptr != nullptr) {
    copy_step_vector<T>(p.z, span, d0, pos, in_range, raw + kRawZ * kScanChunk + step);
    if (main_pass) copy_step_vector<T>(p.out_pre, span, d0, pos, in_range, raw + kRawOutPre * kScanChunk + step);
  }
}

// By value: unpacking through a reference to shared memory compiled to eight 2-byte loads (with
// 4-way bank conflicts) instead of one 16-byte load.
template <typename T>
__device__ __forceinline__ void unpack_step(const uint4 v, float (&out)[kBwdWarps]) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int c = 0; c < kBwdWarps; ++c) out[c] = to_float(e[c]);
}

// Stages this thread's prefetched step into `rows` (see StagedInput) once its copies have landed.
// `main_pass` (the inputs prefetch_token_major_inputs copied for it): also stages u and, with a
// gate, writes dz = dout * y * silu'(z) from the pre-gate output; else u's rows are left unwritten.
// Cooperative over the CTA; the caller synchronises before reading the rows.
template <typename T>
__device__ __forceinline__ void stage_token_major_inputs(const ScanBwdParams& p, const SeqSpan& span, int d0,
                                                         int chunk_start, bool main_pass, const uint4* raw,
                                                         float* rows) {
  cp_async_wait_all();
  const int step = threadIdx.x, pos = chunk_start + step;
  const bool in_range = pos >= span.lo && pos < span.len;
  const bool gated = p.z.ptr != nullptr;
  float u[kBwdWarps], dt[kBwdWarps], gy[kBwdWarps], z[kBwdWarps], y[kBwdWarps], dz[kBwdWarps];
  if (main_pass) unpack_step<T>(raw[kRawU * kScanChunk + step], u);
  unpack_step<T>(raw[kRawDelta * kScanChunk + step], dt);
  unpack_step<T>(raw[kRawDout * kScanChunk + step], gy);
  if (gated) {
    unpack_step<T>(raw[kRawZ * kScanChunk + step], z);
    if (main_pass) unpack_step<T>(raw[kRawOutPre * kScanChunk + step], y);
  }
#pragma unroll
  for (int c = 0; c < kBwdWarps; ++c) {
    const float pre = dt[c] + (p.delta_bias != nullptr ? p.delta_bias[d0 + c] : 0.f);
    dt[c] = in_range ? (p.delta_softplus ? softplus<T>(pre) : pre) : 0.f;
    if (gated) {
      const float sg = sigmoid(z[c]);
      if (main_pass) dz[c] = gy[c] * y[c] * sg * (1.f + z[c] * (1.f - sg));
      gy[c] *= z[c] * sg;
    }
  }
  if (gated && main_pass && in_range) {
    uint4 packed;
    T* e = reinterpret_cast<T*>(&packed);
#pragma unroll
    for (int c = 0; c < kBwdWarps; ++c) e[c] = from_float<T>(dz[c]);
    *reinterpret_cast<uint4*>(row_ptr_mut<T>(p.dz, span, d0) + static_cast<int64_t>(pos) * p.dz.len_stride) = packed;
  }
  const int at = split_index(step);
#pragma unroll
  for (int c = 0; c < kBwdWarps; ++c) {
    if (main_pass) rows[(kStagedU * kBwdWarps + c) * kScanChunk + at] = u[c];
    rows[(kStagedDt * kBwdWarps + c) * kScanChunk + at] = dt[c];
    rows[(kStagedGy * kBwdWarps + c) * kScanChunk + at] = gy[c];
  }
}

// This warp's channel from the staged rows (u only for the main pass), in scan order (as
// load_chunk_inputs and load_output_gradient give them; dt_sum added in memory order, as there).
template <bool kReverse, bool kMainPass>
__device__ __forceinline__ void staged_chunk_inputs(const float* rows, ChunkInputs& in, float (&gy)[K]) {
  const int warp = threadIdx.x >> 5;
  if constexpr (kMainPass) tile_items(rows + (kStagedU * kBwdWarps + warp) * kScanChunk, kReverse, in.u);
  tile_items(rows + (kStagedDt * kBwdWarps + warp) * kScanChunk, kReverse, in.dt);
  tile_items(rows + (kStagedGy * kBwdWarps + warp) * kScanChunk, kReverse, gy);
  in.dt_sum = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) in.dt_sum += in.dt[kReverse ? K - 1 - k : k];
}

// The main pass takes states in pairs, so its per-state rows and B/C tiles hold dstate rounded up
// to a pair; a padding state reads as zeros.
__host__ __device__ constexpr int state_pitch(int dstate) { return (dstate + 1) / 2 * 2; }

// Per-warp shared rows of per-state values ([rows][pitch]): the first N entries of src times
// scale, zero up to the pitch; written by the warp's lanes, then read by every lane in the state
// loop, so no global load sits on that loop's path.
__device__ __forceinline__ void stage_state_row(const float* src, int64_t stride, float scale, int N, int pitch,
                                                float* row) {
  for (int n = threadIdx.x & 31; n < pitch; n += 32) row[n] = n < N ? src[n * stride] * scale : 0.f;
}

// Channel d's A row ([pitch], zero past dstate) copied with cp.async by the warp's lanes, one state
// each (dstate <= 32), in the caller's group.
__device__ __forceinline__ void prefetch_state_row(const ScanBwdParams& p, int d, int pitch, float* row) {
  const int n = threadIdx.x & 31;
  if (n >= pitch) return;
  const bool real = n < p.dstate;
  cp_async_or_zero<4>(row + n, real ? p.A + d * p.A_dim_stride + n * p.A_state_stride : p.A, real);
}

// The main pass's A, checkpoint and adjoint-carry rows of channel d ([3][pitch], zero past
// dstate), copied with cp.async by the warp's lanes, one state each (dstate <= 32), in the same
// group as the channels' prefetch_token_major_inputs.
static_assert(kBwdTileMaxDstate <= 32, "one state per lane");
__device__ __forceinline__ void prefetch_state_rows(const ScanBwdParams& p, int global_chunk, int d, int pitch,
                                                    float* rows) {
  prefetch_state_row(p, d, pitch, rows);
  const int n = threadIdx.x & 31;
  if (n >= pitch) return;
  const bool real = n < p.dstate;
  const int64_t at = (static_cast<int64_t>(global_chunk) * p.dim + d) * p.dstate + n;
  cp_async_or_zero<4>(rows + pitch + n, real ? p.checkpoints + at : p.checkpoints, real);
  cp_async_or_zero<4>(rows + 2 * pitch + n, real ? p.adjoint_carry + at : p.adjoint_carry, real);
}

// The channels [d_begin, d_end) that a backward CTA owns, and its chunk, on a grid of
// blocks.per_group blocks of blocks.channels channels per group (each pass has its own).
struct BwdTile {
  SeqSpan span;
  int chunk, global_chunk, group, block, d_begin, d_end;
};

__device__ __forceinline__ bool bwd_tile(const ScanBwdParams& p, ChannelBlocks blocks, BwdTile& t) {
  t.global_chunk = blockIdx.x;
  const int s = seq_of_chunk(p, t.global_chunk);
  if (s < 0) return false;
  t.span = seq_span(p, s);
  t.chunk = t.global_chunk - t.span.first_chunk;
  t.group = blockIdx.y / blocks.per_group;
  t.block = blockIdx.y % blocks.per_group;
  const int group_begin = t.group * p.channels_per_group;
  t.d_begin = group_begin + t.block * blocks.channels;
  t.d_end = min(t.d_begin + blocks.channels, group_begin + p.channels_per_group);
  return true;
}

// The summary takes states in fours (one warp_sum_quad), so its rows and C tile hold dstate rounded
// up to four; a padding state reads as zeros.
constexpr int kSummaryStates = 4;
// Per-warp rows of per-state values in the summary pass: A * log2(e), chunk decay, chunk adjoint,
// and the next channel's A as copied (token-major inputs only).
enum SummaryRow { kSummaryA, kSummaryDecay, kSummaryAdjoint, kSummaryNextA, kSummaryRows };
__host__ __device__ constexpr int summary_pitch(int dstate) {
  return (dstate + kSummaryStates - 1) / kSummaryStates * kSummaryStates;
}

// This lane's items' dt summed from the chunk's first step in scan order through each item
// (lanes in scan order: descending physical lanes for kReverse), and the chunk's total. The
// adjoint the chunk produces on its own is then sum_k exp2(A2 * prefix_k) * C_k * gy_k per state:
// every term is independent, where folding and scanning the affine maps per state is a chain.
template <bool kReverse>
__device__ __forceinline__ float chunk_dt_prefix(const ChunkInputs& in, float (&prefix)[K]) {
  const int lane = threadIdx.x & 31;
  float run = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) prefix[k] = run += in.dt[k];
  float through = run;  // this lane's items and the lanes before it
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const float earlier = kReverse ? __shfl_down_sync(kFullMask, through, offset)
                                   : __shfl_up_sync(kFullMask, through, offset);
    if (kReverse ? lane + offset < 32 : lane >= offset) through += earlier;
  }
  float before = kReverse ? __shfl_down_sync(kFullMask, through, 1) : __shfl_up_sync(kFullMask, through, 1);
  if (lane == (kReverse ? 31 : 0)) before = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) prefix[k] += before;
  return __shfl_sync(kFullMask, through, kReverse ? 0 : 31);
}

// Four values summed over the warp, the partial sums split across lanes after each of the first
// two steps (six shuffles where four warp_sums take twenty): lane 8 j returns the sum of v[j].
__device__ __forceinline__ float warp_sum_quad(const float (&v)[kSummaryStates]) {
  const bool upper = threadIdx.x & 16, odd = threadIdx.x & 8;
  const float even_state = (upper ? v[2] : v[0]) + __shfl_xor_sync(kFullMask, upper ? v[0] : v[2], 16);
  const float odd_state = (upper ? v[3] : v[1]) + __shfl_xor_sync(kFullMask, upper ? v[1] : v[3], 16);
  float sum = (odd ? odd_state : even_state) + __shfl_xor_sync(kFullMask, odd ? even_state : odd_state, 8);
#pragma unroll
  for (int offset = 4; offset > 0; offset >>= 1) sum += __shfl_xor_sync(kFullMask, sum, offset);
  return sum;
}

// Pass 1: per (chunk, channel, state) the product of the chunk's decays and the adjoint the chunk
// produces on its own; also dz, from the pre-gate output the forward kept. kStaged (dstate <=
// kBwdTileMaxDstate): C comes from the chunk's shared tile, padded to whole fours of states, and
// the state loop is branch-free.
template <typename T, bool kReverse, bool kStaged>
__global__ void __launch_bounds__(kBwdWarps * 32, 3) selective_scan_bwd_summary_kernel(ScanBwdParams p) {
  extern __shared__ float smem[];
  BwdTile tile;
  if (!bwd_tile(p, p.summary_blocks, tile)) return;  // uniform across the CTA
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr bool desc = kReverse;
  const int N = p.dstate, pitch = summary_pitch(N);
  const int pos = tile.chunk * kScanChunk + lane * K;
  // Per warp: A * log2(e), then the chunk decay and adjoint of each state, then (token-major
  // inputs) the next channel's A as copied ([kSummaryRows][pitch]).
  float* rows = smem + warp * kSummaryRows * pitch;
  const float* tile_C = nullptr;
  // kStaged and p.inputs_token_major: the CTA's channels' staged inputs, then their raw slots (no
  // out_pre: dz is the main pass's).
  float* staged_inputs = nullptr;
  uint4* raw = nullptr;
  const int chunk_start = tile.chunk * kScanChunk;
  if constexpr (kStaged) {  // every channel of the CTA reads the same C chunk
    float* staged = smem + kBwdWarps * kSummaryRows * pitch;
    load_state_tile<T>(p.C, tile.span, tile.group, 0, pitch, N, chunk_start, staged);
    tile_C = staged;
    if constexpr (kTokenMajorStaging<T>) {
      if (p.inputs_token_major) {
        staged_inputs = staged + pitch * kScanChunk;
        raw = reinterpret_cast<uint4*>(staged_inputs + kStagedInputs * kBwdWarps * kScanChunk);
        prefetch_token_major_inputs<T>(p, tile.span, tile.d_begin, chunk_start, false, raw);
        prefetch_state_row(p, tile.d_begin + warp, pitch, rows + kSummaryNextA * pitch);
        cp_async_commit();
      }
    }
  }
  __syncthreads();
  // With staged inputs every warp has a channel in every iteration (whole 8-channel blocks), so
  // the barriers around the staging are met by all.
  for (int d = tile.d_begin + warp; d < tile.d_end; d += kBwdWarps) {
    __syncwarp();  // the previous channel's rows are written out
    float gy[K];
    ChunkInputs in;
    if (staged_inputs != nullptr) {
      if constexpr (kTokenMajorStaging<T>) {
        const int d0 = d - warp;
        __syncthreads();  // every warp has read the previous channels' staged rows
        stage_token_major_inputs<T>(p, tile.span, d0, chunk_start, false, raw, staged_inputs);
        // A was copied with the inputs, each entry by the lane that reads it here: a load of A at
        // this point held every warp at the barrier below for its latency (a fifth of the stall
        // samples of the mixer's summary).
        for (int n = lane; n < pitch; n += 32) rows[n] = rows[kSummaryNextA * pitch + n] * kLog2e;
        // The next channels' copies land during this channel's state loop (into this thread's own
        // slots, which it has just read).
        if (d0 + kBwdWarps < tile.d_end) {
          prefetch_token_major_inputs<T>(p, tile.span, d0 + kBwdWarps, chunk_start, false, raw);
          prefetch_state_row(p, d + kBwdWarps, pitch, rows + kSummaryNextA * pitch);
          cp_async_commit();
        }
        __syncthreads();
        staged_chunk_inputs<kReverse, false>(staged_inputs, in, gy);
      }
    } else {
      stage_state_row(p.A + d * p.A_dim_stride, p.A_state_stride, kLog2e, N, pitch, rows);
      if (p.z.ptr != nullptr && !p.grads_token_major) {  // else the main pass writes dz
        load_gradient_and_write_dz<T, kReverse>(p, tile.span, d, pos, gy);
      } else {
        load_output_gradient<T, kReverse>(p, tile.span, d, pos, gy);
      }
      load_chunk_inputs<T, kReverse>(p, tile.span, d, pos, in);
    }
    float prefix[K];
    const float dt_total = chunk_dt_prefix<kReverse>(in, prefix);
    __syncwarp();
    for (int n0 = 0; n0 < pitch; n0 += kSummaryStates) {
      float adjoint[kSummaryStates];
#pragma unroll
      for (int j = 0; j < kSummaryStates; ++j) {
        const int n = n0 + j;
        float Cv[K];
        if constexpr (kStaged) {
          tile_items(tile_C + n * kScanChunk, desc, Cv);
        } else if (n < N) {
          load_state_items<T>(p.C, tile.span, tile.group, n, pos, desc, Cv);
        } else {
#pragma unroll
          for (int k = 0; k < K; ++k) Cv[k] = 0.f;
        }
        const float A2 = rows[n];
        float sum = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) sum = fmaf(fast_exp2(A2 * prefix[k]), Cv[k] * gy[k], sum);
        adjoint[j] = sum;
      }
      const float total = warp_sum_quad(adjoint);
      if ((lane & 7) == 0) {
        const int n = n0 + (lane >> 3);
        rows[kSummaryDecay * pitch + n] = fast_exp2(rows[kSummaryA * pitch + n] * dt_total);
        rows[kSummaryAdjoint * pitch + n] = total;
      }
    }
    __syncwarp();
    const int64_t chunk_row = (static_cast<int64_t>(tile.global_chunk) * p.dim + d) * N;
    for (int n = lane; n < N; n += 32) {
      p.chunk_decay[chunk_row + n] = rows[kSummaryDecay * pitch + n];
      p.chunk_adjoint[chunk_row + n] = rows[kSummaryAdjoint * pitch + n];
    }
  }
}

// Backward pass 2: the adjoint entering each chunk, sequential over chunks (one thread per
// sequence, channel and state).
// static: compiled into every per-dtype translation unit.
static __global__ void selective_scan_bwd_carry_kernel(ScanBwdParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_seq = static_cast<int64_t>(p.dim) * p.dstate;
  if (idx >= per_seq * p.num_seqs) return;
  const int s = static_cast<int>(idx / per_seq);
  const int64_t dn = idx % per_seq;
  const SeqSpan span = seq_span(p, s);
  float v = p.dlast_state != nullptr ? p.dlast_state[idx] : 0.f;
  // __ldg: the summaries are read-only here, so their loads may run ahead of the carry stores.
#pragma unroll 4
  for (int q = span.num_chunks - 1; q >= 0; --q) {
    const int c = p.reverse ? span.num_chunks - 1 - q : q;
    const int64_t at = static_cast<int64_t>(span.first_chunk + c) * per_seq + dn;
    p.adjoint_carry[at] = v;
    v = fmaf(__ldg(p.chunk_decay + at), v, __ldg(p.chunk_adjoint + at));
  }
  p.dinitial_state[idx] = v;
}

// Backward pass 3: all gradients of one chunk for a block of channels.
//
// With h_n the gradient reaching state n at a step and a_n x_n its decayed previous state, the
// channel's gradients are du = dt * S + D * gy and d(dt) = T + u * S, where S = sum_n h_n B_n and
// T = sum_n A_n h_n a_n x_n: the state loop accumulates S and T, not du and ddelta (3 fewer
// instructions per step and state).

// One state's inputs from shared memory (or global memory beyond the staged dstate). (Reading both
// states of a round before the first store, so that they overlap, spills ~200 bytes at 128
// registers.)
struct MainStateInputs {
  float A, checkpoint, carry;
  float B[K], C[K];  // scan order
};

// `pitch`: the rows' padded dstate. A padding state (n >= dstate) reads as all zeros, so its
// gradients are zero and the state round needs no branch around its shuffles. kStaged: B and C
// come from the chunk's shared tiles (then the load has no branch either), else from global memory.
template <typename T, bool kReverse, bool kStaged>
__device__ __forceinline__ void load_main_state(const ScanBwdParams& p, const BwdTile& tile, int n, int pos,
                                                int pitch, const float* rows, const float* tile_B,
                                                const float* tile_C, MainStateInputs& s) {
  s.A = rows[n];
  s.checkpoint = rows[pitch + n];
  s.carry = rows[2 * pitch + n];
  if constexpr (kStaged) {
    tile_items(tile_B + n * kScanChunk, kReverse, s.B);
    tile_items(tile_C + n * kScanChunk, kReverse, s.C);
  } else if (n < p.dstate) {
    load_state_items<T>(p.B, tile.span, tile.group, n, pos, kReverse, s.B);
    load_state_items<T>(p.C, tile.span, tile.group, n, pos, kReverse, s.C);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) s.B[k] = s.C[k] = 0.f;
  }
}

// One state of one channel, for one lane's items (scan order): adds to S and T, fills this lane's
// dB/dC items (memory order) and returns this lane's part of dA. Registers and shuffles only.
template <bool kReverse>
__device__ __forceinline__ float state_gradients(const MainStateInputs& s, const ChunkInputs& in,
                                                 const float (&dtu)[K], const float (&gy)[K], float (&S)[K],
                                                 float (&Tsum)[K], float (&dB_item)[K], float (&dC_item)[K]) {
  constexpr bool desc = kReverse;
  const float A2 = s.A * kLog2e;
  // Forward state, replayed from the checkpoint: x[k] enters item k, x[K] leaves the lane.
  float a[K], b[K], x[K + 1];
  float value = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    a[k] = fast_exp2(in.dt[k] * A2);
    b[k] = dtu[k] * s.B[k];
    value = fmaf(a[k], value, b[k]);
  }
  const float chunk_decay = fast_exp2(in.dt_sum * A2);
  float decay = chunk_decay;
  warp_scan<desc>(decay, value);
  float before_decay, before_value;  // the map of the lanes before this one
  previous_map<desc, 32>(decay, value, before_decay, before_value);
  x[0] = fmaf(before_decay, s.checkpoint, before_value);
#pragma unroll
  for (int k = 0; k < K; ++k) x[k + 1] = fmaf(a[k], x[k], b[k]);
  // Adjoint, right to left in scan order, entering from the next chunk.
  value = 0.f;
#pragma unroll
  for (int k = K - 1; k >= 0; --k) value = a[k] * fmaf(s.C[k], gy[k], value);
  decay = chunk_decay;
  warp_scan<!desc>(decay, value);
  previous_map<!desc, 32>(decay, value, before_decay, before_value);
  float v = fmaf(before_decay, s.carry, before_value);
  float dA = 0.f;
#pragma unroll
  for (int k = K - 1; k >= 0; --k) {
    const float h = fmaf(s.C[k], gy[k], v);  // dL/dx after item k
    v = a[k] * h;
    const float h_decayed = v * x[k];  // h * a_k * x_k, one multiply
    S[k] = fmaf(h, s.B[k], S[k]);
    Tsum[k] = fmaf(s.A, h_decayed, Tsum[k]);
    dA = fmaf(in.dt[k], h_decayed, dA);
    dB_item[k] = h * dtu[k];
    dC_item[k] = gy[k] * x[k + 1];
  }
  flip_if(desc, dB_item);
  flip_if(desc, dC_item);
  return dA;
}

// Two values summed over the warp in five shuffles (ten for two warp_sums): after the first step
// lanes 0-15 hold first's partial sums and lanes 16-31 second's. Lane 0 returns first's sum, lane
// 16 second's.
__device__ __forceinline__ float warp_sum_pair(float first, float second) {
  const bool upper = threadIdx.x & 16;
  float sum = (upper ? second : first) + __shfl_xor_sync(kFullMask, upper ? first : second, 16);
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) sum += __shfl_xor_sync(kFullMask, sum, offset);
  return sum;
}

// Two states per barrier: the CTA meets half as often to sum dB/dC over its channels. (ptxas still
// schedules the two states one after the other: at 128 registers it does not interleave them.)
constexpr int kStatesPerRound = 2;
// Per-warp rows of per-state values in the main pass: A, checkpoint, adjoint carry, dA.
constexpr int kBwdStateRows = 4;
// Floats of the main pass's contributions' space; with token-major inputs it extends past the
// contributions to hold the staged inputs followed by the raw slots.
__host__ __device__ constexpr int main_contrib_floats(bool inputs_token_major) {
  const int contributions = kBwdWarps * kStatesPerRound * 2 * kScanChunk;
  const int staging = kStagedInputs * kBwdWarps * kScanChunk + kRawFloats;
  return inputs_token_major && staging > contributions ? staging : contributions;
}
static_assert(kStatesPerRound == 2, "state_pitch pads dstate to whole rounds");

// Fixed-order sum of one float4 over the CTA's warps' contributions (a tree, for a short chain).
__device__ __forceinline__ float4 sum_over_warps(const float* contrib, int stride) {
  static_assert(kBwdWarps == 8, "a three-level tree");
  float4 c[kBwdWarps];
#pragma unroll
  for (int w = 0; w < kBwdWarps; ++w) c[w] = *reinterpret_cast<const float4*>(contrib + w * stride);
#pragma unroll
  for (int width = kBwdWarps / 2; width > 0; width /= 2) {
#pragma unroll
    for (int w = 0; w < width; ++w) {
      c[w].x += c[w + width].x;
      c[w].y += c[w + width].y;
      c[w].z += c[w + width].z;
      c[w].w += c[w + width].w;
    }
  }
  return c[0];
}

// kStaged (dstate <= kBwdTileMaxDstate): the chunk's B and C tiles and the block's dB/dC sums live
// in shared memory; a template argument, so that the common case's state round is one basic block.
// kTokenMajorInputs (p.inputs_token_major, with kStaged): the inputs come through
// stage_token_major_inputs; its own instance, since as a runtime branch its registers cost every
// layout's state round 20 instructions of rematerialised addresses.
static_assert(kSmemAccMaxDstate == kBwdTileMaxDstate, "one dstate bound for both shared-memory stages");
template <typename T, bool kReverse, bool kStaged, bool kTokenMajorInputs>
__global__ void __launch_bounds__(kBwdWarps * 32, 2) selective_scan_bwd_main_kernel(ScanBwdParams p) {
  static_assert(kStaged || !kTokenMajorInputs, "token-major input staging needs the staged instance");
  extern __shared__ float smem[];
  BwdTile tile;
  if (!bwd_tile(p, p.main_blocks, tile)) return;  // uniform across the CTA
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr bool desc = kReverse;
  const int N = p.dstate, pitch = state_pitch(N);
  const int pos = tile.chunk * kScanChunk + lane * K;
  const int chunk_start = tile.chunk * kScanChunk;
  const int chunk_len = min(kScanChunk, tile.span.len - chunk_start);
  // Steps [0, chunk_lo) of a packed sequence's first chunk are the previous sequence's lead.
  const int chunk_lo = max(tile.span.lo - chunk_start, 0);

  // Shared memory: per-warp contributions [kBwdWarps][kStatesPerRound][2][kScanChunk] (split
  // rows; with token-major inputs this space also holds the staged inputs, then the raw slots
  // beyond it: see main_contrib_floats), per-warp state rows [kBwdWarps][4][pitch] (A, checkpoint,
  // adjoint carry, dA), then the block's sums over channels [2][N][kScanChunk] (split rows, dstate
  // <= kSmemAccMaxDstate), then the chunk's B and C [2][pitch][kScanChunk] (split rows, dstate <=
  // kBwdTileMaxDstate).
  constexpr int kContrib = kStatesPerRound * 2 * kScanChunk;
  static_assert(kContrib >= 3 * kScanChunk, "du, ddelta and dz rows fit in the contributions' space");
  float* contrib = smem;
  // The raw slots come after the staged inputs, so that a round's copies (issued after its state
  // rounds) overlap neither the output phase's du/ddelta rows nor the next staging's writes; they
  // overlap the contributions, which are free from then until the next state round.
  uint4* raw = reinterpret_cast<uint4*>(smem + kStagedInputs * kBwdWarps * kScanChunk);
  float* state_rows = smem + main_contrib_floats(kTokenMajorInputs);
  float* rows = state_rows + warp * kBwdStateRows * pitch;
  constexpr bool acc_in_smem = kStaged;
  float* acc_smem = state_rows + kBwdWarps * kBwdStateRows * pitch;
  const float* tile_B = nullptr;
  const float* tile_C = nullptr;
  if constexpr (kStaged) {
    float* staged = acc_smem + 2 * N * kScanChunk;
    load_state_tile<T>(p.B, tile.span, tile.group, 0, pitch, N, chunk_start, staged);
    load_state_tile<T>(p.C, tile.span, tile.group, 0, pitch, N, chunk_start, staged + pitch * kScanChunk);
    tile_B = staged;
    tile_C = staged + pitch * kScanChunk;
  }
  const int64_t L = p.seqlen;
  const int batch_rows = p.cu_seqlens != nullptr ? 1 : p.num_seqs;
  const int64_t partial_row = ((static_cast<int64_t>(tile.block) * batch_rows + tile.span.batch) * p.groups +
                               tile.group) * N * L + tile.span.start + chunk_start;
  if constexpr (acc_in_smem) {
    for (int i = threadIdx.x; i < 2 * N * kScanChunk; i += blockDim.x) acc_smem[i] = 0.f;
  }
  __syncthreads();

  const int iterations = (tile.d_end - tile.d_begin + kBwdWarps - 1) / kBwdWarps;
  // kTokenMajorInputs: a round's inputs and state rows are copied from the end of the previous
  // round's state rounds.
  if constexpr (kTokenMajorInputs) {
    prefetch_state_rows(p, tile.global_chunk, tile.d_begin + warp, pitch, rows);
    prefetch_token_major_inputs<T>(p, tile.span, tile.d_begin, chunk_start, true, raw);
    cp_async_commit();
  }
  for (int it = 0; it < iterations; ++it) {
    const int d = tile.d_begin + it * kBwdWarps + warp;
    // Uniform within the warp. An idle warp runs the state rounds on zero inputs (zero
    // contributions) and meets the barriers: no branch encloses the rounds' shuffles, which then
    // need no divergence handling (moves, checks and predicate spills around each one).
    const bool active = d < tile.d_end;
    // Token-major gradients leave through shared memory. The launcher sets grads_token_major only
    // when channels_per_group is a multiple of kBwdWarps (every pass's channel blocks are), so every
    // round has all its warps active.
    const bool vector_out = p.grads_token_major;
    const int64_t chunk_row = (static_cast<int64_t>(tile.global_chunk) * p.dim + d) * N;
    ChunkInputs in;
    float gy[K], dtu[K], S[K], Tsum[K];
    float dD = 0.f;
    __syncwarp();  // the previous channel's dA row is written out
    // Staged inputs imply vector_out, whose last barrier freed contrib; every warp is active.
    if constexpr (kTokenMajorInputs) {
      stage_token_major_inputs<T>(p, tile.span, d - warp, chunk_start, true, raw, contrib);
      __syncthreads();
      staged_chunk_inputs<kReverse, true>(contrib, in, gy);
      __syncthreads();  // the first state round overwrites the staged rows
    } else if (active) {
      stage_state_row(p.A + d * p.A_dim_stride, p.A_state_stride, 1.f, N, pitch, rows);
      stage_state_row(p.checkpoints + chunk_row, 1, 1.f, N, pitch, rows + pitch);
      stage_state_row(p.adjoint_carry + chunk_row, 1, 1.f, N, pitch, rows + 2 * pitch);
      load_chunk_inputs<T, kReverse>(p, tile.span, d, pos, in);
      load_output_gradient<T, kReverse>(p, tile.span, d, pos, gy);
    } else {
      for (int n = lane; n < 3 * pitch; n += 32) rows[n] = 0.f;
      in.dt_sum = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) in.u[k] = in.dt[k] = gy[k] = 0.f;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      dtu[k] = in.dt[k] * in.u[k];
      S[k] = Tsum[k] = 0.f;
      dD = fmaf(gy[k], in.u[k], dD);
    }
    __syncwarp();

    for (int n0 = 0; n0 < pitch; n0 += kStatesPerRound) {
      float* mine = contrib + warp * kContrib;
      static_assert(kStatesPerRound == 2, "a round's dA is one warp_sum_pair");
      float dA[kStatesPerRound];
#pragma unroll
      for (int j = 0; j < kStatesPerRound; ++j) {
        MainStateInputs state;
        load_main_state<T, kReverse, kStaged>(p, tile, n0 + j, pos, pitch, rows, tile_B, tile_C, state);
        float dB_item[K], dC_item[K];
        dA[j] = state_gradients<kReverse>(state, in, dtu, gy, S, Tsum, dB_item, dC_item);
        put_split_items(mine + j * 2 * kScanChunk, dB_item);
        put_split_items(mine + j * 2 * kScanChunk + kScanChunk, dC_item);
      }
      const float dA_sum = warp_sum_pair(dA[0], dA[1]);
      if ((lane & 15) == 0) rows[3 * pitch + n0 + lane / 16] = dA_sum;
      __syncthreads();
      // Fixed-order sum over the warps' channels, four neighbouring floats per thread.
      for (int i = 4 * threadIdx.x; i < kContrib; i += 4 * blockDim.x) {
        const int j = i / (2 * kScanChunk), which = (i / kScanChunk) % 2, at = i % kScanChunk;
        const int n = n0 + j;
        if (n >= N) continue;
        const float4 sum = sum_over_warps(contrib + i, kContrib);
        if constexpr (acc_in_smem) {
          float4& acc = *reinterpret_cast<float4*>(acc_smem + (which * N + n) * kScanChunk + at);
          acc.x += sum.x;
          acc.y += sum.y;
          acc.z += sum.z;
          acc.w += sum.w;
        } else {
          const int step = split_step(at);  // the four floats are four consecutive steps
          float* partial = (which == 0 ? p.dB_partial : p.dC_partial) + partial_row + n * L + step;
          const float sums[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (step + e >= chunk_lo && step + e < chunk_len) partial[e] += sums[e];
        }
      }
      __syncthreads();
    }
    if constexpr (kTokenMajorInputs) {
      if (it + 1 < iterations) {  // the last state round's barrier freed the rows and slots
        prefetch_state_rows(p, tile.global_chunk, d + kBwdWarps, pitch, rows);
        prefetch_token_major_inputs<T>(p, tile.span, d - warp + kBwdWarps, chunk_start, true, raw);
        cp_async_commit();
      }
    }

    if (active) {
      const float Dd = p.D != nullptr ? p.D[d] : 0.f;
      float du[K], ddt[K];
      float dbias = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        du[k] = fmaf(in.dt[k], S[k], Dd * gy[k]);
        ddt[k] = fmaf(in.u[k], S[k], Tsum[k]) * delta_grad_scale(p.delta_softplus, in.dt[k]);
      }
      flip_if(desc, du);
      flip_if(desc, ddt);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        // outside the sequence: no delta, no bias gradient
        if (pos + k < tile.span.lo || pos + k >= tile.span.len) ddt[k] = 0.f;
        dbias += ddt[k];
      }
      if (vector_out) {  // the last state round's sums are read (the barrier above): contrib is free
        float* staged = contrib + warp * kScanChunk;
        put_row_items(staged, du);
        put_row_items(staged + kBwdWarps * kScanChunk, ddt);
        if (p.z.ptr != nullptr && !kTokenMajorInputs) {  // else written with the staging
          float gate[K], dz[K];
          load_gate_gradients<T>(p, tile.span, d, pos, gate, dz);
          put_row_items(staged + 2 * kBwdWarps * kScanChunk, dz);
        }
      } else {
        store_items(row_ptr_mut<T>(p.du, tile.span, d), p.du.len_stride, pos, tile.span.lo, tile.span.len, du);
        store_items(row_ptr_mut<T>(p.ddelta, tile.span, d), p.ddelta.len_stride, pos, tile.span.lo, tile.span.len, ddt);
      }
      dD = warp_sum(dD);
      dbias = warp_sum(dbias);
      if (lane == 0) {
        p.dD_partial[static_cast<int64_t>(tile.global_chunk) * p.dim + d] = dD;
        p.ddelta_bias_partial[static_cast<int64_t>(tile.global_chunk) * p.dim + d] = dbias;
      }
      __syncwarp();
      for (int n = lane; n < N; n += 32) p.dA_partial[chunk_row + n] = rows[3 * pitch + n];
    }
    if (vector_out) {  // uniform over the CTA
      const int d0 = tile.d_begin + it * kBwdWarps;
      __syncthreads();
      write_gradient_steps<T>(contrib, p.du, tile.span, d0, chunk_start);
      write_gradient_steps<T>(contrib + kBwdWarps * kScanChunk, p.ddelta, tile.span, d0, chunk_start);
      if (p.z.ptr != nullptr && !kTokenMajorInputs) {
        write_gradient_steps<T>(contrib + 2 * kBwdWarps * kScanChunk, p.dz, tile.span, d0, chunk_start);
      }
      __syncthreads();  // the next channels' contributions overwrite the staged rows
    }
  }

  if constexpr (acc_in_smem) {  // out in step order (coalesced), read from the split rows
    for (int i = threadIdx.x; i < 2 * N * kScanChunk; i += blockDim.x) {
      const int at = i % kScanChunk;
      if (at < chunk_lo || at >= chunk_len) continue;
      const int which = i / (N * kScanChunk), n = (i / kScanChunk) % N;
      (which == 0 ? p.dB_partial : p.dC_partial)[partial_row + n * L + at] = acc_smem[i - at + split_index(at)];
    }
  }
}

}  // namespace scan_detail

// ------------------------------------------------------------------------------------------------
// Launchers, instantiated once per dtype in selective_scan_<dtype>.cu. Each kernel is compiled for
// both scan directions, so the direction costs no instructions at run time.

namespace scan_detail {

// Dynamic shared memory of each kernel.
template <typename T, bool kTokenMajor>
size_t fwd_smem(int dstate) {
  const size_t prefetch =
      kFwdPrefetch<T, kTokenMajor> ? size_t{16} * kPrefetchTensors * kPrefetchVectors<T> * kFwdWarps * 32 : 0;
  return sizeof(float) * (size_t{2} * kFwdStateTile * kFwdRowPitch + size_t{2} * kFwdChannels * dstate) + prefetch;
}
inline size_t bwd_summary_smem(int dstate, bool inputs_token_major) {
  const int pitch = summary_pitch(dstate);
  const size_t tile_C = dstate <= kBwdTileMaxDstate ? size_t{1} * pitch * kScanChunk : 0;
  const size_t raw_floats = size_t{1} * kRawOutPre * kScanChunk * 4;  // no out_pre slots
  const size_t inputs = inputs_token_major ? size_t{1} * kStagedInputs * kBwdWarps * kScanChunk + raw_floats : 0;
  return sizeof(float) * (size_t{1} * kSummaryRows * kBwdWarps * pitch + tile_C + inputs);
}
inline size_t bwd_main_smem(int dstate, bool inputs_token_major) {
  const int pitch = state_pitch(dstate);
  size_t floats = main_contrib_floats(inputs_token_major) + size_t{1} * kBwdWarps * kBwdStateRows * pitch;
  if (dstate <= kSmemAccMaxDstate) floats += size_t{2} * dstate * kScanChunk;
  if (dstate <= kBwdTileMaxDstate) floats += size_t{2} * pitch * kScanChunk;
  return sizeof(float) * floats;
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

template <typename input_t, bool kReverse, bool kTokenMajor>
cudaError_t launch_fwd_layout(const ScanParams& params, cudaStream_t stream) {
  const int blocks_per_group = (params.channels_per_group + kFwdChannels - 1) / kFwdChannels;
  const dim3 grid(params.num_seqs, params.groups * blocks_per_group);
  const size_t smem = fwd_smem<input_t, kTokenMajor>(params.dstate);
  const auto kernel = selective_scan_fwd_kernel<input_t, kReverse, kTokenMajor>;
  const cudaError_t err = allow_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  kernel<<<grid, kFwdWarps * 32, smem, stream>>>(params);
  return cudaGetLastError();
}

template <typename input_t, bool kReverse>
cudaError_t launch_fwd(const ScanParams& params, cudaStream_t stream) {
  return params.rows_token_major ? launch_fwd_layout<input_t, kReverse, true>(params, stream)
                                 : launch_fwd_layout<input_t, kReverse, false>(params, stream);
}

template <typename input_t, bool kReverse>
cudaError_t launch_bwd(const ScanBwdParams& params, cudaStream_t stream) {
  const size_t summary_smem = bwd_summary_smem(params.dstate, params.inputs_token_major);
  const size_t main_smem = bwd_main_smem(params.dstate, params.inputs_token_major);
  const bool staged = params.dstate <= kBwdTileMaxDstate;
  const auto summary_kernel = staged ? selective_scan_bwd_summary_kernel<input_t, kReverse, true>
                                     : selective_scan_bwd_summary_kernel<input_t, kReverse, false>;
  cudaError_t err = allow_smem(summary_kernel, summary_smem);
  if (err != cudaSuccess) return err;
  const dim3 summary_grid(params.total_chunks, params.groups * params.summary_blocks.per_group);
  summary_kernel<<<summary_grid, kBwdWarps * 32, summary_smem, stream>>>(params);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  const int64_t carries = static_cast<int64_t>(params.num_seqs) * params.dim * params.dstate;
  const int carry_threads = 256;
  selective_scan_bwd_carry_kernel<<<static_cast<unsigned>((carries + carry_threads - 1) / carry_threads),
                                    carry_threads, 0, stream>>>(params);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  auto main_kernel = staged ? selective_scan_bwd_main_kernel<input_t, kReverse, true, false>
                            : selective_scan_bwd_main_kernel<input_t, kReverse, false, false>;
  if constexpr (kTokenMajorStaging<input_t>) {
    if (params.inputs_token_major) main_kernel = selective_scan_bwd_main_kernel<input_t, kReverse, true, true>;
  }
  err = allow_smem(main_kernel, main_smem);
  if (err != cudaSuccess) return err;
  const dim3 main_grid(params.total_chunks, params.groups * params.main_blocks.per_group);
  main_kernel<<<main_grid, kBwdWarps * 32, main_smem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace scan_detail

template <typename input_t>
cudaError_t launch_selective_scan_fwd(const ScanParams& params, cudaStream_t stream) {
  return params.reverse ? scan_detail::launch_fwd<input_t, true>(params, stream)
                        : scan_detail::launch_fwd<input_t, false>(params, stream);
}

template <typename input_t>
cudaError_t launch_selective_scan_bwd(const ScanBwdParams& params, cudaStream_t stream) {
  return params.reverse ? scan_detail::launch_bwd<input_t, true>(params, stream)
                        : scan_detail::launch_bwd<input_t, false>(params, stream);
}

// Both directions and input layouts share one occupancy per pass (same registers; the token-major
// inputs' extra shared memory costs no CTA, and the larger size is the one asked about).
template <typename input_t>
cudaError_t selective_scan_bwd_ctas_per_sm(int dstate, int* main_ctas, int* summary_ctas) {
  using namespace scan_detail;
  const bool staged = dstate <= kBwdTileMaxDstate;
  const bool token_major = kTokenMajorStaging<input_t> && staged;
  const size_t main_smem = bwd_main_smem(dstate, token_major);
  const auto main_kernel = staged ? selective_scan_bwd_main_kernel<input_t, false, true, false>
                                  : selective_scan_bwd_main_kernel<input_t, false, false, false>;
  cudaError_t err = allow_smem(main_kernel, main_smem);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(main_ctas, main_kernel, kBwdWarps * 32, main_smem);
  if (err != cudaSuccess) return err;
  const size_t summary_smem = bwd_summary_smem(dstate, token_major);
  const auto summary_kernel = staged ? selective_scan_bwd_summary_kernel<input_t, false, true>
                                     : selective_scan_bwd_summary_kernel<input_t, false, false>;
  err = allow_smem(summary_kernel, summary_smem);
  if (err != cudaSuccess) return err;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(summary_ctas, summary_kernel, kBwdWarps * 32, summary_smem);
}

}  // namespace m4v
