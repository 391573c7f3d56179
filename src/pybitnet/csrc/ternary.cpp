#include "ternary.h"

#include <algorithm>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "threadpool.h"

namespace pybitnet {

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Splits [0, n) into about four pieces per thread (multiples of `align`) for the pool to share.
int64_t piece_size(int64_t n, int threads, int64_t align) {
    return std::max(align, round_up((n + 4 * threads - 1) / (4 * threads), align));
}
// 64-byte aligned; in 2 MB huge pages where the OS grants them: decoding streams every weight
// from memory, and 4 KB pages would cost a TLB miss every 4 KB.
uint8_t *allocate_codes(int64_t nbytes) {
    constexpr int64_t kHuge = 2 << 20;
    const bool huge = nbytes >= kHuge;
    const int64_t size = huge ? round_up(nbytes, kHuge) : round_up(std::max<int64_t>(nbytes, 64), 64);
    void *p = std::aligned_alloc(huge ? kHuge : 64, size);
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, size, MADV_HUGEPAGE);
#endif
    return static_cast<uint8_t *>(p);
}
}  // namespace

TernaryMatrix::TernaryMatrix(const int8_t *codes, int64_t rows, int64_t cols, const float *scales,
                             int64_t groups, int64_t *bad)
    : rows_(rows), cols_(cols), kp_(round_up(std::max<int64_t>(cols, 1), 256)), groups_(groups),
      scales_(round_up(rows, kTileRows) * groups, 0.0f) {
    std::copy(scales, scales + rows * groups, scales_.begin());
    const int64_t tiles = round_up(rows, kTileRows) / kTileRows;
    codes_.reset(allocate_codes(tiles * kTileRows * kp_ / 4));
    std::atomic<int64_t> first_bad{-1};
    pool()->run(tiles, [&](int64_t t) {
        uint8_t *dst = codes_.get() + t * kTileRows * kp_ / 4;
        for (int i = 0; i < kTileRows; ++i) {
            const int64_t r = t * kTileRows + i;
            const int8_t *src = codes + r * cols;
            bool ok = true;
            for (int64_t c = 0; r < rows && c < cols; ++c) ok &= static_cast<uint8_t>(src[c] + 1) <= 2;
            if (!ok) {
                int64_t c = 0;
                while (static_cast<uint8_t>(src[c] + 1) <= 2) ++c;
                // Report the lowest bad index whatever order the threads ran in.
                int64_t seen = first_bad.load();
                while ((seen < 0 || r * cols + c < seen) &&
                       !first_bad.compare_exchange_weak(seen, r * cols + c)) {
                }
                return;
            }
            for (int64_t g = 0; g < kp_ / 256; ++g)
                for (int j = 0; j < 64; ++j) {
                    unsigned byte = 0;
                    for (int k = 0; k < 4; ++k) {
                        const int64_t c = 256 * g + 64 * k + j;
                        byte |= static_cast<unsigned>(r < rows && c < cols ? src[c] + 1 : 1) << (2 * k);
                    }
                    dst[(g * kTileRows + i) * 64 + j] = static_cast<uint8_t>(byte);
                }
        }
    });
    *bad = first_bad.load();
}

void bitlinear(const TierKernels &tier, const TernaryMatrix &w, const float *x, int64_t n,
               float *y) {
    const TernaryView v = w.view();
    const int64_t groups = v.kp / 256;
    // Scratch reused across calls on this thread, so no page faults per call. The tasks below
    // run on other threads too: they must use these pointers, not the thread_local vectors.
    thread_local std::vector<int8_t> q_buf;
    thread_local std::vector<float> sx_buf;
    thread_local std::vector<int32_t> sums_buf, total_buf;
    q_buf.resize(n * v.kp);
    sx_buf.resize(n);
    sums_buf.resize(n * groups);
    total_buf.resize(n);
    int8_t *q = q_buf.data();
    float *sx = sx_buf.data();
    int32_t *sums = sums_buf.data(), *total = total_buf.data();
    const auto workers = pool();
    const int threads = workers->size();

    const int64_t qpiece = piece_size(n, threads, 1);
    workers->run((n + qpiece - 1) / qpiece, [&](int64_t i) {
        const int64_t r0 = i * qpiece, r1 = std::min(n, r0 + qpiece);
        tier.quantize(x, v.cols, r0, r1, q, sx, sums, v.kp);
        for (int64_t r = r0; r < r1; ++r) {
            int32_t t = 0;
            for (int64_t g = 0; g < groups; ++g) t += sums[r * groups + g];
            total[r] = t;
        }
    });
    const QuantizedRows xq{q, sx, sums, total, n, v.kp};
    const int64_t piece = piece_size(v.rows, threads, 4 * kTileRows);
    workers->run((v.rows + piece - 1) / piece, [&](int64_t i) {
        const int64_t r0 = i * piece;
        tier.matmul(v, xq, r0, std::min(v.rows, r0 + piece), y);
    });
}

}  // namespace pybitnet
