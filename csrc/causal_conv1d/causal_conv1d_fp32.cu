// Instantiation for float; one file per dtype so the build compiles them in parallel.
#include "causal_conv1d.cuh"

namespace m4v {
template cudaError_t launch_causal_conv1d_fwd<float>(const ConvParams&, cudaStream_t);
template cudaError_t launch_causal_conv1d_bwd<float>(const ConvBwdParams&, cudaStream_t);
}  // namespace m4v
