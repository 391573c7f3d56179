#include "cpu.h"

#include "tiers.h"

#if defined(__x86_64__) || defined(_M_X64)
#ifdef _MSC_VER
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#include <cstring>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define PYBITNET_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP  // kernel headers older than Linux 4.15
#define HWCAP_ASIMDDP (1 << 20)
#endif
#define PYBITNET_ARM_LINUX 1
#endif

namespace pybitnet {

#ifdef PYBITNET_X86
// CPUID leaf and subleaf into r = eax, ebx, ecx, edx; false where the CPU has no such leaf.
static bool cpuid(unsigned leaf, unsigned subleaf, unsigned r[4]) {
#ifdef _MSC_VER
    int max[4];
    __cpuid(max, static_cast<int>(leaf & 0x80000000u));
    if (static_cast<unsigned>(max[0]) < leaf) return false;
    __cpuidex(reinterpret_cast<int *>(r), static_cast<int>(leaf), static_cast<int>(subleaf));
    return true;
#else
    return __get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3]);
#endif
}

static unsigned long long xgetbv0() {
#ifdef _MSC_VER
    return _xgetbv(0);
#else
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
#endif
}

// Linux (5.16 and later) hands the 8 KB of tile data to a process only when it asks, once:
// without that, the first tile instruction faults (SIGILL). Other systems: not used.
static bool amx_permitted() {
#ifdef __linux__
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;  // arch_prctl, asm/prctl.h
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
    return false;
#endif
}

static CpuFeatures detect() {
    CpuFeatures f;
    unsigned r[4];
    if (!cpuid(1, 0, r)) return f;
    const bool osxsave = r[2] & (1u << 27);
    if (!osxsave) return f;
    const unsigned long long xcr0 = xgetbv0();
    const bool ymm_os = (xcr0 & 0x6) == 0x6;      // SSE and AVX state
    const bool zmm_os = (xcr0 & 0xe6) == 0xe6;    // plus opmask and ZMM state
    const bool fma = r[2] & (1u << 12);
    const bool f16c = r[2] & (1u << 29);
    if (!cpuid(7, 0, r)) return f;
    f.avx2 = ymm_os && (r[1] & (1u << 5));
    f.fma = ymm_os && fma;
    f.f16c = ymm_os && f16c;
    f.avx512f = zmm_os && (r[1] & (1u << 16));
    f.avx512bw = zmm_os && (r[1] & (1u << 30));
    f.avx512vl = zmm_os && (r[1] & (1u << 31));
    f.avx512vnni = zmm_os && (r[2] & (1u << 11));
    const bool amx_os = (xcr0 & 0x60000) == 0x60000;  // TILECFG and TILEDATA state
    f.amx_int8 = amx_os && (r[3] & (1u << 24)) && (r[3] & (1u << 25)) && amx_permitted();
    return f;
}

std::string cpu_model_name() {
    unsigned regs[12];
    for (unsigned i = 0; i < 3; ++i)
        if (!cpuid(0x80000002u + i, 0, &regs[4 * i])) return "unknown";
    char name[49];
    std::memcpy(name, regs, 48);
    name[48] = 0;
    std::string s(name);
    const auto first = s.find_first_not_of(' ');
    return first == std::string::npos ? "unknown" : s.substr(first);
}
#elif defined(PYBITNET_ARM_LINUX)
static CpuFeatures detect() {
    CpuFeatures f;
    const unsigned long hwcap = getauxval(AT_HWCAP);
    f.asimd = hwcap & HWCAP_ASIMD;
    f.asimddp = f.asimd && (hwcap & HWCAP_ASIMDDP);
    return f;
}
std::string cpu_model_name() { return "unknown"; }
#elif defined(__aarch64__)
// Another aarch64 OS (macOS): NEON is part of the architecture; dotprod is not asked for.
static CpuFeatures detect() {
    CpuFeatures f;
    f.asimd = true;
    return f;
}
std::string cpu_model_name() { return "unknown"; }
#else
static CpuFeatures detect() { return {}; }
std::string cpu_model_name() { return "unknown"; }
#endif

const CpuFeatures &cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

std::vector<const TierKernels *> supported_tiers() {
    std::vector<const TierKernels *> tiers;
    [[maybe_unused]] const CpuFeatures &f = cpu_features();
    [[maybe_unused]] const bool avx512 =
        f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.avx2 && f.fma && f.f16c;
#ifdef PYBITNET_AMX_TIER
    if (avx512 && f.amx_int8) tiers.push_back(&amx_kernels);
#endif
#ifdef PYBITNET_X86_TIERS
    if (avx512) tiers.push_back(&avx512_kernels);
    if (f.avx2 && f.fma && f.f16c) tiers.push_back(&avx2_kernels);
#endif
#ifdef PYBITNET_ARM_TIERS
    if (f.asimddp) tiers.push_back(&neondot_kernels);
    if (f.asimd) tiers.push_back(&neon_kernels);
#endif
    tiers.push_back(&scalar_kernels);
    return tiers;
}

}  // namespace pybitnet
