// pybitnet's C++ kernels as a Python module, bound one role at a time (the CPU, the format
// table, ternary and dense weights, the float ops; attention and the K-quant quantizers in
// bind_attention.cpp and bind_kquants.cpp, the helpers they share in bind.h).
//
// kernels/registry.py is the one door to this module: it checks, once and for every tier, the
// shapes and sizes that callers pass (input columns, scale shapes, bytes per format). This file
// checks only what it alone sees: invalid codes found while repacking weights, and the indices
// and cache geometry of the ops that index memory with them (ids, rope, attention).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "bind.h"
#include "cpu.h"
#include "formats.h"
#include "ops.h"
#include "ternary.h"
#include "threadpool.h"
#include "tiers.h"

using namespace nb::literals;

namespace pybitnet {

const TierKernels &tier_named(const std::string &name) {
    for (const TierKernels *t : supported_tiers())
        if (name == t->name) return *t;
    throw nb::value_error(("kernel tier '" + name + "' is not supported by this CPU").c_str());
}

namespace {

using Bytes = Array<const uint8_t, nb::ndim<1>>;
using Rows = Array<const float, nb::ndim<2>>;
using StridedRows = nb::ndarray<const float, nb::ndim<2>, nb::device::cpu>;  // any strides

[[noreturn]] void raise_format_error(const std::string &message) {
    nb::object cls = nb::module_::import_("pybitnet.errors").attr("FormatError");
    PyErr_SetString(cls.ptr(), message.c_str());
    throw nb::python_error();
}

// y (n, out) float32 from run(y's data), run without the GIL: the shape of every linear kernel.
template <typename Run>
nb::ndarray<nb::numpy, float> linear_output(int64_t n, int64_t out, const Run &run) {
    auto y = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(out)});
    {
        nb::gil_scoped_release released;
        run(y.data());
    }
    return y;
}

// A float or Q-format matrix in its file's bytes (kept alive by holding the array).
struct DenseMatrix {
    DenseView view;
    nb::object owner;
};

void bind_cpu(nb::module_ &m) {
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
        d["amx_int8"] = f.amx_int8;
        d["asimd"] = f.asimd;
        d["asimddp"] = f.asimddp;
        return d;
    });
    m.def(
        "supported_tiers",
        []() {
            std::vector<std::string> names;
            for (const TierKernels *t : supported_tiers()) names.emplace_back(t->name);
            return names;
        },
        "Kernel tiers this CPU and OS can run, best first.");
    m.def("set_threads", &set_pool_threads, "n"_a, "Threads the kernels use (the pool restarts).");
    m.def("threads", &pool_threads);
}

// The layout facts that Python must agree with (tests compare them with formats.TYPES and
// kernels.layout).
void bind_layout(nb::module_ &m) {
    m.def(
        "format_table",
        []() {
            std::vector<std::tuple<std::string, int, int64_t, int64_t, bool>> rows;
            for (const FormatTraits &f : kFormats)
                rows.emplace_back(f.name, f.id, f.block_size, f.type_size, f.ternary);
            return rows;
        },
        "formats.h's table: [(name, ggml type id, block size, bytes per block, ternary)].");
    m.attr("I2S_TAIL_BYTES") = kI2sTailBytes;
    m.attr("KEY_BLOCK") = kKeyBlock;
    m.attr("KV_Q8_CHUNK") = kKvQ8Chunk;
    m.def("kv_value_row_bytes", &kv_value_row_bytes, "kv_type"_a, "d"_a,
          "Bytes of one position's values of one kv head in a cache of KvType kv_type (tiers.h).");
}

void init_ternary_from_codes(TernaryMatrix *self, Array<const int8_t, nb::ndim<2>> codes,
                             Rows scales) {
    const int64_t rows = codes.shape(0), cols = codes.shape(1);
    int64_t bad;
    {
        nb::gil_scoped_release released;
        new (self) TernaryMatrix(codes.data(), rows, cols, scales.data(), scales.shape(1), &bad);
    }
    if (bad >= 0) {
        self->~TernaryMatrix();
        raise_format_error("ternary codes: element " + str(bad) + " (row " + str(bad / cols) +
                           ", column " + str(bad % cols) + ") is not -1, 0 or 1");
    }
}

using Part = std::tuple<int, Bytes, int64_t>;  // (ggml type id, the part's bytes, its rows)

void init_ternary_from_parts(TernaryMatrix *self, const std::vector<Part> &parts, int64_t cols,
                             Rows scales) {
    std::vector<TernaryMatrix::Packed> packed;
    for (const auto &[fmt, data, rows] : parts) packed.push_back({fmt, data.data(), rows});
    int64_t bad, bad_part;
    {
        nb::gil_scoped_release released;
        new (self) TernaryMatrix(packed, cols, scales.data(), scales.shape(1), &bad, &bad_part);
    }
    if (bad >= 0) {
        self->~TernaryMatrix();
        raise_format_error("ternary part " + str(bad_part) + ": element " + str(bad) + " (row " +
                           str(bad / cols) + ", column " + str(bad % cols) +
                           ") has the invalid 2-bit code 3");
    }
}

void bind_ternary(nb::module_ &m) {
    nb::class_<TernaryMatrix>(m, "TernaryMatrix",
                              "Ternary weights repacked for the native BitLinear kernels.")
        .def("__init__", &init_ternary_from_codes, "codes"_a, "scales"_a,
             "codes int8 (rows, cols) in {-1, 0, 1}; scales float32 (rows, 1 or cols / 256).")
        .def("__init__", &init_ternary_from_parts, "parts"_a, "cols"_a, "scales"_a,
             "parts: [(ggml type, bytes, rows)] stacked row-wise, straight from the file.")
        .def_prop_ro("shape", [](const TernaryMatrix &w) { return nb::make_tuple(w.rows(), w.cols()); })
        .def_prop_ro("groups", &TernaryMatrix::groups)
        .def_prop_ro("nbytes", &TernaryMatrix::nbytes);

    m.def(
        "bitlinear",
        [](const std::string &tier, const TernaryMatrix &w, Rows x) {
            const TierKernels &t = tier_named(tier);
            return linear_output(x.shape(0), w.rows(), [&](float *y) {
                bitlinear(t, w, x.data(), x.shape(0), y);
            });
        },
        "tier"_a, "w"_a, "x"_a, "BitLinear (docs/SPEC.md §1): y (n, rows) for x (n, cols) float32.");
}

void bind_dense(nb::module_ &m) {
    nb::class_<DenseMatrix>(m, "DenseMatrix", "A float or Q-format matrix read in place.")
        .def(
            "__init__",
            [](DenseMatrix *self, Bytes data, int fmt, int64_t rows, int64_t cols, nb::handle owner) {
                const FormatTraits *f = find_format(fmt);
                if (f == nullptr || f->ternary)
                    throw nb::value_error(("no dense kernel for ggml type " + str(fmt)).c_str());
                new (self) DenseMatrix{{data.data(), rows, cols, row_bytes(*f, cols), fmt},
                                       nb::borrow(owner)};
            },
            "data"_a, "fmt"_a, "rows"_a, "cols"_a, "owner"_a,
            "data: the matrix's bytes; owner: the object that keeps them alive.")
        .def_prop_ro("shape", [](const DenseMatrix &w) { return nb::make_tuple(w.view.rows, w.view.cols); })
        .def_prop_ro("fmt", [](const DenseMatrix &w) { return w.view.fmt; })
        .def_prop_ro("nbytes", [](const DenseMatrix &w) { return w.view.rows * w.view.row_bytes; });

    m.def(
        "dense_linear",
        [](const std::string &tier, const DenseMatrix &w, Rows x) {
            const TierKernels &t = tier_named(tier);
            return linear_output(x.shape(0), w.view.rows, [&](float *y) {
                dense_linear(t, w.view, x.data(), x.shape(0), y);
            });
        },
        "tier"_a, "w"_a, "x"_a, "y (n, rows) = x (n, cols) . w^T in float32.");

    m.def(
        "dense_rows",
        [](const std::string &tier, const DenseMatrix &w, Array<const int64_t, nb::ndim<1>> ids) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = ids.shape(0);
            for (int64_t i = 0; i < n; ++i)
                if (ids.data()[i] < 0 || ids.data()[i] >= w.view.rows)
                    throw nb::value_error(("row " + str(ids.data()[i]) + " is outside [0, " +
                                           str(w.view.rows) + ")").c_str());
            return linear_output(n, w.view.cols, [&](float *out) {
                t.dense_rows(w.view, ids.data(), n, out);
            });
        },
        "tier"_a, "w"_a, "ids"_a, "Rows ids of w as float32 (n, cols).");
}

void bind_int8(nb::module_ &m) {
    nb::class_<Int8Matrix>(m, "Int8Matrix", "A dense matrix quantized per row to int8.")
        .def(
            "__init__",
            [](Int8Matrix *self, const std::string &tier, const DenseMatrix &w) {
                const TierKernels &t = tier_named(tier);
                nb::gil_scoped_release released;
                new (self) Int8Matrix(t, w.view);
            },
            "tier"_a, "w"_a)
        .def_prop_ro("shape", [](const Int8Matrix &w) { return nb::make_tuple(w.rows(), w.cols()); })
        .def_prop_ro("nbytes", &Int8Matrix::nbytes)
        .def("quantized", [](const Int8Matrix &w) {
            // (q int8 (rows, cols), scales float32 (rows,)): copies, for tests.
            const Int8View v = w.view();
            auto q = new_array<int8_t>({static_cast<size_t>(v.rows), static_cast<size_t>(v.cols)});
            auto s = new_array<float>({static_cast<size_t>(v.rows)});
            for (int64_t r = 0; r < v.rows; ++r) {
                for (int64_t k = 0; k < v.cols; k += 64)
                    std::memcpy(q.data() + r * v.cols + k, int8_chunk(v, r, k),
                                std::min<int64_t>(64, v.cols - k));
                s.data()[r] = v.scales[r];
            }
            return nb::make_tuple(q, s);
        });

    m.def(
        "int8_linear",
        [](const std::string &tier, const Int8Matrix &w, Rows x) {
            const TierKernels &t = tier_named(tier);
            return linear_output(x.shape(0), w.rows(), [&](float *y) {
                int8_linear(t, w, x.data(), x.shape(0), y);
            });
        },
        "tier"_a, "w"_a, "x"_a, "y (n, rows) = int8 w . x quantized per row to int8.");
}

void bind_float_ops(nb::module_ &m) {
    m.def(
        "rmsnorm",
        [](const std::string &tier, Rows x, Array<const float, nb::ndim<1>> w, float eps) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = x.shape(0), dim = x.shape(1);
            if (static_cast<int64_t>(w.shape(0)) != dim)
                throw nb::value_error(("rmsnorm: x has " + str(dim) + " columns, the weights " +
                                       str(w.shape(0))).c_str());
            return linear_output(n, dim, [&](float *out) {
                rmsnorm(t, x.data(), w.data(), n, dim, eps, out);
            });
        },
        "tier"_a, "x"_a, "w"_a, "eps"_a, "x / sqrt(mean(x^2) + eps) * w, row by row.");

    m.def(
        "rope",
        [](const std::string &tier, Array<float, nb::ndim<3>> x, Rows cos, Rows sin,
           int64_t rope_dim, bool neox) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = x.shape(0), heads = x.shape(1), head_dim = x.shape(2);
            const auto angles = [&](const Rows &a) {
                return static_cast<int64_t>(a.shape(0)) == n &&
                       static_cast<int64_t>(a.shape(1)) == rope_dim / 2;
            };
            if (rope_dim < 0 || rope_dim % 2 || rope_dim > head_dim || !angles(cos) || !angles(sin))
                throw nb::value_error("rope: cos and sin must be (n, rope_dim / 2), rope_dim even and <= head_dim");
            nb::gil_scoped_release released;
            t.rope(x.data(), n, heads, head_dim, rope_dim, cos.data(), sin.data(), neox);
        },
        "tier"_a, "x"_a, "cos"_a, "sin"_a, "rope_dim"_a, "neox"_a,
        "Rotates x (n, heads, head_dim) in place by per-position angles.");

    m.def(
        "gated",
        [](const std::string &tier, const std::string &act, StridedRows g, StridedRows u) {
            const TierKernels &t = tier_named(tier);
            if (act != "silu" && act != "relu2") throw nb::value_error(("unknown activation " + act).c_str());
            if (g.shape(0) != u.shape(0) || g.shape(1) != u.shape(1))
                throw nb::value_error("gated: g and u must have the same shape");
            if (g.stride(1) != 1 || u.stride(1) != 1)
                throw nb::value_error("gated: the elements of a row must be contiguous");
            return linear_output(g.shape(0), g.shape(1), [&](float *out) {
                gated_rows(t, act == "silu" ? 0 : 1, g.data(), g.stride(0), u.data(), u.stride(0),
                           g.shape(0), g.shape(1), out);
            });
        },
        "tier"_a, "act"_a, "g"_a, "u"_a,
        "act(g) * u elementwise; act silu or relu2; rows may be strided (views of a wider array).");
}

}  // namespace
}  // namespace pybitnet

NB_MODULE(_native, m) {
    using namespace pybitnet;
    m.doc() = "pybitnet's C++ kernel core (kernels/registry.py is its one door)";
    bind_cpu(m);
    bind_layout(m);
    bind_ternary(m);
    bind_dense(m);
    bind_int8(m);
    bind_kquants(m);
    bind_float_ops(m);
    bind_attention(m);
}
