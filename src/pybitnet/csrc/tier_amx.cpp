// The AMX tier: the AVX-512 tier's kernels, with BitLinear's matrix products over 16 or more
// activation rows (prefill, large batches) on the AMX tile unit (Sapphire Rapids and later).
// One TDPBUSD multiplies 16 rows x 64 codes (unsigned, 0..2) by 64 x 16 int8 activations: the
// multiply-adds of 256 vpdpbusd. The integer dot products are the AVX-512 tier's and the
// scaling is store_rows' (matmul_tiles.h), so the results are the same bits. Measured against
// the unit's roof: benchmarks/amx_roof.cpp.
#include <immintrin.h>

#include "tiers.h"

namespace pybitnet {
namespace {

constexpr int64_t kTile = kAmxTileRows;  // rows of a tile; its rows are 64 bytes
// Weight rows unpacked at once: two A tiles, each used against every activation tile.
constexpr int64_t kRowBlock = 2 * kTile;

// The palette-1 configuration: every tile 16 rows of 64 bytes. Tiles 0-3 accumulate (int32),
// 4-5 hold codes (A), 6-7 activations (B).
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
    TileConfig() {
        for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = kTile;
    }
};

// v[0..15] (16 x 16 int32, row by row) transposed in place.
inline void transpose16(__m512i v[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // v[i + q], lane L: column 4 L + q of rows i .. i + 3
        v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // Gather each column's four lanes: lanes 0, 2 then 1, 3 of rows 0-7 and of rows 8-15.
    for (int i = 0; i < 8; ++i) {
        const int a = (i / 4) * 8 + i % 4;  // 0..3, 8..11
        t[2 * i] = _mm512_shuffle_i32x4(v[a], v[a + 4], 0x88);
        t[2 * i + 1] = _mm512_shuffle_i32x4(v[a], v[a + 4], 0xDD);
    }
    for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 2; ++k) {  // columns i + 4 k and i + 4 k + 8
            v[i + 4 * k] = _mm512_shuffle_i32x4(t[2 * i + k], t[2 * i + 8 + k], 0x88);
            v[i + 4 * k + 8] = _mm512_shuffle_i32x4(t[2 * i + k], t[2 * i + 8 + k], 0xDD);
        }
}

// Activation tile t of x: columns 64 c .. 64 c + 63 at out + (t * kp / 64 + c) * 1024, as
// TDPBUSD's B operand: row k of the tile holds, for each activation row j of the tile, its 4
// columns 64 c + 4 k .. + 3 (bytes 4 j .. 4 j + 3). Rows past n are zeros.
void tile_activations(const QuantizedRows &x, int64_t t, int8_t *out) {
    for (int64_t c = 0; c < x.kp / 64; ++c) {
        __m512i v[16];
        for (int64_t j = 0; j < kTile; ++j) {
            const int64_t row = t * kTile + j;
            v[j] = row < x.n ? _mm512_loadu_si512(x.q + row * x.kp + 64 * c) : _mm512_setzero_si512();
        }
        transpose16(v);
        int8_t *dst = out + (t * (x.kp / 64) + c) * 1024;
        for (int k = 0; k < 16; ++k) _mm512_store_si512(dst + 64 * k, v[k]);
    }
}

// Rows r .. r + kRowBlock - 1 of w as A tiles: columns 64 c .. of row r + i at
// a + (c * kRowBlock + i) * 64, one code (0..2) a byte; rows past the padded matrix are zeros.
// The block's bytes are read in their order (one stream, tiers.h) and the next block's are
// prefetched into L2 meanwhile. Unpacking took a fifth to a third of the kernel's time at 128 rows
// (measured by leaving it out); read row by row, without the prefetch, 6-15% more in all.
void unpack_rows(const TernaryView &w, int64_t r, uint8_t *a) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const int64_t padded = (w.rows + kTileRows - 1) / kTileRows * kTileRows, groups = w.kp / 256;
    for (int64_t i0 = 0; i0 < kRowBlock; i0 += kTileRows) {
        if (r + i0 >= padded) {
            for (int64_t c = 0; c < w.kp / 64; ++c)
                for (int64_t i = i0; i < kRowBlock; ++i)
                    _mm512_store_si512(a + (c * kRowBlock + i) * 64, _mm512_setzero_si512());
            return;
        }
        const uint8_t *tile = w.codes + (r + i0) * w.kp / 4;
        const bool next = r + i0 + kRowBlock < padded;
        for (int64_t g = 0; g < groups; ++g)
            for (int64_t i = 0; i < kTileRows; ++i) {
                const uint8_t *src = tile + (g * kTileRows + i) * 64;
                if (next) _mm_prefetch(reinterpret_cast<const char *>(src + kRowBlock * w.kp / 4), _MM_HINT_T1);
                const __m512i codes = _mm512_load_si512(src);
                for (int k = 0; k < 4; ++k)
                    _mm512_store_si512(a + ((4 * g + k) * kRowBlock + i0 + i) * 64,
                                       _mm512_and_si512(_mm512_srli_epi16(codes, 2 * k), m3));
            }
    }
}

// y for weight rows r .. min(r + 16, end) (C tile `acc` as int32 [row][activation]) and
// activation rows 16 t ..: dot = C - total, then store_rows' (dot * scale) / s_x, one
// activation row at a time.
void store_tile(const TernaryView &w, const QuantizedRows &x, const int32_t *acc, int64_t r,
                int64_t end, int64_t t, float *y) {
    __m512i v[16];
    for (int i = 0; i < 16; ++i) v[i] = _mm512_load_si512(acc + 16 * i);
    transpose16(v);  // v[j]: activation row j's dot products with the 16 weight rows
    const int64_t live_rows = end - r < 16 ? end - r : 16;
    const __mmask16 live = static_cast<__mmask16>((1u << live_rows) - 1);
    const __m512 scale = _mm512_maskz_loadu_ps(live, w.scales + r);
    for (int64_t j = 0; j < kTile && t * kTile + j < x.n; ++j) {
        const int64_t b = t * kTile + j;
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(v[j], _mm512_set1_epi32(x.total[b])));
        _mm512_mask_storeu_ps(y + b * w.rows + r, live,
                              _mm512_div_ps(_mm512_mul_ps(dot, scale), _mm512_set1_ps(x.sx[b])));
    }
}

// The full dot products of RA weight tiles (rows r ..) and RB activation tiles (t ..).
template <int RA, int RB>
void block(const TernaryView &w, const QuantizedRows &x, const uint8_t *a, int64_t r, int64_t end,
           int64_t t, float *y) {
    const int64_t chunks = w.kp / 64;
    _tile_zero(0);
    if (RB > 1) _tile_zero(1);
    if (RA > 1) _tile_zero(2);
    if (RA > 1 && RB > 1) _tile_zero(3);
    const int8_t *b0 = x.tiles + t * chunks * 1024, *b1 = b0 + chunks * 1024;
    for (int64_t c = 0; c < chunks; ++c) {
        const uint8_t *ac = a + c * kRowBlock * 64;
        _tile_loadd(4, ac, 64);
        if (RA > 1) _tile_loadd(5, ac + kTile * 64, 64);
        _tile_loadd(6, b0 + c * 1024, 64);
        if (RB > 1) _tile_loadd(7, b1 + c * 1024, 64);
        _tile_dpbusd(0, 4, 6);
        if (RB > 1) _tile_dpbusd(1, 4, 7);
        if (RA > 1) _tile_dpbusd(2, 5, 6);
        if (RA > 1 && RB > 1) _tile_dpbusd(3, 5, 7);
    }
    alignas(64) int32_t acc[4][256];
    _tile_stored(0, acc[0], 64);
    if (RB > 1) _tile_stored(1, acc[1], 64);
    if (RA > 1) _tile_stored(2, acc[2], 64);
    if (RA > 1 && RB > 1) _tile_stored(3, acc[3], 64);
    for (int i = 0; i < RA; ++i)
        for (int j = 0; j < RB; ++j) store_tile(w, x, acc[2 * i + j], r + kTile * i, end, t + j, y);
}

void matmul(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    // The codes of one row block, unpacked: 2 x 16 rows x kp bytes.
    uint8_t *a = x.tiles != nullptr ? thread_scratch(kScratchUnpackedCodes, kRowBlock * w.kp) : nullptr;
    // Few activation rows (no tiles), a scale per block, or out of memory: the AVX-512 kernel.
    if (a == nullptr || w.groups > 1) {
        avx512_kernels.matmul(w, x, r0, r1, y);
        return;
    }
    static const TileConfig config;
    _tile_loadconfig(&config);
    const int64_t tiles = (x.n + kTile - 1) / kTile, end = r1 < w.rows ? r1 : w.rows;
    for (int64_t r = r0; r < end; r += kRowBlock) {
        unpack_rows(w, r, a);
        const bool two = end - r > kTile;
        for (int64_t t = 0; t < tiles; t += 2) {
            const bool pair = tiles - t > 1;
            if (two && pair)
                block<2, 2>(w, x, a, r, end, t, y);
            else if (two)
                block<2, 1>(w, x, a, r, end, t, y);
            else if (pair)
                block<1, 2>(w, x, a, r, end, t, y);
            else
                block<1, 1>(w, x, a, r, end, t, y);
        }
    }
    _tile_release();
}

}  // namespace

// Built at start-up from the AVX-512 table (constant-initialized, so already complete).
const TierKernels amx_kernels = [] {
    TierKernels t = avx512_kernels;
    t.name = "amx";
    t.matmul = matmul;
    t.tile_activations = tile_activations;
    return t;
}();

}  // namespace pybitnet
