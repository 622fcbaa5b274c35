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
