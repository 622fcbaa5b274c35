// Shared helpers for the pybind11 bindings: buffer checks that raise Python errors
// (never crash) on wrong dtypes, ranks or strides.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace df {
namespace py = pybind11;

// A 2-D view over a numpy buffer: element strides (not bytes), no copy.
template <typename T>
struct View2D {
  const T* data;
  int64_t rows, cols, s0, s1;
  inline T at(int64_t i, int64_t j) const { return data[i * s0 + j * s1]; }
};

template <typename T>
View2D<T> view2d(const py::array& a, const char* name) {
  if (a.ndim() != 2) throw py::value_error(std::string(name) + ": expected a 2-D array, got ndim=" + std::to_string(a.ndim()));
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().kind() != py::dtype::of<T>().kind() || a.itemsize() != sizeof(T))
    throw py::type_error(std::string(name) + ": unexpected dtype " + std::string(py::str(a.dtype())));
  for (int d = 0; d < 2; ++d)
    if (a.strides(d) % static_cast<py::ssize_t>(sizeof(T)) != 0)
      throw py::value_error(std::string(name) + ": strides must be multiples of the item size");
  return View2D<T>{static_cast<const T*>(a.data()), a.shape(0), a.shape(1),
                   a.strides(0) / static_cast<py::ssize_t>(sizeof(T)), a.strides(1) / static_cast<py::ssize_t>(sizeof(T))};
}

template <typename T>
T* mutable_1d(py::array& a, int64_t n, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != n) throw py::value_error(std::string(name) + ": expected shape [" + std::to_string(n) + "]");
  if (a.dtype().kind() != py::dtype::of<T>().kind() || a.itemsize() != sizeof(T))
    throw py::type_error(std::string(name) + ": unexpected dtype " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style) || !a.writeable()) throw py::value_error(std::string(name) + ": must be contiguous and writeable");
  return static_cast<T*>(a.mutable_data());
}

}  // namespace df
