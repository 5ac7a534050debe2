// Parameters shared by the re-composition launcher (.cpp, sees torch) and its kernels (.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace m4v {

// All row tensors are contiguous (batch, rows, channels). An index of -1 reads a zero row.
struct RecomposeParams {
  int batch = 0, text_len = 0, video_len = 0, num_registers = 0, seq_len = 0, channels = 0;
  bool vectorized = false;  // every row is a whole number of aligned 16-byte vectors
};

// seq[b, s] = row index[b, s] of [text[b]; video[b]; registers] (or zeros).
struct GatherParams : RecomposeParams {
  const void* text = nullptr;
  const void* video = nullptr;
  const void* registers = nullptr;
  const int* index = nullptr;  // (batch, seq_len)
  void* seq = nullptr;
};

// [text_out[b]; video_out[b]][j] = seq[b, index[b, j, 0]] + seq[b, index[b, j, 1]], summed in fp32.
struct ScatterParams : RecomposeParams {
  const void* seq = nullptr;
  const int* index = nullptr;  // (batch, text_len + video_len, 2)
  void* text_out = nullptr;
  void* video_out = nullptr;
};

// Implemented once per dtype (recompose_<dtype>.cu). Each returns the launch error.
template <typename T>
cudaError_t launch_recompose_gather(const GatherParams& params, cudaStream_t stream);
template <typename T>
cudaError_t launch_recompose_scatter(const ScatterParams& params, cudaStream_t stream);

}  // namespace m4v
