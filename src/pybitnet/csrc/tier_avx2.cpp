// The AVX2 tier (Haswell, Zen 1 and later). Ternary dot products use vpmaddubsw with the codes
// (0..2) as its unsigned operand: a pair sums to at most 2 * 2 * 128 in magnitude, and four
// planes to 2048, so the int16 sums never saturate.
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
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = x + r * k;
        __m256 m = _mm256_setzero_ps();
        for (int64_t i = 0; i < k; i += 8) {
            const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k - i)), lanes);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_maskload_ps(xr + i, live)));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        const float s = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
        sx[r] = s;
        const __m256 vs = _mm256_set1_ps(s);
        int8_t *qr = q + r * kp;
        for (int64_t g = 0; g < groups; ++g) {
            __m256i total = _mm256_setzero_si256();
            for (int64_t i = 256 * g; i < 256 * g + 256; i += 8) {
                const int64_t left = k - i < 0 ? 0 : k - i;
                const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left < 8 ? left : 8)), lanes);
                const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(xr + i, live), vs);
                __m256i t = _mm256_cvtps_epi32(
                    _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                t = _mm256_min_epi32(_mm256_max_epi32(t, lo), hi);
                total = _mm256_add_epi32(total, t);
                const __m128i t16 = _mm_packs_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
                _mm_storel_epi64(reinterpret_cast<__m128i *>(qr + i), _mm_packs_epi16(t16, t16));
            }
            __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
            t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
            t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
            sums[r * groups + g] = _mm_cvtsi128_si32(t4);
        }
    }
}

inline int32_t hsum_epi32(__m256i a) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}

struct Isa {
    static constexpr int B = 1, B_BLOCK = 1;
    using Acc = __m256i;
    using FAcc = __m256;
    struct Planes {
        __m256i p[2][4];  // [half of the group][plane]
    };
    static Acc zero() { return _mm256_setzero_si256(); }
    static FAcc fzero() { return _mm256_setzero_ps(); }
    static Planes load(const uint8_t *w) {
        const __m256i m3 = _mm256_set1_epi8(3);
        Planes p;
        for (int h = 0; h < 2; ++h) {
            const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i *>(w + 32 * h));
            p.p[h][0] = _mm256_and_si256(v, m3);
            p.p[h][1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), m3);
            p.p[h][2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m3);
            p.p[h][3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), m3);
        }
        return p;
    }
    static void dot(Acc &acc, const Planes &p, const int8_t *x) {
        for (int h = 0; h < 2; ++h) {
            __m256i s = _mm256_setzero_si256();
            for (int k = 0; k < 4; ++k) {
                const __m256i xk = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + 64 * k + 32 * h));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(p.p[h][k], xk));
            }
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
        }
    }
    static FAcc fma(FAcc f, Acc a, float d) {
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(d), f);
    }
    static int32_t sum(Acc a) { return hsum_epi32(a); }
    static float fsum(FAcc f) {
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
        t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
        return _mm_cvtss_f32(t);
    }
};

#include "matmul_tiles.h"

struct Vf {
    static constexpr int N = 8, DB = 2;
    using T = __m256;
    static T zero() { return _mm256_setzero_ps(); }
    static T set1(float f) { return _mm256_set1_ps(f); }
    static T load(const float *p) { return _mm256_loadu_ps(p); }
    static void store(float *p, T v) { _mm256_storeu_ps(p, v); }
    static T add(T a, T b) { return _mm256_add_ps(a, b); }
    static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
    static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
    static T div(T a, T b) { return _mm256_div_ps(a, b); }
    static T max(T a, T b) { return _mm256_max_ps(a, b); }
    static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
    static float hsum(T v) {
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
        return _mm_cvtss_f32(t);
    }
    static float hmax(T v) {
        __m128 t = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        t = _mm_max_ps(t, _mm_movehl_ps(t, t));
        t = _mm_max_ss(t, _mm_shuffle_ps(t, t, 1));
        return _mm_cvtss_f32(t);
    }
    static T load_f16(const uint16_t *p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    }
    static T load_bf16(const uint16_t *p) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static float half(uint16_t h) { return _cvtsh_ss(h); }
    static T load_i8(const int8_t *p) {
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))));
    }
    static T min(T a, T b) { return _mm256_min_ps(a, b); }
    static T fnmadd(T a, T b, T c) { return _mm256_fnmadd_ps(a, b, c); }
    static T round(T x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    // 2^n built in the exponent bits (|n| <= 127 after cephes_exp's clamp).
    static T scale2(T p, T n) {
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return mul(p, _mm256_castsi256_ps(e));
    }
    static T exp(T x) { return cephes_exp<Vf>(x); }
};

// int8 weights . int8 activations, both widened to int16 for vpmaddwd (exact: vpmaddubsw's
// int16 sums could saturate). A tile of kTileRows weight rows (one stream, tiers.h) against one
// activation row at a time, whose 64 widened values of a chunk take 4 registers.
#define PYBITNET_TIER_INT8_MATMUL
void int8_matmul(const Int8View &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1 && r < w.rows; r += kTileRows) {
        const int8_t *tile = int8_chunk(w, r, 0);
        for (int64_t b = 0; b < x.n; ++b) {
            __m256i acc[kTileRows];
            for (int i = 0; i < kTileRows; ++i) acc[i] = _mm256_setzero_si256();
            for (int64_t k = 0; k < w.kp; k += 64) {
                __m256i xv[4];
                for (int h = 0; h < 4; ++h)
                    xv[h] = _mm256_cvtepi8_epi16(
                        _mm_loadu_si128(reinterpret_cast<const __m128i *>(x.q + b * x.kp + k + 16 * h)));
                const int8_t *wk = tile + k * kTileRows;
                for (int i = 0; i < kTileRows; ++i) {
                    __builtin_prefetch(wk + 64 * i + kStreamPrefetch, 0, 2);
                    for (int h = 0; h < 4; ++h) {
                        const __m256i wv = _mm256_cvtepi8_epi16(
                            _mm_load_si128(reinterpret_cast<const __m128i *>(wk + 64 * i + 16 * h)));
                        acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(wv, xv[h]));
                    }
                }
            }
            for (int i = 0; i < kTileRows && r + i < w.rows; ++i)
                y[b * w.rows + r + i] =
                    static_cast<float>(Isa::sum(acc[i])) * w.scales[r + i] / x.sx[b];
        }
    }
}

#include "float_tiles.h"

// Q6_K: the 6-bit codes (0..63) as vpmaddubsw's unsigned operand (a pair sums to at most
// 2 * 63 * 127: no saturation), vpmaddwd with each pair's 16-element scale, and the codes' -32
// as 32 * sum_j sc_j * bsum_j, once per super-block. Chunk 4h + k (32 codes, sub-blocks 8h + 2k
// and 8h + 2k + 1) takes the nibbles of ql[64h + 32 (k % 2) ..] (high ones for k >= 2) and bit
// pair k of qh[32h ..]. Weight row r against activation rows b .. b + B - 1.
template <int B>
inline void q6k_tile(const DenseView &w, const BlockQ8Rows &x, int64_t r, int64_t b, float *y) {
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const int64_t blocks = w.cols / 256;
    const uint8_t *row = w.data + r * w.row_bytes;
    float acc[B] = {};
    for (int64_t s = 0; s < blocks; ++s) {
        const uint8_t *blk = row + kQ6_KBytes * s;
        const int8_t *sc = reinterpret_cast<const int8_t *>(blk + 192);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i *>(sc)));
        __m256i a[B];
        for (int j = 0; j < B; ++j) {
            const __m256i bsums = _mm256_loadu_si256(
                reinterpret_cast<const __m256i *>(x.bsums + 16 * ((b + j) * blocks + s)));
            a[j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                    _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums), 5));
        }
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(blk + 128 + 32 * h));
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30))};
            for (int k = 0; k < 4; ++k) {
                const int c = 4 * h + k;
                const __m256i scales = _mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_set1_epi16(sc[2 * c])), _mm_set1_epi16(sc[2 * c + 1]), 1);
                for (int j = 0; j < B; ++j) {
                    const __m256i xv = _mm256_loadu_si256(
                        reinterpret_cast<const __m256i *>(x.q + 256 * ((b + j) * blocks + s) + 32 * c));
                    a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], xv), scales));
                }
            }
        }
        for (int j = 0; j < B; ++j) acc[j] = q6k_step(acc[j], blk, x.d[(b + j) * blocks + s], hsum_epi32(a[j]));
    }
    for (int j = 0; j < B; ++j) y[(b + j) * w.rows + r] = acc[j];
}

// Activation rows a weight row takes at once (its decoded codes stay in registers).
constexpr int kQ6kRows = 2, kQ6kTile = 1;
#define PYBITNET_TIER_Q6K_TILE
#include "kquant_dot.h"

}  // namespace

const TierKernels avx2_kernels = {"avx2", quantize, matmul, dense_matmul, dense_rows,
                                  int8_matmul, q6k_matmul, q4k_matmul, rmsnorm, rope, gated,
                                  attention, nullptr};

}  // namespace pybitnet
