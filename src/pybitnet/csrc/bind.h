// What the binding units share (module.cpp, bind_attention.cpp, bind_kquants.cpp): the array
// types, the tier a name picks, and new arrays for results.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "tiers.h"

namespace nb = nanobind;

namespace pybitnet {

template <typename T, typename... Shape>
using Array = nb::ndarray<T, nb::c_contig, nb::device::cpu, Shape...>;

inline std::string str(int64_t v) { return std::to_string(v); }

// The supported tier of that name; a ValueError otherwise (module.cpp).
const TierKernels &tier_named(const std::string &name);

// A new numpy array of `shape`, owned by Python.
template <typename T>
nb::ndarray<nb::numpy, T> new_array(std::initializer_list<size_t> shape) {
    size_t n = 1;
    for (size_t d : shape) n *= d;
    T *data = new T[n > 0 ? n : 1];
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<T *>(p); });
    return nb::ndarray<nb::numpy, T>(data, shape, owner);
}

void bind_attention(nb::module_ &m);  // bind_attention.cpp
void bind_kquants(nb::module_ &m);    // bind_kquants.cpp

}  // namespace pybitnet
