"""Compute kernels: the registry (ids, tiers, call counters), the native tiers and the numpy tier
(numpy_tier.py); layout.py holds the layout facts every tier shares. See registry.py for the ids
and how a tier is chosen.

    bl = kernels.get("bitlinear")
    w = bl.prepare(codes, scales)        # once, at load
    with kernels.profile() as prof:
        y = bl(x, w)
    prof.stats()                         # [{"id": "bitlinear_avx512", "calls": 1, "seconds": ...}]
"""

from pybitnet.kernels.layout import KEY_BLOCK
from pybitnet.kernels.quantizers import quantize
from pybitnet.kernels.registry import (
    ENV,
    OPS,
    TIERS,
    Kernel,
    Profile,
    describe,
    get,
    known_ids,
    profile,
    selected_tier,
    set_threads,
    supported_tiers,
    threads,
)

__all__ = [
    "ENV",
    "KEY_BLOCK",
    "OPS",
    "TIERS",
    "Kernel",
    "Profile",
    "describe",
    "get",
    "known_ids",
    "profile",
    "quantize",
    "selected_tier",
    "set_threads",
    "supported_tiers",
    "threads",
]
