// The ternary matmul driver shared by every tier. Each tier unit includes this file inside its
// anonymous namespace after defining `struct Isa` (see tier_scalar.cpp for the plainest one):
//   B, B_BLOCK          activation rows of a register tile of kTileRows weight rows (B_BLOCK:
//                       with per-block scales, whose float accumulators take registers too)
//   Acc, FAcc           integer and float accumulators; zero(), fzero()
//   Planes load(w64)    the codes of one 64-byte group, widened for dot()
//   dot(acc, p, x256)   acc += codes . x_q over the group's 256 columns (codes 0..2, not w)
//                       (load and dot serve the default group() below; a tier with its own
//                       group() needs neither)
//   fma(facc, acc, d)   facc + acc * d, lane by lane
//   sum(acc), fsum(facc) horizontal sums
// With codes c = w + 1, W . x_q = c . x_q - sum(x_q): exact in integers.
//
// No standard-library templates here (see tiers.h).

// acc[i][j] += row i of a group (the R rows' 64-byte groups at w) . activation row j (256
// columns at x + j * stride). A tier may define its own (PYBITNET_TIER_TERNARY_GROUP).
#ifndef PYBITNET_TIER_TERNARY_GROUP
template <int B>
inline void group(const uint8_t *w, const int8_t *x, int64_t stride,
                  typename Isa::Acc acc[kTileRows][B]) {
    for (int i = 0; i < kTileRows; ++i) {
        const typename Isa::Planes p = Isa::load(w + 64 * i);
        for (int j = 0; j < B; ++j) Isa::dot(acc[i][j], p, x + j * stride);
    }
}
#endif

// y[b + j, r + i] = (acc[i][j] summed - x.total[b + j]) * scale of row r + i / x.sx[b + j], for
// the tile's rows inside the matrix: the end of a tile with one scale per row. A tier may do a
// full 4 x 4 tile its own way (PYBITNET_TIER_TERNARY_STORE_4X4: store_4x4, same results).
template <int B>
inline void store_rows(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b,
                       typename Isa::Acc acc[kTileRows][B], float *y) {
#ifdef PYBITNET_TIER_TERNARY_STORE_4X4
    if constexpr (B == 4 && kTileRows == 4) {
        store_4x4(w, x, r, b, acc, y);
        return;
    }
#endif
    for (int i = 0; i < kTileRows && r + i < w.rows; ++i)
        for (int j = 0; j < B; ++j) {
            const int32_t dot = Isa::sum(acc[i][j]) - x.total[b + j];
            y[(b + j) * w.rows + r + i] = static_cast<float>(dot) * w.scales[r + i] / x.sx[b + j];
        }
}

// How far ahead in a tile's stream to prefetch: on top of the hardware prefetchers, this took
// single-thread decoding from memory from 24 to 27 GB/s on a Zen 4 (prefetches never fault).
constexpr int64_t kPrefetchBytes = 4096;

template <int B, bool PER_BLOCK>
inline void tile(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b, float *y) {
    constexpr int R = kTileRows;
    const int64_t groups = w.kp / 256;
    const uint8_t *codes = w.codes + r * w.kp / 4;  // the tile's stream (tiers.h)
    typename Isa::Acc acc[R][B];
    typename Isa::FAcc facc[R][B];
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < B; ++j) {
            acc[i][j] = Isa::zero();
            facc[i][j] = Isa::fzero();
        }
    for (int64_t g = 0; g < groups; ++g) {
        for (int i = 0; i < R; ++i) __builtin_prefetch(codes + (g * R + i) * 64 + kPrefetchBytes);
        group<B>(codes + g * R * 64, x.q + b * x.kp + 256 * g, x.kp, acc);
        if (PER_BLOCK)
            for (int i = 0; i < R; ++i)
                for (int j = 0; j < B; ++j) {
                    facc[i][j] = Isa::fma(facc[i][j], acc[i][j], w.scales[(r + i) * groups + g]);
                    acc[i][j] = Isa::zero();
                }
    }
    if (!PER_BLOCK) {
        store_rows<B>(w, x, r, b, acc, y);
        return;
    }
    for (int i = 0; i < R && r + i < w.rows; ++i)
        for (int j = 0; j < B; ++j) {
            // sum_g d_g * (c_g . x_q - sum_g(x_q)): the correction term per block.
            const float *d = w.scales + (r + i) * groups;
            const int32_t *s = x.sums + (b + j) * groups;
            float correction = 0.0f;
            for (int64_t g = 0; g < groups; ++g) correction += d[g] * static_cast<float>(s[g]);
            y[(b + j) * w.rows + r + i] = (Isa::fsum(facc[i][j]) - correction) / x.sx[b + j];
        }
}

// Activation rows b .. n-1 in tiles of B (then the remainder), for the weight tile at row r.
// A tier may do a single activation row with one scale a row its own way
// (PYBITNET_TIER_TERNARY_GEMV: gemv_tile(w, x, r, b, y), same results).
template <int B, bool PER_BLOCK>
inline void tile_rest(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b,
                      float *y) {
#ifdef PYBITNET_TIER_TERNARY_GEMV
    if constexpr (B == 1 && !PER_BLOCK) {
        for (; b < x.n; ++b) gemv_tile(w, x, r, b, y);
        return;
    }
#endif
    if constexpr (B > 0) {
        for (; b + B <= x.n; b += B) tile<B, PER_BLOCK>(w, x, r, b, y);
        tile_rest<B - 1, PER_BLOCK>(w, x, r, b, y);
    }
}

template <bool PER_BLOCK>
inline void matmul_rows(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1,
                        float *y) {
    for (int64_t r = r0; r < r1; r += kTileRows)
        tile_rest<PER_BLOCK ? Isa::B_BLOCK : Isa::B, PER_BLOCK>(w, x, r, 0, y);
}

void matmul(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    if (w.groups > 1)
        matmul_rows<true>(w, x, r0, r1, y);
    else
        matmul_rows<false>(w, x, r0, r1, y);
}
