// Q6_K and Q4_K weights . activations quantized per 256-block (BlockQ8Rows), llama.cpp's way:
// per super-block exact integer dot products, then dense_decode.h's q6k_step / q4k_step.
// Included by each tier unit inside its anonymous namespace after float_tiles.h; a tier with
// faster integer dot products defines PYBITNET_TIER_Q6K_TILE, its own q6k_tile<B>, kQ6kRows and
// kQ6kTile first.

#ifndef PYBITNET_TIER_Q6K_TILE
constexpr int kQ6kRows = 1, kQ6kTile = 1;  // activation rows, weight rows a call takes

// isum of one super-block b (decode_q6_k has the layout) with its 256 activations x.
inline int32_t q6k_isum(const uint8_t *b, const int8_t *x) {
    const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192);
    int32_t dots[16] = {};
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 4; ++k)
            for (int l = 0; l < 32; ++l) {
                const int e = 128 * h + 32 * k + l;
                const int low = (b[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
                const int q = low | ((b[128 + 32 * h + l] >> (2 * k)) & 3) << 4;
                dots[e / 16] += (q - 32) * x[e];
            }
    int32_t isum = 0;
    for (int j = 0; j < 16; ++j) isum += sc[j] * dots[j];
    return isum;
}

// Weight row r against activation rows b .. b + B - 1.
template <int B>
inline void q6k_tile(const DenseView &w, const BlockQ8Rows &x, int64_t r, int64_t b, float *y) {
    const int64_t blocks = w.cols / 256;
    for (int j = 0; j < B; ++j) {
        float acc = 0.0f;
        for (int64_t s = 0; s < blocks; ++s) {
            const uint8_t *block = w.data + r * w.row_bytes + kQ6_KBytes * s;
            const int64_t xb = (b + j) * blocks + s;
            acc = q6k_step(acc, block, x.d[xb], q6k_isum(block, x.q + 256 * xb));
        }
        y[(b + j) * w.rows + r] = acc;
    }
}
#endif

// One Q4_K super-block b (decode_q4_k has the layout) unpacked once for all the activation rows
// of a tile: its 256 codes (0..15) and its sub-blocks' scales and mins.
struct Q4kBlock {
    uint8_t q[256];
    int32_t sc[8], m[8];
    explicit Q4kBlock(const uint8_t *b) {
        for (int j = 0; j < 8; ++j) {
            k4_codes(b, j, &sc[j], &m[j]);
            const uint8_t *qs = b + 16 + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) q[32 * j + l] = static_cast<uint8_t>((qs[l] >> shift) & 15);
        }
    }
    // isum and msum (q4k_step) with the block's 256 activations x and their 16-element sums
    void sums(const int8_t *x, const int16_t *bsums, int32_t *isum, int32_t *msum) const {
        *isum = *msum = 0;
        for (int j = 0; j < 8; ++j) {
            int32_t dot = 0;
            for (int l = 0; l < 32; ++l) dot += q[32 * j + l] * x[32 * j + l];
            *isum += sc[j] * dot;
            *msum += m[j] * (bsums[2 * j] + bsums[2 * j + 1]);
        }
    }
};

// Q4_K weight row r against activation rows b .. b + B - 1 (each block unpacked once for them).
constexpr int kQ4kRows = 4;
template <int B>
inline void q4k_tile(const DenseView &w, const BlockQ8Rows &x, int64_t r, int64_t b, float *y) {
    const int64_t blocks = w.cols / 256;
    float acc[B] = {};
    for (int64_t s = 0; s < blocks; ++s) {
        const uint8_t *block = w.data + r * w.row_bytes + kQ4_KBytes * s;
        const Q4kBlock unpacked(block);
        for (int j = 0; j < B; ++j) {
            const int64_t xb = (b + j) * blocks + s;
            int32_t isum, msum;
            unpacked.sums(x.q + 256 * xb, x.bsums + 16 * xb, &isum, &msum);
            acc[j] = q4k_step(acc[j], block, x.d[xb], isum, msum);
        }
    }
    for (int j = 0; j < B; ++j) y[(b + j) * w.rows + r] = acc[j];
}

// Activation rows b .. n - 1 in blocks of B (then the remainder) against the tile at row r.
template <int Fmt, int B>
inline void kquant_tile_rest(const DenseView &w, const BlockQ8Rows &x, int64_t r, int64_t b, float *y) {
    if constexpr (B > 0) {
        for (; b + B <= x.n; b += B) {
            if constexpr (Fmt == kQ6_K)
                q6k_tile<B>(w, x, r, b, y);
            else
                q4k_tile<B>(w, x, r, b, y);
        }
        kquant_tile_rest<Fmt, B - 1>(w, x, r, b, y);
    }
}

void q6k_matmul(const DenseView &w, const BlockQ8Rows &x, int64_t r0, int64_t r1, float *y) {
    // r0 is a multiple of kTileRows, and so of kQ6kTile (1 or kTileRows)
    for (int64_t r = r0; r < min64(r1, w.rows); r += kQ6kTile)
        kquant_tile_rest<kQ6_K, kQ6kRows>(w, x, r, 0, y);
}

void q4k_matmul(const DenseView &w, const BlockQ8Rows &x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < min64(r1, w.rows); ++r) kquant_tile_rest<kQ4_K, kQ4kRows>(w, x, r, 0, y);
}
