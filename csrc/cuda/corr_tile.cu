// CUDA score tiles of the correlation (no cuBLAS): S[i, j] = sum_k za[k, i] * zb[k, j] for a train
// tile za [K, n] and the test matrix zb [K, M], both already standardised (float32, columns
// contiguous: element (k, i) at za[k * lda + i]).
//
// One 64 x 64 tile of S per block of 128 threads (4 warps); K in steps of 32 staged through
// shared memory. Products:
//   PREC_FP32  SIMT FMA, each thread a 8 x 4 micro-tile (exact fp32)
//   PREC_TF32  tensor cores, WMMA m16n16k8 tf32 (inputs rounded to tf32, fp32 accumulation)
//   PREC_BF16  tensor cores, WMMA m16n16k16 bf16 (inputs rounded to bf16 when staged)
// The tile is gathered in shared memory, then the epilogue either writes it (FULL, optional clip
// to [-1, 1] that keeps NaN) or filters it (FILTER): S[i, j] > thr[j] is appended to column j's
// candidate buffer with slot = atomicAdd(cnt[j], 1) (written while slot < C; the caller sees
// cnt[j] > C and redoes the tile). NaN never passes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "cuda/correlation.h"

namespace {
using namespace nvcuda;

constexpr int BN = 64, BM = 64, BK = 32, THREADS = 128;
constexpr int PAD_F = 4, PAD_H = 8;  // WMMA ldm: multiple of 4 floats / 8 halves; rows stay 32-byte aligned

enum { PREC_FP32 = 0, PREC_TF32 = 1, PREC_BF16 = 2 };

template <int PREC>
struct Stage {
  using T = typename std::conditional<PREC == PREC_BF16, __nv_bfloat16, float>::type;
  static constexpr int PAD = PREC == PREC_BF16 ? PAD_H : PAD_F;
  __device__ static T cvt(float v) {
    if constexpr (PREC == PREC_BF16)
      return __float2bfloat16(v);
    else
      return v;
  }
};

struct Epilogue {
  // FULL
  float* out;
  int64_t ldo;
  int clip;
  // FILTER
  const float* thr;
  int* cnt;
  float* cand_v;
  int64_t* cand_i;
  int64_t C, row0;
};

template <int PREC, bool FILTER>
__global__ void __launch_bounds__(THREADS) corr_tile_kernel(const float* __restrict__ za, int64_t lda,
                                                            const float* __restrict__ zb, int64_t ldb, int64_t n,
                                                            int64_t M, int64_t K, Epilogue ep) {
  using S = Stage<PREC>;
  using T = typename S::T;
  __shared__ __align__(32) T As[BK][BN + S::PAD];  // As[k][i] = za[k0 + k, i0 + i]
  __shared__ __align__(32) T Bs[BK][BM + S::PAD];  // Bs[k][j] = zb[k0 + k, j0 + j]
  __shared__ __align__(32) float Cs[BN][BM + PAD_F];

  const int tid = threadIdx.x;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BM;

  // SIMT accumulators (fp32 path): rows ty*8 + r, columns tx*4 + c
  const int ty = tid / 16, tx = tid % 16;
  float acc[8][4];
  // WMMA accumulators: warp w owns rows (w / 2) * 32, columns (w % 2) * 32, as 2 x 2 fragments
  const int warp = tid / 32, wr = (warp / 2) * 32, wc = (warp % 2) * 32;
  constexpr int FK = PREC == PREC_BF16 ? 16 : 8;
  using FragT = typename std::conditional<PREC == PREC_BF16, __nv_bfloat16, wmma::precision::tf32>::type;
  wmma::fragment<wmma::accumulator, 16, 16, FK, float> cf[2][2];
  if constexpr (PREC == PREC_FP32) {
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
  } else {
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 2; ++b) wmma::fill_fragment(cf[a][b], 0.f);
  }

  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    // stage: coalesced along i / j; zero outside the matrices (adds nothing to the sums)
    for (int e = tid; e < BK * BN; e += THREADS) {
      const int kk = e / BN, ii = e % BN;
      const int64_t gk = k0 + kk, gi = i0 + ii;
      As[kk][ii] = S::cvt(gk < K && gi < n ? za[gk * lda + gi] : 0.f);
    }
    for (int e = tid; e < BK * BM; e += THREADS) {
      const int kk = e / BM, jj = e % BM;
      const int64_t gk = k0 + kk, gj = j0 + jj;
      Bs[kk][jj] = S::cvt(gk < K && gj < M ? zb[gk * ldb + gj] : 0.f);
    }
    __syncthreads();
    if constexpr (PREC == PREC_FP32) {
#pragma unroll 8
      for (int kk = 0; kk < BK; ++kk) {
        float a[8], b[4];
#pragma unroll
        for (int r = 0; r < 8; ++r) a[r] = As[kk][ty * 8 + r];
#pragma unroll
        for (int c = 0; c < 4; ++c) b[c] = Bs[kk][tx * 4 + c];
#pragma unroll
        for (int r = 0; r < 8; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < BK; kk += FK) {
        // A = za^T: element (i, k) at As[k][i] -> column-major with ldm = BN + PAD
        wmma::fragment<wmma::matrix_a, 16, 16, FK, FragT, wmma::col_major> af[2];
        wmma::fragment<wmma::matrix_b, 16, 16, FK, FragT, wmma::row_major> bf[2];
#pragma unroll
        for (int a = 0; a < 2; ++a) {
          wmma::load_matrix_sync(af[a], &As[kk][wr + a * 16], BN + S::PAD);
          if constexpr (PREC == PREC_TF32)
#pragma unroll
            for (int t = 0; t < af[a].num_elements; ++t) af[a].x[t] = wmma::__float_to_tf32(af[a].x[t]);
        }
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          wmma::load_matrix_sync(bf[b], &Bs[kk][wc + b * 16], BM + S::PAD);
          if constexpr (PREC == PREC_TF32)
#pragma unroll
            for (int t = 0; t < bf[b].num_elements; ++t) bf[b].x[t] = wmma::__float_to_tf32(bf[b].x[t]);
        }
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
          for (int b = 0; b < 2; ++b) wmma::mma_sync(cf[a][b], af[a], bf[b], cf[a][b]);
      }
    }
    __syncthreads();
  }

  // gather the 64 x 64 tile in shared memory
  if constexpr (PREC == PREC_FP32) {
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) Cs[ty * 8 + r][tx * 4 + c] = acc[r][c];
  } else {
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 2; ++b)
        wmma::store_matrix_sync(&Cs[wr + a * 16][wc + b * 16], cf[a][b], BM + PAD_F, wmma::mem_row_major);
  }
  __syncthreads();

  // epilogue: consecutive threads take consecutive columns (coalesced writes)
  for (int e = tid; e < BN * BM; e += THREADS) {
    const int r = e / BM, c = e % BM;
    const int64_t gi = i0 + r, gj = j0 + c;
    if (gi >= n || gj >= M) continue;
    float v = Cs[r][c];
    if constexpr (FILTER) {
      if (v > ep.thr[gj]) {  // false for NaN
        const int slot = atomicAdd(ep.cnt + gj, 1);
        if (slot < ep.C) {
          ep.cand_v[gj * ep.C + slot] = v;
          ep.cand_i[gj * ep.C + slot] = ep.row0 + gi;
        }
      }
    } else {
      if (ep.clip) v = v > 1.f ? 1.f : (v < -1.f ? -1.f : v);  // comparisons keep NaN
      ep.out[gi * ep.ldo + gj] = v;
    }
  }
}

template <bool FILTER>
int launch(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K, Epilogue ep,
           int precision, void* stream) {
  if (n == 0 || M == 0) return 0;
  if (precision < PREC_FP32 || precision > PREC_BF16) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t gx = (n + BN - 1) / BN;
  if (gx > 2147483647LL) return static_cast<int>(cudaErrorInvalidConfiguration);
  auto s = static_cast<cudaStream_t>(stream);
  // gridDim.y is limited to 65,535 blocks: launch slices of at most 65,535 x BM test columns, each
  // with shifted column pointers (zb, out, thr, cnt, candidate rows) and its own width as M.
  // Same slicing as daunce_fast/correlation/grids.py (launch_grids).
  constexpr int64_t kGridYLimit = 65535, kWidth = kGridYLimit * BM;
  for (int64_t c0 = 0; c0 < M; c0 += kWidth) {
    const int64_t m = M - c0 < kWidth ? M - c0 : kWidth;
    dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>((m + BM - 1) / BM));
    Epilogue e = ep;
    if constexpr (FILTER) {
      e.thr += c0;
      e.cnt += c0;
      e.cand_v += c0 * ep.C;
      e.cand_i += c0 * ep.C;
    } else {
      e.out += c0;
    }
    const float* zbs = zb + c0;
    switch (precision) {
      case PREC_FP32: corr_tile_kernel<PREC_FP32, FILTER><<<grid, THREADS, 0, s>>>(za, lda, zbs, ldb, n, m, K, e); break;
      case PREC_TF32: corr_tile_kernel<PREC_TF32, FILTER><<<grid, THREADS, 0, s>>>(za, lda, zbs, ldb, n, m, K, e); break;
      default: corr_tile_kernel<PREC_BF16, FILTER><<<grid, THREADS, 0, s>>>(za, lda, zbs, ldb, n, m, K, e); break;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}
}  // namespace

namespace df::cuda {

int corr_tile(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K, float* out,
              int64_t ldo, int clip, int precision, void* stream) {
  Epilogue ep{};
  ep.out = out;
  ep.ldo = ldo;
  ep.clip = clip;
  return launch<false>(za, lda, zb, ldb, n, M, K, ep, precision, stream);
}

int corr_filter(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K,
                const float* thr, int* cnt, float* cand_v, int64_t* cand_i, int64_t C, int64_t row0, int precision,
                void* stream) {
  Epilogue ep{};
  ep.thr = thr;
  ep.cnt = cnt;
  ep.cand_v = cand_v;
  ep.cand_i = cand_i;
  ep.C = C;
  ep.row0 = row0;
  return launch<true>(za, lda, zb, ldb, n, M, K, ep, precision, stream);
}

// Here rather than in a file of its own: corr_tile.cu is the only CUDA source.
const char* error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // namespace df::cuda
