#include "kquants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "formats.h"
#include "half.h"
#include "threadpool.h"

namespace pybitnet {

namespace {
constexpr int kQK = 256;
constexpr float kGroupMaxEps = 1e-15f;  // a sub-block with max|x| below this is all zeros

// ggml's nearest_int: round to nearest, ties to even, through the bits of x + 1.5 * 2^23.
int nearest_int(float x) {
    const float v = x + 12582912.0f;
    int32_t i;
    std::memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

float from_f16(const uint8_t *p) {
    _Float16 h;
    std::memcpy(&h, p, sizeof h);
    return static_cast<float>(h);
}

// ggml's make_qx_quants(16, 32, x, L, rmse_type 1, NULL) on the 16 sub-blocks of a super-block
// at once: codes L (0..63) and scales, x ~ scale * (L - 32). Each lane (sub-block) takes C's
// operations in C's order; the lanes sit innermost so that the compiler vectorizes across them.
void make_qx_quants_16(const float *x, int8_t *L, float *scales) {
    constexpr int n = 16, nmax = 32;
    float xt[n][16], amax[16] = {}, max[16] = {}, iscale[16], best_iscale[16], best[16];
    for (int i = 0; i < n; ++i)
        for (int s = 0; s < 16; ++s) {
            xt[i][s] = x[16 * s + i];
            const bool larger = std::fabs(xt[i][s]) > amax[s];
            max[s] = larger ? xt[i][s] : max[s];
            amax[s] = larger ? std::fabs(xt[i][s]) : amax[s];
        }
    float sumlx[16], suml2[16];
    const auto sums = [&]() {
        for (int s = 0; s < 16; ++s) sumlx[s] = suml2[s] = 0;
        for (int i = 0; i < n; ++i)
            for (int s = 0; s < 16; ++s) {
                const float v = xt[i][s];
                // clamped as floats (exact: |q| < 2^23): SSE2 has no int32 min and max
                const float q = static_cast<float>(nearest_int(iscale[s] * v));
                const float l = std::max(-32.0f, std::min(31.0f, q));
                const float w = v * v;
                sumlx[s] += w * v * l;
                suml2[s] += w * l * l;
            }
    };
    for (int s = 0; s < 16; ++s) iscale[s] = static_cast<float>(-nmax) / max[s];
    sums();
    for (int s = 0; s < 16; ++s) {
        best_iscale[s] = iscale[s];
        scales[s] = suml2[s] != 0 ? sumlx[s] / suml2[s] : 0.0f;
        best[s] = scales[s] * sumlx[s];
    }
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        for (int s = 0; s < 16; ++s)
            iscale[s] = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max[s];
        sums();
        for (int s = 0; s < 16; ++s) {
            const bool better = suml2[s] > 0 && sumlx[s] * sumlx[s] > best[s] * suml2[s];
            best_iscale[s] = better ? iscale[s] : best_iscale[s];
            scales[s] = better ? sumlx[s] / suml2[s] : scales[s];
            best[s] = better ? scales[s] * sumlx[s] : best[s];
        }
    }
    for (int s = 0; s < 16; ++s) {
        const bool zero = amax[s] < kGroupMaxEps;
        scales[s] = zero ? 0.0f : scales[s];
        for (int i = 0; i < n; ++i) {
            const int q = std::max(-nmax, std::min(nmax - 1, nearest_int(best_iscale[s] * xt[i][s])));
            L[16 * s + i] = zero ? 0 : static_cast<int8_t>(nmax + q);
        }
    }
}

// quantize_row_q6_K_ref for one super-block (210 bytes: ql, qh, scales, d).
void q6_k_block(const float *x, uint8_t *y) {
    int8_t L[kQK];
    float scales[16], max_scale = 0, max_abs_scale = 0;
    make_qx_quants_16(x, L, scales);
    for (int ib = 0; ib < 16; ++ib) {
        if (std::fabs(scales[ib]) > max_abs_scale) {
            max_abs_scale = std::fabs(scales[ib]);
            max_scale = scales[ib];
        }
    }
    std::memset(y, 0, 210);
    if (max_abs_scale < kGroupMaxEps) return;
    const float iscale = -128.0f / max_scale;
    const uint16_t d = to_half(1 / iscale);
    std::memcpy(y + 208, &d, 2);
    int8_t *sc = reinterpret_cast<int8_t *>(y + 192);
    for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < 16; ++j) {
        const float dj = from_f16(y + 208) * static_cast<float>(sc[j]);
        if (dj == 0) continue;
        for (int i = 0; i < 16; ++i)
            L[16 * j + i] = static_cast<int8_t>(std::max(-32, std::min(31, nearest_int(x[16 * j + i] / dj))) + 32);
    }
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            const int8_t *q = L + 128 * h + l;
            y[64 * h + l] = static_cast<uint8_t>((q[0] & 15) | (q[64] & 15) << 4);
            y[64 * h + 32 + l] = static_cast<uint8_t>((q[32] & 15) | (q[96] & 15) << 4);
            y[128 + 32 * h + l] = static_cast<uint8_t>(q[0] >> 4 | (q[32] >> 4) << 2 | (q[64] >> 4) << 4 | (q[96] >> 4) << 6);
        }
}

// ggml's make_qkx2_quants (use_mad false) on a 32-element sub-block with weights w: codes L
// (0..nmax) and the scale, with x ~ scale * L - *the_min.
float make_qkx2_quants(const float *x, const float *w, int nmax, float rmin, float rdelta,
                       int nstep, uint8_t *L, float *the_min) {
    constexpr int n = 32;
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        std::memset(L, 0, n);
        *the_min = -min;
        return 0.0f;
    }
    const auto error = [&](float scale, float lo, const uint8_t *codes) {
        float e = 0;
        for (int i = 0; i < n; ++i) {
            const float diff = scale * static_cast<float>(codes[i]) + lo - x[i];
            e += w[i] * (diff * diff);
        }
        return e;
    };
    float iscale = static_cast<float>(nmax) / (max - min), scale = 1 / iscale;
    for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min)))));
    float best_error = error(scale, min, L);
    uint8_t aux[n];
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            aux[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min)))));
            const float l = aux[i];
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            const float cur_error = error(this_scale, this_min, aux);
            if (cur_error < best_error) {
                std::memcpy(L, aux, n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// quantize_row_q4_K_ref for one super-block (144 bytes: d, dmin, 12 scale bytes, nibbles).
void q4_k_block(const float *x, uint8_t *y) {
    uint8_t L[kQK], ls[8], lm[8];
    float weights[32], mins[8], scales[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        const float *xj = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xj[l] * xj[l];
        const float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xj[l]);
        scales[j] = make_qkx2_quants(xj, weights, 15, -1.0f, 0.1f, 20, L + 32 * j, &mins[j]);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < 8; ++j) {  // C keeps nearest_int's low byte, then MIN(63, .)
        ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
        lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
    }
    const uint16_t d = to_half(max_scale / 63.0f), dmin = to_half(max_min / 63.0f);
    std::memcpy(y, &d, 2);
    std::memcpy(y + 2, &dmin, 2);
    uint8_t *sc = y + 4;
    for (int j = 0; j < 4; ++j) {
        sc[j] = static_cast<uint8_t>(ls[j] | (ls[j + 4] >> 4) << 6);
        sc[j + 4] = static_cast<uint8_t>(lm[j] | (lm[j + 4] >> 4) << 6);
        sc[j + 8] = static_cast<uint8_t>((ls[j + 4] & 15) | (lm[j + 4] & 15) << 4);
    }
    for (int j = 0; j < 8; ++j) {
        const float dj = from_f16(y) * static_cast<float>(ls[j]);
        if (dj == 0) continue;
        const float dm = from_f16(y + 2) * static_cast<float>(lm[j]);
        for (int i = 0; i < 32; ++i)
            L[32 * j + i] = static_cast<uint8_t>(std::max(0, std::min(15, nearest_int((x[32 * j + i] + dm) / dj))));
    }
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) y[16 + 32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | L[64 * c + 32 + l] << 4);
}
}  // namespace

bool quantize_kquant(int fmt, const float *x, int64_t rows, int64_t cols, uint8_t *out) {
    if (fmt != kQ6_K && fmt != kQ4_K) return false;
    void (*block)(const float *, uint8_t *) = fmt == kQ6_K ? q6_k_block : q4_k_block;
    const int64_t size = format_of(static_cast<Format>(fmt)).type_size, blocks = rows * (cols / kQK);
    // ~200 super-blocks a task: each is a few microseconds of work
    pool()->run((blocks + 199) / 200, [&](int64_t t) {
        for (int64_t b = 200 * t; b < std::min(blocks, 200 * (t + 1)); ++b) block(x + kQK * b, out + size * b);
    });
    return true;
}

BlockQ8Rows BlockQ8Buffer::quantize(const float *x, int64_t n, int64_t cols) {
    const int64_t blocks = n * (cols / kQK);
    q_.resize(n * cols);
    d_.resize(blocks);
    bsums_.resize(blocks * 16);
    for (int64_t b = 0; b < blocks; ++b) {
        const float *xb = x + kQK * b;
        int8_t *qb = q_.data() + kQK * b;
        float amax = 0.0f;
        for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(xb[i]));
        const float m = std::max(amax, 1e-5f), s = 127.0f / m;
        d_[b] = m / 127.0f;
        for (int i = 0; i < kQK; ++i)  // rint: nearest, ties to even (numpy.rint)
            qb[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::nearbyint(xb[i] * s))));
        for (int j = 0; j < 16; ++j) {
            int sum = 0;
            for (int i = 0; i < 16; ++i) sum += qb[16 * j + i];
            bsums_[16 * b + j] = static_cast<int16_t>(sum);
        }
    }
    return {q_.data(), d_.data(), bsums_.data(), n, cols};
}

}  // namespace pybitnet
