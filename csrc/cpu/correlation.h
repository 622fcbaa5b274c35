// CPU kernels of the correlation op (daunce_fast/correlation/cpu_launch.py drives them; bound in
// csrc/correlation_bind.cpp). Plain C++ over caller-owned memory: no Python, no allocation of
// results. The CUDA kernels of the same op are declared in csrc/cuda/correlation.h; which stage
// runs where is tabulated in csrc/README.md.
//
// Selection state per test column m (arrays owned by Python, so it survives across tiles):
//   thr[m]       float32: the current k-th best score (-inf until the first reduction)
//   cnt[m]       int32:   candidates held in keys[m, :]
//   keys[m, :B]  uint64:  candidates packed as (order-preserving bits of the score) << 32 | ~index
// so that one unsigned comparison orders by (score descending, train index ascending): a total
// order, which makes the result deterministic (ties go to the lower train index).
#pragma once
#include <cstdint>

#include "cpu/view.h"

namespace df::cpu {

// out[k, j] = (x[k, j] - mean[j]) * scale[j], computed in float64 and stored as Tout, where
// scale[j] = factor / sqrt(m2[j]) (pearson) or factor (covariance); out has element strides
// os0, os1. Constant columns are NaN (pearson) or 0 (covariance) and get const_mask[j] = 1.
// Returns the number of constant columns. Instantiated for float and double, both sides.
template <typename Tin, typename Tout>
int64_t corr_standardise(const View2D<Tin>& x, const double* mean, const double* m2, Tout* out, int64_t os0,
                         int64_t os1, uint8_t* const_mask, bool pearson, double factor);

struct SelectState {
  float* thr;
  int32_t* cnt;
  uint64_t* keys;
  int64_t B, k;  // buffer slots per column (B >= k + 1), selection size
};

// Feed scores[r, c] (train index row0 + r, test column col0 + c; rows contiguous) into the
// running top-k of each column. isa: -1 best available, 0 scalar, 1 AVX2, 2 AVX-512 (capped at
// what the CPU has). Tile rows must arrive in ascending train index. OpenMP over test columns.
void corr_select_tile(const View2D<float>& scores, int64_t row0, int64_t col0, SelectState st, int isa);

// values/indices [M, k] (C-contiguous): the k best of each column, best first; slots with no
// candidate (NaN or constant columns) get NaN / -1. Consumes the state (reorders keys).
void corr_select_finish(SelectState st, int64_t M, float* values, int64_t* indices);

// Fortran-ABI BLAS sgemm_ with 32-bit ints (the one torch's MKL exports).
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

// Product and selection in ONE OpenMP region of T threads: scores = za.T @ zb (za [K, n], zb [K, M],
// rows contiguous, strides < 2^31) by blocks of `sub` train rows, thread t selecting into state t
// (thr + t M, cnt + t M, keys + t M B). Merge the T states with corr_topk_merge.
void corr_topk_fused(const View2D<float>& za, const View2D<float>& zb, int64_t row0, SelectState st, int64_t T,
                     int64_t sub, SgemmFn sgemm);

// values/indices [M, k]: the k best of each column over the T states cnt [T, M], keys [T, M, B].
void corr_topk_merge(const int32_t* cnt, const uint64_t* keys, int64_t T, int64_t M, int64_t B, int64_t k,
                     float* values, int64_t* indices);

}  // namespace df::cpu
