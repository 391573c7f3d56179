#pragma once
// The weight formats the kernels read (docs/SPEC.md §2), in one table as ggml's type_traits:
// ggml type id, elements per block, bytes per block. formats/__init__.py's TYPES is the same
// table in Python; module.cpp exports this one (format_table()) and a test compares the two.
#include <cstdint>

namespace pybitnet {

enum Format : int {
    kF32 = 0,
    kF16 = 1,
    kQ4_0 = 2,
    kQ4_1 = 3,
    kQ8_0 = 8,
    kQ4_K = 12,
    kQ5_K = 13,
    kQ6_K = 14,
    kBF16 = 30,
    kTQ1_0 = 34,
    kTQ2_0 = 35,
    kI2_S = 36,
};

struct FormatTraits {
    const char *name;
    int id;
    int64_t block_size;  // elements per block
    int64_t type_size;   // bytes per block (I2_S: a 128-element block's codes; then a tail)
    bool ternary;        // read by TernaryMatrix (BitLinear), else by DenseMatrix
};

constexpr FormatTraits kFormats[] = {
    {"F32", kF32, 1, 4, false},        {"F16", kF16, 1, 2, false},
    {"Q4_0", kQ4_0, 32, 18, false},    {"Q4_1", kQ4_1, 32, 20, false},
    {"Q8_0", kQ8_0, 32, 34, false},    {"Q4_K", kQ4_K, 256, 144, false},
    {"Q5_K", kQ5_K, 256, 176, false},  {"Q6_K", kQ6_K, 256, 210, false},
    {"BF16", kBF16, 1, 2, false},
    {"TQ1_0", kTQ1_0, 256, 54, true},  {"TQ2_0", kTQ2_0, 256, 66, true},
    {"I2_S", kI2_S, 128, 32, true},
};
// I2_S: after the codes, a 32-byte tail whose first 4 bytes are the float32 per-tensor scale.
constexpr int64_t kI2sTailBytes = 32;

// The row of kFormats for a type id, or null.
constexpr const FormatTraits *find_format(int id) {
    for (const FormatTraits &f : kFormats)
        if (f.id == id) return &f;
    return nullptr;
}
constexpr const FormatTraits &format_of(Format id) { return *find_format(id); }

// The block layouts the kernels decode (float_tiles.h, ternary.cpp) hold these sizes.
static_assert(format_of(kF32).type_size == 4 && format_of(kF16).type_size == 2 &&
              format_of(kBF16).type_size == 2);
static_assert(format_of(kQ8_0).type_size == 2 + 32, "Q8_0: f16 d, 32 int8");
static_assert(format_of(kQ4_0).type_size == 2 + 32 / 2, "Q4_0: f16 d, 32 nibbles");
static_assert(format_of(kQ4_1).type_size == 4 + 32 / 2, "Q4_1: f16 d, f16 m, 32 nibbles");
static_assert(format_of(kQ4_K).type_size == 2 + 2 + 12 + 256 / 2,
              "Q4_K: f16 d, f16 dmin, 8 6-bit scales and mins, 256 nibbles");
static_assert(format_of(kQ5_K).type_size == 2 + 2 + 12 + 256 / 8 + 256 / 2,
              "Q5_K: as Q4_K, and 1 high bit an element");
static_assert(format_of(kQ6_K).type_size == 256 / 2 + 256 / 4 + 16 + 2,
              "Q6_K: nibbles, 2 high bits an element, 16 int8 scales, f16 d");
static_assert(format_of(kTQ2_0).type_size == 256 / 4 + 2, "TQ2_0: 4 codes a byte, f16 d");
static_assert(format_of(kTQ1_0).type_size == 240 / 5 + 16 / 4 + 2,
              "TQ1_0: 5 trits a byte for 240 elements, 4 a byte for 16, f16 d");
static_assert(format_of(kI2_S).type_size == format_of(kI2_S).block_size / 4,
              "I2_S: 4 codes a byte");
static_assert(format_of(kQ8_0).block_size == format_of(kQ4_0).block_size &&
              format_of(kQ4_0).block_size == format_of(kQ4_1).block_size);
static_assert(format_of(kTQ1_0).block_size == format_of(kTQ2_0).block_size);

// Bytes of one row of `cols` elements (whole blocks) of a dense format.
constexpr int64_t row_bytes(const FormatTraits &f, int64_t cols) {
    return cols / f.block_size * f.type_size;
}

}  // namespace pybitnet
