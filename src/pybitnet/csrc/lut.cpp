#include "lut.h"

#include <algorithm>
#include <new>
#include <stdexcept>

#include "cpu.h"
#include "threadpool.h"

namespace pybitnet {

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }

// Weight (-1, 0, 1) at row r, column c of the multiply-add layout (tiers.h: TernaryView).
int weight_at(const TernaryView &v, int64_t r, int64_t c) {
    if (r >= v.rows || c >= v.cols) return 0;
    const int64_t g = c / 256, k = c % 256 / 64, j = c % 64;
    const uint8_t byte =
        v.codes[r / kTileRows * kTileRows * v.kp / 4 + (g * kTileRows + r % kTileRows) * 64 + j];
    return ((byte >> (2 * k)) & 3) - 1;
}
}  // namespace

LutMatrix::LutMatrix(const TernaryMatrix &w)
    : rows_(w.rows()), cols_(w.cols()), kp_(w.view().kp), groups_(w.groups()),
      scales_(round_up(rows_, kLutTileRows) * groups_, 0.0f) {
    const TernaryView v = w.view();
    const int64_t blocks = kp_ / 256, tiles = ceil_div(rows_, kLutTileRows);
    const int64_t padded = tiles * kLutTileRows;
    void *p = std::aligned_alloc(64, round_up(std::max<int64_t>(padded * blocks * kLutGroups, 64), 64));
    if (p == nullptr) throw std::bad_alloc();
    idx_.reset(static_cast<uint8_t *>(p));
    for (int64_t r = 0; r < rows_; ++r)
        for (int64_t k = 0; k < groups_; ++k) scales_[k * padded + r] = v.scales[r * groups_ + k];
    pool()->run(tiles, [&](int64_t t) {
        for (int64_t k = 0; k < blocks; ++k) {
            uint8_t *out = idx_.get() + (k * tiles + t) * kLutGroups * kLutTileRows;
            for (int j = 0; j < kLutGroups; ++j)
                for (int i = 0; i < kLutTileRows; ++i) {
                    const int64_t r = t * kLutTileRows + i, c = 256 * k + 3 * j;
                    const bool single = j == kLutGroups - 1;  // column 255 alone
                    out[j * kLutTileRows + i / 64 * 64 + i % 32 * 2 + i % 64 / 32] = static_cast<uint8_t>(
                        9 * (weight_at(v, r, c) + 1) + 3 * (single ? 1 : weight_at(v, r, c + 1) + 1) +
                        (single ? 1 : weight_at(v, r, c + 2) + 1));
                }
        }
    });
}

bool lut_supported() {
    const CpuFeatures &f = cpu_features();
    // The avx512 tier's condition: its quantize() prepares the activations.
    return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.avx2 && f.fma && f.f16c;
}

void bitlinear_lut(const LutMatrix &w, const float *x, int64_t n, float *y) {
#ifdef PYBITNET_X86_TIERS
    const LutView v = w.view();
    const QuantizedRows xq = quantize_rows(avx512_kernels, x, n, v.cols, v.kp);
    const auto workers = pool();
    const int64_t threads = workers->size(), tiles = ceil_div(v.rows, kLutTileRows);
    // Tasks split the activation rows first (each task builds the tables of its own rows), in
    // pieces of 4..32 rows (32 rows of tables for a block: 176 KB, in L2), then the weight tiles
    // until there are about two tasks per thread.
    const int64_t bpiece = std::min(n, std::clamp<int64_t>(ceil_div(n, 2 * threads), 4, 32));
    const int64_t bpieces = ceil_div(n, bpiece);
    const int64_t tpiece = ceil_div(tiles, std::min(tiles, ceil_div(2 * threads, bpieces)));
    const int64_t tpieces = ceil_div(tiles, tpiece);
    workers->run(bpieces * tpieces, [&](int64_t i) {
        const int64_t b0 = i / tpieces * bpiece, b1 = std::min(n, b0 + bpiece);
        const int64_t t0 = i % tpieces * tpiece, t1 = std::min(tiles, t0 + tpiece);
        thread_local std::vector<int16_t> tables;
        thread_local std::vector<int32_t> acc;
        tables.resize((b1 - b0) * (kLutGroups * 32 + (t1 - t0) * kLutTileRows));
        acc.resize((b1 - b0) * (t1 - t0) * kLutTileRows);
        lut_matmul_avx512(v, xq, b0, b1, t0, t1, tables.data(), acc.data(), y);
    });
#else
    (void)w, (void)x, (void)n, (void)y;
    throw std::runtime_error("the lookup-table kernel needs an x86-64 build");
#endif
}

}  // namespace pybitnet
