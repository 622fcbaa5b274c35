// pybind11 module daunce_fast._C. Each area registers its functions from its own file so
// that kernels live one op per file pair (kernel, launcher/binding).
#include <pybind11/pybind11.h>
namespace py = pybind11;

void df_bind_info(py::module_& m);          // csrc/info.cpp
void df_bind_colstats(py::module_& m);      // csrc/cpu/colstats.cpp (+ csrc/cuda/colstats.cu)
void df_bind_correlation(py::module_& m);   // csrc/correlation_bind.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "daunce_fast compiled kernels (CPU always, CUDA when built with nvcc). Takes numpy buffers or raw device pointers.";
  df_bind_info(m);
  df_bind_colstats(m);
  df_bind_correlation(m);
}
