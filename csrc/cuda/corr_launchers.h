// Host entry points of the correlation CUDA kernels (csrc/cuda/corr_tile.cu). Plain C++ (no CUDA
// headers) so the pybind11 bindings compile with the host compiler. Each returns a cudaError_t as
// int (0 = ok) and runs on the given stream (cudaStream_t as void*). precision: 0 fp32, 1 tf32, 2 bf16.
// za [K, n] and zb [K, M] are float32 with unit column stride and row strides lda / ldb (elements).
#pragma once
#include <cstdint>

// out[i, j] (row stride ldo) = sum_k za[k, i] zb[k, j], clipped to [-1, 1] when clip (NaN kept).
int df_corr_tile_cuda(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K,
                      float* out, int64_t ldo, int clip, int precision, void* stream);

// Append every S[i, j] > thr[j] to column j's buffer: slot = atomicAdd(cnt + j, 1);
// cand_v[j * C + slot] = S[i, j], cand_i[j * C + slot] = row0 + i while slot < C.
int df_corr_filter_cuda(const float* za, int64_t lda, const float* zb, int64_t ldb, int64_t n, int64_t M, int64_t K,
                        const float* thr, int* cnt, float* cand_v, int64_t* cand_i, int64_t C, int64_t row0,
                        int precision, void* stream);
