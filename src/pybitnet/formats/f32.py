"""F32 (ggml type 0): one little-endian IEEE float32 per element, 4 bytes, no blocks."""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import F32_INF


def quantize(values: np.ndarray) -> np.ndarray:
    return np.array(values, dtype="<f4").view(np.uint8).reshape(-1)  # a copy, never a view


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A view of ``data`` (no copy), so a memory-mapped F32 tensor stays in the page cache."""
    return data.view("<f4").reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "value", data.view("<u4"), F32_INF
