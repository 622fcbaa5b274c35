// Bindings of the correlation kernels (csrc/cpu/corr_*.cpp, csrc/cuda/corr_*.cu).
#include <pybind11/pybind11.h>
namespace py = pybind11;

void df_bind_correlation(py::module_& m) { (void)m; }
