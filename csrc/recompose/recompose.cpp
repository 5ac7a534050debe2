// Re-composition launcher: argument checks, output allocation, dtype dispatch and the CUDA
// registrations of m4v::recompose_cuda and m4v::inverse_recompose_cuda. The index maps come from
// m4v.kernels.recompose.ScanLayout; the public ops and their autograd live in that module.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "launch_utils.h"
#include "recompose.h"

namespace m4v {
namespace {

using at::Tensor;

void check_rows(const Tensor& t, const char* name, const Tensor& ref, int64_t batch, int64_t channels) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), "recompose: ", name, " must be on ", ref.device(),
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "recompose: ", name, " must have dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(2) == channels, "recompose: ", name,
              " must be (batch=", num(batch), ", tokens, channels=", num(channels), "), got ", shape_str(t.sizes()));
}

void check_index(const Tensor& index, const char* name, const Tensor& ref, at::IntArrayRef shape) {
  TORCH_CHECK(index.is_cuda() && index.device() == ref.device(), "recompose: ", name, " must be on ",
              ref.device(), ", got ", index.device());
  TORCH_CHECK(index.scalar_type() == at::kInt, "recompose: ", name, " must be int32, got ", index.scalar_type());
  TORCH_CHECK(index.sizes() == shape, "recompose: ", name, " must have shape ", shape_str(shape), ", got ",
              shape_str(index.sizes()));
}

void check_dtype(const Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, "recompose: ", name,
              " must be float32, float16 or bfloat16, got ", dtype);
}

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

void fill_sizes(RecomposeParams& p, int64_t batch, int64_t text_len, int64_t video_len, int64_t seq_len,
                int64_t channels, int64_t element_size) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TORCH_CHECK(batch > 0 && video_len > 0 && channels > 0, "recompose: batch, video tokens and channels must be "
              "positive, got ", num(batch), ", ", num(video_len), ", ", num(channels));
  TORCH_CHECK(batch * std::max(seq_len, text_len + video_len) < kMax && channels < kMax,
              "recompose: the sequence is too large for one launch");
  p.batch = static_cast<int>(batch);
  p.text_len = static_cast<int>(text_len);
  p.video_len = static_cast<int>(video_len);
  p.seq_len = static_cast<int>(seq_len);
  p.channels = static_cast<int>(channels);
  p.vectorized = (channels * element_size) % 16 == 0;
}

Tensor recompose_cuda(const Tensor& text, const Tensor& video, const Tensor& registers, const Tensor& gather_index) {
  TORCH_CHECK(video.is_cuda(), "recompose: video must be a CUDA tensor, got ", video.device());
  const c10::cuda::CUDAGuard guard(video.device());
  check_dtype(video, "video");
  TORCH_CHECK(video.dim() == 3, "recompose: video must be (batch, tokens, channels), got ", shape_str(video.sizes()));
  const int64_t batch = video.size(0), channels = video.size(2);
  check_rows(text, "text", video, batch, channels);
  TORCH_CHECK(registers.is_cuda() && registers.device() == video.device() &&
                  registers.scalar_type() == video.scalar_type() && registers.dim() == 2 &&
                  registers.size(1) == channels,
              "recompose: registers must be (num_stages, ", num(channels), ") of video's dtype and device, got ",
              shape_str(registers.sizes()), " ", registers.scalar_type());
  TORCH_CHECK(gather_index.dim() == 2, "recompose: gather_index must be (batch, seq_len), got ",
              shape_str(gather_index.sizes()));
  check_index(gather_index, "gather_index", video, {batch, gather_index.size(1)});
  const Tensor text_c = text.contiguous(), video_c = video.contiguous(), registers_c = registers.contiguous();
  const Tensor index_c = gather_index.contiguous();

  GatherParams p;
  fill_sizes(p, batch, text.size(1), video.size(1), gather_index.size(1), channels, video.element_size());
  p.num_registers = static_cast<int>(registers.size(0));
  Tensor seq = new_output({batch, gather_index.size(1), channels}, video.options());
  p.vectorized = p.vectorized && aligned16(text_c) && aligned16(video_c) && aligned16(registers_c) && aligned16(seq);
  p.text = text_c.data_ptr();
  p.video = video_c.data_ptr();
  p.registers = registers_c.data_ptr();
  p.index = index_c.data_ptr<int>();
  p.seq = seq.data_ptr();
  if (seq.numel() == 0) return seq;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = dispatch_dtype(video.scalar_type(), [&](auto tag) {
    return launch_recompose_gather<decltype(tag)>(p, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "recompose launch failed: ", cudaGetErrorString(err));
  return seq;
}

std::tuple<Tensor, Tensor> inverse_recompose_cuda(const Tensor& seq, const Tensor& scatter_index, int64_t text_len) {
  TORCH_CHECK(seq.is_cuda(), "recompose: seq must be a CUDA tensor, got ", seq.device());
  const c10::cuda::CUDAGuard guard(seq.device());
  check_dtype(seq, "seq");
  TORCH_CHECK(seq.dim() == 3, "recompose: seq must be (batch, seq_len, channels), got ", shape_str(seq.sizes()));
  const int64_t batch = seq.size(0), channels = seq.size(2);
  TORCH_CHECK(scatter_index.dim() == 3 && scatter_index.size(2) == 2,
              "recompose: scatter_index must be (batch, text_len + video_len, 2), got ",
              shape_str(scatter_index.sizes()));
  check_index(scatter_index, "scatter_index", seq, {batch, scatter_index.size(1), 2});
  TORCH_CHECK(text_len >= 0 && text_len < scatter_index.size(1), "recompose: text_len must be in [0, ",
              num(scatter_index.size(1)), "), got ", num(text_len));
  const Tensor seq_c = seq.contiguous(), index_c = scatter_index.contiguous();

  ScatterParams p;
  const int64_t video_len = scatter_index.size(1) - text_len;
  fill_sizes(p, batch, text_len, video_len, seq.size(1), channels, seq.element_size());
  Tensor text_out = new_output({batch, text_len, channels}, seq.options());
  Tensor video_out = new_output({batch, video_len, channels}, seq.options());
  p.vectorized = p.vectorized && aligned16(seq_c) && aligned16(text_out) && aligned16(video_out);
  p.seq = seq_c.data_ptr();
  p.index = index_c.data_ptr<int>();
  p.text_out = text_out.data_ptr();
  p.video_out = video_out.data_ptr();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = dispatch_dtype(seq.scalar_type(), [&](auto tag) {
    return launch_recompose_scatter<decltype(tag)>(p, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "inverse_recompose launch failed: ", cudaGetErrorString(err));
  return {text_out, video_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(m4v, CUDA, m) {
  m.impl("recompose_cuda", &recompose_cuda);
  m.impl("inverse_recompose_cuda", &inverse_recompose_cuda);
}

}  // namespace m4v
