"""Quantizing float weights at load (a requantized output head): formats.quantize, or the native
quantizers where a native tier runs (csrc/kquants.cpp, reached through the registry's module)."""

from __future__ import annotations

import numpy as np

from pybitnet import formats
from pybitnet.kernels.registry import _native, selected_tier

# The formats a native quantizer writes (csrc/kquants.cpp): the same bytes as formats.quantize.
NATIVE_QUANTIZERS = {"Q6_K": 14, "Q4_K": 12}


def quantize(wtype: str, values: np.ndarray, tier: str | None = None) -> np.ndarray:
    """values (rows, cols) float32 as wtype's bytes (1-D uint8): formats.quantize, or on a native
    tier its native quantizer where there is one (threaded over rows; a 2B model's output layer
    in seconds rather than minutes)."""
    tier = tier or selected_tier()
    if tier == "numpy" or wtype not in NATIVE_QUANTIZERS:
        return formats.quantize(wtype, values)
    values = np.ascontiguousarray(values, np.float32).reshape(-1, values.shape[-1])
    return np.frombuffer(_native.quantize_kquant(NATIVE_QUANTIZERS[wtype], values), np.uint8)
