// The F16 output head's one-row GEMV (the 2B-4T shape: 128256 x 2560, 656 MB) in variants, each
// timed against a read-bandwidth probe over the same bytes, alternating in one process (the
// machine is shared), medians; on three copies of the matrix: anonymous memory in 4 KB pages,
// in 2 MB huge pages (MADV_HUGEPAGE), and the F16 model file memory-mapped as the engine reads
// it (its first 656 MB; the values do not matter for the timing). Evidence for the prefetch in
// src/pybitnet/csrc/float_tiles.h half_rows (variant "B pf8k T1" = the kernel as it is):
//   g++ -O3 -std=c++17 -mavx512f -mavx512bw -mavx512vl -mfma -mf16c -ffp-contract=off
//       -pthread benchmarks/f16_head_stream.cpp -o /tmp/f16_head_stream
//   /tmp/f16_head_stream THREADS FILE [REPS]    (FILE: at least 656 MB, e.g. the 2B model)
#include <immintrin.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <vector>
#include <thread>
#include <algorithm>
#include <chrono>

static const int64_t ROWS = 128256, COLS = 2560, RB = COLS * 2;

using Fn = void (*)(const uint8_t *, const float *, int64_t, int64_t, float *);

// A: the kernel before the prefetch (2 accumulators of 16 lanes, one row at a time)
static void fA(const uint8_t *w, const float *x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        const uint16_t *row = (const uint16_t *)(w + r * RB);
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (int64_t c = 0; c < COLS; c += 32) {
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + c))), _mm512_loadu_ps(x + c), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + c + 16))), _mm512_loadu_ps(x + c + 16), a1);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}

// B: A with a prefetch DIST bytes ahead in the stream, one a 64-byte line (HINT: into L1 or L2)
template <int DIST, int HINT>
static void fB(const uint8_t *w, const float *x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        const uint16_t *row = (const uint16_t *)(w + r * RB);
        const char *pf = (const char *)row + DIST;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (int64_t c = 0; c < COLS; c += 32) {
            _mm_prefetch(pf + 2 * c, (_mm_hint)HINT);
            a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + c))), _mm512_loadu_ps(x + c), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + c + 16))), _mm512_loadu_ps(x + c + 16), a1);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}

// C: 4 accumulators (64 columns a step), optionally the prefetch
template <int DIST>
static void fC(const uint8_t *w, const float *x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        const uint16_t *row = (const uint16_t *)(w + r * RB);
        const char *pf = (const char *)row + DIST;
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t c = 0; c < COLS; c += 64) {
            if (DIST) { _mm_prefetch(pf + 2 * c, _MM_HINT_T0); _mm_prefetch(pf + 2 * c + 64, _MM_HINT_T0); }
            for (int u = 0; u < 4; ++u)
                a[u] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + c + 16 * u))), _mm512_loadu_ps(x + c + 16 * u), a[u]);
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
    }
}

// D: tiles of 4 rows sharing the activation loads, 2 accumulators a row, the next tile (the 4
// rows after, contiguous) prefetched into L2 as one stream meanwhile (as dense_block does)
template <int PF>
static void fD(const uint8_t *w, const float *x, int64_t r0, int64_t r1, float *y) {
    for (int64_t r = r0; r < r1; r += 4) {
        const uint16_t *row[4];
        for (int i = 0; i < 4; ++i) row[i] = (const uint16_t *)(w + std::min(r + i, ROWS - 1) * RB);
        const char *next = (const char *)(w + (r + 4) * RB);
        __m512 a[4][2];
        for (int i = 0; i < 4; ++i) a[i][0] = a[i][1] = _mm512_setzero_ps();
        for (int64_t c = 0; c < COLS; c += 32) {
            if (PF) for (int i = 0; i < 4; ++i) _mm_prefetch(next + (c / 32 * 4 + i) * 64, _MM_HINT_T1);
            const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
            for (int i = 0; i < 4; ++i) {
                a[i][0] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row[i] + c))), x0, a[i][0]);
                a[i][1] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row[i] + c + 16))), x1, a[i][1]);
            }
        }
        for (int i = 0; i < 4 && r + i < r1; ++i) y[r + i] = _mm512_reduce_add_ps(_mm512_add_ps(a[i][0], a[i][1]));
    }
}

static uint64_t probe_part(const uint8_t *w, int64_t b0, int64_t b1) {
    __m512i m = _mm512_setzero_si512();
    for (int64_t b = b0; b < b1; b += 64) m = _mm512_max_epu64(m, _mm512_load_si512(w + b));
    return _mm512_reduce_max_epu64(m);
}

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    const char *mode = argv[2];
    int reps = argc > 3 ? atoi(argv[3]) : 11;
    int64_t bytes = ROWS * RB;
    const char *names[3] = {"anon4k", "anonhuge", "file"};
    uint8_t *bufs[3];
    for (int m = 0; m < 2; ++m) {
        bufs[m] = (uint8_t *)aligned_alloc(2 << 20, bytes);
        madvise(bufs[m], bytes, m ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
        for (int64_t i = 0; i < bytes / 2; ++i) ((uint16_t *)bufs[m])[i] = 0x3c00 + (i % 7);
    }
    { int fd = open(mode, O_RDONLY); bufs[2] = (uint8_t *)mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0); }
    uint8_t *w = bufs[0];
    std::vector<float> x(COLS), y(ROWS), yref(ROWS);
    for (int i = 0; i < COLS; ++i) x[i] = (i % 13) * 0.01f;
    struct V { const char *name; Fn f; };
    std::vector<V> vs = {{"A no prefetch", fA}, {"B pf8k T0", fB<8192, _MM_HINT_T0>}, {"B pf4k T1", fB<4096, _MM_HINT_T1>},
                         {"B pf8k T1", fB<8192, _MM_HINT_T1>}, {"B pf16k T1", fB<16384, _MM_HINT_T1>}, {"C 4acc", fC<0>}, {"C 4acc pf4k", fC<4096>},
                         {"D tile4", fD<0>}, {"D tile4 pf", fD<1>}};
    auto run = [&](Fn f, float *out) {
        std::vector<std::thread> ts;
        int64_t per = (ROWS / threads + 3) / 4 * 4;
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] { f(w, x.data(), t * per, std::min(ROWS, (t + 1) * per), out); });
        for (auto &t : ts) t.join();
    };
    auto probe = [&] {
        std::vector<std::thread> ts;
        int64_t per = bytes / threads / 64 * 64;
        for (int t = 0; t < threads; ++t) ts.emplace_back([&, t] { volatile uint64_t v = probe_part(w, t * per, (t + 1) * per); (void)v; });
        for (auto &t : ts) t.join();
    };
    w = bufs[2]; run(fA, yref.data()); w = bufs[0]; run(fA, yref.data());
    std::vector<std::vector<double>> all[3];
    for (auto &a : all) a.resize(vs.size() + 1);
    for (int rep = 0; rep < reps; ++rep) for (int m = 0; m < 3; ++m) { w = bufs[m]; auto &times = all[m];
        for (size_t v = 0; v <= vs.size(); ++v) {
            double t0 = now();
            if (v == vs.size()) probe(); else run(vs[v].f, y.data());
            times[v].push_back(now() - t0);
            if (v < vs.size() && rep == 0 && m == 0)
                for (int64_t r = 0; r < ROWS; ++r)
                    if (fabsf(y[r] - yref[r]) > 1e-3f * fabsf(yref[r]) + 1e-6f) { printf("MISMATCH %s row %ld\n", vs[v].name, r); break; }
        }
    }
    double lo[3]; getloadavg(lo, 3);
    printf("threads %d reps %d load %.2f\n", threads, reps, lo[0]);
    for (int m = 0; m < 3; ++m) { auto &times = all[m]; printf("-- %s\n", names[m]);
    for (size_t v = 0; v <= vs.size(); ++v) {
        auto &t = times[v];
        std::sort(t.begin(), t.end());
        double med = t[t.size() / 2];
        printf("%-14s %7.2f ms %6.1f GB/s\n", v == vs.size() ? "probe(max)" : vs[v].name, med * 1e3, bytes / med / 1e9);
    }}
}
