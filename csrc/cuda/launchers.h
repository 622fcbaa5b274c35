// Host-side entry points of the CUDA kernels. Plain C++ (no CUDA headers) so the pybind11
// bindings compile with the host compiler. Every function returns a cudaError_t as int (0 = ok)
// and runs on the given stream (a cudaStream_t passed as void*; nullptr = legacy default).
#pragma once
#include <cstdint>

int df_colstats_f32_cuda(const float* x, int64_t K, int64_t N, int64_t ld, double* mean, double* m2,
                         unsigned long long* first_bad, void* stream);
const char* df_cuda_error_string(int err);
