// The batched attention op as a Python function: its caches' geometry checked here, where the
// op indexes memory with it (module.cpp binds the other roles; bind.h).
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "bind.h"
#include "ops.h"

using namespace nb::literals;

namespace pybitnet {
namespace {

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

}  // namespace

void bind_attention(nb::module_ &m) {
    m.def("attention", &batched_attention, "tier"_a, "q"_a, "k"_a, "v"_a, "seqs"_a,
          "For each sequence (kc, vc, start, rows), its next `rows` rows of q, k and v: stores k "
          "and v of positions start.. in its caches kc (keys in transposed blocks of KEY_BLOCK "
          "positions) and vc (float32, float16, or uint8: q8_0 bytes), then returns the causal attention of q over positions "
          "0..start+rows-1.");
}

}  // namespace pybitnet
