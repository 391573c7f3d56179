#pragma once
#include <string>

namespace pybitnet {

// What the running CPU and OS let us use (CPUID plus XGETBV for the OS-enabled state).
struct CpuFeatures {
    bool avx2 = false;
    bool fma = false;
    bool f16c = false;
    bool avx512f = false;
    bool avx512bw = false;
    bool avx512vl = false;
    bool avx512vnni = false;
};

const CpuFeatures &cpu_features();
std::string cpu_model_name();

}  // namespace pybitnet
