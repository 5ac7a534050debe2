// Causal depthwise conv1d (+ optional SiLU) on token-major activations, forward and backward.
//
// One thread owns a vector of adjacent channels and a tile of consecutive time steps; the warp's
// threads take adjacent channel vectors, so every row read or written is one coalesced segment.
// The thread slides a window of the last `width` input rows down its tile (each row is read once,
// plus width - 1 rows of halo). Packed sequences (cu_seqlens): a tap never reads across the start
// of the sequence its output row belongs to.
//
// Backward: the thread recomputes the pre-activation for the rows its dx needs (its tile plus
// width - 1 rows of look-ahead), so nothing but x is saved. Weight and bias gradients are summed
// per (batch row, tile) into a partial buffer that the launcher reduces: no atomics, bitwise
// reproducible.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "causal_conv1d.h"
#include "dtype_convert.cuh"

namespace m4v {
namespace conv_detail {

constexpr int kBlockX = 32;  // channel vectors per block (one warp)
constexpr int kBlockY = 4;   // time tiles per block

template <int kBytes> struct Raw;
template <> struct Raw<16> { using type = uint4; };
template <> struct Raw<8> { using type = uint2; };
template <> struct Raw<4> { using type = unsigned int; };
template <> struct Raw<2> { using type = unsigned short; };

template <typename T, int kVec>
using RawVec = typename Raw<kVec * sizeof(T)>::type;

template <typename T, int kVec>
__device__ __forceinline__ void unpack_vec(const RawVec<T, kVec>& raw, float (&v)[kVec]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int j = 0; j < kVec; ++j) v[j] = to_float(e[j]);
}

template <typename T, int kVec>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[kVec]) {
  unpack_vec<T, kVec>(*reinterpret_cast<const RawVec<T, kVec>*>(p), v);
}

// Both passes read their rows a group at a time, all loads issued before the first row's store: in
// a loop of one load and one store per row, the compiler cannot move a load above the previous
// row's store (the pointers may alias), so each thread had a single row in flight and the kernel
// ran at a third of the memory bandwidth. Loads are read-only (__ldg) and raw, converted when
// used. The backward's group (x and dout rows) takes 161 registers and still wins: 0.231 -> 0.174
// ms at the mixer's shape (benchmarks/NOTES.md, v14b).
constexpr int kFwdRowGroup = 8;
constexpr int kBwdRowGroup = 8;

template <typename T, int kVec, int kGroup>
__device__ __forceinline__ void load_row_group(const T* first, int64_t row_stride, int rows,
                                               RawVec<T, kVec> (&raw)[kGroup]) {
#pragma unroll
  for (int i = 0; i < kGroup; ++i) {
    raw[i] = i < rows ? __ldg(reinterpret_cast<const RawVec<T, kVec>*>(first + i * row_stride)) : RawVec<T, kVec>{};
  }
}

template <typename T, int kVec>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[kVec]) {
  RawVec<T, kVec> raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int j = 0; j < kVec; ++j) e[j] = from_float<T>(v[j]);
  *reinterpret_cast<RawVec<T, kVec>*>(p) = raw;
}

template <int kVec>
__device__ __forceinline__ void zero(float (&v)[kVec]) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) v[j] = 0.f;
}

// The start of the packed sequence holding row t, for t visited in increasing order.
struct SeqCursor {
  const int* cu;
  int seq, start, next;

  __device__ SeqCursor(const ConvParams& p, int t) : cu(p.cu_seqlens), seq(0), start(0), next(INT_MAX) {
    if (cu == nullptr) return;
    int lo = 0, hi = p.num_seqs - 1;  // the largest s with cu[s] <= t (skips empty sequences)
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (cu[mid] <= t) lo = mid; else hi = mid - 1;
    }
    seq = lo;
    start = cu[lo];
    next = cu[lo + 1];
  }

  __device__ __forceinline__ void advance(int t) {
    while (t >= next) {
      start = next;
      next = cu[++seq + 1];
    }
  }
};

template <typename T, int kWidth, int kVec>
__device__ __forceinline__ void load_weights(const ConvParams& p, int c0, float (&w)[kWidth][kVec],
                                             float (&bias)[kVec]) {
  const T* weight = static_cast<const T*>(p.weight);
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
#pragma unroll
    for (int k = 0; k < kWidth; ++k) w[k][j] = to_float(weight[static_cast<int64_t>(c0 + j) * kWidth + k]);
    bias[j] = p.bias != nullptr ? to_float(static_cast<const T*>(p.bias)[c0 + j]) : 0.f;
  }
}

// bias + sum_k w[k] * window[k] over the taps at or after `start`; window[kWidth - 1] is row t.
template <int kWidth, int kVec>
__device__ __forceinline__ void conv_row(const float (&w)[kWidth][kVec], const float (&bias)[kVec],
                                         const float (&window)[kWidth][kVec], int t, int start, float (&acc)[kVec]) {
#pragma unroll
  for (int j = 0; j < kVec; ++j) acc[j] = bias[j];
#pragma unroll
  for (int k = 0; k < kWidth; ++k) {
    if (t - (kWidth - 1) + k >= start) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] = fmaf(w[k][j], window[k][j], acc[j]);
    }
  }
}

template <int kWidth, int kVec>
__device__ __forceinline__ void shift(float (&window)[kWidth][kVec]) {
#pragma unroll
  for (int k = 0; k + 1 < kWidth; ++k) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) window[k][j] = window[k + 1][j];
  }
}

__device__ __forceinline__ float sigmoid(float x) { return __fdividef(1.f, 1.f + __expf(-x)); }
__device__ __forceinline__ float silu(float x) { return __fdividef(x, 1.f + __expf(-x)); }

template <typename T, int kWidth, int kVec>
__global__ void __launch_bounds__(kBlockX * kBlockY) causal_conv1d_fwd_kernel(ConvParams p) {
  const int c0 = (blockIdx.x * kBlockX + threadIdx.x) * kVec;
  const int t0 = (blockIdx.y * kBlockY + threadIdx.y) * kConvFwdTile;
  if (c0 >= p.channels || t0 >= p.seqlen) return;
  const int64_t row = p.channels, x_row = p.x_row_stride;
  const T* x = static_cast<const T*>(p.x) + blockIdx.z * p.x_batch_stride + c0;
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(blockIdx.z) * p.seqlen * row + c0;
  float w[kWidth][kVec], bias[kVec];
  load_weights<T>(p, c0, w, bias);
  float window[kWidth][kVec];
#pragma unroll
  for (int k = 0; k + 1 < kWidth; ++k) {
    const int r = t0 - (kWidth - 1) + k;
    if (r >= 0) load_vec<T>(x + r * x_row, window[k]); else zero(window[k]);
  }
  SeqCursor cursor(p, t0);
  const int t_end = min(t0 + kConvFwdTile, p.seqlen);
  static_assert(kConvFwdTile % kFwdRowGroup == 0, "whole row groups per tile");
  for (int g = t0; g < t_end; g += kFwdRowGroup) {
    RawVec<T, kVec> raw[kFwdRowGroup];
    load_row_group<T, kVec, kFwdRowGroup>(x + g * x_row, x_row, t_end - g, raw);
#pragma unroll
    for (int i = 0; i < kFwdRowGroup; ++i) {
      const int t = g + i;
      if (t >= t_end) break;
      unpack_vec<T, kVec>(raw[i], window[kWidth - 1]);
      cursor.advance(t);
      float acc[kVec];
      conv_row(w, bias, window, t, cursor.start, acc);
      if (p.silu) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] = silu(acc[j]);
      }
      store_vec<T>(out + t * row, acc);
      shift(window);
    }
  }
}

template <typename T, int kWidth, int kVec>
__global__ void __launch_bounds__(kBlockX * kBlockY) causal_conv1d_bwd_kernel(ConvBwdParams p) {
  const int c0 = (blockIdx.x * kBlockX + threadIdx.x) * kVec;
  const int tile = blockIdx.y * kBlockY + threadIdx.y;
  const int t0 = tile * kConvBwdTile;
  if (c0 >= p.channels || t0 >= p.seqlen) return;
  const int64_t row = p.channels, x_row = p.x_row_stride;
  const int64_t base = static_cast<int64_t>(blockIdx.z) * p.seqlen * row + c0;
  const T* x = static_cast<const T*>(p.x) + blockIdx.z * p.x_batch_stride + c0;
  const T* dout = static_cast<const T*>(p.dout) + base;
  T* dx = static_cast<T*>(p.dx) + base;
  float w[kWidth][kVec], bias[kVec];
  load_weights<T>(p, c0, w, bias);
  // Windows ending at row r: x rows and gradient rows (g = dout * silu'(pre)), with the sequence
  // start of each gradient row (which decides the taps it sent back).
  float xw[kWidth][kVec], gw[kWidth][kVec];
  int g_start[kWidth];
#pragma unroll
  for (int k = 0; k < kWidth; ++k) {
    const int r = t0 - (kWidth - 1) + k;
    if (k + 1 < kWidth && r >= 0) load_vec<T>(x + r * x_row, xw[k]); else zero(xw[k]);
    zero(gw[k]);
    g_start[k] = 0;
  }
  float dw[kWidth][kVec], db[kVec];
#pragma unroll
  for (int k = 0; k < kWidth; ++k) zero(dw[k]);
  zero(db);
  SeqCursor cursor(p, t0);
  const int t_end = min(t0 + kConvBwdTile, p.seqlen);
  // Row r's gradient completes dx[r - (width - 1)]; rows past the end contribute nothing.
  const int r_end = t_end + kWidth - 1;
  for (int r0 = t0; r0 < r_end; r0 += kBwdRowGroup) {
    RawVec<T, kVec> x_raw[kBwdRowGroup], dout_raw[kBwdRowGroup];
    const int loaded = min(r_end, p.seqlen) - r0;
    load_row_group<T, kVec, kBwdRowGroup>(x + r0 * x_row, x_row, loaded, x_raw);
    load_row_group<T, kVec, kBwdRowGroup>(dout + r0 * row, row, loaded, dout_raw);
#pragma unroll
    for (int i = 0; i < kBwdRowGroup; ++i) {
      const int r = r0 + i;
      if (r >= r_end) break;
      float g[kVec];
      if (r < p.seqlen) {
        unpack_vec<T, kVec>(x_raw[i], xw[kWidth - 1]);
        unpack_vec<T, kVec>(dout_raw[i], g);
        cursor.advance(r);
        if (p.silu) {
          float pre[kVec];
          conv_row(w, bias, xw, r, cursor.start, pre);
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const float s = sigmoid(pre[j]);
            g[j] *= s * (1.f + pre[j] * (1.f - s));
          }
        }
        if (r < t_end) {
#pragma unroll
          for (int k = 0; k < kWidth; ++k) {
            if (r - (kWidth - 1) + k >= cursor.start) {
#pragma unroll
              for (int j = 0; j < kVec; ++j) dw[k][j] = fmaf(g[j], xw[k][j], dw[k][j]);
            }
          }
#pragma unroll
          for (int j = 0; j < kVec; ++j) db[j] += g[j];
        }
      } else {
        zero(g);
        zero(xw[kWidth - 1]);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) gw[kWidth - 1][j] = g[j];
      g_start[kWidth - 1] = cursor.start;
      const int q = r - (kWidth - 1);
      if (q >= t0) {
        float acc[kVec];
        zero(acc);
#pragma unroll
        for (int k = 0; k < kWidth; ++k) {  // gradient row q + k reached x[q] through tap width-1-k
          if (q >= g_start[k]) {
#pragma unroll
            for (int j = 0; j < kVec; ++j) acc[j] = fmaf(w[kWidth - 1 - k][j], gw[k][j], acc[j]);
          }
        }
        store_vec<T>(dx + q * row, acc);
      }
      shift(xw);
      shift(gw);
#pragma unroll
      for (int k = 0; k + 1 < kWidth; ++k) g_start[k] = g_start[k + 1];
    }
  }
  const int64_t slot = static_cast<int64_t>(blockIdx.z) * ((p.seqlen + kConvBwdTile - 1) / kConvBwdTile) + tile;
#pragma unroll
  for (int k = 0; k < kWidth; ++k) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) p.dweight_partial[(slot * kWidth + k) * row + c0 + j] = dw[k][j];
  }
  if (p.dbias_partial != nullptr) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) p.dbias_partial[slot * row + c0 + j] = db[j];
  }
}

inline dim3 conv_grid(const ConvParams& p, int vec, int tile) {
  const int vectors = (p.channels + vec - 1) / vec;
  const int tiles = (p.seqlen + tile - 1) / tile;
  return dim3((vectors + kBlockX - 1) / kBlockX, (tiles + kBlockY - 1) / kBlockY, p.batch);
}

template <typename T, int kWidth>
cudaError_t launch_fwd_width(const ConvParams& p, cudaStream_t stream) {
  constexpr int kVec = conv_fwd_vec<T>();
  const dim3 block(kBlockX, kBlockY);
  if (p.vectorized) {
    causal_conv1d_fwd_kernel<T, kWidth, kVec><<<conv_grid(p, kVec, kConvFwdTile), block, 0, stream>>>(p);
  } else {
    causal_conv1d_fwd_kernel<T, kWidth, 1><<<conv_grid(p, 1, kConvFwdTile), block, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T, int kWidth>
cudaError_t launch_bwd_width(const ConvBwdParams& p, cudaStream_t stream) {
  const dim3 block(kBlockX, kBlockY);
  if (p.vectorized) {
    causal_conv1d_bwd_kernel<T, kWidth, kConvBwdVec><<<conv_grid(p, kConvBwdVec, kConvBwdTile), block, 0, stream>>>(p);
  } else {
    causal_conv1d_bwd_kernel<T, kWidth, 1><<<conv_grid(p, 1, kConvBwdTile), block, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace conv_detail

template <typename T>
cudaError_t launch_causal_conv1d_fwd(const ConvParams& p, cudaStream_t stream) {
  using namespace conv_detail;
  switch (p.width) {
    case 1: return launch_fwd_width<T, 1>(p, stream);
    case 2: return launch_fwd_width<T, 2>(p, stream);
    case 3: return launch_fwd_width<T, 3>(p, stream);
    case 4: return launch_fwd_width<T, 4>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_causal_conv1d_bwd(const ConvBwdParams& p, cudaStream_t stream) {
  using namespace conv_detail;
  switch (p.width) {
    case 1: return launch_bwd_width<T, 1>(p, stream);
    case 2: return launch_bwd_width<T, 2>(p, stream);
    case 3: return launch_bwd_width<T, 3>(p, stream);
    case 4: return launch_bwd_width<T, 4>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace m4v
