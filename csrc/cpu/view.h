// A strided 2-D view over memory owned by the caller (a numpy buffer): the type the CPU kernels
// take, kept free of pybind11 so that kernels compile without Python headers.
#pragma once
#include <cstdint>

namespace df {

// Element strides (not bytes); no copy, no ownership.
template <typename T>
struct View2D {
  const T* data;
  int64_t rows, cols, s0, s1;
  inline T at(int64_t i, int64_t j) const { return data[i * s0 + j * s1]; }
};

}  // namespace df
