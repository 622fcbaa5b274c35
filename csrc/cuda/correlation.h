// CUDA kernels of the correlation op (csrc/cuda/corr_tile.cu; driven by
// daunce_fast/correlation/cuda_launch.py, bound in csrc/correlation_bind.cpp). The CPU kernels of the same
// op are declared in csrc/cpu/correlation.h; which stage runs where is tabulated in csrc/README.md.
//
// Plain C++ (no CUDA headers) so that the bindings compile with the host compiler. Pointers are
// device pointers; each launcher returns a cudaError_t as int (0 = ok) and runs on the given
// stream (a cudaStream_t as void*). precision: 0 fp32, 1 tf32, 2 bf16. za [K, n] and zb [K, M]
// are float32 with unit column stride and row strides lda / ldb (elements).
#pragma once
#include <cstdint>

namespace df::cuda {

// out[i, j] (row stride ldo) = sum_k za[k, i] zb[k, j], clipped to [-1, 1] when clip (NaN kept).
int corr_tile(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K, float* out,
              int64_t ldo, int clip, int precision, void* stream);

// Append every S[i, j] > thr[j] to column j's buffer: slot = atomicAdd(cnt + j, 1);
// cand_v[j * C + slot] = S[i, j], cand_i[j * C + slot] = row0 + i while slot < C.
int corr_filter(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K,
                const float* thr, int* cnt, float* cand_v, int64_t* cand_i, int64_t C, int64_t row0, int precision,
                void* stream);

// cudaGetErrorString of a launcher's return value.
const char* error_string(int err);

}  // namespace df::cuda
