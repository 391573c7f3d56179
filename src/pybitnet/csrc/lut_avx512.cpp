// The lookup-table ternary GEMM on AVX-512 (BW for the 16-bit lanes; compiled with the avx512
// tier's flags). Layout and method: tiers.h (LutView) and lut.h. Rules of tier units: tiers.h.
#include <immintrin.h>

#include "tiers.h"

namespace pybitnet {
namespace {

constexpr int kTable = 32;                      // int16 entries per table, 27 used
constexpr int64_t kTables = kLutGroups * kTable;  // one activation row's tables for a block
constexpr int kChunks = kLutTileRows / 32;      // 32-row vectors of indices in a tile
constexpr int kRowsPerCall = 4;                 // activation rows per pass over a tile's block

// Pattern vectors: lane i of weight[k] is the weight (digit - 1) of column k in index i.
struct Patterns {
    __m512i weight[3];
};

Patterns patterns() {
    alignas(64) int16_t p[3][kTable];
    for (int i = 0; i < kTable; ++i) {
        p[0][i] = static_cast<int16_t>(i < 27 ? i / 9 - 1 : 0);
        p[1][i] = static_cast<int16_t>(i < 27 ? i / 3 % 3 - 1 : 0);
        p[2][i] = static_cast<int16_t>(i < 27 ? i % 3 - 1 : 0);
    }
    return {{_mm512_load_si512(p[0]), _mm512_load_si512(p[1]), _mm512_load_si512(p[2])}};
}

// The tables of one activation row's 256-column block q: table j, entry i = w(i) . x_q of
// group j. |x_q| <= 127 (quantize clamps rint(x * 127 / max|x|)), so an entry is at most 381
// and a block's sum of 85 of them plus one column at most 32512: int16 holds it exactly.
void build_tables(const int8_t *q, const Patterns &p, int16_t *tables) {
    for (int j = 0; j < kLutGroups - 1; ++j) {
        __m512i t = _mm512_mullo_epi16(_mm512_set1_epi16(q[3 * j]), p.weight[0]);
        t = _mm512_add_epi16(t, _mm512_mullo_epi16(_mm512_set1_epi16(q[3 * j + 1]), p.weight[1]));
        t = _mm512_add_epi16(t, _mm512_mullo_epi16(_mm512_set1_epi16(q[3 * j + 2]), p.weight[2]));
        _mm512_storeu_si512(tables + kTable * j, t);
    }
    _mm512_storeu_si512(tables + kTable * (kLutGroups - 1),
                        _mm512_mullo_epi16(_mm512_set1_epi16(q[255]), p.weight[0]));
}

// dots[b * stride + i] += W . x_q over groups j0..j1 of a block, for NB activation rows (tables of row
// b at tables + b * kTables) and the kLutTileRows rows of a tile (indices w). int16 sums: a
// whole block's fit (build_tables). `next`, the next tile's indices, is prefetched: a large
// matrix comes from memory (13824 x 2560 ran 20% slower than 2560 x 2560 without).
template <int NB>
void block_dots(const uint8_t *w, const uint8_t *next, const int16_t *tables, int j0, int j1,
                int16_t *dots, int64_t stride) {
    __m512i acc[kChunks][NB];
    for (int c = 0; c < kChunks; ++c)
        for (int b = 0; b < NB; ++b) acc[c][b] = _mm512_loadu_si512(dots + b * stride + 32 * c);
    for (int j = j0; j < j1; ++j) {
        _mm_prefetch(reinterpret_cast<const char *>(next + j * kLutTileRows), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char *>(next + j * kLutTileRows + 64), _MM_HINT_T0);
        // vpermw reads the low 5 bits of each 16-bit index: a 64-byte load holds the indices
        // of two 32-row chunks, one in the low bytes, one (after a shift) in the high bytes.
        __m512i idx[kChunks];
        for (int c = 0; c < kChunks; c += 2) {
            idx[c] = _mm512_loadu_si512(w + j * kLutTileRows + 32 * c);
            idx[c + 1] = _mm512_srli_epi16(idx[c], 8);
        }
        for (int b = 0; b < NB; ++b) {
            const __m512i t = _mm512_loadu_si512(tables + b * kTables + kTable * j);
            for (int c = 0; c < kChunks; ++c)
                acc[c][b] = _mm512_add_epi16(acc[c][b], _mm512_permutexvar_epi16(idx[c], t));
        }
    }
    for (int c = 0; c < kChunks; ++c)
        for (int b = 0; b < NB; ++b) _mm512_storeu_si512(dots + b * stride + 32 * c, acc[c][b]);
}

// A block's groups in kSplit slices: the tables of kRowsPerCall activation rows for one slice
// (11 KB) stay in L1 while the slice runs over every weight tile, whose indices stream from L2.
// Whole blocks of tables (22 KB) with the tile's indices (11 KB) overflowed Zen 4's 32 KB L1.
constexpr int kSplit = 2;

}  // namespace

void lut_matmul_avx512(const LutView &w, const QuantizedRows &x, int64_t b0, int64_t b1,
                       int64_t t0, int64_t t1, int16_t *tables, void *acc, float *y) {
    const int64_t blocks = w.kp / 256, m = b1 - b0, width = (t1 - t0) * kLutTileRows;
    const int64_t tiles = (w.rows + kLutTileRows - 1) / kLutTileRows, padded = tiles * kLutTileRows;
    const bool per_block = w.groups > 1;
    // acc: m x width, int32 dot products (one scale per row) or float sums of d_k * dot_k.
    int32_t *iacc = static_cast<int32_t *>(acc);
    float *facc = static_cast<float *>(acc);
    for (int64_t i = 0; i < m * width; ++i) iacc[i] = 0;  // 0 is 0.0f too
    const Patterns p = patterns();
    // dots: int16 sums over the current block, m x width.
    int16_t *dots = tables + m * kTables;
    for (int64_t k = 0; k < blocks; ++k) {
        for (int64_t b = 0; b < m; ++b)
            build_tables(x.q + (b0 + b) * x.kp + 256 * k, p, tables + b * kTables);
        for (int64_t i = 0; i < m * width; ++i) dots[i] = 0;
        for (int64_t bb = 0; bb < m; bb += kRowsPerCall) {
            const int16_t *tb = tables + bb * kTables;
            for (int s = 0; s < kSplit; ++s) {
                const int j0 = kLutGroups * s / kSplit, j1 = kLutGroups * (s + 1) / kSplit;
                for (int64_t t = t0; t < t1; ++t) {
                    const uint8_t *wt = w.idx + (k * tiles + t) * kLutGroups * kLutTileRows;
                    const uint8_t *next = t + 1 < t1 ? wt + kLutGroups * kLutTileRows : wt;
                    int16_t *d = dots + bb * width + (t - t0) * kLutTileRows;
                    switch (m - bb < kRowsPerCall ? m - bb : kRowsPerCall) {
                    case 4: block_dots<4>(wt, next, tb, j0, j1, d, width); break;
                    case 3: block_dots<3>(wt, next, tb, j0, j1, d, width); break;
                    case 2: block_dots<2>(wt, next, tb, j0, j1, d, width); break;
                    default: block_dots<1>(wt, next, tb, j0, j1, d, width); break;
                    }
                }
            }
        }
        const float *scales = w.scales + k * padded + t0 * kLutTileRows;
        for (int64_t b = 0; b < m; ++b)
            for (int64_t i = 0; i < width; i += 16) {
                const int64_t at = b * width + i;
                const __m512i d = _mm512_cvtepi16_epi32(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i *>(dots + at)));
                if (per_block)
                    _mm512_storeu_ps(facc + at, _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                                                                _mm512_loadu_ps(scales + i),
                                                                _mm512_loadu_ps(facc + at)));
                else
                    _mm512_storeu_si512(iacc + at, _mm512_add_epi32(_mm512_loadu_si512(iacc + at), d));
            }
    }
    // The same float operations as the multiply-add kernels (matmul_tiles.h) on the same sums.
    for (int64_t b = 0; b < m; ++b)
        for (int64_t r = t0 * kLutTileRows; r < t1 * kLutTileRows && r < w.rows; ++r) {
            const int64_t at = b * width + r - t0 * kLutTileRows;
            y[(b0 + b) * w.rows + r] = per_block ? facc[at] / x.sx[b0 + b]
                                                 : static_cast<float>(iacc[at]) * w.scales[r] /
                                                       x.sx[b0 + b];
        }
}

}  // namespace pybitnet
