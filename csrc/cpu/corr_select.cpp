// Streaming top-k selection over score tiles, one running selection per test column.
//
// State per test column m (arrays owned by Python, so it survives across tiles):
//   thr[m]       float32: the current k-th best score (-inf until the first reduction)
//   cnt[m]       int32:   candidates held in keys[m, :]
//   keys[m, :B]  uint64:  candidates packed as (order-preserving bits of the score) << 32 | ~index
// so that one unsigned comparison orders by (score descending, train index ascending): a total
// order, which makes the result deterministic (ties go to the lower train index).
//
// corr_select_tile scans a score tile S[rows, cols] (S[r, c] = score of train row0 + r against
// test column col0 + c): each score is compared with its column's threshold, 16 (AVX-512) or 8
// (AVX2) at a time; only scores above it (rare once the threshold has formed: about
// k (1 + ln(N/k)) of N per column) take the slow path, which appends to the column's buffer and,
// when the buffer is full, keeps the k best with nth_element and raises the threshold. Tile rows
// arrive in ascending train index, so a later score equal to the threshold is never better than
// the k held ones and the strict ">" test is exact. NaN scores never pass. OpenMP splits the test
// columns across threads; run it right after the tile's product while the tile is in cache.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DF_X86 1
#endif
#ifdef DF_WITH_OPENMP
#include <omp.h>
#endif

#include "common.h"

namespace py = pybind11;

namespace {

inline uint32_t float_order(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float order_float(uint32_t o) {
  const uint32_t u = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
inline uint64_t make_key(float v, int64_t idx) {
  v += 0.0f;  // -0 -> +0: equal scores must get equal keys (then the index decides)
  return (static_cast<uint64_t>(float_order(v)) << 32) | static_cast<uint64_t>(0xffffffffu - static_cast<uint32_t>(idx));
}
inline float key_value(uint64_t key) { return order_float(static_cast<uint32_t>(key >> 32)); }
inline int64_t key_index(uint64_t key) { return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu)); }

struct State {
  float* thr;
  int32_t* cnt;
  uint64_t* keys;
  int64_t B, k;

  // Keep the k best candidates of column m and set its threshold to the k-th best score.
  inline void reduce(int64_t m) {
    uint64_t* b = keys + m * B;
    std::nth_element(b, b + (k - 1), b + cnt[m], std::greater<uint64_t>());
    cnt[m] = static_cast<int32_t>(k);
    thr[m] = key_value(b[k - 1]);
  }
  inline void push(int64_t m, float v, int64_t idx) {
    keys[m * B + cnt[m]] = make_key(v, idx);
    if (++cnt[m] == B) reduce(m);
  }
};

// The scan of columns [c0, c1) of the tile. Kept in one always-inline body compiled three times
// (AVX-512, AVX2, baseline) so that the build needs no -march flag and runs on any x86-64.
template <int W>
inline __attribute__((always_inline)) void scan_generic(const float* S, int64_t ld, int64_t rows, int64_t row0,
                                                        int64_t col0, int64_t c0, int64_t c1, State& st) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = S + r * ld;
    const int64_t idx = row0 + r;
    for (int64_t c = c0; c < c1; ++c) {
      const float v = row[c];
      if (v > st.thr[col0 + c]) st.push(col0 + c, v, idx);
    }
  }
}

#ifdef DF_X86
__attribute__((target("avx512f"))) void scan_avx512(const float* S, int64_t ld, int64_t rows, int64_t row0,
                                                     int64_t col0, int64_t c0, int64_t c1, State& st) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = S + r * ld;
    const int64_t idx = row0 + r;
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
      const __m512 v = _mm512_loadu_ps(row + c);
      const __m512 t = _mm512_loadu_ps(st.thr + col0 + c);
      __mmask16 mk = _mm512_cmp_ps_mask(v, t, _CMP_GT_OQ);
      while (__builtin_expect(mk != 0, 0)) {
        const int b = __builtin_ctz(static_cast<unsigned>(mk));
        st.push(col0 + c + b, row[c + b], idx);
        mk &= static_cast<__mmask16>(mk - 1);
      }
    }
    for (; c < c1; ++c) {
      const float v = row[c];
      if (v > st.thr[col0 + c]) st.push(col0 + c, v, idx);
    }
  }
}

__attribute__((target("avx2"))) void scan_avx2(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0,
                                               int64_t c0, int64_t c1, State& st) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = S + r * ld;
    const int64_t idx = row0 + r;
    int64_t c = c0;
    for (; c + 8 <= c1; c += 8) {
      const __m256 v = _mm256_loadu_ps(row + c);
      const __m256 t = _mm256_loadu_ps(st.thr + col0 + c);
      unsigned mk = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_GT_OQ)));
      while (__builtin_expect(mk != 0, 0)) {
        const int b = __builtin_ctz(mk);
        st.push(col0 + c + b, row[c + b], idx);
        mk &= mk - 1;
      }
    }
    for (; c < c1; ++c) {
      const float v = row[c];
      if (v > st.thr[col0 + c]) st.push(col0 + c, v, idx);
    }
  }
}

int detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2")) return 1;
  return 0;
}
#endif

int isa_level() {
#ifdef DF_X86
  static const int level = detect_isa();
  return level;
#else
  return 0;
#endif
}

void scan(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0, int64_t c0, int64_t c1, State& st,
          int isa) {
#ifdef DF_X86
  if (isa == 2) return scan_avx512(S, ld, rows, row0, col0, c0, c1, st);
  if (isa == 1) return scan_avx2(S, ld, rows, row0, col0, c0, c1, st);
#endif
  (void)isa;
  scan_generic<1>(S, ld, rows, row0, col0, c0, c1, st);
}

// Column-wise path for a block of columns [c0, c1) of the tile, used while any of them holds
// fewer than k candidates (the first tile, where every score would pass): gather each column's
// new scores above its threshold, merge them with the held candidates and keep the k best with one
// nth_element. O(rows) per column, against O(rows) pushes and repeated reductions for the row scan.
void seed_block(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0, int64_t c0, int64_t c1,
                State& st, std::vector<uint64_t>& tmp) {
  constexpr int64_t G = 16;  // columns gathered together: one cache line of each tile row
  const int64_t cap = st.B + rows;
  tmp.resize(static_cast<size_t>(G * cap));
  for (int64_t g0 = c0; g0 < c1; g0 += G) {
    const int64_t g1 = std::min(c1, g0 + G), ng = g1 - g0;
    int64_t n[G];
    float t[G];
    for (int64_t u = 0; u < ng; ++u) {
      const int64_t m = col0 + g0 + u;
      n[u] = st.cnt[m];
      t[u] = st.thr[m];
      std::memcpy(tmp.data() + u * cap, st.keys + m * st.B, sizeof(uint64_t) * static_cast<size_t>(n[u]));
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = S + r * ld + g0;
      for (int64_t u = 0; u < ng; ++u)
        if (row[u] > t[u]) tmp[u * cap + n[u]++] = make_key(row[u], row0 + r);
    }
    for (int64_t u = 0; u < ng; ++u) {
      const int64_t m = col0 + g0 + u;
      uint64_t* b = tmp.data() + u * cap;
      if (n[u] >= st.k) {
        std::nth_element(b, b + (st.k - 1), b + n[u], std::greater<uint64_t>());
        n[u] = st.k;
        st.thr[m] = key_value(b[st.k - 1]);
      }
      std::memcpy(st.keys + m * st.B, b, sizeof(uint64_t) * static_cast<size_t>(n[u]));
      st.cnt[m] = static_cast<int32_t>(n[u]);
    }
  }
}

struct Checked {
  State st;
  int64_t M;
};

Checked check_state(py::array& thr, py::array& cnt, py::array& keys, int64_t k) {
  if (keys.ndim() != 2) throw py::value_error("corr_select: keys must be a 2-D uint64 array [M, B]");
  const int64_t M = keys.shape(0), B = keys.shape(1);
  if (k < 1 || B < k + 1) throw py::value_error("corr_select: need 1 <= k < B (keys.shape[1])");
  if (B > std::numeric_limits<int32_t>::max()) throw py::value_error("corr_select: buffer too large");
  if (!(keys.flags() & py::array::c_style) || !keys.writeable() || keys.dtype().kind() != 'u' || keys.itemsize() != 8)
    throw py::type_error("corr_select: keys must be a writeable C-contiguous uint64 array");
  State st{df::mutable_1d<float>(thr, M, "thr"), df::mutable_1d<int32_t>(cnt, M, "cnt"),
           static_cast<uint64_t*>(keys.mutable_data()), B, k};
  return {st, M};
}
}  // namespace

void df_bind_corr_select(py::module_& m) {
  m.def(
      "corr_select_tile",
      [](const py::array& scores, int64_t row0, int64_t col0, py::array& thr, py::array& cnt, py::array& keys,
         int64_t k, int isa_force) {
        auto s = df::view2d<float>(scores, "scores");
        if (s.s1 != 1) throw py::value_error("corr_select_tile: scores rows must be contiguous (stride 1 along columns)");
        auto c = check_state(thr, cnt, keys, k);
        if (col0 < 0 || col0 + s.cols > c.M) throw py::value_error("corr_select_tile: columns out of range of the state");
        if (row0 < 0 || row0 + s.rows > static_cast<int64_t>(0xffffffffu))
          throw py::value_error("corr_select_tile: train indices must fit in 32 bits");
        // isa_force (tests): -1 = best available; 0 scalar, 1 AVX2, 2 AVX-512, capped at what the CPU has.
        const int isa = isa_force < 0 ? isa_level() : std::min(isa_force, isa_level());
        py::gil_scoped_release release;
        State st = c.st;
        const int64_t cols = s.cols;
// Dynamic blocks of columns: on a shared machine a descheduled thread must not hold the
        // others up, and each block's state stays in one thread.
        constexpr int64_t CB = 64;
        const int64_t nblocks = (cols + CB - 1) / CB;
#pragma omp parallel
        {
          std::vector<uint64_t> tmp;
#pragma omp for schedule(dynamic, 1)
          for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t c0 = b * CB, c1 = std::min(cols, c0 + CB);
            bool full = true;
            for (int64_t c = c0; c < c1; ++c) full = full && st.cnt[col0 + c] >= st.k;
            if (full)
              scan(s.data, s.s0, s.rows, row0, col0, c0, c1, st, isa);
            else
              seed_block(s.data, s.s0, s.rows, row0, col0, c0, c1, st, tmp);
          }
        }
      },
      py::arg("scores"), py::arg("row0"), py::arg("col0"), py::arg("thr"), py::arg("cnt"), py::arg("keys"),
      py::arg("k"), py::arg("isa") = -1,
      "corr_select_tile(scores [rows, cols] f32 (rows contiguous), row0, col0, thr f32[M], cnt i32[M],\n"
      "keys u64[M, B], k): feed scores[r, c] (train index row0 + r, test column col0 + c) into the running\n"
      "top-k of each column. Initialise thr = -inf, cnt = 0; B >= k + 1 (2k is a good choice).\n"
      "isa: -1 best available (default); 0/1/2 force the scalar / AVX2 / AVX-512 scan (tests).");
  m.def(
      "corr_select_finish",
      [](py::array& thr, py::array& cnt, py::array& keys, int64_t k, py::array& values, py::array& indices) {
        auto c = check_state(thr, cnt, keys, k);
        if (values.ndim() != 2 || values.shape(0) != c.M || values.shape(1) != k || !(values.flags() & py::array::c_style) ||
            !values.dtype().is(py::dtype::of<float>()) || !values.writeable())
          throw py::value_error("corr_select_finish: values must be a writeable C-contiguous float32 [M, k]");
        if (indices.ndim() != 2 || indices.shape(0) != c.M || indices.shape(1) != k ||
            !(indices.flags() & py::array::c_style) || !indices.dtype().is(py::dtype::of<int64_t>()) ||
            !indices.writeable())
          throw py::value_error("corr_select_finish: indices must be a writeable C-contiguous int64 [M, k]");
        float* pv = static_cast<float*>(values.mutable_data());
        int64_t* pi = static_cast<int64_t*>(indices.mutable_data());
        State st = c.st;
        const int64_t M = c.M;
        py::gil_scoped_release release;
#pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < M; ++m) {
          uint64_t* b = st.keys + m * st.B;
          const int64_t n = std::min<int64_t>(st.cnt[m], k);
          if (st.cnt[m] > k) std::nth_element(b, b + (k - 1), b + st.cnt[m], std::greater<uint64_t>());
          std::sort(b, b + n, std::greater<uint64_t>());
          for (int64_t i = 0; i < n; ++i) {
            pv[m * k + i] = key_value(b[i]);
            pi[m * k + i] = key_index(b[i]);
          }
          for (int64_t i = n; i < k; ++i) {  // fewer than k selectable (NaN / constant columns)
            pv[m * k + i] = std::numeric_limits<float>::quiet_NaN();
            pi[m * k + i] = -1;
          }
        }
      },
      py::arg("thr"), py::arg("cnt"), py::arg("keys"), py::arg("k"), py::arg("values"), py::arg("indices"),
      "corr_select_finish(thr, cnt, keys, k, values f32[M, k] out, indices i64[M, k] out): best first,\n"
      "ties to the lower train index; slots with no candidate get NaN / -1.");
  m.def("corr_select_isa", []() { return isa_level() == 2 ? "avx512" : isa_level() == 1 ? "avx2" : "scalar"; },
        "Which vector path corr_select_tile uses on this CPU.");
}

// ------------------------------------------------------------------------------------------
// Fused path: product and selection in ONE OpenMP region per chunk of train rows. Each thread
// takes blocks of `sub` train rows (dynamic, so in increasing order per thread), multiplies them
// with a caller-supplied BLAS sgemm (the Fortran `sgemm_` that torch's MKL exports, called from
// inside the parallel region, where MKL runs single-threaded) into its own L2-sized tile, and
// feeds that tile into its own selection state (thr/cnt/keys [T, M, ...]); corr_topk_merge merges
// the T states at the end. One region per chunk instead of two per tile: on an oversubscribed
// machine each region costs a wait for a core, and the tile never leaves the thread's cache.
namespace {
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                          const int*, const float*, const int*, const float*, float*, const int*);
}

void df_bind_corr_fused(py::module_& m) {
  m.def(
      "corr_topk_fused",
      [](const py::array& za, const py::array& zb, int64_t row0, py::array& thr, py::array& cnt, py::array& keys,
         int64_t k, int64_t sub, uintptr_t sgemm_addr) {
        auto a = df::view2d<float>(za, "za");
        auto b = df::view2d<float>(zb, "zb");
        if (a.s1 != 1 || b.s1 != 1) throw py::value_error("corr_topk_fused: za and zb rows must be contiguous");
        if (a.rows != b.rows) throw py::value_error("corr_topk_fused: za and zb need the same K");
        if (keys.ndim() != 3 || thr.ndim() != 2 || cnt.ndim() != 2) throw py::value_error("corr_topk_fused: state must be thr [T,M], cnt [T,M], keys [T,M,B]");
        const int64_t T = keys.shape(0), M = keys.shape(1), B = keys.shape(2);
        if (M != b.cols || thr.shape(0) != T || thr.shape(1) != M || cnt.shape(0) != T || cnt.shape(1) != M)
          throw py::value_error("corr_topk_fused: state shapes do not match [T, M]");
        if (k < 1 || B < k + 1) throw py::value_error("corr_topk_fused: need 1 <= k < B");
        if (!(keys.flags() & py::array::c_style) || keys.dtype().kind() != 'u' || keys.itemsize() != 8 ||
            !(thr.flags() & py::array::c_style) || !thr.dtype().is(py::dtype::of<float>()) ||
            !(cnt.flags() & py::array::c_style) || !cnt.dtype().is(py::dtype::of<int32_t>()))
          throw py::type_error("corr_topk_fused: thr f32, cnt i32, keys u64, all C-contiguous");
        if (sub < 1 || sgemm_addr == 0) throw py::value_error("corr_topk_fused: bad sub or sgemm pointer");
        if (a.rows > 0x7fffffff || M > 0x7fffffff || a.s0 > 0x7fffffff || b.s0 > 0x7fffffff)
          throw py::value_error("corr_topk_fused: sizes must fit in 32-bit BLAS ints");
        if (row0 < 0 || row0 + a.cols > static_cast<int64_t>(0xffffffffu))
          throw py::value_error("corr_topk_fused: train indices must fit in 32 bits");
        float* pthr = static_cast<float*>(thr.mutable_data());
        int32_t* pcnt = static_cast<int32_t*>(cnt.mutable_data());
        uint64_t* pkeys = static_cast<uint64_t*>(keys.mutable_data());
        const auto sgemm = reinterpret_cast<sgemm_fn>(sgemm_addr);
        const int isa = isa_level();
        const int64_t n = a.cols, K = a.rows, nblocks = (n + sub - 1) / sub;
        py::gil_scoped_release release;
#pragma omp parallel num_threads(static_cast<int>(T))
        {
          int t = 0;
#ifdef DF_WITH_OPENMP
          t = omp_get_thread_num();
#endif
          State st{pthr + t * M, pcnt + t * M, pkeys + t * M * B, B, k};
          std::vector<float> tile(static_cast<size_t>(sub * M));
          std::vector<uint64_t> tmp;
          const char tn = 'N', tt = 'T';
          const float one = 1.0f, zero = 0.0f;
          const int im = static_cast<int>(M), ik = static_cast<int>(K), ldb = static_cast<int>(b.s0),
                    lda = static_cast<int>(a.s0), ldc = static_cast<int>(M);
#pragma omp for schedule(dynamic, 1)
          for (int64_t blk = 0; blk < nblocks; ++blk) {
            const int64_t r0 = blk * sub, rows = std::min(sub, n - r0);
            const int in = static_cast<int>(rows);
            // column-major view: tile^T [M x rows] = zb^T [M x K] * (za block)^T... i.e. tile[i, j] = sum_k za[k, r0+i] zb[k, j]
            sgemm(&tn, &tt, &im, &in, &ik, &one, b.data, &ldb, a.data + r0, &lda, &zero, tile.data(), &ldc);
            constexpr int64_t CB = 64;
            for (int64_t c0 = 0; c0 < M; c0 += CB) {
              const int64_t c1 = std::min(M, c0 + CB);
              bool full = true;
              for (int64_t c = c0; c < c1; ++c) full = full && st.cnt[c] >= k;
              if (full)
                scan(tile.data(), M, rows, row0 + r0, 0, c0, c1, st, isa);
              else
                seed_block(tile.data(), M, rows, row0 + r0, 0, c0, c1, st, tmp);
            }
          }
        }
      },
      py::arg("za"), py::arg("zb"), py::arg("row0"), py::arg("thr"), py::arg("cnt"), py::arg("keys"), py::arg("k"),
      py::arg("sub"), py::arg("sgemm"),
      "corr_topk_fused(za f32 [K, n], zb f32 [K, M] (rows contiguous), row0, thr f32 [T, M], cnt i32 [T, M],\n"
      "keys u64 [T, M, B], k, sub, sgemm): scores = za.T @ zb by blocks of `sub` rows with the BLAS `sgemm_` at\n"
      "address `sgemm` (Fortran ABI, 32-bit ints), each thread t selecting into state t. T threads.");
  m.def(
      "corr_topk_merge",
      [](py::array& thr, py::array& cnt, py::array& keys, int64_t k, py::array& values, py::array& indices) {
        if (keys.ndim() != 3 || !(keys.flags() & py::array::c_style) || keys.itemsize() != 8)
          throw py::value_error("corr_topk_merge: keys must be C-contiguous u64 [T, M, B]");
        const int64_t T = keys.shape(0), M = keys.shape(1), B = keys.shape(2);
        if (cnt.ndim() != 2 || cnt.shape(0) != T || cnt.shape(1) != M || !cnt.dtype().is(py::dtype::of<int32_t>()) ||
            !(cnt.flags() & py::array::c_style))
          throw py::value_error("corr_topk_merge: cnt must be C-contiguous i32 [T, M]");
        (void)thr;
        if (values.ndim() != 2 || values.shape(0) != M || values.shape(1) != k || !values.dtype().is(py::dtype::of<float>()) ||
            !(values.flags() & py::array::c_style) || indices.ndim() != 2 || indices.shape(0) != M ||
            indices.shape(1) != k || !indices.dtype().is(py::dtype::of<int64_t>()) || !(indices.flags() & py::array::c_style))
          throw py::value_error("corr_topk_merge: values f32 [M, k] and indices i64 [M, k], C-contiguous");
        const uint64_t* pk = static_cast<const uint64_t*>(keys.data());
        const int32_t* pc = static_cast<const int32_t*>(cnt.data());
        float* pv = static_cast<float*>(values.mutable_data());
        int64_t* pi = static_cast<int64_t*>(indices.mutable_data());
        py::gil_scoped_release release;
#pragma omp parallel
        {
          std::vector<uint64_t> all;
#pragma omp for schedule(static)
          for (int64_t m = 0; m < M; ++m) {
            all.clear();
            for (int64_t t = 0; t < T; ++t) {
              const uint64_t* b = pk + (t * M + m) * B;
              all.insert(all.end(), b, b + pc[t * M + m]);
            }
            const int64_t n = std::min<int64_t>(static_cast<int64_t>(all.size()), k);
            if (static_cast<int64_t>(all.size()) > k)
              std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), std::greater<uint64_t>());
            std::sort(all.begin(), all.begin() + n, std::greater<uint64_t>());
            for (int64_t i = 0; i < n; ++i) {
              pv[m * k + i] = key_value(all[i]);
              pi[m * k + i] = key_index(all[i]);
            }
            for (int64_t i = n; i < k; ++i) {
              pv[m * k + i] = std::numeric_limits<float>::quiet_NaN();
              pi[m * k + i] = -1;
            }
          }
        }
      },
      py::arg("thr"), py::arg("cnt"), py::arg("keys"), py::arg("k"), py::arg("values"), py::arg("indices"),
      "Merge the per-thread states of corr_topk_fused: the k best of each column, best first (ties: lower index).");
}
