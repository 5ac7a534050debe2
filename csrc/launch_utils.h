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
