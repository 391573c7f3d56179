// Decoding a dense matrix (float or block-quantized, docs/SPEC.md §2) one 32-column chunk of a
// row at a time, as gguf.quants.dequantize does (the same float32 operations in the same order,
// so the same bits). Part of float_tiles.h: included by it inside each tier unit's anonymous
// namespace after `struct Vf` (Vf::half, Vf::load_f16) and min64.

// A Q block is one decoded chunk (formats.h holds the sizes; constants, so that no function of
// formats.h is compiled into a tier unit).
static_assert(format_of(kQ8_0).block_size == kDenseChunk);
constexpr int64_t kQ8_0Bytes = format_of(kQ8_0).type_size;
constexpr int64_t kQ4_0Bytes = format_of(kQ4_0).type_size;
constexpr int64_t kQ4_1Bytes = format_of(kQ4_1).type_size;
// A K-quant super-block is 8 chunks, each a 32-element sub-block (Q4_K, Q5_K) or two 16-element
// ones (Q6_K).
static_assert(format_of(kQ4_K).block_size == 8 * kDenseChunk &&
              format_of(kQ5_K).block_size == 8 * kDenseChunk &&
              format_of(kQ6_K).block_size == 8 * kDenseChunk);
constexpr int64_t kQ4_KBytes = format_of(kQ4_K).type_size;
constexpr int64_t kQ5_KBytes = format_of(kQ5_K).type_size;
constexpr int64_t kQ6_KBytes = format_of(kQ6_K).type_size;

inline float f16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return Vf::half(h);
}

// Q4_K / Q5_K: sub-block j's 6-bit scale and min from the 12 bytes at q (ggml's
// get_scale_min_k4).
inline void k4_codes(const uint8_t *b, int j, int *sc, int *m) {
    const uint8_t *q = b + 4;
    *sc = j < 4 ? q[j] & 63 : (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
    *m = j < 4 ? q[j + 4] & 63 : (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
}

// The same, multiplied by the super-block's d and dmin.
inline void k4_scale_min(const uint8_t *b, int j, float *scale, float *min) {
    int sc, m;
    k4_codes(b, j, &sc, &m);
    *scale = f16_at(b) * static_cast<float>(sc);
    *min = f16_at(b + 2) * static_cast<float>(m);
}

// Sub-block j (0..7) of a Q4_K super-block b: f16 d, f16 dmin, 12 bytes of scales and mins,
// 128 bytes of nibbles (sub-blocks 2i and 2i + 1 in the low and high nibbles of bytes 32i..).
inline void decode_q4_k(const uint8_t *b, int j, float *out) {
    float scale, min;
    k4_scale_min(b, j, &scale, &min);
    const uint8_t *qs = b + 16 + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) out[l] = scale * static_cast<float>((qs[l] >> shift) & 15) - min;
}

// Q5_K: as Q4_K, with 32 bytes of high bits (bit j of qh[l]) before the nibbles.
inline void decode_q5_k(const uint8_t *b, int j, float *out) {
    float scale, min;
    k4_scale_min(b, j, &scale, &min);
    const uint8_t *qh = b + 16, *qs = b + 48 + 32 * (j / 2);
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
        const int q = ((qs[l] >> shift) & 15) | (((qh[l] >> j) & 1) << 4);
        out[l] = scale * static_cast<float>(q) - min;
    }
}

// Elements 32j .. 32j + 31 of a Q6_K super-block b: 128 bytes of low nibbles, 64 of high bit
// pairs, 16 int8 scales (one a 16 elements), f16 d. Element 128h + 32k + l: the nibble of
// ql[64h + 32 (k % 2) + l] (high for k >= 2), bit pair k of qh[32h + l].
inline void decode_q6_k(const uint8_t *b, int j, float *__restrict out) {
    const int h = j / 4, k = j % 4, low_shift = 4 * (k / 2), high_shift = 2 * k;
    const uint8_t *ql = b + 64 * h + 32 * (k % 2), *qh = b + 128 + 32 * h;
    const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192);
    const float d = f16_at(b + 208), scale0 = d * sc[2 * j], scale1 = d * sc[2 * j + 1];
    // The codes as bytes first, then one scale a 16 elements: loops of fixed length, which the
    // compiler widens to whole vectors (a scale chosen per element kept it to 4 lanes).
    uint8_t q[32];
    for (int l = 0; l < 32; ++l)
        q[l] = static_cast<uint8_t>(((ql[l] >> low_shift) & 15) | (((qh[l] >> high_shift) & 3) << 4));
    for (int l = 0; l < 16; ++l) out[l] = scale0 * static_cast<float>(q[l] - 32);
    for (int l = 16; l < 32; ++l) out[l] = scale1 * static_cast<float>(q[l] - 32);
}

// The float step of the Q6_K kernels (kquant_dot.h) per super-block, in this order (docs/SPEC.md
// §1), so every tier and numpy give the same bits: y + (d * d_x) * isum, where isum = sum_j sc_j *
// sum_{e in sub-block j} (q_e - 32) x_e is exact and d_x is the activations' block scale.
inline float q6k_step(float y, const uint8_t *block, float dx, int32_t isum) {
    return y + (f16_at(block + 208) * dx) * static_cast<float>(isum);
}

// The Q4_K kernels' float step (docs/SPEC.md §1), as q6k_step: isum = sum_j sc_j * sum_{e in
// sub-block j} q_e x_e and msum = sum_j m_j * sum_{e in sub-block j} x_e, both exact.
inline float q4k_step(float y, const uint8_t *block, float dx, int32_t isum, int32_t msum) {
    return y + ((f16_at(block) * dx) * static_cast<float>(isum) -
                (f16_at(block + 2) * dx) * static_cast<float>(msum));
}

// Columns 32c .. 32c + 31 of row r of w as floats (zeros past the row's end).
inline void decode_chunk(const DenseView &w, int64_t r, int64_t c, float *out) {
    const uint8_t *row = w.data + r * w.row_bytes;
    const int64_t k0 = int64_t{kDenseChunk} * c;
    const int64_t live = min64(kDenseChunk, w.cols - k0);
    switch (w.fmt) {
    case kF32: {
        const float *src = reinterpret_cast<const float *>(row) + k0;
        for (int64_t i = 0; i < kDenseChunk; ++i) out[i] = i < live ? src[i] : 0.0f;
        break;
    }
    case kF16: {
        const uint16_t *src = reinterpret_cast<const uint16_t *>(row) + k0;
        if (live == kDenseChunk) {
            for (int i = 0; i < kDenseChunk; i += Vf::N) Vf::store(out + i, Vf::load_f16(src + i));
        } else {
            for (int64_t i = 0; i < kDenseChunk; ++i) out[i] = i < live ? Vf::half(src[i]) : 0.0f;
        }
        break;
    }
    case kBF16: {  // the high half of a float32
        const uint16_t *src = reinterpret_cast<const uint16_t *>(row) + k0;
        for (int64_t i = 0; i < kDenseChunk; ++i) {
            const uint32_t bits = i < live ? static_cast<uint32_t>(src[i]) << 16 : 0u;
            memcpy(out + i, &bits, sizeof bits);
        }
        break;
    }
    case kQ8_0: {  // f16 d, 32 int8; q * d
        const uint8_t *b = row + kQ8_0Bytes * c;
        uint16_t h;
        memcpy(&h, b, 2);
        const float d = Vf::half(h);
        const int8_t *q = reinterpret_cast<const int8_t *>(b + 2);
        for (int i = 0; i < 32; ++i) out[i] = static_cast<float>(q[i]) * d;
        break;
    }
    case kQ4_0: {  // f16 d, 16 bytes (low nibbles 0..15, high 16..31); (q - 8) * d
        const uint8_t *b = row + kQ4_0Bytes * c;
        uint16_t h;
        memcpy(&h, b, 2);
        const float d = Vf::half(h);
        for (int i = 0; i < 16; ++i) {
            out[i] = static_cast<float>((b[2 + i] & 15) - 8) * d;
            out[i + 16] = static_cast<float>((b[2 + i] >> 4) - 8) * d;
        }
        break;
    }
    case kQ4_1: {  // f16 d, f16 m, 16 bytes as Q4_0; q * d + m
        const uint8_t *b = row + kQ4_1Bytes * c;
        uint16_t h[2];
        memcpy(h, b, 4);
        const float d = Vf::half(h[0]), m = Vf::half(h[1]);
        for (int i = 0; i < 16; ++i) {
            out[i] = static_cast<float>(b[4 + i] & 15) * d + m;
            out[i + 16] = static_cast<float>(b[4 + i] >> 4) * d + m;
        }
        break;
    }
    case kQ4_K:
        decode_q4_k(row + kQ4_KBytes * (c / 8), static_cast<int>(c % 8), out);
        break;
    case kQ5_K:
        decode_q5_k(row + kQ5_KBytes * (c / 8), static_cast<int>(c % 8), out);
        break;
    case kQ6_K:
        decode_q6_k(row + kQ6_KBytes * (c / 8), static_cast<int>(c % 8), out);
        break;
    default:
        for (int i = 0; i < kDenseChunk; ++i) out[i] = NAN;  // DenseMatrix takes dense formats only
    }
}
