// Instantiation for __half; one file per dtype so the build compiles them in parallel.
#include "causal_conv1d.cuh"

namespace m4v {
template cudaError_t launch_causal_conv1d_fwd<__half>(const ConvParams&, cudaStream_t);
template cudaError_t launch_causal_conv1d_bwd<__half>(const ConvBwdParams&, cudaStream_t);
}  // namespace m4v
