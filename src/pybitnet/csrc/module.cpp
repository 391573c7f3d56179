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
#include "lut.h"
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

std::string str(int64_t v) { return std::to_string(v); }

// A float or Q-format matrix in its file's bytes (kept alive by holding the array).
struct DenseMatrix {
    DenseView view;
    nb::object owner;
};

int64_t dense_row_bytes(int fmt, int64_t cols) {
    switch (fmt) {
    case 0: return 4 * cols;
    case 1: case 30: return 2 * cols;
    case 8: return cols / 32 * 34;
    case 2: return cols / 32 * 18;
    case 3: return cols / 32 * 20;
    default: throw nb::value_error(("no dense kernel for ggml type " + str(fmt)).c_str());
    }
}

void check_cols(const char *what, int64_t x_cols, int64_t w_cols) {
    if (x_cols != w_cols)
        throw nb::value_error((std::string(what) + ": x has " + str(x_cols) +
                               " columns, the weights " + str(w_cols)).c_str());
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
        .def(
            "__init__",
            [](TernaryMatrix *self,
               const std::vector<std::tuple<int, nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>, int64_t>> &parts,
               int64_t cols, Array<const float, nb::ndim<2>> scales) {
                std::vector<TernaryMatrix::Packed> packed;
                int64_t rows = 0;
                for (const auto &[fmt, data, part_rows] : parts) {
                    const int64_t n = part_rows * cols;
                    int64_t need;
                    if (fmt == 36) {
                        if (n % 128 != 0) throw nb::value_error("I2_S needs a multiple of 128 elements");
                        need = n / 4 + 32;
                    } else if (fmt == 35 || fmt == 34) {
                        if (cols % 256 != 0) throw nb::value_error("TQ1_0/TQ2_0 rows must be whole 256-blocks");
                        need = n / 256 * (fmt == 35 ? 66 : 54);
                    } else {
                        throw nb::value_error(("ggml type " + str(fmt) + " is not ternary").c_str());
                    }
                    if (part_rows < 1 || static_cast<int64_t>(data.shape(0)) != need)
                        throw nb::value_error(("ternary part has " + str(data.shape(0)) + " bytes, needs " + str(need)).c_str());
                    packed.push_back({fmt, data.data(), part_rows});
                    rows += part_rows;
                }
                const int64_t groups = scales.shape(1);
                if (static_cast<int64_t>(scales.shape(0)) != rows ||
                    !(groups == 1 || (cols % 256 == 0 && groups == cols / 256)))
                    throw nb::value_error("scales must be (rows, 1) or (rows, cols / 256)");
                int64_t bad, bad_part;
                {
                    nb::gil_scoped_release released;
                    new (self) TernaryMatrix(packed, cols, scales.data(), groups, &bad, &bad_part);
                }
                if (bad >= 0) {
                    self->~TernaryMatrix();
                    raise_format_error("ternary part " + str(bad_part) + ": element " + str(bad) +
                                       " (row " + str(bad / cols) + ", column " + str(bad % cols) +
                                       ") has the invalid 2-bit code 3");
                }
            },
            "parts"_a, "cols"_a, "scales"_a,
            "parts: [(ggml type, bytes, rows)] stacked row-wise, straight from the file.")
        .def_prop_ro("shape", [](const TernaryMatrix &w) { return nb::make_tuple(w.rows(), w.cols()); })
        .def_prop_ro("groups", &TernaryMatrix::groups)
        .def_prop_ro("nbytes", &TernaryMatrix::nbytes);

    nb::class_<DenseMatrix>(m, "DenseMatrix", "A float or Q-format matrix read in place.")
        .def(
            "__init__",
            [](DenseMatrix *self, nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> data,
               int fmt, int64_t rows, int64_t cols, nb::handle owner) {
                const bool blocks = fmt == 2 || fmt == 3 || fmt == 8;
                if (rows < 1 || cols < 1 || (blocks && cols % 32 != 0))
                    throw nb::value_error(("bad matrix shape (" + str(rows) + ", " + str(cols) +
                                           ") for ggml type " + str(fmt)).c_str());
                const int64_t row_bytes = dense_row_bytes(fmt, cols);
                if (static_cast<int64_t>(data.shape(0)) != rows * row_bytes)
                    throw nb::value_error(("matrix data has " + str(data.shape(0)) +
                                           " bytes, its shape needs " + str(rows * row_bytes)).c_str());
                new (self) DenseMatrix{{data.data(), rows, cols, row_bytes, fmt},
                                       nb::borrow(owner)};
            },
            "data"_a, "fmt"_a, "rows"_a, "cols"_a, "owner"_a,
            "data: the matrix's bytes; owner: the object that keeps them alive.")
        .def_prop_ro("shape", [](const DenseMatrix &w) { return nb::make_tuple(w.view.rows, w.view.cols); })
        .def_prop_ro("fmt", [](const DenseMatrix &w) { return w.view.fmt; })
        .def_prop_ro("nbytes", [](const DenseMatrix &w) { return w.view.rows * w.view.row_bytes; });

    m.def(
        "dense_linear",
        [](const std::string &tier, const DenseMatrix &w, Array<const float, nb::ndim<2>> x) {
            const TierKernels &t = tier_named(tier);
            check_cols("dense_linear", x.shape(1), w.view.cols);
            const int64_t n = x.shape(0);
            auto y = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(w.view.rows)});
            {
                nb::gil_scoped_release released;
                dense_linear(t, w.view, x.data(), n, y.data());
            }
            return y;
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
            auto out = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(w.view.cols)});
            {
                nb::gil_scoped_release released;
                t.dense_rows(w.view, ids.data(), n, out.data());
            }
            return out;
        },
        "tier"_a, "w"_a, "ids"_a, "Rows ids of w as float32 (n, cols).");

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
        [](const std::string &tier, const Int8Matrix &w, Array<const float, nb::ndim<2>> x) {
            const TierKernels &t = tier_named(tier);
            check_cols("int8_linear", x.shape(1), w.cols());
            const int64_t n = x.shape(0);
            auto y = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(w.rows())});
            {
                nb::gil_scoped_release released;
                int8_linear(t, w, x.data(), n, y.data());
            }
            return y;
        },
        "tier"_a, "w"_a, "x"_a, "y (n, rows) = int8 w . x quantized per row to int8.");

    m.def(
        "rmsnorm",
        [](const std::string &tier, Array<const float, nb::ndim<2>> x, Array<const float, nb::ndim<1>> w,
           float eps) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = x.shape(0), dim = x.shape(1);
            check_cols("rmsnorm", dim, w.shape(0));
            auto out = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(dim)});
            {
                nb::gil_scoped_release released;
                rmsnorm(t, x.data(), w.data(), n, dim, eps, out.data());
            }
            return out;
        },
        "tier"_a, "x"_a, "w"_a, "eps"_a, "x / sqrt(mean(x^2) + eps) * w, row by row.");

    m.def(
        "rope",
        [](const std::string &tier, Array<float, nb::ndim<3>> x, Array<const float, nb::ndim<2>> cos,
           Array<const float, nb::ndim<2>> sin, int64_t rope_dim, bool neox) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = x.shape(0), heads = x.shape(1), head_dim = x.shape(2);
            if (rope_dim < 0 || rope_dim % 2 || rope_dim > head_dim ||
                static_cast<int64_t>(cos.shape(0)) != n || static_cast<int64_t>(sin.shape(0)) != n ||
                static_cast<int64_t>(cos.shape(1)) != rope_dim / 2 ||
                static_cast<int64_t>(sin.shape(1)) != rope_dim / 2)
                throw nb::value_error("rope: cos and sin must be (n, rope_dim / 2), rope_dim even and <= head_dim");
            nb::gil_scoped_release released;
            t.rope(x.data(), n, heads, head_dim, rope_dim, cos.data(), sin.data(), neox);
        },
        "tier"_a, "x"_a, "cos"_a, "sin"_a, "rope_dim"_a, "neox"_a,
        "Rotates x (n, heads, head_dim) in place by per-position angles.");

    m.def(
        "gated",
        [](const std::string &tier, const std::string &act, Array<const float, nb::ndim<2>> g,
           Array<const float, nb::ndim<2>> u) {
            const TierKernels &t = tier_named(tier);
            if (act != "silu" && act != "relu2") throw nb::value_error(("unknown activation " + act).c_str());
            if (g.shape(0) != u.shape(0) || g.shape(1) != u.shape(1))
                throw nb::value_error("gated: g and u must have the same shape");
            auto out = new_array<float>({g.shape(0), g.shape(1)});
            {
                nb::gil_scoped_release released;
                gated(t, act == "silu" ? 0 : 1, g.data(), u.data(),
                      static_cast<int64_t>(g.shape(0) * g.shape(1)), out.data());
            }
            return out;
        },
        "tier"_a, "act"_a, "g"_a, "u"_a, "act(g) * u elementwise; act silu or relu2.");

    m.def(
        "attention",
        [](const std::string &tier, Array<const float, nb::ndim<3>> q, Array<const float, nb::ndim<3>> k,
           Array<const float, nb::ndim<3>> v,
           const std::vector<std::tuple<Array<float, nb::ndim<4>>, Array<float, nb::ndim<3>>, int64_t, int64_t>> &seqs) {
            const TierKernels &t = tier_named(tier);
            const int64_t n = q.shape(0), heads = q.shape(1), d = q.shape(2), n_kv = k.shape(1);
            const auto is = [](auto &a, std::initializer_list<int64_t> shape) {
                int i = 0;
                for (int64_t s : shape)
                    if (static_cast<int64_t>(a.shape(i++)) != s) return false;
                return true;
            };
            if (n_kv < 1 || heads % n_kv != 0 || !is(k, {n, n_kv, d}) || !is(v, {n, n_kv, d}))
                throw nb::value_error("attention: need q (n, heads, d), k and v (n, n_kv, d), "
                                      "heads % n_kv == 0");
            auto out = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(heads * d)});
            std::vector<AttentionArgs> args;
            std::vector<std::tuple<int64_t, float *, float *>> stores;  // (first row, kc, vc)
            int64_t row = 0;
            for (const auto &[kc, vc, start, rows] : seqs) {
                const int64_t ctx = vc.shape(1);
                if (rows < 1 || rows > n - row || ctx % kKeyBlock != 0 || start < 0 ||
                    start > ctx - rows || !is(kc, {n_kv, ctx / kKeyBlock, d, kKeyBlock}) ||
                    !is(vc, {n_kv, ctx, d}))
                    throw nb::value_error(
                        ("attention: sequence " + str(static_cast<int64_t>(args.size())) +
                         ": need kc (n_kv, ctx / 16, d, 16), vc (n_kv, ctx, d), ctx % 16 == 0, "
                         "rows >= 1 within q, start + rows <= ctx")
                            .c_str());
                args.push_back({q.data() + row * heads * d, kc.data(), vc.data(),
                                out.data() + row * heads * d, rows, heads, n_kv, d, ctx, start,
                                1.0f / std::sqrt(static_cast<float>(d))});
                stores.emplace_back(row, kc.data(), vc.data());
                row += rows;
            }
            if (row != n)
                throw nb::value_error(("attention: the sequences hold " + str(row) +
                                       " rows, q has " + str(n)).c_str());
            {
                nb::gil_scoped_release released;
                for (size_t i = 0; i < args.size(); ++i) {
                    const auto [first, kc, vc] = stores[i];
                    const AttentionArgs &a = args[i];
                    store_kv(k.data() + first * n_kv * d, v.data() + first * n_kv * d, a.n, n_kv,
                             d, a.ctx, a.start, kc, vc);
                }
                attention(t, args);
            }
            return out;
        },
        "tier"_a, "q"_a, "k"_a, "v"_a, "seqs"_a,
        "For each sequence (kc, vc, start, rows), its next `rows` rows of q, k and v: stores k and "
        "v of positions start.. in its caches kc (keys in transposed blocks of 16 positions) and "
        "vc, then returns the causal attention of q over positions 0..start+rows-1.");

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

    m.def("lut_supported", &lut_supported, "Whether this CPU runs the lookup-table BitLinear.");
    nb::class_<LutMatrix>(m, "LutMatrix",
                          "Ternary weights as table indices for the lookup-table BitLinear.")
        .def(
            "__init__",
            [](LutMatrix *self, const TernaryMatrix &w) {
                nb::gil_scoped_release released;
                new (self) LutMatrix(w);
            },
            "w"_a, "The weights of w (its rows, columns and scales), re-encoded.")
        .def_prop_ro("shape", [](const LutMatrix &w) { return nb::make_tuple(w.rows(), w.cols()); })
        .def_prop_ro("groups", &LutMatrix::groups)
        .def_prop_ro("nbytes", &LutMatrix::nbytes);

    m.def(
        "bitlinear_lut",
        [](const LutMatrix &w, Array<const float, nb::ndim<2>> x) {
            if (!lut_supported())
                throw nb::value_error("the lookup-table BitLinear needs AVX-512 (the avx512 tier)");
            check_cols("bitlinear_lut", x.shape(1), w.cols());
            const int64_t n = x.shape(0);
            auto y = new_array<float>({static_cast<size_t>(n), static_cast<size_t>(w.rows())});
            {
                nb::gil_scoped_release released;
                bitlinear_lut(w, x.data(), n, y.data());
            }
            return y;
        },
        "w"_a, "x"_a, "BitLinear with the lookup-table kernel: the same results as bitlinear.");
}
