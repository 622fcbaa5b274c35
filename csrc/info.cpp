// build_info(): what this extension was compiled with. No CUDA call is made here.
#include <pybind11/pybind11.h>

#include <string>
#ifdef DF_WITH_OPENMP
#include <omp.h>
#endif
namespace py = pybind11;

namespace {
py::dict build_info() {
  py::dict d;
#ifdef DF_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(DF_CUDA_ARCHS);
  d["cuda_version"] = std::string(DF_CUDA_VERSION);
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string("");
  d["cuda_version"] = std::string("");
#endif
#ifdef DF_WITH_OPENMP
  d["openmp"] = true;
  d["omp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["omp_max_threads"] = 1;
#endif
  d["compiler"] = std::string(DF_COMPILER);
  return d;
}
}  // namespace

void df_bind_info(py::module_& m) {
  m.def("build_info", &build_info,
        "Dict of build facts: cuda (bool), cuda_archs, cuda_version, openmp, omp_max_threads, compiler.");
}
