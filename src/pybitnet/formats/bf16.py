"""BF16 (ggml type 30): the top 16 bits of a float32, little-endian, 2 bytes, no blocks.

Quantize as ggml's ggml_compute_fp32_to_bf16: NaN -> the same sign and top bits with the quiet
bit set; otherwise round to nearest, ties to even, on the 16 dropped bits (overflow -> inf).
"""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import BF16_INF


def quantize(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4").reshape(-1)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    bits = np.where(is_nan, (bits & 0xFFFF0000) | 0x00400000, bits)
    # No overflow in uint32: only NaNs, handled above, come within 0x8000 of 2**32.
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    return rounded.astype("<u2").view(np.uint8)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (data.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "value", data.view("<u2"), BF16_INF
