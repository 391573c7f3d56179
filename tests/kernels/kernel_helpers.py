"""Helpers shared by the kernel tests."""

from pybitnet import kernels

NATIVE_TIERS = [t for t in kernels.supported_tiers() if t != "numpy"]
