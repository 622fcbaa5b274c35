// Argument unpacking for the pybind11 bindings: numpy buffers become the views and pointers the
// kernels take (csrc/cpu/view.h), device addresses (ints from torch's data_ptr()) become typed
// pointers. Checks raise Python errors (never crash) on wrong dtypes, ranks, shapes or strides.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/view.h"

namespace df {
namespace py = pybind11;

// A 2-D array of T with any strides (multiples of the item size) -> a view; no copy.
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

// A writeable C-contiguous 1-D array of T with n elements -> its data.
template <typename T>
T* mutable_1d(py::array& a, int64_t n, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != n) throw py::value_error(std::string(name) + ": expected shape [" + std::to_string(n) + "]");
  if (a.dtype().kind() != py::dtype::of<T>().kind() || a.itemsize() != sizeof(T))
    throw py::type_error(std::string(name) + ": unexpected dtype " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style) || !a.writeable()) throw py::value_error(std::string(name) + ": must be contiguous and writeable");
  return static_cast<T*>(a.mutable_data());
}

template <typename T>
bool is_dtype(const py::array& a) {
  return a.dtype().is(py::dtype::of<T>());
}
// uint64 by kind and size: numpy's uint64 and ulonglong are distinct dtypes of the same layout.
inline bool is_u64(const py::array& a) { return a.dtype().kind() == 'u' && a.itemsize() == 8; }
inline bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

// The data of a writeable array as T* (pybind11 raises if it is read-only); the caller has
// checked dtype and layout.
template <typename T>
T* data_of(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

// A device address passed from Python as an int.
template <typename T>
T* device_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace df
