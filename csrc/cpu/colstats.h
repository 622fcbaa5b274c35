// Column statistics of a loss matrix X [K, N] (float32 or float64, any strides), in float64:
//   mean[j] = X[:, j].mean(),  m2[j] = ((X[:, j] - mean[j])**2).sum()
// Returns the first non-finite entry as the flat index j * K + k (ordered by example j, then
// model k), or -1. OpenMP over blocks of columns. Bound as _C.colstats.
#pragma once
#include <cstdint>

#include "cpu/view.h"

namespace df::cpu {

int64_t colstats(const View2D<float>& x, double* mean, double* m2);
int64_t colstats(const View2D<double>& x, double* mean, double* m2);

}  // namespace df::cpu
