// The float kernels shared by every tier: dense (float and block-quantized) matmul, int8 matmul,
// RMSNorm, RoPE, the gated activations (attention: attention_tiles.h, included at the end). Each
// tier unit includes this file inside its anonymous namespace after defining `struct Vf`, a
// float vector of Vf::N lanes:
//   T; DB (activation rows per register tile); zero(), set1(f), load(p), store(p, v)
//   (unaligned), add, sub, mul, div, max,
//   fmadd(a, b, c) = a * b + c, hsum, hmax, exp (|error| of a few ulp; inputs clamped to
//   [-87.3, 88]), load_f16(p) (N float16 values), load_bf16(p) (N bfloat16 values), half(h)
//   (one float16 value), load_i8(p) (N int8 values).
// Dense rows are decoded by dense_decode.h, one 32-column chunk at a time.
// No standard-library templates here (see tiers.h).
// Uses C library functions only (sqrtf, expf, memcpy), included by the tier unit.

constexpr int R = kTileRows;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

#include "dense_decode.h"

void dense_rows(const DenseView &w, const int64_t *ids, int64_t n, float *out) {
    float buf[kDenseChunk];
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c * kDenseChunk < w.cols; ++c) {
            decode_chunk(w, ids[i], c, buf);
            const int64_t k0 = int64_t{kDenseChunk} * c;
            memcpy(out + i * w.cols + k0, buf, sizeof(float) * min64(kDenseChunk, w.cols - k0));
        }
}

// A panel of columns: decoded once per tile of rows, then used by every activation row.
constexpr int64_t kPanel = 512;

// acc[i][j] += wt row i . x row j over the panel's k columns (k a multiple of Vf::N).
template <int B>
inline void panel_fma(const float *wt, const float *x, int64_t xstride, int64_t k,
                      typename Vf::T acc[R][B]) {
    for (int64_t c = 0; c < k; c += Vf::N) {
        typename Vf::T xv[B];
        for (int j = 0; j < B; ++j) xv[j] = Vf::load(x + j * xstride + c);
        for (int i = 0; i < R; ++i) {
            const typename Vf::T wv = Vf::load(wt + i * kPanel + c);
            for (int j = 0; j < B; ++j) acc[i][j] = Vf::fmadd(wv, xv[j], acc[i][j]);
        }
    }
}

inline void decode_panel(const DenseView &w, int64_t r, int64_t p, int64_t k, float *wt) {
    for (int i = 0; i < R; ++i) {
        const int64_t row = r + i < w.rows ? r + i : w.rows - 1;  // ragged tile: repeat a row
        for (int64_t c = 0; c < k; c += kDenseChunk) {
            __builtin_prefetch(w.data + row * w.row_bytes + (p + c) * w.row_bytes / w.cols + 1024);
            decode_chunk(w, row, (p + c) / kDenseChunk, wt + i * kPanel + c);
        }
    }
}

// Vf::N float16 (F16) or bfloat16 (BF16: the high half of a float32) values as floats.
template <int Fmt>
inline typename Vf::T load_half(const uint16_t *p) {
    static_assert(Fmt == kF16 || Fmt == kBF16);
    if constexpr (Fmt == kF16)
        return Vf::load_f16(p);
    else
        return Vf::load_bf16(p);
}

// F16 or BF16 rows one at a time against one activation row x (cols % 32 == 0): the tied
// output layer of BitNet models, the largest matrix decoding reads. Converted in registers and
// read as one sequential stream (several rows read side by side, each its own stream, reached
// half the bandwidth), prefetched kStreamPrefetch ahead, a line per 32 columns: so it reads at
// the probed bandwidth, without the prefetch at 56-65% (2B head, 1 and 2 threads;
// benchmarks/f16_head_stream.cpp). Batches take dense_block, which reuses each weight for all
// their rows.
template <int Fmt>
inline void half_rows(const DenseView &w, const float *x, int64_t r0, int64_t r1, float *y) {
    constexpr int U = 32 / Vf::N;  // independent accumulators
    for (int64_t r = r0; r < r1; ++r) {
        const uint16_t *row = reinterpret_cast<const uint16_t *>(w.data + r * w.row_bytes);
        typename Vf::T acc[U];
        for (int u = 0; u < U; ++u) acc[u] = Vf::zero();
        for (int64_t c = 0; c < w.cols; c += 32) {
            // past the matrix's end near its last rows: a prefetch never faults
            __builtin_prefetch(reinterpret_cast<const char *>(row + c) + kStreamPrefetch, 0, 2);
            for (int u = 0; u < U; ++u)
                acc[u] = Vf::fmadd(load_half<Fmt>(row + c + u * Vf::N), Vf::load(x + c + u * Vf::N),
                                   acc[u]);
        }
        typename Vf::T sum = acc[0];
        for (int u = 1; u < U; ++u) sum = Vf::add(sum, acc[u]);
        y[r] = Vf::hsum(sum);
    }
}

// Up to kStreamRows activation rows (a decoding batch): every weight is read from memory once
// per call. A tile of kStreamRR weight rows converts each chunk of 32 weights once (F16 in
// registers, other formats through decode_chunk) and multiplies it into B activation rows'
// accumulators, which stay in registers for the whole row: RR * B of them, RR + B loads per
// RR * B FMAs (one 512-bit FMA per cycle on Zen 4 with RR = B = 4, with the weights in L2).
// The tile's rows are read side by side, which memory serves poorly (half the bandwidth of one
// sequential stream), so the next tile, the RR rows that follow in memory, is prefetched as one
// stream meanwhile. Rows past the matrix repeat its last row (their sums are dropped).
constexpr int kStreamRows = 16, kStreamRR = 4;

template <int B, bool F16>
inline void dense_block(const DenseView &w, const float *x, int64_t kc, int64_t r, int64_t b,
                        int64_t r_end, float *y) {
    constexpr int RR = kStreamRR, U = kDenseChunk / Vf::N;
    const uint8_t *row[RR];
    for (int i = 0; i < RR; ++i) row[i] = w.data + min64(r + i, w.rows - 1) * w.row_bytes;
    // RR lines per chunk: the whole next tile for F16 (64 bytes a chunk), the largest format.
    // Into L2 (prefetcht1): into L1 they evicted the activations and cost half the speed.
    const char *next = reinterpret_cast<const char *>(w.data + (r + RR) * w.row_bytes);
    typename Vf::T acc[RR][B];
    for (int i = 0; i < RR; ++i)
        for (int j = 0; j < B; ++j) acc[i][j] = Vf::zero();
    const float *xb = x + b * kc;
    // acc += the chunk of columns c.. of the tile's rows (weight(i, u): row i's u-th vector of
    // it) times the B activation rows'
    const auto fma_chunk = [&](int64_t c, const auto &weight) {
        for (int i = 0; i < RR; ++i)
            __builtin_prefetch(next + (c / kDenseChunk * RR + i) * 64, 0, 2);
        for (int u = 0; u < U; ++u) {
            typename Vf::T xv[B];
            for (int j = 0; j < B; ++j) xv[j] = Vf::load(xb + j * kc + c + u * Vf::N);
            for (int i = 0; i < RR; ++i) {
                const typename Vf::T wv = weight(i, u);
                for (int j = 0; j < B; ++j) acc[i][j] = Vf::fmadd(wv, xv[j], acc[i][j]);
            }
        }
    };
    int64_t c = 0;
    if (F16) {
        // Whole F16 chunks, converted in registers, in a loop of their own: sharing one with
        // decode_chunk's path left too few registers, and pointer reloads and moves took
        // ~10% of the time of a batch of 8 through the 2B model's output layer.
        const uint16_t *h[RR];
        for (int i = 0; i < RR; ++i) h[i] = reinterpret_cast<const uint16_t *>(row[i]);
        for (; c + kDenseChunk <= w.cols; c += kDenseChunk)
            fma_chunk(c, [&](int i, int u) { return Vf::load_f16(h[i] + c + u * Vf::N); });
    }
    alignas(64) float buf[RR][kDenseChunk];
    for (; c < kc; c += kDenseChunk) {
        for (int i = 0; i < RR; ++i)
            decode_chunk(w, min64(r + i, w.rows - 1), c / kDenseChunk, buf[i]);
        fma_chunk(c, [&](int i, int u) { return Vf::load(buf[i] + u * Vf::N); });
    }
    for (int i = 0; i < RR && r + i < r_end; ++i)
        for (int j = 0; j < B; ++j) y[(b + j) * w.rows + r + i] = Vf::hsum(acc[i][j]);
}

// Activation rows b .. n - 1 in blocks of B (then the remainder) against weight rows r ...
template <int B, bool F16>
inline void dense_block_rest(const DenseView &w, const float *x, int64_t n, int64_t kc, int64_t r,
                             int64_t b, int64_t r_end, float *y) {
    if constexpr (B > 0) {
        for (; b + B <= n; b += B) dense_block<B, F16>(w, x, kc, r, b, r_end, y);
        dense_block_rest<B - 1, F16>(w, x, n, kc, r, b, r_end, y);
    }
}

template <bool F16>
void dense_stream(const DenseView &w, const float *x, int64_t n, int64_t kc, int64_t r0,
                  int64_t r1, float *y) {
    const int64_t r_end = min64(r1, w.rows);
    for (int64_t r = r0; r < r_end; r += kStreamRR)
        dense_block_rest<Vf::DB, F16>(w, x, n, kc, r, 0, r_end, y);
}

// Many activation rows: each panel of the weight tile is decoded once and used by all n rows,
// whose partial sums are added into y.
template <int B>
inline void dense_tile_many(const DenseView &w, const float *x, int64_t n, int64_t kc, int64_t r,
                            float *wt, float *y) {
    for (int64_t b = 0; b < n; ++b)
        for (int i = 0; i < R && r + i < w.rows; ++i) y[b * w.rows + r + i] = 0.0f;
    for (int64_t p = 0; p < kc; p += kPanel) {
        const int64_t k = min64(kPanel, kc - p);
        decode_panel(w, r, p, k, wt);
        int64_t b = 0;
        for (; b < n; b += B) {
            typename Vf::T acc[R][B];
            for (int i = 0; i < R; ++i)
                for (int j = 0; j < B; ++j) acc[i][j] = Vf::zero();
            // The last block may be partial: it reuses row n - 1 and drops the extra sums.
            const float *xb = x + (b + B <= n ? b : n - B) * kc + p;
            panel_fma<B>(wt, xb, kc, k, acc);
            const int64_t b0 = b + B <= n ? b : n - B;
            for (int i = 0; i < R && r + i < w.rows; ++i)
                for (int j = (b0 < b ? static_cast<int>(b - b0) : 0); j < B; ++j)
                    y[(b0 + j) * w.rows + r + i] += Vf::hsum(acc[i][j]);
        }
    }
}

void dense_matmul(const DenseView &w, const float *x, int64_t n, int64_t r0, int64_t r1,
                  float *y) {
    const int64_t kc = (w.cols + kDenseChunk - 1) / kDenseChunk * kDenseChunk;
    const bool whole_chunks = w.cols % kDenseChunk == 0;
    if (n == 1 && w.fmt == kF16 && whole_chunks) {  // one stream: faster still
        half_rows<kF16>(w, x, r0, min64(r1, w.rows), y);
    } else if (n == 1 && w.fmt == kBF16 && whole_chunks) {
        half_rows<kBF16>(w, x, r0, min64(r1, w.rows), y);
    } else if (n <= kStreamRows) {
        if (w.fmt == kF16)
            dense_stream<true>(w, x, n, kc, r0, r1, y);
        else
            dense_stream<false>(w, x, n, kc, r0, r1, y);
    } else {
        alignas(64) float wt[R * kPanel];
        for (int64_t r = r0; r < r1; r += R) dense_tile_many<Vf::DB>(w, x, n, kc, r, wt, y);
    }
}

// ---- int8 weights (the int8 output head); a tier with a faster dot product defines its own ----
#ifndef PYBITNET_TIER_INT8_MATMUL
void int8_matmul(const Int8View &w, const QuantizedRows &x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < min64(r1, w.rows); ++r)
        for (int64_t b = 0; b < x.n; ++b) {
            const int8_t *xb = x.q + b * x.kp;
            int32_t dot = 0;
            for (int64_t k = 0; k < w.kp; k += 64) {
                const int8_t *wk = int8_chunk(w, r, k);
                for (int e = 0; e < 64; ++e) dot += static_cast<int32_t>(wk[e]) * xb[k + e];
            }
            y[b * w.rows + r] = static_cast<float>(dot) * w.scales[r] / x.sx[b];
        }
}
#endif

// ---- elementwise ops ----

void rmsnorm(const float *x, const float *w, int64_t dim, float eps, int64_t r0, int64_t r1,
             float *out) {
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        typename Vf::T acc = Vf::zero();
        int64_t i = 0;
        for (; i + Vf::N <= dim; i += Vf::N) {
            const typename Vf::T v = Vf::load(xr + i);
            acc = Vf::fmadd(v, v, acc);
        }
        float ss = Vf::hsum(acc);
        for (; i < dim; ++i) ss += xr[i] * xr[i];
        const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
        const typename Vf::T vi = Vf::set1(inv);
        for (i = 0; i + Vf::N <= dim; i += Vf::N)
            Vf::store(o + i, Vf::mul(Vf::mul(Vf::load(xr + i), vi), Vf::load(w + i)));
        for (; i < dim; ++i) o[i] = xr[i] * inv * w[i];
    }
}

void rope(float *x, int64_t n, int64_t heads, int64_t head_dim, int64_t rope_dim, const float *cos,
          const float *sin, bool neox) {
    const int64_t half = rope_dim / 2;
    // NEOX pairs element j with j + rope_dim / 2; NORM pairs 2j with 2j + 1.
    const int64_t stride = neox ? 1 : 2, offset = neox ? half : 1;
    for (int64_t t = 0; t < n; ++t) {
        const float *c = cos + t * half, *s = sin + t * half;
        for (int64_t h = 0; h < heads; ++h) {
            float *v = x + (t * heads + h) * head_dim;
            for (int64_t j = 0; j < half; ++j) {
                const float a = v[j * stride], b = v[j * stride + offset];
                v[j * stride] = a * c[j] - b * s[j];
                v[j * stride + offset] = a * s[j] + b * c[j];
            }
        }
    }
}

void gated(int act, const float *g, const float *u, int64_t i0, int64_t i1, float *out) {
    const typename Vf::T one = Vf::set1(1.0f), zero = Vf::zero();
    int64_t i = i0;
    for (; i + Vf::N <= i1; i += Vf::N) {
        const typename Vf::T gv = Vf::load(g + i), uv = Vf::load(u + i);
        typename Vf::T a;
        if (act == 0) {
            a = Vf::div(gv, Vf::add(one, Vf::exp(Vf::sub(zero, gv))));
        } else {
            const typename Vf::T m = Vf::max(gv, zero);
            a = Vf::mul(m, m);
        }
        Vf::store(out + i, Vf::mul(a, uv));
    }
    for (; i < i1; ++i) {
        const float a = act == 0 ? g[i] / (1.0f + expf(-g[i]))
                                 : (g[i] > 0.0f ? g[i] : 0.0f) * (g[i] > 0.0f ? g[i] : 0.0f);
        out[i] = a * u[i];
    }
}

#include "attention_tiles.h"
