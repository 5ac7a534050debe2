// Fused multi-modal token re-composition: one memory pass each way.
//
// Forward: a gather of whole rows (text copies, zigzagged frame tokens, registers, zero padding)
// into the scan sequence. Inverse: a gather of up to two rows per output row, summed in fp32 (the
// two text copies), or one row (video). One warp moves one row with 16-byte vectors when the rows
// allow it; an index outside the sources writes NaN, so a corrupt map can never pass silently.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "dtype_convert.cuh"
#include "recompose.h"

namespace m4v {
namespace recompose_detail {

constexpr int kWarps = 8;

enum class Source { kZero, kRow, kInvalid };

// Row `m` of [text[b]; video[b]; registers].
template <typename T>
__device__ __forceinline__ Source gather_source(const GatherParams& p, int b, int m, const T*& row) {
  const int64_t C = p.channels;
  if (m == -1) return Source::kZero;
  if (m < -1) return Source::kInvalid;
  if (m < p.text_len) {
    row = static_cast<const T*>(p.text) + (static_cast<int64_t>(b) * p.text_len + m) * C;
  } else if (m < p.text_len + p.video_len) {
    row = static_cast<const T*>(p.video) + (static_cast<int64_t>(b) * p.video_len + m - p.text_len) * C;
  } else if (m < p.text_len + p.video_len + p.num_registers) {
    row = static_cast<const T*>(p.registers) + static_cast<int64_t>(m - p.text_len - p.video_len) * C;
  } else {
    return Source::kInvalid;
  }
  return Source::kRow;
}

template <typename T>
__device__ __forceinline__ Source seq_source(const ScatterParams& p, int b, int m, const T*& row) {
  if (m == -1) return Source::kZero;
  if (m < -1 || m >= p.seq_len) return Source::kInvalid;
  row = static_cast<const T*>(p.seq) + (static_cast<int64_t>(b) * p.seq_len + m) * p.channels;
  return Source::kRow;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) recompose_gather_kernel(GatherParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= static_cast<int64_t>(p.batch) * p.seq_len) return;
  const int b = static_cast<int>(row / p.seq_len);
  const T* src = nullptr;
  const Source kind = gather_source<T>(p, b, p.index[row], src);
  T* dst = static_cast<T*>(p.seq) + row * p.channels;
  if (kind == Source::kRow && p.vectorized) {
    const int vecs = p.channels * static_cast<int>(sizeof(T)) / 16;
#pragma unroll 4
    for (int i = lane; i < vecs; i += 32) reinterpret_cast<uint4*>(dst)[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
    return;
  }
  const T fill = from_float<T>(kind == Source::kZero ? 0.f : NAN);
  for (int c = lane; c < p.channels; c += 32) dst[c] = kind == Source::kRow ? src[c] : fill;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) recompose_scatter_kernel(ScatterParams p) {
  constexpr int kPerVec = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int out_len = p.text_len + p.video_len;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= static_cast<int64_t>(p.batch) * out_len) return;
  const int b = static_cast<int>(row / out_len), j = static_cast<int>(row % out_len);
  const T *first = nullptr, *second = nullptr;
  const Source first_kind = seq_source<T>(p, b, p.index[2 * row], first);
  const Source second_kind = seq_source<T>(p, b, p.index[2 * row + 1], second);
  T* dst = j < p.text_len
               ? static_cast<T*>(p.text_out) + (static_cast<int64_t>(b) * p.text_len + j) * p.channels
               : static_cast<T*>(p.video_out) + (static_cast<int64_t>(b) * p.video_len + j - p.text_len) * p.channels;
  const bool invalid = first_kind == Source::kInvalid || second_kind == Source::kInvalid;
  if (!invalid && p.vectorized) {
    const int vecs = p.channels * static_cast<int>(sizeof(T)) / 16;
    if (second_kind == Source::kZero) {  // a plain copy (video rows), or zeros (text padding)
#pragma unroll 4
      for (int i = lane; i < vecs; i += 32) {
        reinterpret_cast<uint4*>(dst)[i] =
            first_kind == Source::kRow ? __ldg(reinterpret_cast<const uint4*>(first) + i) : make_uint4(0, 0, 0, 0);
      }
      return;
    }
    for (int i = lane; i < vecs; i += 32) {
      const uint4 a = first_kind == Source::kRow ? __ldg(reinterpret_cast<const uint4*>(first) + i)
                                                 : make_uint4(0, 0, 0, 0);
      const uint4 c = __ldg(reinterpret_cast<const uint4*>(second) + i);
      uint4 sum;
      const T* ea = reinterpret_cast<const T*>(&a);
      const T* ec = reinterpret_cast<const T*>(&c);
      T* es = reinterpret_cast<T*>(&sum);
#pragma unroll
      for (int e = 0; e < kPerVec; ++e) es[e] = from_float<T>(to_float(ea[e]) + to_float(ec[e]));
      reinterpret_cast<uint4*>(dst)[i] = sum;
    }
    return;
  }
  for (int ch = lane; ch < p.channels; ch += 32) {
    float v = invalid ? NAN : 0.f;
    if (first_kind == Source::kRow) v += to_float(first[ch]);
    if (second_kind == Source::kRow) v += to_float(second[ch]);
    dst[ch] = from_float<T>(v);
  }
}

}  // namespace recompose_detail

template <typename T>
cudaError_t launch_recompose_gather(const GatherParams& params, cudaStream_t stream) {
  using namespace recompose_detail;
  const int64_t rows = static_cast<int64_t>(params.batch) * params.seq_len;
  recompose_gather_kernel<T><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_recompose_scatter(const ScatterParams& params, cudaStream_t stream) {
  using namespace recompose_detail;
  const int64_t rows = static_cast<int64_t>(params.batch) * (params.text_len + params.video_len);
  recompose_scatter_kernel<T><<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace m4v
