// The aarch64 test driver: runs every kernel of every tier this CPU supports on the goldens that
// the numpy tier wrote on x86-64 (scripts/make_aarch64_goldens.py; the format:
// tests/fixtures/aarch64/README.md) and compares with the tolerances of tests/kernels. Built
// with the cross compiler against csrc's kernel sources, not the Python module, and run under
// qemu-user by tests/aarch64/test_aarch64_qemu.py:
//
//     driver GOLDENS I2S_GGUF EXPECTED_TIER
//
// It prints the CPU features it detected and the tiers they select, fails (exit 1) when the
// best tier is not EXPECTED_TIER, when any output is outside its tolerance, or when bitnet.cpp's
// I2_S file decodes to other ternary values than the numpy reader's; bad goldens: exit 2.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu.h"
#include "formats.h"
#include "ops.h"
#include "ternary.h"
#include "threadpool.h"
#include "tiers.h"

using namespace pybitnet;

namespace {

std::vector<uint8_t> read_file(const std::string &path, int64_t offset = 0, int64_t n = -1) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open");
    in.seekg(offset);
    std::vector<uint8_t> bytes;
    if (n < 0) {
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    } else {
        bytes.resize(n);
        in.read(reinterpret_cast<char *>(bytes.data()), n);
    }
    if (!in && n >= 0) throw std::runtime_error(path + ": " + std::to_string(n) + " bytes at " + std::to_string(offset) + " run past the end");
    return bytes;
}

enum Dtype { dF32 = 0, dI8 = 1, dU8 = 2, dI64 = 3, dF64 = 4 };  // the goldens' dtype codes
constexpr size_t kDtypeBytes[] = {4, 1, 1, 8, 8};

struct Array {
    int dtype;
    size_t n;
    std::vector<uint8_t> bytes;  // n elements (operator new aligns them for any dtype)
};

struct Case {
    std::string kind;
    std::vector<int64_t> p;
    std::vector<Array> a;
    // Array i as T (whose dtype code is `want`), checked.
    template <typename T>
    const T *at(size_t i, int want) const {
        if (i >= a.size() || a[i].dtype != want)
            throw std::runtime_error(kind + ": array " + std::to_string(i) + " missing or of dtype " +
                                     (i < a.size() ? std::to_string(a[i].dtype) : "none") + ", need " + std::to_string(want));
        return reinterpret_cast<const T *>(a[i].bytes.data());
    }
};

class Reader {
  public:
    explicit Reader(std::vector<uint8_t> bytes) : b_(std::move(bytes)) {}
    bool done() const { return pos_ == b_.size(); }
    template <typename T>
    T get() {
        T v;
        take(&v, sizeof v);
        return v;
    }
    void take(void *out, size_t n) {
        if (n > b_.size() - pos_) throw std::runtime_error("goldens: truncated at byte " + std::to_string(pos_));
        std::memcpy(out, b_.data() + pos_, n);
        pos_ += n;
    }
    Case next() {
        Case c;
        c.kind.resize(get<uint8_t>());
        take(c.kind.data(), c.kind.size());
        c.p.resize(get<uint8_t>());
        take(c.p.data(), c.p.size() * sizeof(int64_t));
        c.a.resize(get<uint8_t>());
        for (Array &a : c.a) {
            a.dtype = get<uint8_t>();
            a.n = get<uint64_t>();
            if (a.dtype > dF64 || a.n > (b_.size() - pos_) / kDtypeBytes[a.dtype])
                throw std::runtime_error("goldens: " + c.kind + ": bad array at byte " + std::to_string(pos_));
            a.bytes.resize(a.n * kDtypeBytes[a.dtype]);
            take(a.bytes.data(), a.bytes.size());
        }
        return c;
    }

  private:
    std::vector<uint8_t> b_;
    size_t pos_ = 0;
};

DenseView dense_view(const Case &c) {  // p: fmt, rows, cols, ...; array 0: the bytes
    const FormatTraits *f = find_format(static_cast<int>(c.p[0]));
    if (f == nullptr || f->ternary) throw std::runtime_error(c.kind + ": no dense format " + std::to_string(c.p[0]));
    return {c.at<uint8_t>(0, dU8), c.p[1], c.p[2], row_bytes(*f, c.p[2]), static_cast<int>(c.p[0])};
}

// FNV-1a (64 bits) as an int64, as the goldens store it.
int64_t fnv1a64(const void *data, size_t n) {
    const uint8_t *p = static_cast<const uint8_t *>(data);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return static_cast<int64_t>(h);
}

// The ternary values (-1, 0, 1) the kernels read, taken back out of their layout (tiers.h).
std::vector<int8_t> ternary_values(const TernaryView &w) {
    std::vector<int8_t> out(w.rows * w.cols);
    for (int64_t r = 0; r < w.rows; ++r)
        for (int64_t c = 0; c < w.cols; ++c) {
            const int64_t t = r / kTileRows, i = r % kTileRows, g = c / 256, j = c % 256;
            const uint8_t byte = w.codes[t * kTileRows * w.kp / 4 + (g * kTileRows + i) * 64 + j % 64];
            out[r * w.cols + c] = static_cast<int8_t>(((byte >> (2 * (j / 64))) & 3) - 1);
        }
    return out;
}

// Runs case c on tier t into y; returns what else failed ("" when nothing did).
std::string run(const TierKernels &t, const Case &c, const std::string &i2s_path, std::vector<float> &y) {
    const std::string &k = c.kind;
    int64_t bad = -1, bad_part = -1;
    if (k == "bitlinear") {  // rows, cols, groups, n
        TernaryMatrix w(c.at<int8_t>(0, dI8), c.p[0], c.p[1], c.at<float>(1, dF32), c.p[2], &bad);
        y.resize(c.p[3] * c.p[0]);
        bitlinear(t, w, c.at<float>(2, dF32), c.p[3], y.data());
    } else if (k == "bitlinear_packed" || k == "i2s_file") {
        // packed: fmt, rows, cols, groups, n; i2s_file: offset, nbytes, rows, cols, hash, counts
        const bool file = k == "i2s_file";
        const int64_t rows = c.p[file ? 2 : 1], cols = c.p[file ? 3 : 2];
        const std::vector<uint8_t> data = file ? read_file(i2s_path, c.p[0], c.p[1]) : c.a[0].bytes;
        const std::vector<TernaryMatrix::Packed> parts = {{file ? int{kI2_S} : static_cast<int>(c.p[0]), data.data(), rows}};
        const size_t s = file ? 0 : 1;
        TernaryMatrix w(parts, cols, c.at<float>(s, dF32), file ? 1 : c.p[3], &bad, &bad_part);
        const int64_t n = static_cast<int64_t>(c.a[s + 1].n) / cols;
        y.resize(n * rows);
        if (n > 0) bitlinear(t, w, c.at<float>(s + 1, dF32), n, y.data());
        if (file) {
            const std::vector<int8_t> v = ternary_values(w.view());
            int64_t counts[3] = {};
            for (int8_t e : v) ++counts[e + 1];
            if (fnv1a64(v.data(), v.size()) != c.p[4] || counts[0] != c.p[5] ||
                counts[1] != c.p[6] || counts[2] != c.p[7])
                return "the ternary values differ from the numpy reader's (counts of -1, 0, 1: " +
                       std::to_string(counts[0]) + ", " + std::to_string(counts[1]) + ", " + std::to_string(counts[2]) + ")";
        }
    } else if (k == "dense") {  // fmt, rows, cols, n
        y.resize(c.p[3] * c.p[1]);
        dense_linear(t, dense_view(c), c.at<float>(1, dF32), c.p[3], y.data());
    } else if (k == "embedding") {  // fmt, rows, cols, ids
        y.resize(c.p[3] * c.p[2]);
        t.dense_rows(dense_view(c), c.at<int64_t>(1, dI64), c.p[3], y.data());
    } else if (k == "int8") {  // fmt, rows, cols, n
        const Int8Matrix w(t, dense_view(c));
        y.resize(c.p[3] * c.p[1]);
        int8_linear(t, w, c.at<float>(1, dF32), c.p[3], y.data());
    } else if (k == "rmsnorm") {  // n, dim
        y.resize(c.p[0] * c.p[1]);
        rmsnorm(t, c.at<float>(0, dF32), c.at<float>(1, dF32), c.p[0], c.p[1], 1e-5f, y.data());
    } else if (k == "rope") {  // n, heads, head_dim, rope_dim, neox
        const float *x = c.at<float>(0, dF32);
        y.assign(x, x + c.p[0] * c.p[1] * c.p[2]);
        t.rope(y.data(), c.p[0], c.p[1], c.p[2], c.p[3], c.at<float>(1, dF32), c.at<float>(2, dF32), c.p[4] != 0);
    } else if (k == "gated") {  // act, count
        y.resize(c.p[1]);
        gated_rows(t, static_cast<int>(c.p[0]), c.at<float>(0, dF32), c.p[1], c.at<float>(1, dF32), c.p[1], 1,
                   c.p[1], y.data());
    } else if (k == "attention") {  // kv type, n, start, heads, n_kv, d, ctx, the caches' hashes
        const int64_t n = c.p[1], start = c.p[2], heads = c.p[3], n_kv = c.p[4], d = c.p[5], ctx = c.p[6];
        std::vector<uint8_t> kc = c.a[3].bytes, vc = c.a[4].bytes;
        store_kv(c.at<float>(1, dF32), c.at<float>(2, dF32), n, n_kv, d, ctx, start, static_cast<int>(c.p[0]), kc.data(), vc.data());
        y.resize(n * heads * d);
        attention(t, {{c.at<float>(0, dF32), kc.data(), vc.data(), y.data(), n, heads, n_kv, d, ctx, start,
                       1.0f / std::sqrt(static_cast<float>(d)), static_cast<int>(c.p[0])}});
        if (fnv1a64(kc.data(), kc.size()) != c.p[7] || fnv1a64(vc.data(), vc.size()) != c.p[8])
            return "the stored KV cache bytes differ from numpy's";
    } else {
        throw std::runtime_error("goldens: unknown case kind '" + k + "'");
    }
    return bad >= 0 ? "invalid ternary code at element " + std::to_string(bad) : "";
}

// quantize (n, cols; x, x_q, s_x): the int8 rows and scales, bit for bit, and the zero padding.
std::string check_quantize(const TierKernels &t, const Case &c) {
    const int64_t n = c.p[0], cols = c.p[1], kp = (cols + 255) / 256 * 256;
    std::vector<int8_t> q(n * kp, 99);
    std::vector<float> sx(n);
    std::vector<int32_t> sums(n * kp / 256);
    t.quantize(c.at<float>(0, dF32), cols, 0, n, q.data(), sx.data(), sums.data(), kp);
    const int8_t *want = c.at<int8_t>(1, dI8);
    for (int64_t b = 0; b < n; ++b) {
        if (std::memcmp(&sx[b], c.at<float>(2, dF32) + b, 4) != 0) return "s_x of row " + std::to_string(b) + " differs";
        for (int64_t i = 0; i < kp; ++i)
            if (q[b * kp + i] != (i < cols ? want[b * cols + i] : 0))
                return "x_q[" + std::to_string(b) + ", " + std::to_string(i) + "] = " + std::to_string(q[b * kp + i]);
    }
    return "";
}

// y against the case's last two arrays: expected and tolerance (float64), |y - e| <= tol.
std::string compare(const Case &c, const std::vector<float> &y) {
    const size_t m = c.a.size();
    const double *e = c.at<double>(m - 2, dF64), *tol = c.at<double>(m - 1, dF64);
    if (c.a[m - 2].n != y.size()) return std::to_string(y.size()) + " outputs, expected " + std::to_string(c.a[m - 2].n);
    for (size_t i = 0; i < y.size(); ++i)
        if (!(std::fabs(static_cast<double>(y[i]) - e[i]) <= tol[i])) {
            char msg[160];
            std::snprintf(msg, sizeof msg, "output %zu: %.9g, expected %.9g within %.3g", i, y[i], e[i], tol[i]);
            return msg;
        }
    return "";
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: driver GOLDENS I2S_GGUF EXPECTED_TIER\n");
        return 2;
    }
    const CpuFeatures &f = cpu_features();
    const std::vector<const TierKernels *> tiers = supported_tiers();
    std::printf("features: asimd=%d asimddp=%d\ntiers:", f.asimd, f.asimddp);
    for (const TierKernels *t : tiers) std::printf(" %s", t->name);
    std::printf("\n");
    if (argv[3] != std::string(tiers[0]->name)) {
        std::printf("FAIL: the best tier is %s, expected %s\n", tiers[0]->name, argv[3]);
        return 1;
    }
    try {
        const std::vector<uint8_t> bytes = read_file(argv[1]);
        const char magic[] = "PBA64G1\n";
        if (bytes.size() < 8 || std::memcmp(bytes.data(), magic, 8) != 0) throw std::runtime_error(std::string(argv[1]) + ": not a goldens file");
        Reader in(std::vector<uint8_t>(bytes.begin() + 8, bytes.end()));
        std::vector<Case> cases;
        while (!in.done()) cases.push_back(in.next());
        set_pool_threads(2);  // the pool's split of the work runs too
        int failures = 0;
        for (const TierKernels *t : tiers) {
            int passed = 0;
            for (size_t i = 0; i < cases.size(); ++i) {
                const Case &c = cases[i];
                std::vector<float> y;
                std::string why = c.kind == "quantize" ? check_quantize(*t, c) : run(*t, c, argv[2], y);
                if (why.empty() && c.kind != "quantize") why = compare(c, y);
                if (why.empty()) {
                    ++passed;
                } else {
                    ++failures;
                    std::printf("FAIL %s case %zu (%s): %s\n", t->name, i, c.kind.c_str(), why.c_str());
                }
            }
            std::printf("tier %s: %d of %zu cases pass\n", t->name, passed, cases.size());
        }
        std::printf("%s\n", failures ? "FAIL" : "PASS");
        return failures ? 1 : 0;
    } catch (const std::exception &e) {
        std::printf("ERROR: %s\n", e.what());
        return 2;
    }
}
