#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cpu.h"

namespace nb = nanobind;

NB_MODULE(_native, m) {
    m.doc() = "pybitnet's C++ kernel core";
    m.def("cpu_model_name", &pybitnet::cpu_model_name);
    m.def("cpu_features", []() {
        const auto &f = pybitnet::cpu_features();
        nb::dict d;
        d["avx2"] = f.avx2 && f.fma;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512vnni"] = f.avx512vnni;
        return d;
    });
}
