#pragma once
// The K-quants' portable pieces: llama.cpp's reference quantizers (for requantizing an output
// head at load) and the per-block int8 activations the K-quant kernels take.
#include <cstdint>
#include <vector>

#include "tiers.h"

namespace pybitnet {

// rows x cols float32 (cols a multiple of 256) into Q6_K or Q4_K blocks (out: rows x cols / 256
// blocks), byte for byte as llama.cpp's quantize_row_q6_K_ref / quantize_row_q4_K_ref compiled
// without fused multiply-adds; rows spread over the pool's threads. False for another format.
bool quantize_kquant(int fmt, const float *x, int64_t rows, int64_t cols, uint8_t *out);

// Activations quantized per 256-element block (docs/SPEC.md §1) into buffers it owns; cols is a
// multiple of 256.
class BlockQ8Buffer {
  public:
    BlockQ8Rows quantize(const float *x, int64_t n, int64_t cols);

  private:
    std::vector<int8_t> q_;
    std::vector<float> d_;
    std::vector<int16_t> bsums_;
};

}  // namespace pybitnet
