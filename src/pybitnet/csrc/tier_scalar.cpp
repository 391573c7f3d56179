// The portable tier: plain C++ for the baseline ISA of any target (the compiler may
// auto-vectorise it). The other tiers must agree with it bit for bit.
#include <cmath>

#include "tiers.h"

namespace pybitnet {
namespace {

inline bool is_code3(uint8_t b) { return (b & (b >> 1) & 0x55) != 0; }

int64_t i2s_dequant(const uint8_t *codes, int64_t n, float scale, float *out) {
    const float value[3] = {-1.0f * scale, 0.0f * scale, 1.0f * scale};
    for (int64_t blk = 0; blk < n / 128; ++blk) {
        const uint8_t *c = codes + 32 * blk;
        float *o = out + 128 * blk;
        for (int j = 0; j < 128; ++j) {
            const int code = (c[j % 32] >> (6 - 2 * (j / 32))) & 3;
            if (code == 3) return 128 * blk + j;
            o[j] = value[code];
        }
    }
    return -1;
}

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

}  // namespace

const TierKernels scalar_kernels = {"scalar", i2s_dequant, quantize, matmul};

}  // namespace pybitnet
