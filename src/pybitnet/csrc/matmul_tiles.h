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
// and for the base-3 layout (tiers.h):
//   Trits load_trits(w64), next(m)   a run's 64 bytes m_k; m_(k+1) = 3 m_k mod 256, bytewise
//   Trits digits(m, next(m))         code k of the 64 bytes, as dot64() takes them (a tier may
//                                    scale them by a power of 2, which unscale() undoes)
//   XRun load_x(x64), dot64(acc, d, xr)   acc += codes . 64 activations
//   unscale(acc)                     acc / that power of 2, exactly, lane by lane
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

// The end of a tile with one scale per 256-block: facc[i][j] holds sum_g d_g * (c_g . x_q).
template <int B>
inline void store_blocks(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b,
                         typename Isa::FAcc facc[kTileRows][B], float *y) {
    for (int i = 0; i < kTileRows && r + i < w.rows; ++i)
        for (int j = 0; j < B; ++j) {
            // sum_g d_g * (c_g . x_q - sum_g(x_q)): the correction term per block.
            const float *d = w.scales + (r + i) * w.groups;
            const int32_t *s = x.sums + (b + j) * (x.kp / 256);
            float correction = 0.0f;
            for (int64_t g = 0; g < w.groups; ++g) correction += d[g] * static_cast<float>(s[g]);
            y[(b + j) * w.rows + r + i] = (Isa::fsum(facc[i][j]) - correction) / x.sx[b + j];
        }
}

// facc += acc * the scale of block g of each row; acc = 0.
template <int B>
inline void flush_block(const TernaryView &w, int64_t r, int64_t g,
                        typename Isa::Acc acc[kTileRows][B], typename Isa::FAcc facc[kTileRows][B]) {
    for (int i = 0; i < kTileRows; ++i)
        for (int j = 0; j < B; ++j) {
            facc[i][j] = Isa::fma(facc[i][j], acc[i][j], w.scales[(r + i) * w.groups + g]);
            acc[i][j] = Isa::zero();
        }
}

template <int B>
inline void zero_tile(typename Isa::Acc acc[kTileRows][B], typename Isa::FAcc facc[kTileRows][B]) {
    for (int i = 0; i < kTileRows; ++i)
        for (int j = 0; j < B; ++j) {
            acc[i][j] = Isa::zero();
            facc[i][j] = Isa::fzero();
        }
}

template <int B, bool PER_BLOCK>
inline void tile(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b, float *y) {
    constexpr int R = kTileRows;
    const int64_t groups = w.kp / 256;
    const uint8_t *codes = w.codes + r * w.kp / 4;  // the tile's stream (tiers.h)
    typename Isa::Acc acc[R][B];
    typename Isa::FAcc facc[R][B];
    zero_tile<B>(acc, facc);
    for (int64_t g = 0; g < groups; ++g) {
        for (int i = 0; i < R; ++i) __builtin_prefetch(codes + (g * R + i) * 64 + kPrefetchBytes);
        group<B>(codes + g * R * 64, x.q + b * x.kp + 256 * g, x.kp, acc);
        if (PER_BLOCK) flush_block<B>(w, r, g, acc, facc);
    }
    if (PER_BLOCK)
        store_blocks<B>(w, x, r, b, facc, y);
    else
        store_rows<B>(w, x, r, b, acc, y);
}

// The same for the base-3 layout: each run of 320 columns gives five 64-column codes vectors,
// one after another; a 256-block ends every fourth.
template <int B, bool PER_BLOCK>
inline void tile_base3(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b,
                       float *y) {
    constexpr int R = kTileRows;
    const uint8_t *runs = w.codes + r * w.kp / 5;  // the tile's stream (tiers.h)
    typename Isa::Acc acc[R][B];
    typename Isa::FAcc facc[R][B];
    zero_tile<B>(acc, facc);
    int64_t block = 0;  // 64-column blocks done
    for (int64_t v = 0; v < w.kp / kTritRun; ++v) {
        typename Isa::Trits m[R];
        for (int i = 0; i < R; ++i) {
            __builtin_prefetch(runs + (v * R + i) * 64 + kPrefetchBytes);
            m[i] = Isa::load_trits(runs + (v * R + i) * 64);
        }
        for (int k = 0; k < 5; ++k, ++block) {
            typename Isa::XRun xr[B];
            for (int j = 0; j < B; ++j) xr[j] = Isa::load_x(x.q + (b + j) * x.kp + 64 * block);
            for (int i = 0; i < R; ++i) {
                const typename Isa::Trits n = Isa::next(m[i]);
                const typename Isa::Trits d = Isa::digits(m[i], n);
                for (int j = 0; j < B; ++j) Isa::dot64(acc[i][j], d, xr[j]);
                m[i] = n;
            }
            // Padding columns past the last 256-block add nothing (x_q is 0 there).
            if (PER_BLOCK && block % 4 == 3 && block / 4 < w.groups) {
                for (int i = 0; i < R; ++i)
                    for (int j = 0; j < B; ++j) acc[i][j] = Isa::unscale(acc[i][j]);
                flush_block<B>(w, r, block / 4, acc, facc);
            }
        }
    }
    if (PER_BLOCK) {
        store_blocks<B>(w, x, r, b, facc, y);
        return;
    }
    for (int i = 0; i < R; ++i)
        for (int j = 0; j < B; ++j) acc[i][j] = Isa::unscale(acc[i][j]);
    store_rows<B>(w, x, r, b, acc, y);
}

// Activation rows b .. n-1 in tiles of B (then the remainder), for the weight tile at row r.
template <int B, bool PER_BLOCK, bool BASE3>
inline void tile_rest(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b,
                      float *y) {
    if constexpr (B > 0) {
        for (; b + B <= x.n; b += B) {
            if constexpr (BASE3)
                tile_base3<B, PER_BLOCK>(w, x, r, b, y);
            else
                tile<B, PER_BLOCK>(w, x, r, b, y);
        }
        tile_rest<B - 1, PER_BLOCK, BASE3>(w, x, r, b, y);
    }
}

template <bool PER_BLOCK, bool BASE3>
inline void matmul_rows(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1,
                        float *y) {
    constexpr int B = PER_BLOCK ? Isa::B_BLOCK : Isa::B;
    // Base 3 serves at most kBase3MaxRows activation rows (tiers.h): tiles of no more.
    constexpr int kB = BASE3 && kBase3MaxRows < B ? kBase3MaxRows : B;
    for (int64_t r = r0; r < r1; r += kTileRows) tile_rest<kB, PER_BLOCK, BASE3>(w, x, r, 0, y);
}

void matmul(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    if (w.base3) {
        if (w.groups > 1)
            matmul_rows<true, true>(w, x, r0, r1, y);
        else
            matmul_rows<false, true>(w, x, r0, r1, y);
    } else if (w.groups > 1) {
        matmul_rows<true, false>(w, x, r0, r1, y);
    } else {
        matmul_rows<false, false>(w, x, r0, r1, y);
    }
}
