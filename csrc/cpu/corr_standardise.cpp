// Standardise a column tile of a loss matrix for the correlation product (cpu/correlation.h).
//
//   out[k, j] = (x[k, j] - mean[j]) * scale[j]          (computed in float64, stored as float32/64)
//   pearson:    scale[j] = factor / sqrt(m2[j])          (unit-norm columns: the product is r)
//   covariance: scale[j] = factor                        (the caller passes 1/(K-1) for one side)
//
// mean and m2 come from cpu/colstats.h (float64, two-pass), so centring happens before any cast,
// which keeps r exact to fp32 rounding even when sigma/mean = 1e-4. A constant column (m2 below
// the float64 rounding floor of its mean, see is_constant) gets NaN in pearson mode so that every
// score it touches is NaN (never selected by top-k); in covariance mode it is exactly zero.
// const_mask[j] is set to 1 for constant columns in both modes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/correlation.h"

namespace {
constexpr int64_t kBlock = 256;

// Same rule as daunce_fast/correlation/reference.py::is_constant: the sample std is below what
// float64 rounding of the two-pass mean can produce for K equal values.
inline bool is_constant(double mean, double m2, int64_t K) {
  const double tol = 8.0 * static_cast<double>(K) * std::numeric_limits<double>::epsilon() * std::fabs(mean);
  return m2 <= 0.0 || std::sqrt(m2 / static_cast<double>(K)) <= tol;
}

// One block of columns [j0, j1). Contig: x rows and out rows have unit column stride, which
// lets the compiler vectorise the inner loop (the generic path indexes through runtime strides).
template <bool Contig, typename Tin, typename Tout>
inline __attribute__((always_inline)) int64_t standardise_block(const df::View2D<Tin>& x, const double* mean,
                                                                const double* m2, Tout* out, int64_t os0,
                                                                int64_t os1, uint8_t* const_mask, bool pearson,
                                                                double factor, int64_t j0, int64_t j1) {
  const int64_t K = x.rows, nb = j1 - j0;
  double sc[kBlock], mu[kBlock];
  int64_t n_const = 0;
  for (int64_t j = 0; j < nb; ++j) {
    const bool c = is_constant(mean[j0 + j], m2[j0 + j], K);
    const_mask[j0 + j] = c ? 1 : 0;
    n_const += c ? 1 : 0;
    mu[j] = mean[j0 + j];
    if (pearson)
      sc[j] = c ? std::numeric_limits<double>::quiet_NaN() : factor / std::sqrt(m2[j0 + j]);
    else
      sc[j] = factor;
  }
  for (int64_t k = 0; k < K; ++k) {
    if (Contig) {
      const Tin* __restrict__ xr = x.data + k * x.s0 + j0;
      Tout* __restrict__ orow = out + k * os0 + j0;
      for (int64_t j = 0; j < nb; ++j) orow[j] = static_cast<Tout>((static_cast<double>(xr[j]) - mu[j]) * sc[j]);
    } else {
      Tout* orow = out + k * os0 + j0 * os1;
      for (int64_t j = 0; j < nb; ++j)
        orow[j * os1] = static_cast<Tout>((static_cast<double>(x.at(k, j0 + j)) - mu[j]) * sc[j]);
    }
  }
  return n_const;
}

template <typename Tin, typename Tout>
__attribute__((target("avx2,fma"))) int64_t contig_avx2(const df::View2D<Tin>& x, const double* mean, const double* m2,
                                                        Tout* out, int64_t os0, uint8_t* cm, bool pearson,
                                                        double factor, int64_t j0, int64_t j1) {
  return standardise_block<true>(x, mean, m2, out, os0, 1, cm, pearson, factor, j0, j1);
}

}  // namespace

namespace df::cpu {

template <typename Tin, typename Tout>
int64_t corr_standardise(const View2D<Tin>& x, const double* mean, const double* m2, Tout* out, int64_t os0,
                         int64_t os1, uint8_t* const_mask, bool pearson, double factor) {
  const int64_t N = x.cols;
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  const bool contig = x.s1 == 1 && os1 == 1;
#if defined(__x86_64__)
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  const bool avx2 = false;
#endif
  int64_t n_const = 0;
  // Dynamic (as colstats): a descheduled thread's static share would stall the region.
#pragma omp parallel for schedule(dynamic, 4) reduction(+ : n_const)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kBlock, j1 = std::min(N, j0 + kBlock);
    if (contig && avx2)
      n_const += contig_avx2<Tin, Tout>(x, mean, m2, out, os0, const_mask, pearson, factor, j0, j1);
    else if (contig)
      n_const += standardise_block<true>(x, mean, m2, out, os0, 1, const_mask, pearson, factor, j0, j1);
    else
      n_const += standardise_block<false>(x, mean, m2, out, os0, os1, const_mask, pearson, factor, j0, j1);
  }
  return n_const;
}

template int64_t corr_standardise(const View2D<float>&, const double*, const double*, float*, int64_t, int64_t,
                                  uint8_t*, bool, double);
template int64_t corr_standardise(const View2D<float>&, const double*, const double*, double*, int64_t, int64_t,
                                  uint8_t*, bool, double);
template int64_t corr_standardise(const View2D<double>&, const double*, const double*, float*, int64_t, int64_t,
                                  uint8_t*, bool, double);
template int64_t corr_standardise(const View2D<double>&, const double*, const double*, double*, int64_t, int64_t,
                                  uint8_t*, bool, double);

}  // namespace df::cpu
