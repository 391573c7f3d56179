#pragma once
// One table of kernels per instruction-set tier. Each tier is a translation unit of its own,
// compiled with that tier's flags (CMakeLists.txt); module.cpp picks a table at run time.
//
// Rule for the tier translation units: everything lives in an anonymous namespace and uses no
// C++ standard-library templates. An inline function instantiated in the AVX-512 unit could
// otherwise be the copy the linker keeps for the portable code, and crash an older CPU.
#include <cstdint>

namespace pybitnet {

// Ternary weights in the kernels' layout (built once by TernaryMatrix in ternary.cpp):
// - each row of `cols` weights is padded with zero weights to kp = a multiple of 256 columns,
//   and rows are padded with zero rows to a multiple of kTileRows;
// - a group is 256 columns of one row in 64 bytes: byte j holds, in bits 2k..2k+1, the code
//   (w + 1: 0, 1, 2) of column 64k + j of the group. One 64-byte load thus splits, with a shift
//   and a mask, into four vectors of codes for four runs of 64 consecutive activations;
// - rows go in tiles of kTileRows, and a tile stores its rows' groups interleaved: group g of
//   row t * kTileRows + i is at byte t * kTileRows * kp / 4 + (g * kTileRows + i) * 64. A tile
//   of rows is read as one sequential stream, which the hardware prefetchers follow well (rows
//   read side by side as separate short streams reached only a third of the memory bandwidth);
// - scales: padded rows x groups float32, groups = 1 (one scale per row: I2_S, HF) or kp / 256
//   (one per 256-block: TQ1_0, TQ2_0).
// The codes stay 2-bit in memory because decoding reads every weight once per token and is
// bound by memory bandwidth; they are widened in registers.
constexpr int kTileRows = 4;

struct TernaryView {
    const uint8_t *codes;
    const float *scales;
    int64_t rows, cols, kp, groups;
};

// Activations quantised per row (SPEC section 1), padded with zeros to kp columns.
struct QuantizedRows {
    const int8_t *q;       // n x kp
    const float *sx;       // n: s_x = 127 / max(max|x|, 1e-5)
    const int32_t *sums;   // n x (kp / 256): sum of x_q over each 256-block
    const int32_t *total;  // n: sum of x_q over the row
    int64_t n, kp;
};

struct TierKernels {
    const char *name;
    // I2_S codes (n / 4 bytes, n % 128 == 0) to n floats (code - 1) * scale. Returns -1, or the
    // index of the first element whose code is 3 (the output is then incomplete).
    int64_t (*i2s_dequant)(const uint8_t *codes, int64_t n, float scale, float *out);
    // Quantises rows r0..r1 of x (n x k float32, row-major) into `out` (whose pointers are
    // writable for those rows) as SPEC section 1 says, bit for bit with numpy.
    void (*quantize)(const float *x, int64_t k, int64_t r0, int64_t r1, int8_t *q, float *sx,
                     int32_t *sums, int64_t kp);
    // y[b, r] for every activation row b and weight rows r0..r1 (r0 a multiple of kTileRows);
    // y is n x w.rows, row-major.
    void (*matmul)(const TernaryView &w, const QuantizedRows &x, int64_t r0, int64_t r1,
                   float *y);
};

extern const TierKernels scalar_kernels;
#ifdef PYBITNET_X86_TIERS
extern const TierKernels avx2_kernels;
extern const TierKernels avx512_kernels;
#endif

}  // namespace pybitnet
