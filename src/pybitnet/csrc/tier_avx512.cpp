// The AVX-512 tier (F, BW, VL and VNNI: Ice Lake, Zen 4 and later). Ternary dot products use
// vpdpbusd with the codes (0..2) as its unsigned operand and x_q as the signed one.
#include <immintrin.h>

#include <math.h>
#include <string.h>

#include "simd_exp.h"
#include "tiers.h"

namespace pybitnet {
namespace {

void quantize(const float *x, int64_t k, int64_t r0, int64_t r1, int8_t *q, float *sx,
              int32_t *sums, int64_t kp) {
    const int64_t groups = kp / 256;
    const __m512i lo = _mm512_set1_epi32(-128), hi = _mm512_set1_epi32(127);
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = x + r * k;
        __m512 m = _mm512_setzero_ps();
        for (int64_t i = 0; i < k; i += 16) {
            const __mmask16 live = i + 16 <= k ? 0xffff : (1u << (k - i)) - 1;
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(live, xr + i)));
        }
        const float amax = _mm512_reduce_max_ps(m);
        const float s = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
        sx[r] = s;
        const __m512 vs = _mm512_set1_ps(s);
        int8_t *qr = q + r * kp;
        for (int64_t g = 0; g < groups; ++g) {
            __m512i total = _mm512_setzero_si512();
            for (int64_t i = 256 * g; i < 256 * g + 256; i += 16) {
                const __mmask16 live =
                    i + 16 <= k ? 0xffff : (i >= k ? 0 : (1u << (k - i)) - 1);
                const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, xr + i), vs);
                __m512i t = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                t = _mm512_min_epi32(_mm512_max_epi32(t, lo), hi);
                total = _mm512_add_epi32(total, t);
                _mm_storeu_si128(reinterpret_cast<__m128i *>(qr + i), _mm512_cvtepi32_epi8(t));
            }
            sums[r * groups + g] = _mm512_reduce_add_epi32(total);
        }
    }
}

struct Isa {
    static constexpr int B = 4, B_BLOCK = 2;  // 4 x 4 accumulators: group() unpacks plane by plane
    using Acc = __m512i;
    using FAcc = __m512;
    static Acc zero() { return _mm512_setzero_si512(); }
    static FAcc fzero() { return _mm512_setzero_ps(); }
    static FAcc fma(FAcc f, Acc a, float d) {
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(d), f);
    }
    static int32_t sum(Acc a) { return _mm512_reduce_add_epi32(a); }
    static float fsum(FAcc f) { return _mm512_reduce_add_ps(f); }
};

// Plane by plane: the codes of the R rows stay packed in registers and each plane is unpacked
// once for the B activation rows: 4 R + 4 B loads and 7 R shifts and masks per 4 R B vpdpbusd.
// Unpacking all four planes of a row at once left registers for 4 x 2 accumulators only; this
// 4 x 4 tile ran BitLinear at n = 8 10% faster (2B shapes, Zen 4, 2 threads), near 80% of the
// vpdpbusd peak.
#define PYBITNET_TIER_TERNARY_GROUP
template <int B>
inline void group(const uint8_t *w, const int8_t *x, int64_t stride, __m512i acc[kTileRows][B]) {
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i codes[kTileRows];
    for (int i = 0; i < kTileRows; ++i) codes[i] = _mm512_load_si512(w + 64 * i);
    for (int k = 0; k < 4; ++k) {
        __m512i xk[B];
        for (int j = 0; j < B; ++j) xk[j] = _mm512_loadu_si512(x + j * stride + 64 * k);
        for (int i = 0; i < kTileRows; ++i) {
            const __m512i p = _mm512_and_si512(_mm512_srli_epi16(codes[i], 2 * k), m3);
            for (int j = 0; j < B; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], p, xk[j]);
        }
    }
}

// The 16 sums of a full 4 x 4 tile at once (lane i * 4 + j of one vector: a transpose-and-add
// tree of 15 adds) and their scaling as one vector, instead of 16 horizontal sums and scalar
// divisions: that tail took ~1/6 of BitLinear's time on 2560-column rows (10 groups a tile).
// Same operations per output as the generic store_rows, so the same float32 results.
#define PYBITNET_TIER_TERNARY_STORE_4X4
inline void store_4x4(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b,
                      __m512i acc[4][4], float *y) {
    __m512i a[8], c[4], e[2];
    const __m512i *v = &acc[0][0];
    for (int k = 0; k < 8; ++k)  // per 128-bit lane: partial sums of v[2k], v[2k+1] twice
        a[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                                _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; ++k)  // per 128-bit lane: partial sums of v[4k] .. v[4k + 3]
        c[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(a[2 * k], a[2 * k + 1]),
                                _mm512_unpackhi_epi64(a[2 * k], a[2 * k + 1]));
    for (int k = 0; k < 2; ++k)  // 128-bit lanes added in pairs
        e[k] = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2 * k], c[2 * k + 1], 0x88),
                                _mm512_shuffle_i32x4(c[2 * k], c[2 * k + 1], 0xDD));
    const __m512i sums = _mm512_add_epi32(_mm512_shuffle_i32x4(e[0], e[1], 0x88),
                                          _mm512_shuffle_i32x4(e[0], e[1], 0xDD));
    const __m512i rows = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512 scale =
        _mm512_permutexvar_ps(rows, _mm512_castps128_ps512(_mm_loadu_ps(w.scales + r)));
    const __m512i total =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i *>(x.total + b)));
    const __m512 sx = _mm512_broadcast_f32x4(_mm_loadu_ps(x.sx + b));
    alignas(64) float out[16];
    _mm512_store_ps(
        out, _mm512_div_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sums, total)), scale),
                           sx));
    for (int i = 0; i < 4 && r + i < w.rows; ++i)
        for (int j = 0; j < 4; ++j) y[(b + j) * w.rows + r + i] = out[4 * i + j];
}

#define PYBITNET_TIER_TERNARY_GEMV  // defined below, with matmul_tiles.h's store_rows
inline void gemv_tile(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b, float *y);

#include "matmul_tiles.h"

// One activation row (decoding) against a tile of weight rows, without the shifts: plane k of
// a code byte masked in place is c_k * 4^k, so its vpdpbusd sum is 4^k times the plane's. One
// accumulator a row and plane, divided back exactly at the end (each lane is a multiple of
// 4^k): 2 vector operations per 64 codes instead of 3. At one activation row the group() loop
// ran at ~15 GB/s a core from cache, about what a core reads from memory, so the two did not
// overlap well.
inline void gemv_tile(const TernaryView &w, const QuantizedRows &x, int64_t r, int64_t b, float *y) {
    const int64_t groups = w.kp / 256;
    const uint8_t *codes = w.codes + r * w.kp / 4;
    const int8_t *xq = x.q + b * x.kp;
    const __m512i mask[4] = {_mm512_set1_epi8(3), _mm512_set1_epi8(12), _mm512_set1_epi8(48),
                             _mm512_set1_epi8(static_cast<char>(192))};
    __m512i acc[kTileRows][4];
    for (int i = 0; i < kTileRows; ++i)
        for (int k = 0; k < 4; ++k) acc[i][k] = _mm512_setzero_si512();
    for (int64_t g = 0; g < groups; ++g) {
        __m512i xk[4];
        for (int k = 0; k < 4; ++k) xk[k] = _mm512_loadu_si512(xq + 256 * g + 64 * k);
        for (int i = 0; i < kTileRows; ++i) {
            const uint8_t *p = codes + (g * kTileRows + i) * 64;
            __builtin_prefetch(p + kPrefetchBytes);
            const __m512i c = _mm512_load_si512(p);
            for (int k = 0; k < 4; ++k)
                acc[i][k] = _mm512_dpbusd_epi32(acc[i][k], _mm512_and_si512(c, mask[k]), xk[k]);
        }
    }
    __m512i sum[kTileRows][1];
    for (int i = 0; i < kTileRows; ++i)
        sum[i][0] = _mm512_add_epi32(
            _mm512_add_epi32(acc[i][0], _mm512_srai_epi32(acc[i][1], 2)),
            _mm512_add_epi32(_mm512_srai_epi32(acc[i][2], 4), _mm512_srai_epi32(acc[i][3], 6)));
    store_rows<1>(w, x, r, b, sum, y);
}

struct Vf {
    static constexpr int N = 16, DB = 4;
    using T = __m512;
    static T zero() { return _mm512_setzero_ps(); }
    static T set1(float f) { return _mm512_set1_ps(f); }
    static T load(const float *p) { return _mm512_loadu_ps(p); }
    static void store(float *p, T v) { _mm512_storeu_ps(p, v); }
    static T add(T a, T b) { return _mm512_add_ps(a, b); }
    static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
    static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
    static T div(T a, T b) { return _mm512_div_ps(a, b); }
    static T max(T a, T b) { return _mm512_max_ps(a, b); }
    static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
    static float hsum(T v) { return _mm512_reduce_add_ps(v); }
    static float hmax(T v) { return _mm512_reduce_max_ps(v); }
    static T load_f16(const uint16_t *p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
    }
    static T load_bf16(const uint16_t *p) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static float half(uint16_t h) { return _cvtsh_ss(h); }
    static T load_i8(const int8_t *p) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))));
    }
    static T min(T a, T b) { return _mm512_min_ps(a, b); }
    static T fnmadd(T a, T b, T c) { return _mm512_fnmadd_ps(a, b, c); }
    static T round(T x) {
        return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    static T scale2(T p, T n) { return _mm512_scalef_ps(p, n); }
    static T exp(T x) { return cephes_exp<Vf>(x); }
};

// int8 weights . int8 activations with vpdpbusd, whose first operand is unsigned: x_q + 128
// (x_q xor 0x80) as u8, then subtract 128 * sum(q_row). A tile of kTileRows weight rows (one
// stream, tiers.h) against activation rows b .. b + B - 1: 4 * B accumulators.
template <int B>
inline void int8_tile(const Int8View &w, const QuantizedRows &x, int64_t r, int64_t b, float *y) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const int8_t *tile = int8_chunk(w, r, 0);
    __m512i acc[kTileRows][B];
    for (int i = 0; i < kTileRows; ++i)
        for (int j = 0; j < B; ++j) acc[i][j] = _mm512_setzero_si512();
    for (int64_t k = 0; k < w.kp; k += 64) {
        __m512i xv[B];
        for (int j = 0; j < B; ++j)
            xv[j] = _mm512_xor_si512(_mm512_loadu_si512(x.q + (b + j) * x.kp + k), flip);
        const int8_t *wk = tile + k * kTileRows;
        for (int i = 0; i < kTileRows; ++i) {
            __builtin_prefetch(wk + 64 * i + kStreamPrefetch, 0, 2);
            const __m512i wv = _mm512_load_si512(wk + 64 * i);
            for (int j = 0; j < B; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv[j], wv);
        }
    }
    for (int i = 0; i < kTileRows && r + i < w.rows; ++i)
        for (int j = 0; j < B; ++j) {
            const int32_t dot = _mm512_reduce_add_epi32(acc[i][j]) - 128 * w.sums[r + i];
            y[(b + j) * w.rows + r + i] = static_cast<float>(dot) * w.scales[r + i] / x.sx[b + j];
        }
}

template <int B>
inline void int8_tile_rest(const Int8View &w, const QuantizedRows &x, int64_t r, int64_t b,
                           float *y) {
    if constexpr (B > 0) {
        for (; b + B <= x.n; b += B) int8_tile<B>(w, x, r, b, y);
        int8_tile_rest<B - 1>(w, x, r, b, y);
    }
}

#define PYBITNET_TIER_INT8_MATMUL
void int8_matmul(const Int8View &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    // B = 4: 16 accumulators; the tile (10 KB for 2560 columns) stays in L1 between blocks.
    for (int64_t r = r0; r < r1 && r < w.rows; r += kTileRows) int8_tile_rest<4>(w, x, r, 0, y);
}

#include "float_tiles.h"

// Q6_K: the 6-bit codes (0..63) as vpmaddubsw's unsigned operand (a pair sums to at most
// 2 * 63 * 127: no saturation), vpdpwssd with each pair's 16-element scale, and the codes' -32
// as 32 * sum_j sc_j * bsum_j, once per super-block. 64 codes a vector: q[2h] holds elements
// 128h .. 128h + 63 (low nibbles of 64 ql bytes; the qh pairs of k = 0, 1), q[2h + 1] the next
// 64 (high nibbles; pairs k = 2, 3).
struct Q6kDecoder {
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    // bits 4-5 of a code: qh << 4 (k = 0) and << 2 (k = 1); qh (k = 2) and >> 2 (k = 3)
    const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    __m512i scale_of[4];  // int16 lane m of chunk c takes the scale of sub-block 4c + m / 8
    Q6kDecoder() {
        for (int c = 0; c < 4; ++c) {
            alignas(64) int16_t idx[32];
            for (int m = 0; m < 32; ++m) idx[m] = static_cast<int16_t>(4 * c + m / 8);
            scale_of[c] = _mm512_load_si512(idx);
        }
    }
    // (ql & 15) | hi in one vpternlogd (hi holds bits 4-5 only)
    __m512i merge(__m512i ql, __m512i hi) const { return _mm512_ternarylogic_epi32(ql, m4, hi, 0xEA); }
    void codes(const uint8_t *blk, __m512i q[4]) const {
        for (int h = 0; h < 2; ++h) {
            const __m512i ql = _mm512_loadu_si512(blk + 64 * h);
            const __m512i qh = _mm512_broadcast_i64x4(
                _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 128 + 32 * h)));
            q[2 * h] = merge(ql, _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30));
            q[2 * h + 1] = merge(_mm512_srli_epi16(ql, 4), _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30));
        }
    }
};

// The four sums of a[0..3] (int32 lanes): per 128-bit lane a transpose-and-add tree, then the
// four 128-bit lanes added (exact integers: any order).
inline __m128i sum4(const __m512i a[4]) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// Weight rows r .. r + 3 (a row past the matrix repeats its last, its sums dropped) against
// activation rows b .. b + B - 1: the four rows' sums of a super-block come out of one tree.
// Each row is read kQ6kRun super-blocks at a time (one sequential run, not four streams that
// step 210 bytes each), and the next tile's bytes are prefetched into L2 meanwhile.
constexpr int kQ6kRun = 8;
template <int B>
inline void q6k_tile(const DenseView &w, const BlockQ8Rows &x, int64_t r, int64_t b, float *y) {
    static const Q6kDecoder dec;
    const int64_t blocks = w.cols / 256, ahead = kTileRows * w.row_bytes;
    const uint8_t *row[kTileRows];
    for (int i = 0; i < kTileRows; ++i) row[i] = w.data + min64(r + i, w.rows - 1) * w.row_bytes;
    float acc[kTileRows][B] = {};
    for (int64_t s0 = 0; s0 < blocks; s0 += kQ6kRun) {
        const int64_t run = min64(kQ6kRun, blocks - s0);
        __m512i a[kQ6kRun][B][kTileRows];
        for (int i = 0; i < kTileRows; ++i)
            for (int64_t t = 0; t < run; ++t) {
                const uint8_t *blk = row[i] + kQ6_KBytes * (s0 + t);
                for (int64_t line = 0; line < kQ6_KBytes; line += 64) _mm_prefetch(blk + ahead + line, _MM_HINT_T1);
                __m512i q[4], scales[4];
                dec.codes(blk, q);
                const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(blk + 192)));
                const __m512i sc512 = _mm512_inserti64x4(_mm512_setzero_si512(), sc, 0);
                for (int c = 0; c < 4; ++c) scales[c] = _mm512_permutexvar_epi16(dec.scale_of[c], sc512);
                for (int j = 0; j < B; ++j) {
                    const int64_t xb = (b + j) * blocks + s0 + t;
                    const int8_t *xq = x.q + 256 * xb;
                    const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.bsums + 16 * xb));
                    __m512i v = _mm512_sub_epi32(
                        _mm512_setzero_si512(),
                        _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_slli_epi32(_mm256_madd_epi16(sc, bsums), 5), 0));
                    for (int c = 0; c < 4; ++c)
                        v = _mm512_dpwssd_epi32(v, _mm512_maddubs_epi16(q[c], _mm512_loadu_si512(xq + 64 * c)), scales[c]);
                    a[t][j][i] = v;
                }
            }
        for (int64_t t = 0; t < run; ++t)
            for (int j = 0; j < B; ++j) {
                alignas(16) int32_t isum[kTileRows];
                _mm_store_si128(reinterpret_cast<__m128i *>(isum), sum4(a[t][j]));
                const float dx = x.d[(b + j) * blocks + s0 + t];
                for (int i = 0; i < kTileRows; ++i)
                    acc[i][j] = q6k_step(acc[i][j], row[i] + kQ6_KBytes * (s0 + t), dx, isum[i]);
            }
    }
    for (int i = 0; i < kTileRows && r + i < w.rows; ++i)
        for (int j = 0; j < B; ++j) y[(b + j) * w.rows + r + i] = acc[i][j];
}

// Activation rows a tile takes at once (4 x B accumulators), weight rows a tile.
constexpr int kQ6kRows = 2, kQ6kTile = kTileRows;
#define PYBITNET_TIER_Q6K_TILE
#include "kquant_dot.h"

}  // namespace

const TierKernels avx512_kernels = {"avx512", quantize, matmul, dense_matmul, dense_rows,
                                    int8_matmul, q6k_matmul, q4k_matmul, rmsnorm, rope, gated,
                                    attention, nullptr};

}  // namespace pybitnet
