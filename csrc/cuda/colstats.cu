// CUDA column statistics, same semantics as csrc/cpu/colstats.cpp: one thread per column,
// rows read coalesced across the warp, two passes in float64.
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

namespace {
__global__ void colstats_kernel(const float* __restrict__ x, int64_t K, int64_t N, int64_t ld,
                                double* __restrict__ mean, double* __restrict__ m2,
                                unsigned long long* __restrict__ first_bad) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  double s = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const float v = x[k * ld + j];
    if (!isfinite(v)) atomicMin(first_bad, static_cast<unsigned long long>(j * K + k));
    s += static_cast<double>(v);
  }
  const double mu = s / static_cast<double>(K);
  double q = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const double d = static_cast<double>(x[k * ld + j]) - mu;
    q += d * d;
  }
  mean[j] = mu;
  m2[j] = q;
}
}  // namespace

int df_colstats_f32_cuda(const float* x, int64_t K, int64_t N, int64_t ld, double* mean, double* m2,
                         unsigned long long* first_bad, void* stream) {
  if (N == 0) return 0;
  const int threads = 256;
  const int64_t blocks = (N + threads - 1) / threads;
  colstats_kernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(x, K, N, ld, mean, m2, first_bad);
  return static_cast<int>(cudaGetLastError());
}

const char* df_cuda_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }
