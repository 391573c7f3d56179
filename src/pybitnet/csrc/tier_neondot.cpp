// The NEON tier with the dotprod extension (-march=armv8.2-a+dotprod; run where getauxval's
// HWCAP_ASIMDDP says so: Cortex-A55/A76, Neoverse N1, Apple M1 and later): integer dot products
// as SDOT (vdotq_s32). The kernels are tier_neon.h's.
#define PYBITNET_NEON_TABLE neondot_kernels
#define PYBITNET_NEON_NAME "neondot"
#include "tier_neon.h"
