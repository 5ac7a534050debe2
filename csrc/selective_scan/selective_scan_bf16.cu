// Instantiation for __nv_bfloat16 inputs; one file per dtype so the build compiles them in parallel.
#include "selective_scan.cuh"

namespace m4v {
template cudaError_t launch_selective_scan_fwd<__nv_bfloat16>(const ScanParams&, cudaStream_t);
template cudaError_t launch_selective_scan_bwd<__nv_bfloat16>(const ScanBwdParams&, cudaStream_t);
template cudaError_t selective_scan_bwd_ctas_per_sm<__nv_bfloat16>(int, int*, int*);
}  // namespace m4v
