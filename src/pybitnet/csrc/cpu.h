#pragma once
#include <string>
#include <vector>

namespace pybitnet {

// What the running CPU and OS let us use (x86-64: CPUID plus XGETBV for the OS-enabled state;
// aarch64: the kernel's getauxval(AT_HWCAP), which says what the OS enables).
struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512vnni = false;
    bool amx_int8 = false;  // AMX tiles with int8 dot products, and the OS lets us use them
    bool asimd = false;    // aarch64 Advanced SIMD (NEON)
    bool asimddp = false;  // aarch64 dot product (SDOT/UDOT, ARMv8.2's optional dotprod)
};

const CpuFeatures &cpu_features();
std::string cpu_model_name();

struct TierKernels;
// The kernel tiers this CPU and OS can run, best first (the portable tier last): the one place
// that maps features to tiers, for the Python module and the aarch64 test driver alike.
std::vector<const TierKernels *> supported_tiers();

}  // namespace pybitnet
