// Host-side helpers shared by the op launchers (.cpp files that see torch; never the .cu files).
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <limits>
#include <string>

namespace m4v {

// Messages format numbers with std::to_string rather than std::ostream: on the H100 image an
// ostream numeric insert compiled from g++ 13 headers crashed inside the libstdc++ that Python had
// loaded, turning every failed check into a segfault.
inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + num(shape[i]);
  return s + "]";
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// An output buffer. With M4V_POISON_OUTPUTS=1 (tests) it starts as NaN, so any element a kernel
// fails to write shows up. Read on every call, so a test can switch it on for itself.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const char* flag = std::getenv("M4V_POISON_OUTPUTS");
  const bool poison = flag != nullptr && std::string(flag) == "1";
  return poison ? at::full(sizes, std::numeric_limits<float>::quiet_NaN(), options) : at::empty(sizes, options);
}

// A (batch, dim, seqlen) output whose rows are padded to a multiple of 16 bytes (a view of the
// first seqlen columns). Every row then starts 16-byte aligned, so kernels use vector stores and
// loads on all rows, and the transposed view (batch, seqlen, dim) is a GEMM operand with an aligned
// leading dimension (an odd seqlen otherwise sends cuBLAS to its slow align-1 kernels).
// m4v/kernels/_backend.py:new_row_output builds the same layout for the fake kernels.
inline at::Tensor new_row_output(int64_t batch, int64_t dim, int64_t seqlen, const at::TensorOptions& options) {
  const int64_t per_16_bytes = 16 / static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  const int64_t padded = ceil_div(seqlen, per_16_bytes) * per_16_bytes;
  return new_output({batch, dim, padded}, options).narrow(2, 0, seqlen);
}

// A (batch, dim, seqlen) view of a token-major (batch, seqlen, dim) buffer: the scan's output when
// its input u is token-major, so that a following projection reads it without a transpose.
// m4v/kernels/_backend.py:new_scan_output builds the same layout for the fake kernels.
inline at::Tensor new_token_major_output(int64_t batch, int64_t dim, int64_t seqlen,
                                         const at::TensorOptions& options) {
  return new_output({batch, seqlen, dim}, options).transpose(1, 2);
}

// Calls fn with a value of the CUDA element type of `dtype` (float32, float16 or bfloat16).
template <typename Fn>
cudaError_t dispatch_dtype(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn(float{});
    case at::kHalf: return fn(__half{});
    default: return fn(__nv_bfloat16{});
  }
}

}  // namespace m4v
