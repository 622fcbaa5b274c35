// Fused path of the CPU top-k (cpu/correlation.h): product and selection in ONE OpenMP region per
// chunk of train rows. Each thread takes blocks of `sub` train rows (dynamic, so in increasing
// order per thread), multiplies them with a caller-supplied BLAS sgemm (the Fortran `sgemm_` that
// torch's MKL exports, called from inside the parallel region, where MKL runs single-threaded)
// into its own L2-sized tile, and feeds that tile into its own selection state; corr_topk_merge
// merges the T states at the end. One region per chunk instead of two per tile: on an
// oversubscribed machine each region costs a wait for a core, and the tile never leaves the
// thread's cache.
#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef DF_WITH_OPENMP
#include <omp.h>
#endif

#include "cpu/correlation.h"
#include "cpu/select_core.h"

namespace df::cpu {

void corr_topk_fused(const View2D<float>& a, const View2D<float>& b, int64_t row0, SelectState st0, int64_t T,
                     int64_t sub, SgemmFn sgemm) {
  const int64_t M = b.cols, B = st0.B, k = st0.k;
  const int isa = select::isa_level();
  const int64_t n = a.cols, K = a.rows, nblocks = (n + sub - 1) / sub;
#pragma omp parallel num_threads(static_cast<int>(T))
  {
    int t = 0;
#ifdef DF_WITH_OPENMP
    t = omp_get_thread_num();
#endif
    const SelectState st{st0.thr + t * M, st0.cnt + t * M, st0.keys + t * M * B, B, k};
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
      // Column-major BLAS on row-major data: tile^T [M x rows] = zb^T [M x K] (za block) [K x rows],
      // i.e. tile[i, j] = sum_k za[k, r0 + i] zb[k, j] in row-major [rows, M].
      sgemm(&tn, &tt, &im, &in, &ik, &one, b.data, &ldb, a.data + r0, &lda, &zero, tile.data(), &ldc);
      constexpr int64_t CB = 64;
      for (int64_t c0 = 0; c0 < M; c0 += CB)
        select::select_columns(tile.data(), M, rows, row0 + r0, 0, c0, std::min(M, c0 + CB), st, isa, tmp);
    }
  }
}

void corr_topk_merge(const int32_t* cnt, const uint64_t* keys, int64_t T, int64_t M, int64_t B, int64_t k,
                     float* values, int64_t* indices) {
#pragma omp parallel
  {
    std::vector<uint64_t> all;
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      all.clear();
      for (int64_t t = 0; t < T; ++t) {
        const uint64_t* b = keys + (t * M + m) * B;
        all.insert(all.end(), b, b + cnt[t * M + m]);
      }
      select::emit_best(all.data(), static_cast<int64_t>(all.size()), k, values + m * k, indices + m * k);
    }
  }
}

}  // namespace df::cpu
