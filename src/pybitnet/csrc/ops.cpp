#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "half.h"
#include "kquants.h"
#include "ternary.h"
#include "threadpool.h"

namespace pybitnet {

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// About four pieces per thread, each a multiple of `align` (at least `min_piece`).
int64_t piece_size(int64_t n, int threads, int64_t align, int64_t min_piece = 1) {
    return std::max(round_up(min_piece, align), round_up((n + 4 * threads - 1) / (4 * threads), align));
}

template <typename F>
void parallel_pieces(int64_t n, int64_t align, int64_t min_piece, const F &f) {
    const auto workers = pool();
    const int64_t piece = piece_size(n, workers->size(), align, min_piece);
    workers->run((n + piece - 1) / piece, [&](int64_t i) { f(i * piece, std::min(n, (i + 1) * piece)); });
}
}  // namespace

void dense_linear(const TierKernels &tier, const DenseView &w, const float *x, int64_t n, float *y) {
    if (w.fmt == kQ6_K || w.fmt == kQ4_K) {  // int8 activations per 256-block, as llama.cpp (docs/SPEC.md §1)
        thread_local BlockQ8Buffer buffer;
        const BlockQ8Rows xq = buffer.quantize(x, n, w.cols);
        const auto matmul = w.fmt == kQ6_K ? tier.q6k_matmul : tier.q4k_matmul;
        parallel_pieces(w.rows, kTileRows, 4 * kTileRows,
                        [&](int64_t r0, int64_t r1) { matmul(w, xq, r0, r1, y); });
        return;
    }
    const int64_t kc = round_up(w.cols, kDenseChunk);
    std::vector<float> padded;
    if (kc != w.cols) {  // the kernels read whole chunks of activations
        padded.assign(n * kc, 0.0f);
        for (int64_t b = 0; b < n; ++b) std::memcpy(&padded[b * kc], x + b * w.cols, w.cols * sizeof(float));
        x = padded.data();
    }
    parallel_pieces(w.rows, kTileRows, 4 * kTileRows,
                    [&](int64_t r0, int64_t r1) { tier.dense_matmul(w, x, n, r0, r1, y); });
}

void Int8Matrix::Free::operator()(int8_t *p) const { free_weights(p); }

Int8Matrix::Int8Matrix(const TierKernels &tier, const DenseView &w)
    : rows_(w.rows), cols_(w.cols), kp_(round_up(std::max<int64_t>(w.cols, 1), 256)),
      scales_(w.rows), sums_(w.rows) {
    const int64_t tiles = round_up(rows_, kTileRows) / kTileRows;
    q_.reset(reinterpret_cast<int8_t *>(allocate_weights(tiles * kTileRows * kp_)));
    parallel_pieces(tiles, 1, 16, [&](int64_t t0, int64_t t1) {
        std::vector<float> row(w.cols);
        std::vector<int8_t> q(kp_);
        for (int64_t r = t0 * kTileRows; r < t1 * kTileRows; ++r) {
            float s = 0.0f;
            if (r < rows_) {
                tier.dense_rows(w, &r, 1, row.data());
                float amax = 0.0f;
                for (float v : row) amax = std::max(amax, std::fabs(v));
                s = amax / 127.0f;
            }
            int32_t sum = 0;
            for (int64_t k = 0; k < kp_; ++k) {
                // rint: nearest, ties to even, as numpy.rint (|w / s| <= 127).
                const bool live = r < rows_ && k < w.cols && s > 0.0f;
                const float v = live ? std::nearbyint(row[k] / s) : 0.0f;
                q[k] = static_cast<int8_t>(v);
                sum += q[k];
            }
            for (int64_t k = 0; k < kp_; k += 64)
                std::memcpy(const_cast<int8_t *>(int8_chunk(view(), r, k)), &q[k], 64);
            if (r < rows_) {
                scales_[r] = s;
                sums_[r] = sum;
            }
        }
    });
}

void int8_linear(const TierKernels &tier, const Int8Matrix &w, const float *x, int64_t n, float *y) {
    const Int8View v = w.view();
    thread_local std::vector<int8_t> q_buf;
    thread_local std::vector<float> sx_buf;
    thread_local std::vector<int32_t> sums_buf;
    q_buf.resize(n * v.kp);
    sx_buf.resize(n);
    sums_buf.resize(n * (v.kp / 256));
    int8_t *q = q_buf.data();
    float *sx = sx_buf.data();
    int32_t *sums = sums_buf.data();
    parallel_pieces(n, 1, 1, [&](int64_t r0, int64_t r1) { tier.quantize(x, v.cols, r0, r1, q, sx, sums, v.kp); });
    const QuantizedRows xq{q, sx, sums, nullptr, n, v.kp};
    parallel_pieces(v.rows, kTileRows, 4 * kTileRows,
                    [&](int64_t r0, int64_t r1) { tier.int8_matmul(v, xq, r0, r1, y); });
}

void rmsnorm(const TierKernels &tier, const float *x, const float *w, int64_t n, int64_t dim,
             float eps, float *out) {
    // One row is a few microseconds: threads only pay off for a prompt's many rows.
    parallel_pieces(n, 1, 16, [&](int64_t r0, int64_t r1) { tier.rmsnorm(x, w, dim, eps, r0, r1, out); });
}

void gated_rows(const TierKernels &tier, int act, const float *g, int64_t g_stride, const float *u,
                int64_t u_stride, int64_t n, int64_t cols, float *out) {
    parallel_pieces(n, 1, std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t b = r0; b < r1; ++b)
            tier.gated(act, g + b * g_stride, u + b * u_stride, 0, cols, out + b * cols);
    });
}

namespace {
// ggml's quantize_row_q8_0_ref of kKvQ8Chunk values: d = max|x| / 127, q = roundf(x * (1 / d))
// (ties away from zero; 0 when d is 0), codes q_stride apart, d stored as float16 at `scale`.
void quantize_q8_0(const float *x, int8_t *q, int64_t q_stride, uint8_t *scale) {
    float amax = 0.0f;
    for (int64_t j = 0; j < kKvQ8Chunk; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int64_t j = 0; j < kKvQ8Chunk; ++j) q[j * q_stride] = static_cast<int8_t>(std::round(x[j] * id));
    const uint16_t h = to_half(d);
    std::memcpy(scale, &h, sizeof h);
}

void put(int type, uint8_t *base, int64_t i, float value) {
    if (type == kKvF16)
        reinterpret_cast<uint16_t *>(base)[i] = to_half(value);
    else
        reinterpret_cast<float *>(base)[i] = value;
}
}  // namespace

void store_kv(const float *k, const float *v, int64_t n, int64_t n_kv, int64_t d, int64_t ctx,
              int64_t start, int type, uint8_t *kc, uint8_t *vc) {
    const int64_t row = kv_value_row_bytes(type, d), block = kv_key_block_bytes(type, d);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t p = start + i, j = p % kKeyBlock;
        for (int64_t h = 0; h < n_kv; ++h) {
            const float *kr = k + (i * n_kv + h) * d, *vr = v + (i * n_kv + h) * d;
            uint8_t *kb = kc + h * ctx * row + p / kKeyBlock * block, *vb = vc + (h * ctx + p) * row;
            if (type == kKvQ8_0) {
                for (int64_t c = 0; c < d / kKvQ8Chunk; ++c) {
                    const int64_t e = c * kKvQ8Chunk;
                    quantize_q8_0(kr + e, reinterpret_cast<int8_t *>(kb) + e * kKeyBlock + j, kKeyBlock,
                                  kb + d * kKeyBlock + (c * kKeyBlock + j) * 2);
                    uint8_t *chunk = vb + c * (2 + kKvQ8Chunk);
                    quantize_q8_0(vr + e, reinterpret_cast<int8_t *>(chunk + 2), 1, chunk);
                }
                continue;
            }
            for (int64_t e = 0; e < d; ++e) {
                put(type, kb, e * kKeyBlock + j, kr[e]);
                put(type, vb, e, vr[e]);
            }
        }
    }
}

void attention(const TierKernels &tier, const std::vector<AttentionArgs> &seqs) {
    // Tasks: (sequence, kv head, block of query positions), all in one run of the pool, so a
    // batch of decoded tokens costs one dispatch, not one per sequence. Later positions attend
    // to more keys, so blocks are small enough for the pool to balance them.
    struct Task {
        const AttentionArgs *a;
        int64_t kv, i0, i1;
    };
    std::vector<Task> tasks;
    for (const AttentionArgs &a : seqs) {
        const int64_t block = std::max<int64_t>(1, std::min<int64_t>(16, a.n / 8));
        for (int64_t i0 = 0; i0 < a.n; i0 += block)
            for (int64_t kv = 0; kv < a.n_kv; ++kv)
                tasks.push_back({&a, kv, i0, std::min(a.n, i0 + block)});
    }
    pool()->run(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
        const Task &task = tasks[t];
        thread_local std::vector<float> scratch;
        scratch.resize(task.a->n_heads / task.a->n_kv * task.a->ctx);
        tier.attention(*task.a, task.kv, task.i0, task.i1, scratch.data());
    });
}

}  // namespace pybitnet
