// The m4v operator library: every schema the extension implements, in one place.
//
// These are the CUDA back ends. The public ops (m4v::selective_scan_fwd / _bwd, m4v::causal_conv1d,
// m4v::recompose, m4v::inverse_recompose) are defined in Python with a `backend` argument, fake
// implementations and autograd, and call these when the CUDA backend is selected.
// selective_scan_bwd_paths reports which vector paths the CUDA backward takes for given layouts
// (for the tests; it looks at strides only, on any device).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import m4v._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(m4v, m) {
  m.def(
      "selective_scan_fwd_cuda(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, Tensor? initial_state, Tensor? cu_seqlens, bool delta_softplus, bool reverse, "
      "bool save_checkpoints) -> (Tensor out, Tensor last_state, Tensor checkpoints, Tensor out_pre)");
  m.def(
      "selective_scan_bwd_cuda(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor? cu_seqlens, "
      "Tensor checkpoints, Tensor out_pre, bool delta_softplus, bool reverse) -> Tensor[]");
  m.def("selective_scan_bwd_paths(Tensor u, Tensor delta, Tensor dout, Tensor? z, Tensor out_pre, int groups, "
        "int dstate) -> int[]");
  m.def("causal_conv1d_fwd_cuda(Tensor x, Tensor weight, Tensor? bias, Tensor? cu_seqlens, bool silu) -> Tensor");
  m.def(
      "causal_conv1d_bwd_cuda(Tensor dout, Tensor x, Tensor weight, Tensor? bias, Tensor? cu_seqlens, bool silu) "
      "-> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("recompose_cuda(Tensor text, Tensor video, Tensor registers, Tensor gather_index) -> Tensor");
  m.def("inverse_recompose_cuda(Tensor seq, Tensor scatter_index, int text_len) -> (Tensor, Tensor)");
}
