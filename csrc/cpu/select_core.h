// Internal to the CPU selection kernels (cpu/corr_select.cpp, cpu/corr_topk.cpp): key packing,
// the per-column buffer operations and the tile scan that both the unfused (corr_select_tile)
// and the fused (corr_topk_fused) paths run. Not part of the bound API.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "cpu/correlation.h"

namespace df::cpu::select {

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

// Keep the k best candidates of column m and set its threshold to the k-th best score.
inline void reduce(const SelectState& st, int64_t m) {
  uint64_t* b = st.keys + m * st.B;
  std::nth_element(b, b + (st.k - 1), b + st.cnt[m], std::greater<uint64_t>());
  st.cnt[m] = static_cast<int32_t>(st.k);
  st.thr[m] = key_value(b[st.k - 1]);
}
inline void push(const SelectState& st, int64_t m, float v, int64_t idx) {
  st.keys[m * st.B + st.cnt[m]] = make_key(v, idx);
  if (++st.cnt[m] == st.B) reduce(st, m);
}

// Write the k best of the `count` keys at b (reordered in place) to v[0:k], i[0:k], best first;
// slots beyond count get NaN / -1 (fewer than k selectable: NaN or constant columns).
inline void emit_best(uint64_t* b, int64_t count, int64_t k, float* v, int64_t* i) {
  const int64_t n = std::min(count, k);
  if (count > k) std::nth_element(b, b + (k - 1), b + count, std::greater<uint64_t>());
  std::sort(b, b + n, std::greater<uint64_t>());
  for (int64_t r = 0; r < n; ++r) {
    v[r] = key_value(b[r]);
    i[r] = key_index(b[r]);
  }
  for (int64_t r = n; r < k; ++r) {
    v[r] = std::numeric_limits<float>::quiet_NaN();
    i[r] = -1;
  }
}

// Vector path of this CPU: 0 scalar, 1 AVX2, 2 AVX-512 (detected once).
int isa_level();

// Columns [c0, c1) of the tile S (row stride ld; row r is train index row0 + r, column c is
// test column col0 + c): the threshold scan when every column already holds k candidates,
// the column-wise seeding path otherwise. tmp: the calling thread's scratch buffer.
void select_columns(const float* S, int64_t ld, int64_t rows, int64_t row0, int64_t col0, int64_t c0, int64_t c1,
                    const SelectState& st, int isa, std::vector<uint64_t>& tmp);

}  // namespace df::cpu::select
