// Column statistics (declared in cpu/colstats.h). Two passes over each column block (exact
// centring, no catastrophic cancellation when sigma/mean is tiny); the rare non-finite column is
// rescanned to locate its first bad entry.
#include "cpu/colstats.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace {
constexpr int64_t kBlock = 256;  // columns per block: 2 KiB of float64 accumulators stay in L1

template <typename T>
int64_t colstats_impl(const df::View2D<T>& x, double* mean, double* m2) {
  const int64_t K = x.rows, N = x.cols;
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  int64_t first_bad = std::numeric_limits<int64_t>::max();
  // Dynamic, a few blocks at a time: on a shared machine a thread that loses its core must not
  // hold the whole region (and the caller) until it runs again; the others take its blocks.
#pragma omp parallel for schedule(dynamic, 4) reduction(min : first_bad)
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

}  // namespace

namespace df::cpu {
int64_t colstats(const View2D<float>& x, double* mean, double* m2) { return colstats_impl(x, mean, m2); }
int64_t colstats(const View2D<double>& x, double* mean, double* m2) { return colstats_impl(x, mean, m2); }
}  // namespace df::cpu
