// Column statistics of a loss matrix X [K, N] (float32 or float64, any strides), in float64:
//   mean[j] = X[:, j].mean(),  m2[j] = ((X[:, j] - mean[j])**2).sum()
// Two passes over each column block (exact centring, no catastrophic cancellation when
// sigma/mean is tiny). Also finds the first non-finite entry, ordered by (example j, model k).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"
#ifdef DF_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace {
constexpr int64_t kBlock = 256;  // columns per block: 2 KiB of float64 accumulators stay in L1

template <typename T>
int64_t colstats(const df::View2D<T>& x, double* mean, double* m2) {
  const int64_t K = x.rows, N = x.cols;
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first_bad)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kBlock, j1 = std::min(N, j0 + kBlock), nb = j1 - j0;
    double s[kBlock];
    for (int64_t j = 0; j < nb; ++j) s[j] = 0.0;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < nb; ++j) s[j] += static_cast<double>(x.at(k, j0 + j));
    for (int64_t j = 0; j < nb; ++j) {
      if (!std::isfinite(s[j])) {  // rare path: locate the first bad entry of this column
        for (int64_t k = 0; k < K; ++k)
          if (!std::isfinite(static_cast<double>(x.at(k, j0 + j)))) {
            first_bad = std::min(first_bad, (j0 + j) * K + k);
            break;
          }
      }
      mean[j0 + j] = K > 0 ? s[j] / static_cast<double>(K) : std::nan("");
      s[j] = 0.0;
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < nb; ++j) {
        const double d = static_cast<double>(x.at(k, j0 + j)) - mean[j0 + j];
        s[j] += d * d;
      }
    for (int64_t j = 0; j < nb; ++j) m2[j0 + j] = s[j];
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

template <typename T>
int64_t run(const py::array& x, py::array& mean, py::array& m2) {
  auto v = df::view2d<T>(x, "x");
  double* pm = df::mutable_1d<double>(mean, v.cols, "mean");
  double* pm2 = df::mutable_1d<double>(m2, v.cols, "m2");
  py::gil_scoped_release release;
  return colstats<T>(v, pm, pm2);
}
}  // namespace

void df_bind_colstats(py::module_& m) {
  m.def(
      "colstats",
      [](const py::array& x, py::array& mean, py::array& m2) -> int64_t {
        if (x.dtype().is(py::dtype::of<float>())) return run<float>(x, mean, m2);
        if (x.dtype().is(py::dtype::of<double>())) return run<double>(x, mean, m2);
        throw py::type_error("colstats: x must be float32 or float64, got " + std::string(py::str(x.dtype())));
      },
      py::arg("x"), py::arg("mean"), py::arg("m2"),
      "colstats(x [K,N] f32|f64, mean [N] f64 out, m2 [N] f64 out) -> first non-finite flat index j*K+k, or -1.\n"
      "mean = x.mean(0); m2 = ((x - mean)**2).sum(0), computed in float64 with two passes.");
#ifdef DF_WITH_CUDA
  m.def(
      "colstats_cuda",
      [](uintptr_t x, int64_t K, int64_t N, int64_t ld, uintptr_t mean, uintptr_t m2, uintptr_t first_bad,
         uintptr_t stream) {
        int err = df_colstats_f32_cuda(reinterpret_cast<const float*>(x), K, N, ld, reinterpret_cast<double*>(mean),
                                       reinterpret_cast<double*>(m2),
                                       reinterpret_cast<unsigned long long*>(first_bad),
                                       reinterpret_cast<void*>(stream));
        if (err != 0) throw std::runtime_error("colstats_cuda: CUDA error " + std::to_string(err) + " (" + df_cuda_error_string(err) + ")");
      },
      py::arg("x"), py::arg("K"), py::arg("N"), py::arg("ld"), py::arg("mean"), py::arg("m2"), py::arg("first_bad"),
      py::arg("stream"),
      "Device pointers: x float32 [K,N] with row stride ld (elements); mean, m2 float64 [N]; first_bad a uint64\n"
      "that the caller sets to all ones before the call (atomicMin of j*K+k over non-finite entries).");
#endif
}
