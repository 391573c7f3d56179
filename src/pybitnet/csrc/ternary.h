#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "tiers.h"

namespace pybitnet {

// Memory for weights read by the kernels (64-byte aligned, huge pages where granted), released
// with free_weights.
uint8_t *allocate_weights(int64_t nbytes);
void free_weights(void *p);

// Ternary weights repacked once, at load, into the kernels' layout (tiers.h: TernaryView).
class TernaryMatrix {
  public:
    // codes: rows x cols int8 in {-1, 0, 1}; scales: rows x groups, groups = 1 or cols / 256.
    // Returns the flat index of the first code outside {-1, 0, 1} in *bad (else -1).
    TernaryMatrix(const int8_t *codes, int64_t rows, int64_t cols, const float *scales,
                  int64_t groups, int64_t *bad);

    // One part of a matrix stored in a file's format: `rows` rows of the matrix, in order.
    struct Packed {
        int fmt;  // a ternary format of formats.h (TQ1_0, TQ2_0, I2_S)
        const uint8_t *data;
        int64_t rows;
    };
    // The rows of every part, one under the other (e.g. attn_q, attn_k, attn_v as one matrix),
    // decoded straight from the file's bytes; scales as above, for all the rows. Returns in *bad
    // the flat index (in its part) of the first invalid code 3, else -1; *bad_part its part.
    TernaryMatrix(const std::vector<Packed> &parts, int64_t cols, const float *scales,
                  int64_t groups, int64_t *bad, int64_t *bad_part);

    TernaryView view() const { return {codes_.get(), scales_.data(), rows_, cols_, kp_, groups_}; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t groups() const { return groups_; }
    int64_t nbytes() const {
        return static_cast<int64_t>(scales_.size()) / groups_ * kp_ / 4 +
               static_cast<int64_t>(scales_.size()) * 4;
    }

  private:
    TernaryMatrix(int64_t rows, int64_t cols, const float *scales, int64_t groups);
    // Packs rows [t * kTileRows, ...) of tile t from row(r, buffer), which returns the row's
    // int8 codes (cols of them, -1..1) or null when it holds an invalid code.
    template <typename RowCodes>
    bool pack_tile(int64_t t, const RowCodes &row);
    struct Free {
        void operator()(uint8_t *p) const { free_weights(p); }
    };
    int64_t rows_, cols_, kp_, groups_;
    std::unique_ptr<uint8_t[], Free> codes_;
    std::vector<float> scales_;
};

// x (n x cols float32) quantized per row (docs/SPEC.md §1) on the pool's threads, padded to kp
// columns. The rows live in this thread's scratch until its next call.
QuantizedRows quantize_rows(const TierKernels &tier, const float *x, int64_t n, int64_t cols,
                            int64_t kp);

// y (n x w.rows) = BitLinear(x (n x w.cols)) on the given tier, on the process's thread pool.
void bitlinear(const TierKernels &tier, const TernaryMatrix &w, const float *x, int64_t n,
               float *y);

}  // namespace pybitnet
