// Bindings of the correlation op: thin wrappers that check and unpack the arguments, release the
// GIL and call the kernels of csrc/cpu/correlation.h, csrc/cpu/colstats.h (numpy buffers) and
// csrc/cuda/correlation.h (raw device pointers and a stream handle from torch tensors' data_ptr()
// and torch.cuda.current_stream().cuda_stream). Python callers: daunce_fast/correlation/cpu_launch.py,
// daunce_fast/correlation/cuda_launch.py (table in csrc/README.md).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "buffers.h"
#include "cpu/colstats.h"
#include "cpu/correlation.h"
#ifdef DF_WITH_CUDA
#include "cuda/correlation.h"
#endif

namespace py = pybind11;
using df::c_contiguous;
using df::data_of;
using df::is_dtype;
using df::is_u64;

namespace {

// ----------------------------------------------------------------------------- standardisation

template <typename T>
int64_t colstats_as(const py::array& x, py::array& mean, py::array& m2) {
  auto v = df::view2d<T>(x, "x");
  double* pm = df::mutable_1d<double>(mean, v.cols, "mean");
  double* pm2 = df::mutable_1d<double>(m2, v.cols, "m2");
  py::gil_scoped_release release;
  return df::cpu::colstats(v, pm, pm2);
}

int64_t colstats(const py::array& x, py::array& mean, py::array& m2) {
  if (is_dtype<float>(x)) return colstats_as<float>(x, mean, m2);
  if (is_dtype<double>(x)) return colstats_as<double>(x, mean, m2);
  throw py::type_error("colstats: x must be float32 or float64, got " + std::string(py::str(x.dtype())));
}

template <typename Tin, typename Tout>
int64_t standardise_as(const py::array& x, py::array& out, const py::array& mean, const py::array& m2,
                       py::array& cmask, bool pearson, double factor) {
  auto v = df::view2d<Tin>(x, "x");
  if (out.ndim() != 2 || out.shape(0) != v.rows || out.shape(1) != v.cols)
    throw py::value_error("corr_standardise: out must have the shape of x");
  if (!out.writeable()) throw py::value_error("corr_standardise: out must be writeable");
  if (out.strides(0) % sizeof(Tout) || out.strides(1) % sizeof(Tout))
    throw py::value_error("corr_standardise: out strides must be multiples of the item size");
  const int64_t os0 = out.strides(0) / static_cast<int64_t>(sizeof(Tout));
  const int64_t os1 = out.strides(1) / static_cast<int64_t>(sizeof(Tout));
  auto mean_c = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(mean);
  auto m2_c = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(m2);
  if (!mean_c || !m2_c || mean_c.size() != v.cols || m2_c.size() != v.cols)
    throw py::value_error("corr_standardise: mean and m2 must be float64 [N]");
  uint8_t* pm = df::mutable_1d<uint8_t>(cmask, v.cols, "const_mask");
  Tout* po = data_of<Tout>(out);
  py::gil_scoped_release release;
  return df::cpu::corr_standardise<Tin, Tout>(v, mean_c.data(), m2_c.data(), po, os0, os1, pm, pearson, factor);
}

template <typename Tin>
int64_t standardise_into(const py::array& x, py::array& out, const py::array& mean, const py::array& m2,
                         py::array& cmask, bool pearson, double factor) {
  if (is_dtype<float>(out)) return standardise_as<Tin, float>(x, out, mean, m2, cmask, pearson, factor);
  if (is_dtype<double>(out)) return standardise_as<Tin, double>(x, out, mean, m2, cmask, pearson, factor);
  throw py::type_error("corr_standardise: out must be float32 or float64");
}

int64_t corr_standardise(const py::array& x, py::array& out, const py::array& mean, const py::array& m2,
                         py::array& const_mask, bool pearson, double factor) {
  if (is_dtype<float>(x)) return standardise_into<float>(x, out, mean, m2, const_mask, pearson, factor);
  if (is_dtype<double>(x)) return standardise_into<double>(x, out, mean, m2, const_mask, pearson, factor);
  throw py::type_error("corr_standardise: x must be float32 or float64, got " + std::string(py::str(x.dtype())));
}

// ----------------------------------------------------------------------------- CPU selection

// One selection state thr f32 [M], cnt i32 [M], keys u64 [M, B] -> the kernel's view and M.
df::cpu::SelectState select_state(py::array& thr, py::array& cnt, py::array& keys, int64_t k, int64_t* M) {
  if (keys.ndim() != 2) throw py::value_error("corr_select: keys must be a 2-D uint64 array [M, B]");
  *M = keys.shape(0);
  const int64_t B = keys.shape(1);
  if (k < 1 || B < k + 1) throw py::value_error("corr_select: need 1 <= k < B (keys.shape[1])");
  if (B > std::numeric_limits<int32_t>::max()) throw py::value_error("corr_select: buffer too large");
  if (!c_contiguous(keys) || !keys.writeable() || !is_u64(keys))
    throw py::type_error("corr_select: keys must be a writeable C-contiguous uint64 array");
  return {df::mutable_1d<float>(thr, *M, "thr"), df::mutable_1d<int32_t>(cnt, *M, "cnt"), data_of<uint64_t>(keys), B, k};
}

void corr_select_tile(const py::array& scores, int64_t row0, int64_t col0, py::array& thr, py::array& cnt,
                      py::array& keys, int64_t k, int isa) {
  auto s = df::view2d<float>(scores, "scores");
  if (s.s1 != 1) throw py::value_error("corr_select_tile: scores rows must be contiguous (stride 1 along columns)");
  int64_t M;
  const auto st = select_state(thr, cnt, keys, k, &M);
  if (col0 < 0 || col0 + s.cols > M) throw py::value_error("corr_select_tile: columns out of range of the state");
  if (row0 < 0 || row0 + s.rows > static_cast<int64_t>(0xffffffffu))
    throw py::value_error("corr_select_tile: train indices must fit in 32 bits");
  py::gil_scoped_release release;
  df::cpu::corr_select_tile(s, row0, col0, st, isa);
}

// values f32 [M, k] and indices i64 [M, k], writeable and C-contiguous.
bool is_result(const py::array& a, int64_t M, int64_t k, bool i64) {
  return a.ndim() == 2 && a.shape(0) == M && a.shape(1) == k && c_contiguous(a) &&
         (i64 ? is_dtype<int64_t>(a) : is_dtype<float>(a));
}

void corr_select_finish(py::array& thr, py::array& cnt, py::array& keys, int64_t k, py::array& values,
                        py::array& indices) {
  int64_t M;
  const auto st = select_state(thr, cnt, keys, k, &M);
  if (!is_result(values, M, k, false) || !values.writeable())
    throw py::value_error("corr_select_finish: values must be a writeable C-contiguous float32 [M, k]");
  if (!is_result(indices, M, k, true) || !indices.writeable())
    throw py::value_error("corr_select_finish: indices must be a writeable C-contiguous int64 [M, k]");
  float* pv = data_of<float>(values);
  int64_t* pi = data_of<int64_t>(indices);
  py::gil_scoped_release release;
  df::cpu::corr_select_finish(st, M, pv, pi);
}

void corr_topk_fused(const py::array& za, const py::array& zb, int64_t row0, py::array& thr, py::array& cnt,
                     py::array& keys, int64_t k, int64_t sub, uintptr_t sgemm) {
  auto a = df::view2d<float>(za, "za");
  auto b = df::view2d<float>(zb, "zb");
  if (a.s1 != 1 || b.s1 != 1) throw py::value_error("corr_topk_fused: za and zb rows must be contiguous");
  if (a.rows != b.rows) throw py::value_error("corr_topk_fused: za and zb need the same K");
  if (keys.ndim() != 3 || thr.ndim() != 2 || cnt.ndim() != 2)
    throw py::value_error("corr_topk_fused: state must be thr [T,M], cnt [T,M], keys [T,M,B]");
  const int64_t T = keys.shape(0), M = keys.shape(1), B = keys.shape(2);
  if (M != b.cols || thr.shape(0) != T || thr.shape(1) != M || cnt.shape(0) != T || cnt.shape(1) != M)
    throw py::value_error("corr_topk_fused: state shapes do not match [T, M]");
  if (k < 1 || B < k + 1) throw py::value_error("corr_topk_fused: need 1 <= k < B");
  if (!c_contiguous(keys) || !is_u64(keys) || !c_contiguous(thr) || !is_dtype<float>(thr) || !c_contiguous(cnt) ||
      !is_dtype<int32_t>(cnt))
    throw py::type_error("corr_topk_fused: thr f32, cnt i32, keys u64, all C-contiguous");
  if (sub < 1 || sgemm == 0) throw py::value_error("corr_topk_fused: bad sub or sgemm pointer");
  if (a.rows > 0x7fffffff || M > 0x7fffffff || a.s0 > 0x7fffffff || b.s0 > 0x7fffffff)
    throw py::value_error("corr_topk_fused: sizes must fit in 32-bit BLAS ints");
  if (row0 < 0 || row0 + a.cols > static_cast<int64_t>(0xffffffffu))
    throw py::value_error("corr_topk_fused: train indices must fit in 32 bits");
  const df::cpu::SelectState st{data_of<float>(thr), data_of<int32_t>(cnt), data_of<uint64_t>(keys), B, k};
  py::gil_scoped_release release;
  df::cpu::corr_topk_fused(a, b, row0, st, T, sub, reinterpret_cast<df::cpu::SgemmFn>(sgemm));
}

void corr_topk_merge(py::array& thr, py::array& cnt, py::array& keys, int64_t k, py::array& values,
                     py::array& indices) {
  (void)thr;  // part of the signature so that it mirrors corr_select_finish; the merge needs no threshold
  if (keys.ndim() != 3 || !c_contiguous(keys) || keys.itemsize() != 8)
    throw py::value_error("corr_topk_merge: keys must be C-contiguous u64 [T, M, B]");
  const int64_t T = keys.shape(0), M = keys.shape(1), B = keys.shape(2);
  if (cnt.ndim() != 2 || cnt.shape(0) != T || cnt.shape(1) != M || !is_dtype<int32_t>(cnt) || !c_contiguous(cnt))
    throw py::value_error("corr_topk_merge: cnt must be C-contiguous i32 [T, M]");
  if (!is_result(values, M, k, false) || !is_result(indices, M, k, true))
    throw py::value_error("corr_topk_merge: values f32 [M, k] and indices i64 [M, k], C-contiguous");
  const auto* pk = static_cast<const uint64_t*>(keys.data());
  const auto* pc = static_cast<const int32_t*>(cnt.data());
  float* pv = data_of<float>(values);
  int64_t* pi = data_of<int64_t>(indices);
  py::gil_scoped_release release;
  df::cpu::corr_topk_merge(pc, pk, T, M, B, k, pv, pi);
}

// ----------------------------------------------------------------------------- CUDA
#ifdef DF_WITH_CUDA
void check_cuda(int err, const char* name) {
  if (err != 0)
    throw std::runtime_error(std::string(name) + ": CUDA error " + std::to_string(err) + " (" +
                             df::cuda::error_string(err) + ")");
}

void corr_tile_cuda(uintptr_t za, int64_t lda, uintptr_t zb, int64_t ldb, int64_t n, int64_t M, int64_t K,
                    uintptr_t out, int64_t ldo, bool clip, int precision, uintptr_t stream) {
  int err;
  {
    py::gil_scoped_release release;
    err = df::cuda::corr_tile(df::device_ptr<const float>(za), lda, df::device_ptr<const float>(zb), ldb, n, M, K,
                              df::device_ptr<float>(out), ldo, clip ? 1 : 0, precision, df::device_ptr<void>(stream));
  }
  check_cuda(err, "corr_tile_cuda");
}

void corr_filter_cuda(uintptr_t za, int64_t lda, uintptr_t zb, int64_t ldb, int64_t n, int64_t M, int64_t K,
                      uintptr_t thr, uintptr_t cnt, uintptr_t cand_v, uintptr_t cand_i, int64_t C, int64_t row0,
                      int precision, uintptr_t stream) {
  int err;
  {
    py::gil_scoped_release release;
    err = df::cuda::corr_filter(df::device_ptr<const float>(za), lda, df::device_ptr<const float>(zb), ldb, n, M, K,
                                df::device_ptr<const float>(thr), df::device_ptr<int>(cnt),
                                df::device_ptr<float>(cand_v), df::device_ptr<int64_t>(cand_i), C, row0, precision,
                                df::device_ptr<void>(stream));
  }
  check_cuda(err, "corr_filter_cuda");
}
#endif

}  // namespace

void df_bind_correlation(py::module_& m) {
  m.def("colstats", &colstats, py::arg("x"), py::arg("mean"), py::arg("m2"),
        "colstats(x [K,N] f32|f64, mean [N] f64 out, m2 [N] f64 out) -> first non-finite flat index j*K+k, or -1.\n"
        "mean = x.mean(0); m2 = ((x - mean)**2).sum(0), computed in float64 with two passes.");
  m.def("corr_standardise", &corr_standardise, py::arg("x"), py::arg("out"), py::arg("mean"), py::arg("m2"),
        py::arg("const_mask"), py::arg("pearson"), py::arg("factor"),
        "corr_standardise(x [K,n] f32|f64, out [K,n] f32|f64 (any strides), mean [n] f64, m2 [n] f64,\n"
        "const_mask [n] uint8 out, pearson, factor) -> number of constant columns.\n"
        "out = (x - mean) * (factor / sqrt(m2) if pearson else factor), in float64 then cast; constant\n"
        "columns are NaN (pearson) or 0 (covariance) and flagged in const_mask.");
  m.def("corr_select_tile", &corr_select_tile, py::arg("scores"), py::arg("row0"), py::arg("col0"), py::arg("thr"),
        py::arg("cnt"), py::arg("keys"), py::arg("k"), py::arg("isa") = -1,
        "corr_select_tile(scores [rows, cols] f32 (rows contiguous), row0, col0, thr f32[M], cnt i32[M],\n"
        "keys u64[M, B], k): feed scores[r, c] (train index row0 + r, test column col0 + c) into the running\n"
        "top-k of each column. Initialise thr = -inf, cnt = 0; B >= k + 1 (2k is a good choice).\n"
        "isa: -1 best available (default); 0/1/2 force the scalar / AVX2 / AVX-512 scan (tests).");
  m.def("corr_select_finish", &corr_select_finish, py::arg("thr"), py::arg("cnt"), py::arg("keys"), py::arg("k"),
        py::arg("values"), py::arg("indices"),
        "corr_select_finish(thr, cnt, keys, k, values f32[M, k] out, indices i64[M, k] out): best first,\n"
        "ties to the lower train index; slots with no candidate get NaN / -1.");
  m.def("corr_topk_fused", &corr_topk_fused, py::arg("za"), py::arg("zb"), py::arg("row0"), py::arg("thr"),
        py::arg("cnt"), py::arg("keys"), py::arg("k"), py::arg("sub"), py::arg("sgemm"),
        "corr_topk_fused(za f32 [K, n], zb f32 [K, M] (rows contiguous), row0, thr f32 [T, M], cnt i32 [T, M],\n"
        "keys u64 [T, M, B], k, sub, sgemm): scores = za.T @ zb by blocks of `sub` rows with the BLAS `sgemm_` at\n"
        "address `sgemm` (Fortran ABI, 32-bit ints), each thread t selecting into state t. T threads.");
  m.def("corr_topk_merge", &corr_topk_merge, py::arg("thr"), py::arg("cnt"), py::arg("keys"), py::arg("k"),
        py::arg("values"), py::arg("indices"),
        "Merge the per-thread states of corr_topk_fused: the k best of each column, best first (ties: lower index).");
#ifdef DF_WITH_CUDA
  m.def("corr_tile_cuda", &corr_tile_cuda, py::arg("za"), py::arg("lda"), py::arg("zb"), py::arg("ldb"), py::arg("n"),
        py::arg("M"), py::arg("K"), py::arg("out"), py::arg("ldo"), py::arg("clip"), py::arg("precision"),
        py::arg("stream"),
        "Device pointers: za f32 [K, n] (row stride lda), zb f32 [K, M] (ldb), out f32 [n, M] (ldo).\n"
        "out = za.T @ zb (clipped to [-1, 1] if clip); precision 0 fp32, 1 tf32, 2 bf16.");
  m.def("corr_filter_cuda", &corr_filter_cuda, py::arg("za"), py::arg("lda"), py::arg("zb"), py::arg("ldb"),
        py::arg("n"), py::arg("M"), py::arg("K"), py::arg("thr"), py::arg("cnt"), py::arg("cand_v"), py::arg("cand_i"),
        py::arg("C"), py::arg("row0"), py::arg("precision"), py::arg("stream"),
        "Fused product + threshold filter: every S[i, j] > thr[j] (f32 [M]) is appended to column j's buffer\n"
        "(cand_v f32 [M, C], cand_i i64 [M, C]) at slot atomicAdd(cnt[j], 1) (i32 [M]) while slot < C.");
#endif
}
