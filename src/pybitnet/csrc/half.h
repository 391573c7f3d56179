// float32 -> float16 in portable C++ (no _Float16, no F16C), shared by the KV cache stores and
// the K-quant quantizers.
#pragma once

#include <cstdint>
#include <cstring>

namespace pybitnet {

// float32 -> IEEE binary16, rounded to nearest, ties to even (|f| >= 65520: inf), as numpy's
// astype(float16) and F16C's vcvtps2ph: one portable routine, so every tier stores the same bits
// (used where values are stored, not on a kernel's inner loop).
inline uint16_t to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00u;  // NaN
    if (x >= 0x477ff000u) return sign | 0x7c00u;
    if (x < 0x38800000u) {  // below 2^-14: a subnormal, in units of 2^-24 (adding 2^23 rounds)
        float a;
        std::memcpy(&a, &x, sizeof a);
        return sign | static_cast<uint16_t>((a * 16777216.0f + 8388608.0f) - 8388608.0f);
    }
    x += 0xfffu + ((x >> 13) & 1u);  // the 13 dropped bits, to nearest even
    return sign | static_cast<uint16_t>((x - 0x38000000u) >> 13);
}

}  // namespace pybitnet
