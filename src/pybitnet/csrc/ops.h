#pragma once
// Drivers of the float kernels: argument checks are the registry's and the binding's; these split the work over
// the thread pool and own the scratch memory.
#include <cstdint>
#include <memory>
#include <vector>

#include "tiers.h"

namespace pybitnet {

// y (n x w.rows) = x (n x w.cols) . w^T.
void dense_linear(const TierKernels &tier, const DenseView &w, const float *x, int64_t n, float *y);

// A dense matrix quantized per row to int8 (q = rint(w / s), s = max|w_row| / 127), for the
// int8 output head; built from the file's matrix on the pool's threads.
class Int8Matrix {
  public:
    Int8Matrix(const TierKernels &tier, const DenseView &w);
    Int8View view() const { return {q_.get(), scales_.data(), sums_.data(), rows_, cols_, kp_}; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t nbytes() const {
        return (rows_ + kTileRows - 1) / kTileRows * kTileRows * kp_ + rows_ * 8;
    }

  private:
    struct Free {
        void operator()(int8_t *p) const;
    };
    int64_t rows_, cols_, kp_;
    std::unique_ptr<int8_t[], Free> q_;
    std::vector<float> scales_;
    std::vector<int32_t> sums_;
};

// y (n x w.rows) = int8 matmul of x quantized per row as BitLinear does (docs/SPEC.md §1).
void int8_linear(const TierKernels &tier, const Int8Matrix &w, const float *x, int64_t n, float *y);

void rmsnorm(const TierKernels &tier, const float *x, const float *w, int64_t n, int64_t dim,
             float eps, float *out);
// out = act(g) * u (act 0: silu, 1: relu^2) over n rows of cols elements, row b of g at
// g + b * g_stride (u likewise): e.g. the two halves of a stacked gate and up projection, read
// in place. out: n x cols.
void gated_rows(const TierKernels &tier, int act, const float *g, int64_t g_stride, const float *u,
                int64_t u_stride, int64_t n, int64_t cols, float *out);
// Writes keys k and values v (n x n_kv x d) of positions start .. start + n - 1 into the caches
// kc and vc, laid out and converted to `type` (KvType) as AttentionArgs says.
void store_kv(const float *k, const float *v, int64_t n, int64_t n_kv, int64_t d, int64_t ctx,
              int64_t start, int type, uint8_t *kc, uint8_t *vc);
// Attention of several sequences (each its own caches and positions) on the pool's threads.
void attention(const TierKernels &tier, const std::vector<AttentionArgs> &seqs);

}  // namespace pybitnet
