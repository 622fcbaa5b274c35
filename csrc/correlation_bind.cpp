// Bindings of the correlation kernels (csrc/cpu/corr_*.cpp, csrc/cuda/corr_*.cu). The CPU kernel
// files register their own functions; the CUDA ones take raw device pointers and a stream handle
// (from torch tensors' data_ptr() and torch.cuda.current_stream().cuda_stream).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#ifdef DF_WITH_CUDA
#include "cuda/corr_launchers.h"
#include "cuda/launchers.h"
#endif
namespace py = pybind11;

void df_bind_corr_standardise(py::module_& m);  // csrc/cpu/corr_standardise.cpp
void df_bind_corr_select(py::module_& m);       // csrc/cpu/corr_select.cpp
void df_bind_corr_fused(py::module_& m);        // csrc/cpu/corr_select.cpp (product + selection per thread)

void df_bind_correlation(py::module_& m) {
  df_bind_corr_standardise(m);
  df_bind_corr_select(m);
  df_bind_corr_fused(m);
#ifdef DF_WITH_CUDA
  m.def(
      "corr_tile_cuda",
      [](uintptr_t za, int64_t lda, uintptr_t zb, int64_t ldb, int64_t n, int64_t M, int64_t K, uintptr_t out,
         int64_t ldo, bool clip, int precision, uintptr_t stream) {
        int err;
        {
          py::gil_scoped_release release;
          err = df_corr_tile_cuda(reinterpret_cast<const float*>(za), lda, reinterpret_cast<const float*>(zb), ldb, n,
                                  M, K, reinterpret_cast<float*>(out), ldo, clip ? 1 : 0, precision,
                                  reinterpret_cast<void*>(stream));
        }
        if (err != 0) throw std::runtime_error("corr_tile_cuda: CUDA error " + std::to_string(err) + " (" + df_cuda_error_string(err) + ")");
      },
      py::arg("za"), py::arg("lda"), py::arg("zb"), py::arg("ldb"), py::arg("n"), py::arg("M"), py::arg("K"),
      py::arg("out"), py::arg("ldo"), py::arg("clip"), py::arg("precision"), py::arg("stream"),
      "Device pointers: za f32 [K, n] (row stride lda), zb f32 [K, M] (ldb), out f32 [n, M] (ldo).\n"
      "out = za.T @ zb (clipped to [-1, 1] if clip); precision 0 fp32, 1 tf32, 2 bf16.");
  m.def(
      "corr_filter_cuda",
      [](uintptr_t za, int64_t lda, uintptr_t zb, int64_t ldb, int64_t n, int64_t M, int64_t K, uintptr_t thr,
         uintptr_t cnt, uintptr_t cand_v, uintptr_t cand_i, int64_t C, int64_t row0, int precision, uintptr_t stream) {
        int err;
        {
          py::gil_scoped_release release;
          err = df_corr_filter_cuda(reinterpret_cast<const float*>(za), lda, reinterpret_cast<const float*>(zb), ldb,
                                    n, M, K, reinterpret_cast<const float*>(thr), reinterpret_cast<int*>(cnt),
                                    reinterpret_cast<float*>(cand_v), reinterpret_cast<int64_t*>(cand_i), C, row0,
                                    precision, reinterpret_cast<void*>(stream));
        }
        if (err != 0) throw std::runtime_error("corr_filter_cuda: CUDA error " + std::to_string(err) + " (" + df_cuda_error_string(err) + ")");
      },
      py::arg("za"), py::arg("lda"), py::arg("zb"), py::arg("ldb"), py::arg("n"), py::arg("M"), py::arg("K"),
      py::arg("thr"), py::arg("cnt"), py::arg("cand_v"), py::arg("cand_i"), py::arg("C"), py::arg("row0"),
      py::arg("precision"), py::arg("stream"),
      "Fused product + threshold filter: every S[i, j] > thr[j] (f32 [M]) is appended to column j's buffer\n"
      "(cand_v f32 [M, C], cand_i i64 [M, C]) at slot atomicAdd(cnt[j], 1) (i32 [M]) while slot < C.");
#endif
}
