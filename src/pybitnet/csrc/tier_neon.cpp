// The NEON tier for ARMv8.0, which every aarch64 CPU runs (-march=armv8-a): integer dot
// products as vmull_s8 and vpadalq_s16. The kernels are tier_neon.h's.
#define PYBITNET_NEON_TABLE neon_kernels
#define PYBITNET_NEON_NAME "neon"
#include "tier_neon.h"
