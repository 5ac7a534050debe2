// Instantiation for float inputs; one file per dtype so the build compiles them in parallel.
#include "selective_scan.cuh"

namespace m4v {
template cudaError_t launch_selective_scan_fwd<float>(const ScanParams&, cudaStream_t);
template cudaError_t launch_selective_scan_bwd<float>(const ScanBwdParams&, cudaStream_t);
template cudaError_t selective_scan_bwd_ctas_per_sm<float>(int, int*, int*);
}  // namespace m4v
