// The aarch64 tiers' kernels, compiled twice: by tier_neon.cpp for ARMv8.0 (every aarch64 CPU)
// and by tier_neondot.cpp with the dotprod extension (__ARM_FEATURE_DOTPROD: SDOT, ARMv8.2 and
// later where the CPU has it), each unit with its own -march (CMakeLists.txt). The unit defines
// PYBITNET_NEON_TABLE (the table's name) and PYBITNET_NEON_NAME (the tier's name) first.
//
// NEON here: activation quantization, the ternary dot product (BitLinear over every ternary
// format: the codes are repacked at load into one layout, tiers.h), the int8 output head, the
// Q6_K integer dot product, and the float vector Vf under every float kernel of float_tiles.h
// (dense matmul, embedding rows, RMSNorm, gated activations, attention; F16 converted in
// registers). Portable, as on the x86 tiers: decoding Q8_0/Q4_0/Q4_1/K-quant/BF16 chunks
// (dense_decode.h), RoPE, and the scalar tails.
//
// Integer products are exact in int32 lanes: SDOT, or without it vmull_s8 / vmlal_s8 into int16
// lanes (bounds below) added pairwise into int32 by vpadalq_s16. Float results meet the x86 tiers'
// contract: fused multiply-adds only where the x86 tiers fuse them too (Vf::fmadd, Isa::fma,
// explicit intrinsics: the unit is built with -ffp-contract=off like every other).
#include <arm_neon.h>

#include <math.h>
#include <string.h>

#include "simd_exp.h"
#include "tiers.h"

namespace pybitnet {
namespace {

// acc + the dot product of 16 int8 lanes of a and b, in int32 lanes (which lane takes which
// product differs between the two ways; only the lanes' total is used).
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#ifdef __ARM_FEATURE_DOTPROD
    return vdotq_s32(acc, a, b);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

// x * s rounded to nearest, ties to even, and clamped to int8 as tier_scalar.cpp's quantize
// does (NaN, which it clamps to -128, too).
inline int32x4_t round_clamped(float32x4_t v) {
    const int32x4_t t = vminq_s32(vmaxq_s32(vcvtnq_s32_f32(v), vdupq_n_s32(-128)), vdupq_n_s32(127));
    return vbslq_s32(vceqq_f32(v, v), t, vdupq_n_s32(-128));
}

void quantize(const float *x, int64_t k, int64_t r0, int64_t r1, int8_t *q, float *sx,
              int32_t *sums, int64_t kp) {
    const int64_t groups = kp / 256;
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = x + r * k;
        float32x4_t m = vdupq_n_f32(0.0f);
        int64_t i = 0;
        for (; i + 4 <= k; i += 4) m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(xr + i)));
        float amax = vmaxnmvq_f32(m);  // maxNum, as fmaxf: NaN ignored
        for (; i < k; ++i) amax = fmaxf(amax, fabsf(xr[i]));
        const float s = 127.0f / fmaxf(amax, 1e-5f);
        sx[r] = s;
        const float32x4_t vs = vdupq_n_f32(s);
        int8_t *qr = q + r * kp;
        for (i = 0; i + 16 <= k; i += 16) {
            int16x8_t h[2];
            for (int j = 0; j < 2; ++j)
                h[j] = vcombine_s16(vmovn_s32(round_clamped(vmulq_f32(vld1q_f32(xr + i + 8 * j), vs))),
                                    vmovn_s32(round_clamped(vmulq_f32(vld1q_f32(xr + i + 8 * j + 4), vs))));
            vst1q_s8(qr + i, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
        }
        for (; i < kp; ++i) {  // the row's last columns and the zero padding
            const float v = i < k ? xr[i] * s : 0.0f;
            qr[i] = static_cast<int8_t>(vgetq_lane_s32(round_clamped(vdupq_n_f32(v)), 0));
        }
        for (int64_t g = 0; g < groups; ++g) {
            int32_t total = 0;
            for (int j = 0; j < 256; j += 16) total += vaddlvq_s8(vld1q_s8(qr + 256 * g + j));
            sums[r * groups + g] = total;
        }
    }
}

struct Isa {
    static constexpr int B = 2, B_BLOCK = 1;
    using Acc = int32x4_t;
    using FAcc = float32x4_t;
    struct Planes {
        int8x16_t p[4][4];  // [plane][16-byte quarter of the group]
    };
    static Acc zero() { return vdupq_n_s32(0); }
    static FAcc fzero() { return vdupq_n_f32(0.0f); }
    static Planes load(const uint8_t *w) {
        const uint8x16_t m3 = vdupq_n_u8(3);
        Planes p;
        for (int h = 0; h < 4; ++h) {
            const uint8x16_t v = vld1q_u8(w + 16 * h);
            p.p[0][h] = vreinterpretq_s8_u8(vandq_u8(v, m3));
            p.p[1][h] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m3));
            p.p[2][h] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m3));
            p.p[3][h] = vreinterpretq_s8_u8(vshrq_n_u8(v, 6));
        }
        return p;
    }
    static void dot(Acc &acc, const Planes &p, const int8_t *x) {
#ifdef __ARM_FEATURE_DOTPROD
        for (int k = 0; k < 4; ++k)
            for (int h = 0; h < 4; ++h) acc = vdotq_s32(acc, p.p[k][h], vld1q_s8(x + 64 * k + 16 * h));
#else
        // The four planes' products (|code x_q| <= 256) summed in int16 lanes (<= 1024), then
        // widened into int32 once per quarter: a quarter of dot16's widenings.
        for (int h = 0; h < 4; ++h) {
            int16x8_t lo = vdupq_n_s16(0), hi = vdupq_n_s16(0);
            for (int k = 0; k < 4; ++k) {
                const int8x16_t xk = vld1q_s8(x + 64 * k + 16 * h);
                lo = vmlal_s8(lo, vget_low_s8(p.p[k][h]), vget_low_s8(xk));
                hi = vmlal_high_s8(hi, p.p[k][h], xk);
            }
            acc = vpadalq_s16(vpadalq_s16(acc, lo), hi);
        }
#endif
    }
    static FAcc fma(FAcc f, Acc a, float d) { return vfmaq_f32(f, vcvtq_f32_s32(a), vdupq_n_f32(d)); }
    static int32_t sum(Acc a) { return vaddvq_s32(a); }
    static float fsum(FAcc f) { return vaddvq_f32(f); }
};

#include "matmul_tiles.h"

struct Vf {
    static constexpr int N = 4, DB = 4;
    using T = float32x4_t;
    static T zero() { return vdupq_n_f32(0.0f); }
    static T set1(float f) { return vdupq_n_f32(f); }
    static T load(const float *p) { return vld1q_f32(p); }
    static void store(float *p, T v) { vst1q_f32(p, v); }
    static T add(T a, T b) { return vaddq_f32(a, b); }
    static T sub(T a, T b) { return vsubq_f32(a, b); }
    static T mul(T a, T b) { return vmulq_f32(a, b); }
    static T div(T a, T b) { return vdivq_f32(a, b); }
    static T max(T a, T b) { return vmaxq_f32(a, b); }
    static T min(T a, T b) { return vminq_f32(a, b); }
    static T fmadd(T a, T b, T c) { return vfmaq_f32(c, a, b); }
    static T fnmadd(T a, T b, T c) { return vfmsq_f32(c, a, b); }
    static T round(T x) { return vrndnq_f32(x); }
    // 2^n built in the exponent bits (|n| <= 127 after cephes_exp's clamp; n integral).
    static T scale2(T p, T n) {
        return vmulq_f32(p, vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23)));
    }
    static float hsum(T v) { return vaddvq_f32(v); }
    static float hmax(T v) { return vmaxvq_f32(v); }
    static T load_f16(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
    // bfloat16 is the high half of a float32
    static T load_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
    static float half(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }
    static T load_i8(const int8_t *p) {
        int32_t four;
        memcpy(&four, p, sizeof four);
        const int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
        return vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
    }
    static T exp(T x) { return cephes_exp<Vf>(x); }
};

// int8 weights . int8 activations (both signed: dot16 takes them as they are). A tile of
// kTileRows weight rows (one stream, tiers.h) against one activation row at a time.
#define PYBITNET_TIER_INT8_MATMUL
void int8_matmul(const Int8View &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1 && r < w.rows; r += kTileRows) {
        const int8_t *tile = int8_chunk(w, r, 0);
        for (int64_t b = 0; b < x.n; ++b) {
            int32x4_t acc[kTileRows];
            for (int i = 0; i < kTileRows; ++i) acc[i] = vdupq_n_s32(0);
            for (int64_t k = 0; k < w.kp; k += 64) {
                int8x16_t xv[4];
                for (int h = 0; h < 4; ++h) xv[h] = vld1q_s8(x.q + b * x.kp + k + 16 * h);
                const int8_t *wk = tile + k * kTileRows;
                for (int i = 0; i < kTileRows; ++i) {
                    __builtin_prefetch(wk + 64 * i + kStreamPrefetch, 0, 2);
                    for (int h = 0; h < 4; ++h) acc[i] = dot16(acc[i], vld1q_s8(wk + 64 * i + 16 * h), xv[h]);
                }
            }
            for (int i = 0; i < kTileRows && r + i < w.rows; ++i)
                y[b * w.rows + r + i] = static_cast<float>(vaddvq_s32(acc[i])) * w.scales[r + i] / x.sx[b];
        }
    }
}

#include "float_tiles.h"

// Q6_K: a super-block's 256 codes decoded to q - 32 (int8, -32..31) in 16 vectors, vector m
// holding sub-block m (elements 16m ..; kquant_dot.h's q6k_isum has the layout), then per
// sub-block dot16 with the activations, times its scale, in int32 lanes: exact.
inline void q6k_codes(const uint8_t *blk, int8x16_t q[16]) {
    const uint8x16_t m4 = vdupq_n_u8(15), m3 = vdupq_n_u8(3);
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 4; ++k)
            for (int v = 0; v < 2; ++v) {
                const uint8x16_t ql = vld1q_u8(blk + 64 * h + 32 * (k % 2) + 16 * v);
                const uint8x16_t qh = vld1q_u8(blk + 128 + 32 * h + 16 * v);
                const uint8x16_t low = k < 2 ? vandq_u8(ql, m4) : vshrq_n_u8(ql, 4);
                const uint8x16_t high = vandq_u8(vshlq_u8(qh, vdupq_n_s8(static_cast<int8_t>(-2 * k))), m3);
                q[8 * h + 2 * k + v] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8(high, 4))), vdupq_n_s8(32));
            }
}

// Weight row r against activation rows b .. b + B - 1 (the decoded codes stay in registers).
template <int B>
inline void q6k_tile(const DenseView &w, const BlockQ8Rows &x, int64_t r, int64_t b, float *y) {
    const int64_t blocks = w.cols / 256;
    const uint8_t *row = w.data + r * w.row_bytes;
    float acc[B] = {};
    for (int64_t s = 0; s < blocks; ++s) {
        const uint8_t *blk = row + kQ6_KBytes * s;
        const int8_t *sc = reinterpret_cast<const int8_t *>(blk + 192);
        int8x16_t q[16];
        q6k_codes(blk, q);
        for (int j = 0; j < B; ++j) {
            const int64_t xb = (b + j) * blocks + s;
            const int8_t *xq = x.q + 256 * xb;
            int32x4_t isum = vdupq_n_s32(0);
            for (int m = 0; m < 16; ++m)
                isum = vmlaq_n_s32(isum, dot16(vdupq_n_s32(0), q[m], vld1q_s8(xq + 16 * m)), sc[m]);
            acc[j] = q6k_step(acc[j], blk, x.d[xb], vaddvq_s32(isum));
        }
    }
    for (int j = 0; j < B; ++j) y[(b + j) * w.rows + r] = acc[j];
}

constexpr int kQ6kRows = 2, kQ6kTile = 1;
#define PYBITNET_TIER_Q6K_TILE
#include "kquant_dot.h"

}  // namespace

const TierKernels PYBITNET_NEON_TABLE = {PYBITNET_NEON_NAME, quantize, matmul, dense_matmul,
                                         dense_rows, int8_matmul, q6k_matmul, q4k_matmul, rmsnorm, rope,
                                         gated, attention, nullptr};

}  // namespace pybitnet
