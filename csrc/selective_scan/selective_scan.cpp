// Selective-scan launcher: argument checks, buffer allocation, dtype dispatch and the CUDA
// registrations of m4v::selective_scan_{fwd,bwd}_cuda. The public, backend-selecting ops and their
// autograd live in m4v/kernels/selective_scan.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "launch_utils.h"
#include "selective_scan.h"

namespace m4v {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

void check_cuda(const Tensor& t, const char* name, const Tensor& ref) {
  TORCH_CHECK(t.is_cuda(), "selective_scan: ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == ref.device(), "selective_scan: ", name, " is on ", t.device(), " but u is on ",
              ref.device());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, "selective_scan: ", name, " must have shape ", shape_str(shape), ", got ",
              shape_str(t.sizes()));
}

void check_f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "selective_scan: ", name, " must be float32, got ", t.scalar_type());
}

RowTensor row_tensor(const Tensor& t) {
  RowTensor r;
  r.ptr = t.data_ptr();
  r.batch_stride = t.stride(0);
  r.dim_stride = t.stride(1);
  r.len_stride = t.stride(2);
  return r;
}

StateTensor state_tensor(const Tensor& t) {
  StateTensor s;
  s.ptr = t.data_ptr();
  s.batch_stride = t.stride(0);
  s.group_stride = t.stride(1);
  s.state_stride = t.stride(2);
  s.len_stride = t.stride(3);
  return s;
}

// A backward pass's channel blocks per group: the count whose grid (`tiles` chunk-and-group tiles,
// each split into blocks) wastes the least of the last wave of `slots` resident CTAs. A CTA's time
// grows with its channel count, plus a fixed part worth `overhead_channels` channels, so the cost
// is (waves) x (channels per block + overhead); ties go to fewer blocks, which keeps the dB/dC
// partial buffer (one copy per main-pass block) small.
ChannelBlocks pick_channel_blocks(int64_t channels_per_group, int64_t tiles, int64_t slots, int64_t groups,
                                  int64_t overhead_channels) {
  const int64_t max_blocks = std::min<int64_t>({ceil_div(channels_per_group, kScanBwdWarps), 32,
                                                std::max<int64_t>(1, 65535 / groups)});
  int64_t channels = 0, best_cost = 0;
  for (int64_t blocks = 1; blocks <= max_blocks; ++blocks) {
    const int64_t per_block = ceil_div(ceil_div(channels_per_group, blocks), kScanBwdWarps) * kScanBwdWarps;
    const int64_t cost =
        ceil_div(tiles * ceil_div(channels_per_group, per_block), slots) * (per_block + overhead_channels);
    if (channels == 0 || cost < best_cost) {
      channels = per_block;
      best_cost = cost;
    }
  }
  return ChannelBlocks{static_cast<int>(ceil_div(channels_per_group, channels)), static_cast<int>(channels)};
}

// Checks every input and fills the fields shared by the forward and the backward. Returns the
// tensors that must outlive the launch (contiguous copies, chunk offsets).
std::vector<Tensor> fill_common(ScanParams& p, const Tensor& u, const Tensor& delta, const Tensor& A,
                                const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& z,
                                const OptTensor& delta_bias, const OptTensor& initial_state,
                                const OptTensor& cu_seqlens, bool delta_softplus, bool reverse) {
  std::vector<Tensor> keep;
  TORCH_CHECK(u.dim() == 3, "selective_scan: u must be (batch, dim, seqlen), got ", shape_str(u.sizes()));
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "selective_scan: u must be float32, float16 or bfloat16, got ", dtype);
  const int64_t batch = u.size(0), dim = u.size(1), seqlen = u.size(2);
  TORCH_CHECK(batch > 0 && dim > 0 && seqlen > 0, "selective_scan: u must not be empty, got ", shape_str(u.sizes()));
  TORCH_CHECK(seqlen < (int64_t{1} << 31) - kScanChunk, "selective_scan: seqlen ", num(seqlen), " is too long");
  check_cuda(u, "u", u);
  for (auto [t, name] : {std::pair{&delta, "delta"}, std::pair{&B, "B"}, std::pair{&C, "C"}, std::pair{&A, "A"}}) {
    check_cuda(*t, name, u);
  }
  check_shape(delta, "delta", u.sizes());
  TORCH_CHECK(delta.scalar_type() == dtype, "selective_scan: delta must have u's dtype ", dtype, ", got ",
              delta.scalar_type());
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, "selective_scan: A must be (dim, dstate), got ", shape_str(A.sizes()));
  check_f32(A, "A");
  const int64_t dstate = A.size(1);
  TORCH_CHECK(dstate >= 1 && dstate <= kScanMaxDstate, "selective_scan: dstate must be in [1, ",
              num(kScanMaxDstate), "], got ", num(dstate));
  for (auto [t, name] : {std::pair{&B, "B"}, std::pair{&C, "C"}}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == batch && t->size(2) == dstate && t->size(3) == seqlen,
                "selective_scan: ", name, " must be (batch, groups, dstate, seqlen) = (", num(batch), ", G, ",
                num(dstate), ", ", num(seqlen), "), got ", shape_str(t->sizes()));
    TORCH_CHECK(t->scalar_type() == dtype, "selective_scan: ", name, " must have u's dtype ", dtype, ", got ",
                t->scalar_type());
  }
  TORCH_CHECK(B.size(1) == C.size(1), "selective_scan: B and C must have the same number of groups, got ",
              num(B.size(1)), " and ", num(C.size(1)));
  const int64_t groups = B.size(1);
  TORCH_CHECK(groups >= 1 && dim % groups == 0, "selective_scan: dim ", num(dim), " must be divisible by groups ",
              num(groups));
  TORCH_CHECK(groups * ceil_div(dim / groups, 8) <= 65535, "selective_scan: dim ", num(dim), " with ",
              num(groups), " groups is too large for one launch");
  auto vector_arg = [&](const OptTensor& t, const char* name) -> const float* {
    if (!t.has_value()) return nullptr;
    check_cuda(*t, name, u);
    check_f32(*t, name);
    check_shape(*t, name, at::IntArrayRef{dim});
    keep.push_back(t->contiguous());
    return keep.back().data_ptr<float>();
  };
  p.D = vector_arg(D, "D");
  p.delta_bias = vector_arg(delta_bias, "delta_bias");
  if (z.has_value()) {
    check_cuda(*z, "z", u);
    check_shape(*z, "z", u.sizes());
    TORCH_CHECK(z->scalar_type() == dtype, "selective_scan: z must have u's dtype ", dtype, ", got ",
                z->scalar_type());
    p.z = row_tensor(*z);
  }

  int64_t num_seqs = batch;
  if (cu_seqlens.has_value()) {
    const Tensor& cu = *cu_seqlens;
    check_cuda(cu, "cu_seqlens", u);
    TORCH_CHECK(cu.scalar_type() == at::kInt, "selective_scan: cu_seqlens must be int32, got ", cu.scalar_type());
    TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 2, "selective_scan: cu_seqlens must be (num_seqs + 1,), got ",
                shape_str(cu.sizes()));
    TORCH_CHECK(batch == 1, "selective_scan: cu_seqlens needs batch == 1, got batch ", num(batch));
    num_seqs = cu.size(0) - 1;
    Tensor cu_c = cu.contiguous();
    // Each sequence's steps on its chunk grid: its length plus the lead below its first step.
    Tensor firsts = cu_c.slice(0, 0, num_seqs);
    Tensor grid_lens = cu_c.slice(0, 1) - firsts + at::remainder(firsts, kSeqAlign);
    Tensor chunks = at::floor_divide(grid_lens + (kScanChunk - 1), kScanChunk);
    Tensor offsets = at::cat({at::zeros({1}, cu_c.options()), at::cumsum(chunks, 0, at::kInt)});
    keep.push_back(cu_c);
    keep.push_back(offsets);
    p.cu_seqlens = cu_c.data_ptr<int>();
    p.chunk_offsets = offsets.data_ptr<int>();
  }
  if (initial_state.has_value()) {
    check_cuda(*initial_state, "initial_state", u);
    check_f32(*initial_state, "initial_state");
    check_shape(*initial_state, "initial_state", {num_seqs, dim, dstate});
    keep.push_back(initial_state->contiguous());
    p.initial_state = keep.back().data_ptr<float>();
  }

  p.num_seqs = static_cast<int>(num_seqs);
  p.dim = static_cast<int>(dim);
  p.seqlen = static_cast<int>(seqlen);
  p.dstate = static_cast<int>(dstate);
  p.groups = static_cast<int>(groups);
  p.channels_per_group = static_cast<int>(dim / groups);
  p.chunks_per_seq = static_cast<int>(ceil_div(seqlen, kScanChunk));
  p.reverse = reverse;
  p.delta_softplus = delta_softplus;
  p.u = row_tensor(u);
  p.delta = row_tensor(delta);
  p.B = state_tensor(B);
  p.C = state_tensor(C);
  p.A = A.data_ptr<float>();
  p.A_dim_stride = A.stride(0);
  p.A_state_stride = A.stride(1);
  return keep;
}

// Whether the forward's token-major fast path can move t's rows with aligned 16-byte vectors.
bool vector_rows(const Tensor& t) {
  const int64_t elem = t.element_size();
  return t.stride(1) == 1 && (t.stride(2) * elem) % 16 == 0 && (t.stride(0) * elem) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

bool vector_states(const Tensor& t) {
  const int64_t elem = t.element_size();
  return t.stride(2) == 1 && t.size(2) % 16 == 0 && (t.stride(3) * elem) % 16 == 0 &&
         (t.stride(1) * elem) % 16 == 0 && (t.stride(0) * elem) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// Output layout rule (mirrored by the fake kernel): token-major when u is.
bool token_major_input(const Tensor& u) { return u.stride(1) == 1 && u.stride(2) != 1; }

// B or C (batch, groups, dstate, seqlen) for the token-major forward: a time step's states are
// contiguous, but a row stride that is not a multiple of 16 bytes (slices of an x_proj output
// whose width dt_rank + 2 * dstate is not a multiple of 8, e.g. Mamba's dt_rank 90 at d_inner 2880)
// leaves the 16-byte vector path, and the forward then ran 1.8x slower. The aligned copy moves
// dstate * seqlen elements per group (under 1% of the bytes of u, delta and z at dim 2880).
Tensor with_vector_state_rows(const Tensor& t, const Tensor& u) {
  const bool copy_pays = u.dim() == 3 && t.dim() == 4 && token_major_input(u) && t.device() == u.device() &&
                         t.stride(2) == 1 && t.size(2) % 16 == 0 && t.size(3) > 1 && !vector_states(t);
  return copy_pays ? t.transpose(2, 3).contiguous().transpose(2, 3) : t;
}

// A new (batch, dim, seqlen) output or gradient of u's shape in the output rule's layout: a
// token-major gradient then reaches a token-major producer through autograd without a transpose.
Tensor new_scan_tensor(const Tensor& u) {
  return token_major_input(u) ? new_token_major_output(u.size(0), u.size(1), u.size(2), u.options())
                              : new_row_output(u.size(0), u.size(1), u.size(2), u.options());
}

// The backward's vector paths (ScanBwdParams::grads_token_major and inputs_token_major) for these
// tensors' layouts, du, ddelta and dz being the gradients the launcher allocated (new_scan_tensor).
struct BwdPaths {
  bool grads_token_major = false, inputs_token_major = false;
};

BwdPaths choose_bwd_paths(const Tensor& u, const Tensor& delta, const Tensor& dout, const OptTensor& z,
                          const Tensor& out_pre, const Tensor& du, const Tensor& ddelta, const Tensor& dz,
                          int64_t channels_per_group, int64_t dstate) {
  BwdPaths paths;
  paths.grads_token_major = token_major_input(u) && channels_per_group % kScanBwdWarps == 0 && vector_rows(du) &&
                            vector_rows(ddelta) && (!z.has_value() || vector_rows(dz));
  paths.inputs_token_major = paths.grads_token_major && u.element_size() == 2 &&
                             dstate <= kScanBwdStagedMaxDstate && vector_rows(u) && vector_rows(delta) &&
                             vector_rows(dout) && (!z.has_value() || (vector_rows(*z) && vector_rows(out_pre)));
  return paths;
}

// Rows of the checkpoint buffer: a static upper bound, so no host sync is needed for varlen (each
// sequence's grid adds at most kSeqAlign - 1 lead steps and one partial chunk).
int64_t checkpoint_rows(const ScanParams& p) {
  return p.cu_seqlens != nullptr
             ? ceil_div(p.seqlen + static_cast<int64_t>(kSeqAlign - 1) * p.num_seqs, kScanChunk) + p.num_seqs
             : static_cast<int64_t>(p.num_seqs) * p.chunks_per_seq;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> selective_scan_fwd_cuda(const Tensor& u, const Tensor& delta, const Tensor& A,
                                                           const Tensor& B, const Tensor& C, const OptTensor& D,
                                                           const OptTensor& z, const OptTensor& delta_bias,
                                                           const OptTensor& initial_state,
                                                           const OptTensor& cu_seqlens, bool delta_softplus,
                                                           bool reverse, bool save_checkpoints) {
  const c10::cuda::CUDAGuard guard(u.device());
  ScanParams p;
  const Tensor B_rows = with_vector_state_rows(B, u), C_rows = with_vector_state_rows(C, u);
  auto keep = fill_common(p, u, delta, A, B_rows, C_rows, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
                          reverse);
  const bool token_major = token_major_input(u);
  Tensor out = new_scan_tensor(u);
  Tensor last_state = new_output({p.num_seqs, p.dim, p.dstate}, u.options().dtype(at::kFloat));
  Tensor checkpoints = new_output({save_checkpoints ? checkpoint_rows(p) : 0, p.dim, p.dstate},
                                  u.options().dtype(at::kFloat));
  // With a gate, the backward needs y before it: kept when a backward will follow.
  Tensor out_pre = save_checkpoints && z.has_value() ? new_scan_tensor(u) : at::empty({0}, u.options());
  p.out = row_tensor(out);
  if (out_pre.numel() > 0) p.out_pre = row_tensor(out_pre);
  p.rows_token_major = token_major && p.channels_per_group % 8 == 0 && vector_rows(u) && vector_rows(delta) &&
                       (!z.has_value() || vector_rows(*z)) && vector_rows(out) &&
                       (out_pre.numel() == 0 || vector_rows(out_pre));
  p.states_token_major = vector_states(B_rows) && vector_states(C_rows);
  p.last_state = last_state.data_ptr<float>();
  p.checkpoints = save_checkpoints ? checkpoints.data_ptr<float>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = dispatch_dtype(u.scalar_type(), [&](auto tag) {
    return launch_selective_scan_fwd<decltype(tag)>(p, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "selective_scan forward launch failed: ", cudaGetErrorString(err));
  return {out, last_state, checkpoints, out_pre};
}

std::vector<Tensor> selective_scan_bwd_cuda(const Tensor& dout, const OptTensor& dlast_state, const Tensor& u,
                                            const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                                            const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
                                            const OptTensor& initial_state, const OptTensor& cu_seqlens,
                                            const Tensor& checkpoints, const Tensor& out_pre, bool delta_softplus,
                                            bool reverse) {
  const c10::cuda::CUDAGuard guard(u.device());
  ScanBwdParams p;
  auto keep = fill_common(p, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus, reverse);
  check_cuda(dout, "dout", u);
  check_shape(dout, "dout", u.sizes());
  TORCH_CHECK(dout.scalar_type() == u.scalar_type(), "selective_scan: dout must have u's dtype ", u.scalar_type(),
              ", got ", dout.scalar_type());
  const int64_t rows = checkpoint_rows(p);
  check_cuda(checkpoints, "checkpoints", u);
  check_f32(checkpoints, "checkpoints");
  check_shape(checkpoints, "checkpoints", {rows, p.dim, p.dstate});
  TORCH_CHECK(checkpoints.is_contiguous(), "selective_scan: checkpoints must be contiguous");
  if (z.has_value()) {
    check_cuda(out_pre, "out_pre", u);
    check_shape(out_pre, "out_pre", u.sizes());
    TORCH_CHECK(out_pre.scalar_type() == u.scalar_type(), "selective_scan: out_pre must have u's dtype");
    p.out_pre = row_tensor(out_pre);
  }
  if (dlast_state.has_value()) {
    check_cuda(*dlast_state, "dlast_state", u);
    check_f32(*dlast_state, "dlast_state");
    check_shape(*dlast_state, "dlast_state", {p.num_seqs, p.dim, p.dstate});
    keep.push_back(dlast_state->contiguous());
    p.dlast_state = keep.back().data_ptr<float>();
  }

  // Each pass's channel blocks, for its own CTAs per SM: the summary fits more than the main pass.
  // A main-pass CTA carries a fixed cost of about two rounds of channels (its B/C tile loads, and
  // its dB/dC partial's zeroing, write-out and share of the sum after), which favours fewer,
  // longer blocks (the mixer's shape: 30 blocks, 6.9 waves -> 4 blocks, 1 wave: bwd_main 2.25 ->
  // 2.16 ms on the H100). The summary's is small: weighting it the same took it from 19 blocks to 6
  // and 0.419 -> 0.437 ms.
  int num_sms = 0, main_ctas_per_sm = 0, summary_ctas_per_sm = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, u.get_device()) == cudaSuccess,
              "selective_scan: cannot read the multiprocessor count");
  const cudaError_t occupancy_err = dispatch_dtype(u.scalar_type(), [&](auto tag) {
    return selective_scan_bwd_ctas_per_sm<decltype(tag)>(p.dstate, &main_ctas_per_sm, &summary_ctas_per_sm);
  });
  TORCH_CHECK(occupancy_err == cudaSuccess, "selective_scan: backward occupancy query failed: ",
              cudaGetErrorString(occupancy_err));
  const auto blocks_for = [&](int ctas_per_sm, int64_t overhead_channels) {
    const int64_t slots = std::max<int64_t>(1, static_cast<int64_t>(num_sms) * ctas_per_sm);
    return pick_channel_blocks(p.channels_per_group, rows * p.groups, slots, p.groups, overhead_channels);
  };
  p.main_blocks = blocks_for(main_ctas_per_sm, 2 * kScanBwdWarps);
  p.summary_blocks = blocks_for(summary_ctas_per_sm, 0);
  p.total_chunks = static_cast<int>(rows);
  p.checkpoints = checkpoints.data_ptr<float>();
  p.dout = row_tensor(dout);

  const auto f32 = u.options().dtype(at::kFloat);
  Tensor du = new_scan_tensor(u);
  Tensor ddelta = new_scan_tensor(u);
  Tensor dz = z.has_value() ? new_scan_tensor(u) : at::empty({0}, u.options());
  Tensor dinitial_state = new_output({p.num_seqs, p.dim, p.dstate}, f32);
  // Chunk slots past the last real chunk (varlen upper bound) stay zero and drop out of the sums.
  Tensor dA_partial = at::zeros({rows, p.dim, p.dstate}, f32);
  Tensor dD_partial = at::zeros({rows, p.dim}, f32);
  Tensor ddelta_bias_partial = at::zeros({rows, p.dim}, f32);
  const int64_t batch_rows = u.size(0);
  Tensor dB_partial = at::zeros({p.main_blocks.per_group, batch_rows, p.groups, p.dstate, p.seqlen}, f32);
  Tensor dC_partial = at::zeros_like(dB_partial);
  Tensor chunk_decay = new_output({rows, p.dim, p.dstate}, f32);
  Tensor chunk_adjoint = at::empty_like(chunk_decay);
  Tensor adjoint_carry = at::empty_like(chunk_decay);
  p.du = row_tensor(du);
  p.ddelta = row_tensor(ddelta);
  if (z.has_value()) p.dz = row_tensor(dz);
  const BwdPaths paths = choose_bwd_paths(u, delta, dout, z, out_pre, du, ddelta, dz, p.channels_per_group, p.dstate);
  p.grads_token_major = paths.grads_token_major;
  p.inputs_token_major = paths.inputs_token_major;
  p.dinitial_state = dinitial_state.data_ptr<float>();
  p.dA_partial = dA_partial.data_ptr<float>();
  p.dD_partial = dD_partial.data_ptr<float>();
  p.ddelta_bias_partial = ddelta_bias_partial.data_ptr<float>();
  p.dB_partial = dB_partial.data_ptr<float>();
  p.dC_partial = dC_partial.data_ptr<float>();
  p.chunk_decay = chunk_decay.data_ptr<float>();
  p.chunk_adjoint = chunk_adjoint.data_ptr<float>();
  p.adjoint_carry = adjoint_carry.data_ptr<float>();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cudaError_t err = dispatch_dtype(u.scalar_type(), [&](auto tag) {
    return launch_selective_scan_bwd<decltype(tag)>(p, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "selective_scan backward launch failed: ", cudaGetErrorString(err));

  // Fixed-order reductions over chunks and channel blocks (no atomics: bitwise reproducible).
  Tensor dA = dA_partial.sum(0);
  Tensor dD = D.has_value() ? dD_partial.sum(0) : at::empty({0}, f32);
  Tensor ddelta_bias = delta_bias.has_value() ? ddelta_bias_partial.sum(0) : at::empty({0}, f32);
  Tensor dB = p.main_blocks.per_group == 1 ? dB_partial.select(0, 0) : dB_partial.sum(0);
  Tensor dC = p.main_blocks.per_group == 1 ? dC_partial.select(0, 0) : dC_partial.sum(0);
  return {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state};
}

// [grads_token_major, inputs_token_major] as selective_scan_bwd_cuda would choose them for these
// layouts (B and C, A and the rest do not enter): the tests' check that the mixer's layout takes
// the fast paths. Layout only, so it runs on any device.
std::vector<int64_t> selective_scan_bwd_paths(const Tensor& u, const Tensor& delta, const Tensor& dout,
                                              const OptTensor& z, const Tensor& out_pre, int64_t groups,
                                              int64_t dstate) {
  TORCH_CHECK(u.dim() == 3 && groups > 0 && u.size(1) % groups == 0,
              "selective_scan_bwd_paths: u must be (batch, dim, seqlen) with dim divisible by groups");
  const Tensor du = new_scan_tensor(u);
  const Tensor dz = z.has_value() ? new_scan_tensor(u) : at::empty({0}, u.options());
  const BwdPaths paths = choose_bwd_paths(u, delta, dout, z, out_pre, du, du, dz, u.size(1) / groups, dstate);
  return {paths.grads_token_major, paths.inputs_token_major};
}

}  // namespace

TORCH_LIBRARY_IMPL(m4v, CompositeExplicitAutograd, m) {
  m.impl("selective_scan_bwd_paths", &selective_scan_bwd_paths);
}

TORCH_LIBRARY_IMPL(m4v, CUDA, m) {
  m.impl("selective_scan_fwd_cuda", &selective_scan_fwd_cuda);
  m.impl("selective_scan_bwd_cuda", &selective_scan_bwd_cuda);
}

}  // namespace m4v
