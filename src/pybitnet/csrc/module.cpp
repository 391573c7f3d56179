// pybitnet's C++ kernels as a Python module, bound one role at a time (the CPU, the format
// table, ternary and dense weights, the float ops, attention).
//
// kernels/registry.py is the one door to this module: it checks, once and for every tier, the
// shapes and sizes that callers pass (input columns, scale shapes, bytes per format). This file
// checks only what it alone sees: invalid codes found while repacking weights, and the indices
// and cache geometry of the ops that index memory with them (ids, rope, attention).
// One file, long because every binding shares its helpers (tier_named, new_array, the shape
// checks), which a split would have to move into a header of their own.
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

#include "cpu.h"
#include "formats.h"
#include "ops.h"
#include "ternary.h"
#include "threadpool.h"
#include "tiers.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace pybitnet {
namespace {

template <typename T, typename... Shape>
using Array = nb::ndarray<T, nb::c_contig, nb::device::cpu, Shape...>;
using Bytes = Array<const uint8_t, nb::ndim<1>>;
using Rows = Array<const float, nb::ndim<2>>;
using StridedRows = nb::ndarray<const float, nb::ndim<2>, nb::device::cpu>;  // any strides

std::string str(int64_t v) { return std::to_string(v); }

const TierKernels &tier_named(const std::string &name) {
    for (const TierKernels *t : supported_tiers())
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

using Heads = Array<const float, nb::ndim<3>>;
// A KV cache array of any element type (kv_type_of).
using CacheArray = nb::ndarray<nb::c_contig, nb::device::cpu>;
// One sequence of a batched attention call: (kc, vc, start, rows), as kernels/numpy_tier.py says.
using Sequence = std::tuple<CacheArray, CacheArray, int64_t, int64_t>;

template <typename A>
bool has_shape(const A &a, std::initializer_list<int64_t> shape) {
    if (a.ndim() != shape.size()) return false;
    int i = 0;
    for (int64_t s : shape)
        if (static_cast<int64_t>(a.shape(i++)) != s) return false;
    return true;
}

// The KvType of a cache array: float32, float16, or uint8 (q8_0's bytes); -1 for any other.
int kv_type_of(const CacheArray &a) {
    const nb::dlpack::dtype t = a.dtype();
    const bool f16 = t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 16;
    return t == nb::dtype<float>() ? kKvF32 : t == nb::dtype<uint8_t>() ? kKvQ8_0 : f16 ? kKvF16 : -1;
}

// Whether kc and vc hold ctx positions of one type as kernels/layout.py kv_cache_shapes says.
bool cache_fits(const CacheArray &kc, const CacheArray &vc, int type, int64_t n_kv, int64_t d, int64_t ctx) {
    const int64_t blocks = ctx / kKeyBlock, row = kv_value_row_bytes(type, d);
    if (type < 0 || kv_type_of(vc) != type) return false;
    if (type == kKvQ8_0)
        return d % kKvQ8Chunk == 0 && has_shape(kc, {n_kv, blocks, kKeyBlock * row}) && has_shape(vc, {n_kv, ctx, row});
    return has_shape(kc, {n_kv, blocks, d, kKeyBlock}) && has_shape(vc, {n_kv, ctx, d});
}

// Stores each sequence's k and v in its caches, then runs the attention of all of them.
nb::ndarray<nb::numpy, float> batched_attention(const std::string &tier, Heads q, Heads k,
                                                Heads v, const std::vector<Sequence> &seqs) {
    const TierKernels &t = tier_named(tier);
    const int64_t n = q.shape(0), heads = q.shape(1), d = q.shape(2), n_kv = k.shape(1);
    if (n_kv < 1 || heads % n_kv != 0 || !has_shape(k, {n, n_kv, d}) || !has_shape(v, {n, n_kv, d}))
        throw nb::value_error("attention: need q (n, heads, d), k and v (n, n_kv, d), heads % n_kv == 0");
    auto out = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(heads * d)});
    std::vector<AttentionArgs> args;
    std::vector<std::tuple<int64_t, uint8_t *, uint8_t *>> stores;  // (first row, kc, vc)
    int64_t row = 0;
    for (const auto &[kc, vc, start, rows] : seqs) {
        const int64_t ctx = vc.ndim() == 3 ? vc.shape(1) : 0;
        const int type = kv_type_of(kc);
        if (rows < 1 || rows > n - row || ctx % kKeyBlock != 0 || start < 0 || start > ctx - rows ||
            !cache_fits(kc, vc, type, n_kv, d, ctx))
            throw nb::value_error(("attention: sequence " + str(static_cast<int64_t>(args.size())) +
                                   ": need caches of one type (float32, float16; uint8: q8_0, d % 32 "
                                   "== 0) shaped as kernels/layout.py kv_cache_shapes says for ctx % " +
                                   str(kKeyBlock) + " == 0 positions, rows >= 1 within q, start + "
                                   "rows <= ctx").c_str());
        auto *kp = static_cast<uint8_t *>(kc.data()), *vp = static_cast<uint8_t *>(vc.data());
        args.push_back({q.data() + row * heads * d, kp, vp, out.data() + row * heads * d, rows,
                        heads, n_kv, d, ctx, start, 1.0f / std::sqrt(static_cast<float>(d)), type});
        stores.emplace_back(row, kp, vp);
        row += rows;
    }
    if (row != n)
        throw nb::value_error(("attention: the sequences hold " + str(row) + " rows, q has " +
                               str(n)).c_str());
    {
        nb::gil_scoped_release released;
        for (size_t i = 0; i < args.size(); ++i) {
            const auto [first, kc, vc] = stores[i];
            const AttentionArgs &a = args[i];
            store_kv(k.data() + first * n_kv * d, v.data() + first * n_kv * d, a.n, n_kv, d,
                     a.ctx, a.start, a.kv_type, kc, vc);
        }
        attention(t, args);
    }
    return out;
}

void bind_attention(nb::module_ &m) {
    m.def("attention", &batched_attention, "tier"_a, "q"_a, "k"_a, "v"_a, "seqs"_a,
          "For each sequence (kc, vc, start, rows), its next `rows` rows of q, k and v: stores k "
          "and v of positions start.. in its caches kc (keys in transposed blocks of KEY_BLOCK "
          "positions) and vc (float32, float16, or uint8: q8_0 bytes), then returns the causal attention of q over positions "
          "0..start+rows-1.");
}

}  // namespace

void bind_kquants(nb::module_ &m);  // bind_kquants.cpp
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
