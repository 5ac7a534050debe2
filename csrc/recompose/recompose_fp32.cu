// Instantiation for float rows; one file per dtype so the build compiles them in parallel.
#include "recompose.cuh"

namespace m4v {
template cudaError_t launch_recompose_gather<float>(const GatherParams&, cudaStream_t);
template cudaError_t launch_recompose_scatter<float>(const ScatterParams&, cudaStream_t);
}  // namespace m4v
