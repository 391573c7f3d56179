#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "tiers.h"

namespace pybitnet {

// Ternary weights repacked once, at load, into the kernels' layout (tiers.h: TernaryView).
class TernaryMatrix {
  public:
    // codes: rows x cols int8 in {-1, 0, 1}; scales: rows x groups, groups = 1 or cols / 256.
    // Returns the flat index of the first code outside {-1, 0, 1} in *bad (else -1).
    TernaryMatrix(const int8_t *codes, int64_t rows, int64_t cols, const float *scales,
                  int64_t groups, int64_t *bad);

    TernaryView view() const { return {codes_.get(), scales_.data(), rows_, cols_, kp_, groups_}; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    int64_t groups() const { return groups_; }
    int64_t nbytes() const {
        return static_cast<int64_t>(scales_.size()) / groups_ * kp_ / 4 +
               static_cast<int64_t>(scales_.size()) * 4;
    }

  private:
    struct Free {
        void operator()(uint8_t *p) const { std::free(p); }
    };
    int64_t rows_, cols_, kp_, groups_;
    std::unique_ptr<uint8_t[], Free> codes_;
    std::vector<float> scales_;
};

// y (n x w.rows) = BitLinear(x (n x w.cols)) on the given tier, on the process's thread pool.
void bitlinear(const TierKernels &tier, const TernaryMatrix &w, const float *x, int64_t n,
               float *y);

}  // namespace pybitnet
