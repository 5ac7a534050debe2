// Parameters shared by the causal-conv1d launcher (.cpp, sees torch) and its kernels (.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace m4v {

// Widths the kernels are instantiated for (mamba's d_conv is 4; 2 and 3 are common too).
constexpr int kConvMaxWidth = 4;
// Time steps one thread walks: a tile of the output (forward), of dx and dweight (backward).
constexpr int kConvFwdTile = 32;
constexpr int kConvBwdTile = 64;

// x is (batch, seqlen, channels) with unit channel stride (e.g. one half of a fused projection's
// output); out, dout and dx are contiguous; weight (channels, width) and bias (channels,) are
// contiguous in x's dtype.
struct ConvParams {
  int batch = 0, seqlen = 0, channels = 0, width = 0, num_seqs = 0;
  int64_t x_batch_stride = 0, x_row_stride = 0;  // in elements
  bool silu = false;
  bool vectorized = false;  // channels and pointers allow each thread a whole aligned vector
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;        // or null
  const int* cu_seqlens = nullptr;   // (num_seqs + 1,) or null
  void* out = nullptr;
};

struct ConvBwdParams : ConvParams {
  const void* dout = nullptr;
  void* dx = nullptr;
  // Per (batch row, time tile) partial sums, reduced by the launcher in a fixed order.
  float* dweight_partial = nullptr;  // (batch * tiles, width, channels)
  float* dbias_partial = nullptr;    // (batch * tiles, channels), or null without a bias
};

// Implemented once per dtype (causal_conv1d_<dtype>.cu). Each returns the launch error.
template <typename T>
cudaError_t launch_causal_conv1d_fwd(const ConvParams& params, cudaStream_t stream);
template <typename T>
cudaError_t launch_causal_conv1d_bwd(const ConvBwdParams& params, cudaStream_t stream);

// Vector widths (channels per thread) of the vectorized kernels: 16-byte loads forward, and
// 4 channels backward (which keeps two windows and the weight-gradient sums in registers).
template <typename T>
constexpr int conv_fwd_vec() { return 16 / static_cast<int>(sizeof(T)); }
constexpr int kConvBwdVec = 4;

}  // namespace m4v
