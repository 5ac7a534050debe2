// Causal-conv1d launcher: argument checks, output allocation, dtype dispatch, the fixed-order
// reduction of the weight-gradient partials, and the CUDA registrations of
// m4v::causal_conv1d_{fwd,bwd}_cuda. The public op and its autograd live in m4v/kernels/conv1d.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "causal_conv1d.h"
#include "launch_utils.h"

namespace m4v {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

bool aligned(const Tensor& t, int64_t bytes) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0; }

// Checks the inputs shared by both directions and fills `p`; returns contiguous copies to keep.
std::vector<Tensor> fill_params(ConvParams& p, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                                const OptTensor& cu_seqlens, bool silu) {
  TORCH_CHECK(x.is_cuda(), "causal_conv1d: x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 3, "causal_conv1d: x must be (batch, seqlen, channels), got ", shape_str(x.sizes()));
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "causal_conv1d: x must be float32, float16 or bfloat16, got ", dtype);
  const int64_t batch = x.size(0), seqlen = x.size(1), channels = x.size(2);
  TORCH_CHECK(batch > 0 && seqlen > 0 && channels > 0, "causal_conv1d: x must not be empty, got ",
              shape_str(x.sizes()));
  TORCH_CHECK(batch <= 65535 && seqlen < std::numeric_limits<int>::max() / 2 &&
                  channels < std::numeric_limits<int>::max() / 2,
              "causal_conv1d: x ", shape_str(x.sizes()), " is too large for one launch");
  TORCH_CHECK(weight.is_cuda() && weight.device() == x.device(), "causal_conv1d: weight must be on ", x.device());
  TORCH_CHECK(weight.scalar_type() == dtype, "causal_conv1d: weight must have x's dtype ", dtype, ", got ",
              weight.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == channels && weight.size(1) >= 1 &&
                  weight.size(1) <= kConvMaxWidth,
              "causal_conv1d: weight must be (channels=", num(channels), ", width) with width in [1, ",
              num(kConvMaxWidth), "], got ", shape_str(weight.sizes()));
  // A unit channel stride is all the kernels need; anything else is copied.
  std::vector<Tensor> keep{x.stride(2) == 1 ? x : x.contiguous(), weight.contiguous()};
  p.x = keep[0].data_ptr();
  p.x_batch_stride = keep[0].stride(0);
  p.x_row_stride = keep[0].stride(1);
  p.weight = keep[1].data_ptr();
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->device() == x.device(), "causal_conv1d: bias must be on ", x.device());
    TORCH_CHECK(bias->scalar_type() == dtype, "causal_conv1d: bias must have x's dtype ", dtype, ", got ",
                bias->scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == channels, "causal_conv1d: bias must be (", num(channels),
                ",), got ", shape_str(bias->sizes()));
    keep.push_back(bias->contiguous());
    p.bias = keep.back().data_ptr();
  }
  p.num_seqs = 1;
  if (cu_seqlens.has_value()) {
    const Tensor& cu = *cu_seqlens;
    TORCH_CHECK(cu.is_cuda() && cu.device() == x.device(), "causal_conv1d: cu_seqlens must be on ", x.device());
    TORCH_CHECK(cu.scalar_type() == at::kInt, "causal_conv1d: cu_seqlens must be int32, got ", cu.scalar_type());
    TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 2, "causal_conv1d: cu_seqlens must be (num_seqs + 1,), got ",
                shape_str(cu.sizes()));
    TORCH_CHECK(batch == 1, "causal_conv1d: cu_seqlens needs batch 1, got ", num(batch));
    keep.push_back(cu.contiguous());
    p.cu_seqlens = keep.back().data_ptr<int>();
    p.num_seqs = static_cast<int>(cu.size(0) - 1);
  }
  p.batch = static_cast<int>(batch);
  p.seqlen = static_cast<int>(seqlen);
  p.channels = static_cast<int>(channels);
  p.width = static_cast<int>(weight.size(1));
  p.silu = silu;
  return keep;
}

Tensor causal_conv1d_fwd_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias,
                              const OptTensor& cu_seqlens, bool silu) {
  TORCH_CHECK(x.is_cuda(), "causal_conv1d: x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  ConvParams p;
  auto keep = fill_params(p, x, weight, bias, cu_seqlens, silu);
  Tensor out = new_output(x.sizes(), x.options());
  p.out = out.data_ptr();
  const int64_t vec = 16 / x.element_size();
  p.vectorized = x.size(2) % vec == 0 && p.x_row_stride % vec == 0 && p.x_batch_stride % vec == 0 &&
                 aligned(keep[0], 16) && aligned(out, 16);
  const cudaError_t err = dispatch_dtype(x.scalar_type(), [&](auto tag) {
    return launch_causal_conv1d_fwd<decltype(tag)>(p, c10::cuda::getCurrentCUDAStream());
  });
  TORCH_CHECK(err == cudaSuccess, "causal_conv1d forward launch failed: ", cudaGetErrorString(err));
  return out;
}

// Returns (dx in x's dtype, dweight (channels, width) float32, dbias (channels,) float32 or empty).
std::tuple<Tensor, Tensor, Tensor> causal_conv1d_bwd_cuda(const Tensor& dout, const Tensor& x, const Tensor& weight,
                                                          const OptTensor& bias, const OptTensor& cu_seqlens,
                                                          bool silu) {
  TORCH_CHECK(x.is_cuda(), "causal_conv1d: x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  ConvBwdParams p;
  auto keep = fill_params(p, x, weight, bias, cu_seqlens, silu);
  TORCH_CHECK(dout.is_cuda() && dout.device() == x.device(), "causal_conv1d: dout must be on ", x.device());
  TORCH_CHECK(dout.scalar_type() == x.scalar_type(), "causal_conv1d: dout must have x's dtype ", x.scalar_type(),
              ", got ", dout.scalar_type());
  TORCH_CHECK(dout.sizes() == x.sizes(), "causal_conv1d: dout must have x's shape ", shape_str(x.sizes()), ", got ",
              shape_str(dout.sizes()));
  keep.push_back(dout.contiguous());
  p.dout = keep.back().data_ptr();
  Tensor dx = new_output(x.sizes(), x.options());
  p.dx = dx.data_ptr();
  const int64_t slots = x.size(0) * ceil_div(x.size(1), kConvBwdTile);
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor dweight_partial = new_output({slots, p.width, x.size(2)}, f32);
  Tensor dbias_partial = bias.has_value() ? new_output({slots, x.size(2)}, f32) : at::empty({0}, f32);
  p.dweight_partial = dweight_partial.data_ptr<float>();
  p.dbias_partial = bias.has_value() ? dbias_partial.data_ptr<float>() : nullptr;
  const int64_t vec_bytes = kConvBwdVec * x.element_size();
  p.vectorized = x.size(2) % kConvBwdVec == 0 && p.x_row_stride % kConvBwdVec == 0 &&
                 p.x_batch_stride % kConvBwdVec == 0 && aligned(keep[0], vec_bytes) &&
                 aligned(keep.back(), vec_bytes) && aligned(dx, vec_bytes);
  const cudaError_t err = dispatch_dtype(x.scalar_type(), [&](auto tag) {
    return launch_causal_conv1d_bwd<decltype(tag)>(p, c10::cuda::getCurrentCUDAStream());
  });
  TORCH_CHECK(err == cudaSuccess, "causal_conv1d backward launch failed: ", cudaGetErrorString(err));
  Tensor dweight = dweight_partial.sum(0).t().contiguous();
  Tensor dbias = bias.has_value() ? dbias_partial.sum(0) : dbias_partial;
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(m4v, CUDA, m) {
  m.impl("causal_conv1d_fwd_cuda", &causal_conv1d_fwd_cuda);
  m.impl("causal_conv1d_bwd_cuda", &causal_conv1d_bwd_cuda);
}

}  // namespace m4v
