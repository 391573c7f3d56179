// The AVX-512 tier (F, BW, VL and VNNI: Ice Lake, Zen 4 and later). Ternary dot products use
// vpdpbusd with the codes (0..2) as its unsigned operand and x_q as the signed one.
#include <immintrin.h>

#include "tiers.h"

namespace pybitnet {
namespace {

int64_t i2s_dequant(const uint8_t *codes, int64_t n, float scale, float *out) {
    const __m512 table = _mm512_setr_ps(-1.0f * scale, 0.0f * scale, 1.0f * scale, 0, 0, 0, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i m3 = _mm256_set1_epi8(3), m55 = _mm256_set1_epi8(0x55);
    for (int64_t blk = 0; blk < n / 128; ++blk) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(codes + 32 * blk));
        // A code 3 has both of its bits set.
        if (!_mm256_testz_si256(_mm256_and_si256(v, _mm256_srli_epi16(v, 1)), m55)) {
            for (int j = 0; j < 128; ++j)
                if (((codes[32 * blk + j % 32] >> (6 - 2 * (j / 32))) & 3) == 3) return 128 * blk + j;
        }
        float *o = out + 128 * blk;
        for (int part = 0; part < 4; ++part) {
            const __m256i c = _mm256_and_si256(_mm256_srli_epi16(v, 6 - 2 * part), m3);
            const __m512i lo = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(c));
            const __m512i hi = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(c, 1));
            _mm512_storeu_ps(o + 32 * part, _mm512_permutexvar_ps(lo, table));
            _mm512_storeu_ps(o + 32 * part + 16, _mm512_permutexvar_ps(hi, table));
        }
    }
    return -1;
}

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
    static constexpr int B = 2, B_BLOCK = 2;  // B = 4: x rows fell out of L1, half the speed
    using Acc = __m512i;
    using FAcc = __m512;
    struct Planes {
        __m512i p[4];
    };
    static Acc zero() { return _mm512_setzero_si512(); }
    static FAcc fzero() { return _mm512_setzero_ps(); }
    static Planes load(const uint8_t *w) {
        const __m512i v = _mm512_load_si512(w), m3 = _mm512_set1_epi8(3);
        return {{_mm512_and_si512(v, m3), _mm512_and_si512(_mm512_srli_epi16(v, 2), m3),
                 _mm512_and_si512(_mm512_srli_epi16(v, 4), m3),
                 _mm512_and_si512(_mm512_srli_epi16(v, 6), m3)}};
    }
    static void dot(Acc &acc, const Planes &p, const int8_t *x) {
        for (int k = 0; k < 4; ++k)
            acc = _mm512_dpbusd_epi32(acc, p.p[k], _mm512_loadu_si512(x + 64 * k));
    }
    static FAcc fma(FAcc f, Acc a, float d) {
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(d), f);
    }
    static int32_t sum(Acc a) { return _mm512_reduce_add_epi32(a); }
    static float fsum(FAcc f) { return _mm512_reduce_add_ps(f); }
};

#include "matmul_tiles.h"

}  // namespace

const TierKernels avx512_kernels = {"avx512", i2s_dequant, quantize, matmul};

}  // namespace pybitnet
