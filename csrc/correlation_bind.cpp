// Bindings of the correlation kernels (csrc/cpu/corr_*.cpp, csrc/cuda/corr_*.cu). Each kernel
// file registers its own functions; this file only gathers them.
#include <pybind11/pybind11.h>
namespace py = pybind11;

void df_bind_corr_standardise(py::module_& m);  // csrc/cpu/corr_standardise.cpp
void df_bind_corr_select(py::module_& m);       // csrc/cpu/corr_select.cpp

void df_bind_correlation(py::module_& m) {
  df_bind_corr_standardise(m);
  df_bind_corr_select(m);
}
