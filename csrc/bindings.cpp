// pybind11 module daunce_fast._C. Each area binds its functions from its own file (thin wrappers
// and m.def lines only); the kernels live in csrc/cpu/ and csrc/cuda/ (map: csrc/README.md).
#include <pybind11/pybind11.h>
namespace py = pybind11;

void df_bind_info(py::module_& m);         // csrc/info.cpp
void df_bind_correlation(py::module_& m);  // csrc/correlation_bind.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "daunce_fast compiled kernels (CPU always, CUDA when built with nvcc). Takes numpy buffers or raw device pointers.";
  df_bind_info(m);
  df_bind_correlation(m);
}
