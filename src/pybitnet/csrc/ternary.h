#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "tiers.h"

namespace pybitnet {

// Memory for weights read by the kernels (64-byte aligned, huge pages where granted), released
// with std::free.
uint8_t *allocate_weights(int64_t nbytes);

// Whether a matrix also keeps the base-3 layout (tiers.h) for decoding: by its shape
// (base3_pays in ternary.cpp), never, or always.
enum class Base3 { kByShape, kOff, kOn };

// Whether decoding a rows x cols matrix with `groups` scales a row reads the base-3 layout
// (Base3::kByShape).
bool base3_pays(int64_t rows, int64_t cols, int64_t groups);

// Ternary weights repacked once, at load, into the kernels' layouts (tiers.h: TernaryView): the
// 2-bit one always, the base-3 one beside it where base3 asks.
class TernaryMatrix {
  public:
    // codes: rows x cols int8 in {-1, 0, 1}; scales: rows x groups, groups = 1 or cols / 256.
    // Returns the flat index of the first code outside {-1, 0, 1} in *bad (else -1).
    TernaryMatrix(const int8_t *codes, int64_t rows, int64_t cols, const float *scales,
                  int64_t groups, Base3 base3, int64_t *bad);

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
                  int64_t groups, Base3 base3, int64_t *bad, int64_t *bad_part);

    // The layout the kernels read for n activation rows.
    TernaryView view(int64_t n) const {
        if (trits_ && n <= kBase3MaxRows)
            return {trits_.get(), scales_.data(), rows_, cols_, kt_, groups_, true};
        return {codes_.get(), scales_.data(), rows_, cols_, kp_, groups_, false};
    }
    bool has_base3() const { return trits_ != nullptr; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t groups() const { return groups_; }
    int64_t nbytes() const {
        return padded_rows() * (kp_ / 4 + (trits_ ? kt_ / 5 : 0)) +
               static_cast<int64_t>(scales_.size()) * 4;
    }

  private:
    int64_t padded_rows() const { return static_cast<int64_t>(scales_.size()) / groups_; }
    TernaryMatrix(int64_t rows, int64_t cols, const float *scales, int64_t groups);
    // Adds the base-3 layout, from the 2-bit one, where base3 asks.
    void add_base3(Base3 base3);
    // Packs rows [t * kTileRows, ...) of tile t from row(r, buffer), which returns the row's
    // int8 codes (cols of them, -1..1) or null when it holds an invalid code.
    template <typename RowCodes>
    bool pack_tile(int64_t t, const RowCodes &row);
    struct Free {
        void operator()(uint8_t *p) const { std::free(p); }
    };
    int64_t rows_, cols_, kp_, kt_, groups_;  // kp_, kt_: padded columns of the two layouts
    std::unique_ptr<uint8_t[], Free> codes_, trits_;
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
