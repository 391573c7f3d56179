// The portable tier: plain C++ for the baseline ISA of any target (the compiler may
// auto-vectorise it). The other tiers must agree with it bit for bit.

#include <math.h>
#include <string.h>

#include "half.h"  // a portable unit: it may share half.h's inline functions
#include "tiers.h"

namespace pybitnet {
namespace {

inline float clamp_i8(float v) { return fminf(fmaxf(v, -128.0f), 127.0f); }

void quantize(const float *x, int64_t k, int64_t r0, int64_t r1, int8_t *q, float *sx,
              int32_t *sums, int64_t kp) {
    const int64_t groups = kp / 256;
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = x + r * k;
        float amax = 0.0f;
        for (int64_t i = 0; i < k; ++i) amax = fmaxf(amax, fabsf(xr[i]));
        const float s = 127.0f / fmaxf(amax, 1e-5f);
        sx[r] = s;
        int8_t *qr = q + r * kp;
        for (int64_t i = 0; i < kp; ++i) {
            // Adding and subtracting 1.5 * 2^23 rounds to nearest, ties to even (|v| <= 128).
            const float v = i < k ? xr[i] * s : 0.0f;
            qr[i] = static_cast<int8_t>(clamp_i8((v + 12582912.0f) - 12582912.0f));
        }
        for (int64_t g = 0; g < groups; ++g) {
            int32_t total = 0;
            for (int i = 0; i < 256; ++i) total += qr[256 * g + i];
            sums[r * groups + g] = total;
        }
    }
}

struct Isa {
    static constexpr int B = 1, B_BLOCK = 1;
    using Acc = int32_t;
    using FAcc = float;
    struct Planes {
        const uint8_t *w;
    };
    static Acc zero() { return 0; }
    static FAcc fzero() { return 0.0f; }
    static Planes load(const uint8_t *w) { return {w}; }
    static void dot(Acc &acc, const Planes &p, const int8_t *x) {
        for (int j = 0; j < 64; ++j) {
            const int c = p.w[j];
            acc += (c & 3) * x[j] + ((c >> 2) & 3) * x[64 + j] + ((c >> 4) & 3) * x[128 + j] +
                   (c >> 6) * x[192 + j];
        }
    }
    static FAcc fma(FAcc f, Acc a, float d) { return f + static_cast<float>(a) * d; }
    static int32_t sum(Acc a) { return a; }
    static float fsum(FAcc f) { return f; }
};

#include "matmul_tiles.h"

struct Vf {
    static constexpr int N = 1, DB = 4;
    using T = float;
    static T zero() { return 0.0f; }
    static T set1(float f) { return f; }
    static T load(const float *p) { return *p; }
    static void store(float *p, T v) { *p = v; }
    static T add(T a, T b) { return a + b; }
    static T sub(T a, T b) { return a - b; }
    static T mul(T a, T b) { return a * b; }
    static T div(T a, T b) { return a / b; }
    static T max(T a, T b) { return fmaxf(a, b); }
    static T fmadd(T a, T b, T c) { return a * b + c; }
    static float hsum(T v) { return v; }
    static float hmax(T v) { return v; }
    static float half(uint16_t h) { return from_half(h); }
    static T load_f16(const uint16_t *p) { return half(*p); }
    static T load_bf16(const uint16_t *p) {
        const uint32_t bits = static_cast<uint32_t>(*p) << 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    static T load_i8(const int8_t *p) { return static_cast<float>(*p); }
    static T exp(T x) { return expf(fmaxf(fminf(x, 88.0f), -87.3f)); }
};

#include "float_tiles.h"
#include "kquant_dot.h"

}  // namespace

const TierKernels scalar_kernels = {"scalar", quantize, matmul, dense_matmul, dense_rows,
                                    int8_matmul, q6k_matmul, q4k_matmul, rmsnorm, rope, gated,
                                    attention, nullptr};

}  // namespace pybitnet
