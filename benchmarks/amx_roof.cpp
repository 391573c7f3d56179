// The int8 multiply-add roof of the AMX tile unit, the bound of the amx tier's BitLinear over
// many rows (src/pybitnet/csrc/tier_amx.cpp): TDPBUSD in the kernel's 2 x 2 blocking (4
// accumulator tiles, 2 A and 2 B tiles) on data like BitLinear's, with no loads, with tile loads from L1 (16 KB) and from
// L2 (1 MB), on 1 thread and then on THREADS threads at once (each its own data), pinned to
// CPUs 0 .. THREADS - 1; REPS rounds, the median and the best of each. Prints G multiply-adds
// per second; one TDPBUSD is 16 x 16 x 64 of them. On a shared machine the tile unit's rate moves
// from round to round (whoever else runs on the physical core): the best round is the roof.
//   g++ -O2 -std=c++17 -mamx-tile -mamx-int8 -pthread benchmarks/amx_roof.cpp -o /tmp/amx_roof
//   /tmp/amx_roof [THREADS] [REPS]    (Linux 5.16+, a CPU with AMX-INT8)
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
    TileConfig() {
        for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
    }
};

constexpr double kMacs = 4.0 * 16 * 16 * 64;  // per step: 4 TDPBUSD

// G multiply-adds per second over `steps` steps; `span` bytes of A and of B cycled through (0:
// the tiles are loaded once).
double run(int64_t steps, int64_t span) {
    static const TileConfig config;
    _tile_loadconfig(&config);
    // BitLinear's operands (the rate depends on the data: zeros ran 2.5x as fast as these):
    // codes 0..2 and int8 activations, pseudo-random
    std::vector<int8_t> a(span + 2048), b(span + 2048);
    uint32_t seed = 12345;
    for (size_t i = 0; i < a.size(); ++i) {
        seed = seed * 1664525u + 1013904223u;
        a[i] = static_cast<int8_t>((seed >> 16) % 3);
        b[i] = static_cast<int8_t>(seed >> 24);
    }
    _tile_loadd(4, a.data(), 64);
    _tile_loadd(5, a.data() + 1024, 64);
    _tile_loadd(6, b.data(), 64);
    _tile_loadd(7, b.data() + 1024, 64);
    const auto start = std::chrono::steady_clock::now();
    int64_t offset = 0;
    for (int64_t i = 0; i < steps; ++i) {
        if (span > 0) {
            _tile_loadd(4, a.data() + offset, 64);
            _tile_loadd(5, a.data() + offset + 1024, 64);
            _tile_loadd(6, b.data() + offset, 64);
            _tile_loadd(7, b.data() + offset + 1024, 64);
            offset = offset + 2048 < span ? offset + 2048 : 0;
        }
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
    }
    alignas(64) int32_t c[256];
    _tile_stored(0, c, 64);  // the result is used: the loop cannot be dropped
    _tile_release();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return steps * kMacs / s / 1e9 + (c[0] == 42 ? 1e-9 : 0.0);
}

void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

}  // namespace

int main(int argc, char **argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;  // asm/prctl.h
    if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) != 0) {
        std::printf("the OS does not grant this process the AMX tile data\n");
        return 1;
    }
    constexpr int64_t kSteps = 1 << 21;
    const struct {
        const char *name;
        int64_t span;
    } cases[] = {{"no loads", 0}, {"loads from L1 (16 KB)", 16 << 10}, {"loads from L2 (1 MB)", 1 << 20}};
    const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
    for (const auto &c : cases) {
        std::vector<double> one(reps), all(reps, 0.0);
        for (int k = 0; k < reps; ++k) {
            pin(0);
            run(kSteps / 8, c.span);  // warm-up
            one[k] = run(kSteps, c.span);
            std::vector<double> each(threads);
            std::vector<std::thread> pool;
            for (int t = 0; t < threads; ++t)
                pool.emplace_back([&, t] {
                    pin(t);
                    run(kSteps / 8, c.span);
                    each[t] = run(kSteps, c.span);
                });
            for (auto &t : pool) t.join();
            for (double g : each) all[k] += g;
        }
        std::sort(one.begin(), one.end());
        std::sort(all.begin(), all.end());
        std::printf("%-22s 1 thread: median %5.0f, best %5.0f G MAC/s; %d at once: median %5.0f, best %5.0f\n",
                    c.name, one[reps / 2], one.back(), threads, all[reps / 2], all.back());
    }
    return 0;
}
