// Instantiation for __nv_bfloat16 rows; one file per dtype so the build compiles them in parallel.
#include "recompose.cuh"

namespace m4v {
template cudaError_t launch_recompose_gather<__nv_bfloat16>(const GatherParams&, cudaStream_t);
template cudaError_t launch_recompose_scatter<__nv_bfloat16>(const ScatterParams&, cudaStream_t);
}  // namespace m4v
