// Instantiation for __half rows; one file per dtype so the build compiles them in parallel.
#include "recompose.cuh"

namespace m4v {
template cudaError_t launch_recompose_gather<__half>(const GatherParams&, cudaStream_t);
template cudaError_t launch_recompose_scatter<__half>(const ScatterParams&, cudaStream_t);
}  // namespace m4v
