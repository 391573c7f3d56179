#pragma once
// The lookup-table ternary GEMM (bitnet.cpp TL / T-MAC style; SPEC section 2), AVX-512 only.
// Per activation row and group of 3 columns, a table of the 27 partial sums w . x_q (int16) is
// built once; the weights, stored as one table index per 3 weights (tiers.h: LutView), are
// looked up 32 rows at a time with vpermw and summed in int16, widened to int32 once per
// 256-column block. The integer dot products are exactly those of the multiply-add kernels, so
// with one scale per row the results agree bit for bit.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "ternary.h"
#include "tiers.h"

namespace pybitnet {

class LutMatrix {
  public:
    // The same weights as w (same rows, columns and scales), re-encoded as table indices.
    explicit LutMatrix(const TernaryMatrix &w);
    LutView view() const { return {idx_.get(), scales_.data(), rows_, cols_, kp_, groups_}; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t groups() const { return groups_; }
    int64_t nbytes() const {
        return padded_rows() * (kp_ / 256) * kLutGroups + static_cast<int64_t>(scales_.size()) * 4;
    }

  private:
    int64_t padded_rows() const { return (rows_ + kLutTileRows - 1) / kLutTileRows * kLutTileRows; }
    struct Free {
        void operator()(uint8_t *p) const { std::free(p); }
    };
    int64_t rows_, cols_, kp_, groups_;
    std::unique_ptr<uint8_t[], Free> idx_;
    std::vector<float> scales_;
};

// Whether this CPU runs the lookup-table kernel (AVX-512 F/BW/VL/VNNI, the avx512 tier).
bool lut_supported();

// y (n x w.rows) = BitLinear(x (n x w.cols)) with the lookup-table kernel, on the thread pool.
void bitlinear_lut(const LutMatrix &w, const float *x, int64_t n, float *y);

}  // namespace pybitnet
