#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu.h"
#include "ternary.h"
#include "threadpool.h"
#include "tiers.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace pybitnet {
namespace {

template <typename T, typename... Shape>
using Array = nb::ndarray<T, nb::c_contig, nb::device::cpu, Shape...>;

// The tiers this CPU and OS can run, best first.
std::vector<const TierKernels *> supported() {
    std::vector<const TierKernels *> tiers;
#ifdef PYBITNET_X86_TIERS
    const CpuFeatures &f = cpu_features();
    if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.avx2 && f.fma && f.f16c)
        tiers.push_back(&avx512_kernels);
    if (f.avx2 && f.fma && f.f16c) tiers.push_back(&avx2_kernels);
#endif
    tiers.push_back(&scalar_kernels);
    return tiers;
}

const TierKernels &tier_named(const std::string &name) {
    for (const TierKernels *t : supported())
        if (name == t->name) return *t;
    throw nb::value_error(("kernel tier '" + name + "' is not supported by this CPU").c_str());
}

[[noreturn]] void raise_format_error(const std::string &message) {
    nb::object cls = nb::module_::import_("pybitnet.errors").attr("FormatError");
    PyErr_SetString(cls.ptr(), message.c_str());
    throw nb::python_error();
}

template <typename T>
nb::ndarray<nb::numpy, T> new_array(std::initializer_list<size_t> shape) {
    size_t n = 1;
    for (size_t d : shape) n *= d;
    T *data = new T[n > 0 ? n : 1];
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<T *>(p); });
    return nb::ndarray<nb::numpy, T>(data, shape, owner);
}

}  // namespace
}  // namespace pybitnet

NB_MODULE(_native, m) {
    using namespace pybitnet;
    m.doc() = "pybitnet's C++ kernel core";
    m.def("cpu_model_name", &cpu_model_name);
    m.def("cpu_features", []() {
        const auto &f = cpu_features();
        nb::dict d;
        d["avx2"] = f.avx2 && f.fma;
        d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512vnni"] = f.avx512vnni;
        return d;
    });
    m.def(
        "supported_tiers",
        []() {
            std::vector<std::string> names;
            for (const TierKernels *t : supported()) names.emplace_back(t->name);
            return names;
        },
        "Kernel tiers this CPU and OS can run, best first.");
    m.def("set_threads", &set_pool_threads, "n"_a, "Threads the kernels use (the pool restarts).");
    m.def("threads", &pool_threads);
    m.def(
        "read_all",
        [](Array<const uint8_t, nb::ndim<1>> data) {
            // Sums the data as 64-bit words on the pool's threads: a memory read bandwidth probe
            // for benchmarks (the sum keeps the compiler from skipping the reads).
            const uint64_t *words = reinterpret_cast<const uint64_t *>(data.data());
            const int64_t n = static_cast<int64_t>(data.shape(0) / 8);
            const auto workers = pool();
            const int64_t piece = (n + workers->size() - 1) / workers->size();
            std::vector<uint64_t> partial(workers->size(), 0);
            {
                nb::gil_scoped_release released;
                workers->run(workers->size(), [&](int64_t t) {
                    const int64_t end = std::min(n, (t + 1) * piece);
                    uint64_t sum = 0;
                    for (int64_t i = t * piece; i < end; ++i) sum += words[i];
                    partial[t] = sum;
                });
            }
            uint64_t total = 0;
            for (uint64_t v : partial) total += v;
            return total;
        },
        "data"_a, "Reads every 8-byte word of data on the kernels' threads; returns their sum.");

    m.def(
        "i2s_dequant",
        [](const std::string &tier, Array<const uint8_t, nb::ndim<1>> data, int64_t n) {
            const TierKernels &t = tier_named(tier);
            if (n < 0 || n % 128 != 0 || static_cast<int64_t>(data.shape(0)) != n / 4 + 32)
                throw nb::value_error("I2_S data must hold n / 4 + 32 bytes for n % 128 == 0");
            float scale;
            std::memcpy(&scale, data.data() + n / 4, sizeof scale);
            auto out = new_array<float>({static_cast<size_t>(n)});
            int64_t bad;
            {
                nb::gil_scoped_release released;
                bad = t.i2s_dequant(data.data(), n, scale, out.data());
            }
            if (bad >= 0)
                raise_format_error("I2_S: element " + std::to_string(bad) +
                                   " has code 3, which is not a ternary value");
            return out;
        },
        "tier"_a, "data"_a, "n"_a,
        "n float32 weights from I2_S tensor data (n / 4 bytes of codes, then the scale).");

    nb::class_<TernaryMatrix>(m, "TernaryMatrix",
                              "Ternary weights repacked for the native BitLinear kernels.")
        .def(
            "__init__",
            [](TernaryMatrix *self, Array<const int8_t, nb::ndim<2>> codes,
               Array<const float, nb::ndim<2>> scales) {
                const int64_t rows = codes.shape(0), cols = codes.shape(1);
                const int64_t groups = scales.shape(1);
                if (static_cast<int64_t>(scales.shape(0)) != rows ||
                    !(groups == 1 || (cols % 256 == 0 && groups == cols / 256)))
                    throw nb::value_error(
                        "scales must be (rows, 1) or (rows, cols / 256) with cols % 256 == 0");
                int64_t bad;
                {
                    nb::gil_scoped_release released;
                    new (self) TernaryMatrix(codes.data(), rows, cols, scales.data(), groups, &bad);
                }
                if (bad >= 0) {
                    self->~TernaryMatrix();
                    raise_format_error("ternary codes: element " + std::to_string(bad) +
                                       " (row " + std::to_string(bad / cols) + ", column " +
                                       std::to_string(bad % cols) + ") is not -1, 0 or 1");
                }
            },
            "codes"_a, "scales"_a)
        .def_prop_ro("shape", [](const TernaryMatrix &w) { return nb::make_tuple(w.rows(), w.cols()); })
        .def_prop_ro("groups", &TernaryMatrix::groups)
        .def_prop_ro("nbytes", &TernaryMatrix::nbytes);

    m.def(
        "bitlinear",
        [](const std::string &tier, const TernaryMatrix &w, Array<const float, nb::ndim<2>> x) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = x.shape(0);
            if (static_cast<int64_t>(x.shape(1)) != w.cols())
                throw nb::value_error(("x has " + std::to_string(x.shape(1)) +
                                       " columns, the weights " + std::to_string(w.cols()))
                                          .c_str());
            auto y = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(w.rows())});
            {
                nb::gil_scoped_release released;
                bitlinear(t, w, x.data(), n, y.data());
            }
            return y;
        },
        "tier"_a, "w"_a, "x"_a, "BitLinear (SPEC section 1): y (n, rows) for x (n, cols) float32.");
}
