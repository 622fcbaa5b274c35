// Streaming top-k selection over score tiles, one running selection per test column
// (state layout and key packing: cpu/correlation.h, cpu/select_core.h).
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
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define DF_X86 1
#endif

#include "cpu/correlation.h"
#include "cpu/select_core.h"

namespace df::cpu::select {
namespace {

// The scan of columns [c0, c1) of the tile. Kept in one always-inline body compiled three times
// (AVX-512, AVX2, baseline) so that the build needs no -march flag and runs on any x86-64.
template <int W>
inline __attribute__((always_inline)) void scan_generic(const float* S, int64_t ld, int64_t rows, int64_t row0,
                                                        int64_t col0, int64_t c0, int64_t c1, const SelectState& st) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = S + r * ld;
    const int64_t idx = row0 + r;
    for (int64_t c = c0; c < c1; ++c) {
      const float v = row[c];
      if (v > st.thr[col0 + c]) push(st, col0 + c, v, idx);
    }
  }
}

#ifdef DF_X86
__attribute__((target("avx512f"))) void scan_avx512(const float* S, int64_t ld, int64_t rows, int64_t row0,
                                                     int64_t col0, int64_t c0, int64_t c1, const SelectState& st) {
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
        push(st, col0 + c + b, row[c + b], idx);
        mk &= static_cast<__mmask16>(mk - 1);
      }
    }
    for (; c < c1; ++c) {
      const float v = row[c];
      if (v > st.thr[col0 + c]) push(st, col0 + c, v, idx);
    }
  }
}

__attribute__((target("avx2"))) void scan_avx2(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0,
                                               int64_t c0, int64_t c1, const SelectState& st) {
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
        push(st, col0 + c + b, row[c + b], idx);
        mk &= mk - 1;
      }
    }
    for (; c < c1; ++c) {
      const float v = row[c];
      if (v > st.thr[col0 + c]) push(st, col0 + c, v, idx);
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

void scan(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0, int64_t c0, int64_t c1,
          const SelectState& st, int isa) {
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
                const SelectState& st, std::vector<uint64_t>& tmp) {
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

}  // namespace

int isa_level() {
#ifdef DF_X86
  static const int level = detect_isa();
  return level;
#else
  return 0;
#endif
}

void select_columns(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0, int64_t c0, int64_t c1,
                    const SelectState& st, int isa, std::vector<uint64_t>& tmp) {
  bool full = true;
  for (int64_t c = c0; c < c1; ++c) full = full && st.cnt[col0 + c] >= st.k;
  if (full)
    scan(S, ld, rows, row0, col0, c0, c1, st, isa);
  else
    seed_block(S, ld, rows, row0, col0, c0, c1, st, tmp);
}

}  // namespace df::cpu::select

namespace df::cpu {

void corr_select_tile(const View2D<float>& s, int64_t row0, int64_t col0, SelectState st, int isa_force) {
  const int isa = isa_force < 0 ? select::isa_level() : std::min(isa_force, select::isa_level());
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
      select::select_columns(s.data, s.s0, s.rows, row0, col0, c0, c1, st, isa, tmp);
    }
  }
}

void corr_select_finish(SelectState st, int64_t M, float* values, int64_t* indices) {
  const int64_t k = st.k;
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m)
    select::emit_best(st.keys + m * st.B, st.cnt[m], k, values + m * k, indices + m * k);
}

}  // namespace df::cpu
