// Instantiation for __half inputs; one file per dtype so the build compiles them in parallel.
#include "selective_scan.cuh"

namespace m4v {
template cudaError_t launch_selective_scan_fwd<__half>(const ScanParams&, cudaStream_t);
template cudaError_t launch_selective_scan_bwd<__half>(const ScanBwdParams&, cudaStream_t);
template cudaError_t selective_scan_bwd_ctas_per_sm<__half>(int, int*, int*);
}  // namespace m4v
