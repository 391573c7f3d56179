#include "ternary.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef _WIN32
#include <malloc.h>
#endif

#include "threadpool.h"

namespace pybitnet {

namespace {
constexpr int64_t kTqBlock = format_of(kTQ2_0).block_size;  // TQ1_0's too (formats.h)
constexpr int64_t kTq2Bytes = format_of(kTQ2_0).type_size, kTq1Bytes = format_of(kTQ1_0).type_size;
constexpr int64_t kI2sBlock = format_of(kI2_S).block_size, kI2sBlockBytes = format_of(kI2_S).type_size;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Splits [0, n) into about four pieces per thread (multiples of `align`) for the pool to share.
int64_t piece_size(int64_t n, int threads, int64_t align) {
    return std::max(align, round_up((n + 4 * threads - 1) / (4 * threads), align));
}
}  // namespace

// 64-byte aligned; in 2 MB huge pages where the OS grants them: decoding streams every weight
// from memory, and 4 KB pages would cost a TLB miss every 4 KB.
uint8_t *allocate_weights(int64_t nbytes) {
    constexpr int64_t kHuge = 2 << 20;
    const bool huge = nbytes >= kHuge;
    // The size is not rounded up to whole huge pages: with a matrix per layer and op, that
    // cost ~1 MB each (120 MB for the 2B model); the tail simply stays in 4 KB pages.
    const int64_t size = round_up(std::max<int64_t>(nbytes, 64), 64);
#ifdef _WIN32  // no std::aligned_alloc in Microsoft's C runtime
    void *p = _aligned_malloc(size, huge ? kHuge : 64);
#else
    void *p = std::aligned_alloc(huge ? kHuge : 64, size);
#endif
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, round_up(size, 4096), MADV_HUGEPAGE);
#endif
    return static_cast<uint8_t *>(p);
}

void free_weights(void *p) {
#ifdef _WIN32
    _aligned_free(p);
#else
    std::free(p);
#endif
}

uint8_t *thread_scratch(int slot, int64_t bytes) {
    struct Buffer {
        uint8_t *p = nullptr;
        int64_t bytes = 0;
        ~Buffer() { free_weights(p); }
    };
    thread_local Buffer buffers[kScratchSlots];
    Buffer &b = buffers[slot];
    if (b.bytes < bytes) {
        free_weights(b.p);
        b.p = nullptr;
        b.bytes = 0;
        try {
            b.p = allocate_weights(bytes);
            b.bytes = bytes;
        } catch (const std::bad_alloc &) {
        }
    }
    return b.p;
}

TernaryMatrix::TernaryMatrix(int64_t rows, int64_t cols, const float *scales, int64_t groups)
    : rows_(rows), cols_(cols), kp_(round_up(std::max<int64_t>(cols, 1), 256)), groups_(groups),
      scales_(round_up(rows, kTileRows) * groups, 0.0f) {
    std::copy(scales, scales + rows * groups, scales_.begin());
    codes_.reset(allocate_weights(round_up(rows, kTileRows) * kp_ / 4));
}

template <typename RowCodes>
bool TernaryMatrix::pack_tile(int64_t t, const RowCodes &row) {
    thread_local std::vector<int8_t> buffer;
    buffer.resize(cols_);
    uint8_t *dst = codes_.get() + t * kTileRows * kp_ / 4;
    for (int i = 0; i < kTileRows; ++i) {
        const int64_t r = t * kTileRows + i;
        const int8_t *src = r < rows_ ? row(r, buffer.data()) : nullptr;
        if (r < rows_ && src == nullptr) return false;
        for (int64_t g = 0; g < kp_ / 256; ++g)
            for (int j = 0; j < 64; ++j) {
                unsigned byte = 0;
                for (int k = 0; k < 4; ++k) {
                    const int64_t c = 256 * g + 64 * k + j;
                    byte |= static_cast<unsigned>(r < rows_ && c < cols_ ? src[c] + 1 : 1) << (2 * k);
                }
                dst[(g * kTileRows + i) * 64 + j] = static_cast<uint8_t>(byte);
            }
    }
    return true;
}

namespace {
// Lowers *first to value unless it already holds a lower one (threads finish in any order).
void keep_lowest(std::atomic<int64_t> &first, int64_t value) {
    int64_t seen = first.load();
    while ((seen < 0 || value < seen) && !first.compare_exchange_weak(seen, value)) {
    }
}

bool has_code3(const uint8_t *b, int64_t n) {
    uint8_t any = 0;
    for (int64_t i = 0; i < n; ++i) any |= b[i] & (b[i] >> 1) & 0x55;
    return any != 0;
}

// The 2-bit code (0..2 valid) of element e of a part.
int code_at(int fmt, const uint8_t *data, int64_t cols, int64_t r, int64_t c) {
    if (fmt == kI2_S) {  // flat 128-element blocks, byte e % 32 at shift 6 - 2 * (e % 128 / 32)
        const int64_t e = r * cols + c;
        return (data[e / kI2sBlock * kI2sBlockBytes + (e & 31)] >> (6 - 2 * ((e >> 5) & 3))) & 3;
    }
    const int64_t j = c % kTqBlock;
    if (fmt == kTQ2_0) {  // element 128 a + 32 l + k in bits 2l of byte 32 a + k
        const uint8_t *qs = data + (r * (cols / kTqBlock) + c / kTqBlock) * kTq2Bytes;
        return (qs[(j / 128) * 32 + j % 32] >> (2 * (j % 128 / 32))) & 3;
    }
    // TQ1_0: base-3 digits, most significant first (formats/tq1_0.py)
    const uint8_t *qs = data + (r * (cols / kTqBlock) + c / kTqBlock) * kTq1Bytes;
    int byte, digit;
    if (j < 160) {
        byte = j % 32, digit = j / 32;
    } else if (j < 240) {
        byte = 32 + (j - 160) % 16, digit = (j - 160) / 16;
    } else {
        byte = 48 + (j - 240) % 4, digit = (j - 240) / 4;
    }
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8_t shifted = static_cast<uint8_t>(qs[byte] * pow3[digit]);
    return (static_cast<unsigned>(shifted) * 3) >> 8;
}

// Fast paths, one 256-column group at a time, for I2_S rows of whole 128-blocks and TQ2_0
// (both checked for code 3 beforehand): bit shuffles from the file's order to the kernels'.
// Output byte j holds columns j, 64 + j, 128 + j, 192 + j of the group in bits 0-1 .. 6-7.
void i2s_group(const uint8_t *a, const uint8_t *b, uint8_t *out) {
    // a, b: the group's two 128-blocks (b null: past the row, codes 1); byte k of a block holds
    // elements k, 32 + k, 64 + k, 96 + k in bits 7-6, 5-4, 3-2, 1-0.
    for (int j = 0; j < 64; ++j) {
        const int k = j % 32, hi = j < 32 ? 6 : 4, lo = j < 32 ? 2 : 0;
        const unsigned bb = b ? b[k] : 0x55;
        out[j] = static_cast<uint8_t>(((a[k] >> hi) & 3) | ((a[k] >> lo) & 3) << 2 |
                                      ((bb >> hi) & 3) << 4 | ((bb >> lo) & 3) << 6);
    }
}

void tq2_group(const uint8_t *qs, uint8_t *out) {
    for (int j = 0; j < 64; ++j) {
        const int k = j % 32, lo = j < 32 ? 0 : 2;
        out[j] = static_cast<uint8_t>(((qs[k] >> lo) & 3) | ((qs[k] >> (lo + 4)) & 3) << 2 |
                                      ((qs[32 + k] >> lo) & 3) << 4 |
                                      ((qs[32 + k] >> (lo + 4)) & 3) << 6);
    }
}
}  // namespace

TernaryMatrix::TernaryMatrix(const int8_t *codes, int64_t rows, int64_t cols, const float *scales,
                             int64_t groups, int64_t *bad)
    : TernaryMatrix(rows, cols, scales, groups) {
    std::atomic<int64_t> first_bad{-1};
    pool()->run(round_up(rows, kTileRows) / kTileRows, [&](int64_t t) {
        pack_tile(t, [&](int64_t r, int8_t *) -> const int8_t * {
            const int8_t *src = codes + r * cols;
            for (int64_t c = 0; c < cols; ++c)
                if (static_cast<uint8_t>(src[c] + 1) > 2) {
                    keep_lowest(first_bad, r * cols + c);
                    return nullptr;
                }
            return src;
        });
    });
    *bad = first_bad.load();
}

TernaryMatrix::TernaryMatrix(const std::vector<Packed> &parts, int64_t cols, const float *scales,
                             int64_t groups, int64_t *bad, int64_t *bad_part)
    : TernaryMatrix(
          [&] {
              int64_t rows = 0;
              for (const Packed &p : parts) rows += p.rows;
              return rows;
          }(),
          cols, scales, groups) {
    *bad = -1;
    *bad_part = -1;
    for (size_t i = 0; i < parts.size(); ++i) {
        const Packed &p = parts[i];
        const int64_t n = p.rows * cols;
        const bool code3 = p.fmt == kI2_S    ? has_code3(p.data, n / 4)
                           : p.fmt == kTQ2_0 ? [&] {
                                 for (int64_t b = 0; b < n / kTqBlock; ++b)
                                     if (has_code3(p.data + kTq2Bytes * b, kTqBlock / 4)) return true;
                                 return false;
                             }()
                                             : false;
        if (code3) {  // find the first one, for the error message
            for (int64_t e = 0; e < n && *bad < 0; ++e)
                if (code_at(p.fmt, p.data, cols, e / cols, e % cols) == 3) *bad = e;
            *bad_part = static_cast<int64_t>(i);
            return;
        }
    }
    const bool i2s_fast = cols % kI2sBlock == 0, tq2_fast = true;
    pool()->run(round_up(rows_, kTileRows) / kTileRows, [&](int64_t t) {
        // Whole tiles inside one part with a fast path are shuffled bytewise.
        int64_t first = 0;
        size_t pi = 0;
        while (pi < parts.size() && t * kTileRows >= first + parts[pi].rows) first += parts[pi++].rows;
        const bool whole = pi < parts.size() && (t + 1) * kTileRows <= first + parts[pi].rows;
        if (whole && ((parts[pi].fmt == kI2_S && i2s_fast) || (parts[pi].fmt == kTQ2_0 && tq2_fast))) {
            const Packed &p = parts[pi];
            uint8_t *dst = codes_.get() + t * kTileRows * kp_ / 4;
            for (int i = 0; i < kTileRows; ++i) {
                const int64_t r = t * kTileRows + i - first;
                for (int64_t g = 0; g < kp_ / 256; ++g) {
                    uint8_t *out = dst + (g * kTileRows + i) * 64;
                    if (p.fmt == kTQ2_0) {
                        tq2_group(p.data + (r * (cols / kTqBlock) + g) * kTq2Bytes, out);
                    } else {
                        const uint8_t *a = p.data + (r * cols / kI2sBlock + 2 * g) * kI2sBlockBytes;
                        i2s_group(a, 256 * g + kI2sBlock < cols ? a + kI2sBlockBytes : nullptr, out);
                    }
                }
            }
            return;
        }
        pack_tile(t, [&](int64_t r, int8_t *buffer) -> const int8_t * {
            int64_t part_first = 0;
            size_t k = 0;
            while (r >= part_first + parts[k].rows) part_first += parts[k++].rows;
            for (int64_t c = 0; c < cols; ++c)
                buffer[c] = static_cast<int8_t>(code_at(parts[k].fmt, parts[k].data, cols, r - part_first, c) - 1);
            return buffer;
        });
    });
}

QuantizedRows quantize_rows(const TierKernels &tier, const float *x, int64_t n, int64_t cols,
                            int64_t kp) {
    const int64_t groups = kp / 256;
    // Scratch reused across calls on this thread, so no page faults per call. The tasks below
    // run on other threads too: they must use these pointers, not the thread_local vectors.
    thread_local std::vector<int8_t> q_buf;
    thread_local std::vector<float> sx_buf;
    thread_local std::vector<int32_t> sums_buf, total_buf;
    q_buf.resize(n * kp);
    sx_buf.resize(n);
    sums_buf.resize(n * groups);
    total_buf.resize(n);
    int8_t *q = q_buf.data();
    float *sx = sx_buf.data();
    int32_t *sums = sums_buf.data(), *total = total_buf.data();
    const auto workers = pool();
    const int64_t qpiece = piece_size(n, workers->size(), 1);
    workers->run((n + qpiece - 1) / qpiece, [&](int64_t i) {
        const int64_t r0 = i * qpiece, r1 = std::min(n, r0 + qpiece);
        tier.quantize(x, cols, r0, r1, q, sx, sums, kp);
        for (int64_t r = r0; r < r1; ++r) {
            int32_t t = 0;
            for (int64_t g = 0; g < groups; ++g) t += sums[r * groups + g];
            total[r] = t;
        }
    });
    return {q, sx, sums, total, n, kp};
}

void bitlinear(const TierKernels &tier, const TernaryMatrix &w, const float *x, int64_t n,
               float *y) {
    const TernaryView v = w.view();
    QuantizedRows xq = quantize_rows(tier, x, n, v.cols, v.kp);
    const auto workers = pool();
    if (tier.tile_activations != nullptr && n >= kAmxTileRows && v.groups == 1) {
        // laid out once here, read by every row piece (out of memory: no tiles, and the tier
        // takes its kernel without them)
        const int64_t tiles = (n + kAmxTileRows - 1) / kAmxTileRows;
        auto *out = reinterpret_cast<int8_t *>(
            thread_scratch(kScratchActivationTiles, tiles * kAmxTileRows * v.kp));
        if (out != nullptr) {
            workers->run(tiles, [&](int64_t t) { tier.tile_activations(xq, t, out); });
            xq.tiles = out;
        }
    }
    const int64_t piece = piece_size(v.rows, workers->size(), 4 * kTileRows);
    workers->run((v.rows + piece - 1) / piece, [&](int64_t i) {
        const int64_t r0 = i * piece;
        tier.matmul(v, xq, r0, std::min(v.rows, r0 + piece), y);
    });
}

}  // namespace pybitnet
