// Parameters shared by the selective-scan launcher (.cpp, sees torch) and the kernels (.cu, see
// only this header). Keeping torch out of the .cu files keeps nvcc fast on small machines.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace m4v {

// In the backward one warp owns one channel of one sequence and each lane holds kScanItems
// consecutive time steps, so one warp pass covers kScanChunk steps (the forward covers a chunk with
// half a warp, 16 steps per lane). The forward saves the state entering every chunk so
// that the backward can recompute any chunk independently.
constexpr int kScanItems = 8;
constexpr int kScanChunk = 32 * kScanItems;
// A packed (varlen) sequence's chunk grid starts at the multiple of kSeqAlign steps at or below its
// first step (16 bytes of 16-bit data), so its chunks are as aligned as the tensor's rows; the lead
// steps before its first one are masked. Mirrored by SEQ_ALIGN in m4v/kernels/selective_scan.py.
constexpr int kSeqAlign = 8;
constexpr int kScanMaxDstate = 256;
// Warps per backward CTA (each takes its own channels).
constexpr int kScanBwdWarps = 8;
// Up to this dstate the backward keeps a chunk's B and C, and its dB/dC sums, in shared memory.
constexpr int kScanBwdStagedMaxDstate = 32;

enum class ScanDtype { kFloat32, kFloat16, kBFloat16 };

// A (batch, dim, seqlen) tensor seen through its strides (in elements).
struct RowTensor {
  void* ptr = nullptr;
  int64_t batch_stride = 0, dim_stride = 0, len_stride = 0;
};

// A (batch, groups, dstate, seqlen) tensor seen through its strides (in elements).
struct StateTensor {
  const void* ptr = nullptr;
  int64_t batch_stride = 0, group_stride = 0, state_stride = 0, len_stride = 0;
};

struct ScanParams {
  // Sizes. `num_seqs` is the batch, or the number of packed sequences when `cu_seqlens` is set.
  int num_seqs = 0, dim = 0, seqlen = 0, dstate = 0, groups = 0, channels_per_group = 0;
  bool reverse = false, delta_softplus = false;

  // Packed variable-length sequences: cu_seqlens (num_seqs + 1), or nullptr. chunk_offsets
  // (num_seqs + 1) gives each sequence's first global chunk index (its checkpoint rows).
  const int* cu_seqlens = nullptr;
  const int* chunk_offsets = nullptr;
  int chunks_per_seq = 0;  // fixed-length case: ceil(seqlen / kScanChunk)

  RowTensor u, delta, z;  // z.ptr may be null
  StateTensor B, C;
  const float* A = nullptr;  // (dim, dstate), strides below
  int64_t A_dim_stride = 0, A_state_stride = 0;
  const float* D = nullptr;           // (dim,) or null
  const float* delta_bias = nullptr;  // (dim,) or null
  const float* initial_state = nullptr;  // contiguous (num_seqs, dim, dstate) or null

  // Forward outputs. out_pre (y before the z gate) is written only when set: the backward's dz.
  RowTensor out, out_pre;
  // Forward fast paths, chosen by the launcher. rows_token_major: u, delta, z, out and out_pre have
  // unit channel stride, 16-byte aligned rows and whole 8-channel blocks, so a CTA moves each time
  // step's 8 channels with one vector and transposes through shared memory. states_token_major: B
  // and C have unit state stride, aligned rows and dstate % 16 == 0 (16 states per vector load);
  // used together with rows_token_major only.
  bool rows_token_major = false, states_token_major = false;
  float* last_state = nullptr;   // contiguous (num_seqs, dim, dstate)
  float* checkpoints = nullptr;  // (total_chunks, dim, dstate), or null when no backward follows
};

// How a backward pass's grid splits each group's channels: per_group blocks of `channels` channels
// (a multiple of the warp count; the last block may own fewer).
struct ChannelBlocks {
  int per_group = 1;
  int channels = 0;
};

struct ScanBwdParams : ScanParams {
  int total_chunks = 0;          // rows of the checkpoint / partial buffers (an upper bound)
  // The main pass's and the summary pass's channel blocks, each sized for its own CTAs per SM. The
  // main pass's count also sets the dB/dC partial buffers' first dimension.
  ChannelBlocks main_blocks, summary_blocks;

  RowTensor dout;                       // gradient of the gated output
  const float* dlast_state = nullptr;   // contiguous (num_seqs, dim, dstate) or null

  // Gradient outputs, in u's layout (token-major when u is). dz only when z is given.
  RowTensor du, ddelta, dz;
  // du, ddelta and dz have unit channel stride, 16-byte aligned rows and whole 8-channel blocks: the
  // main pass then writes each time step's 8 channels as one vector through shared memory, and
  // computes dz itself (the summary pass does otherwise).
  bool grads_token_major = false;
  // With grads_token_major, 16-bit inputs, dstate <= 32 and u, delta, dout (and z, out_pre)
  // token-major with 16-byte aligned rows: both passes copy a chunk's 8 channels of each input as
  // one vector per time step (cp.async, a round of channels ahead) and stage them through shared
  // memory, instead of 2-byte loads from 8 rows; the main pass then writes dz at that point, since
  // it needs nothing from the scan.
  bool inputs_token_major = false;
  float* dinitial_state = nullptr;  // (num_seqs, dim, dstate)
  // Per-chunk partial sums, reduced over chunks by the launcher in a fixed order.
  float* dA_partial = nullptr;          // (total_chunks, dim, dstate)
  float* dD_partial = nullptr;          // (total_chunks, dim)
  float* ddelta_bias_partial = nullptr; // (total_chunks, dim)
  // dB and dC summed over the channels of one channel block:
  // (main_blocks.per_group, batch, groups, dstate, seqlen), reduced over blocks by the launcher.
  float* dB_partial = nullptr;
  float* dC_partial = nullptr;
  // Scratch written by the chunk-summary pass: per (chunk, channel, state), the product of the
  // chunk's decays and its adjoint contribution; then, per chunk, the adjoint entering from the
  // right (in scan order).
  float* chunk_decay = nullptr;
  float* chunk_adjoint = nullptr;
  float* adjoint_carry = nullptr;
};

// Implemented once per input dtype (selective_scan_<dtype>.cu). Each returns the launch error.
template <typename input_t>
cudaError_t launch_selective_scan_fwd(const ScanParams& params, cudaStream_t stream);
template <typename input_t>
cudaError_t launch_selective_scan_bwd(const ScanBwdParams& params, cudaStream_t stream);
// How many CTAs of the backward's main and summary passes fit on one SM at this dstate (for the
// grids' choice).
template <typename input_t>
cudaError_t selective_scan_bwd_ctas_per_sm(int dstate, int* main_ctas, int* summary_ctas);

}  // namespace m4v
