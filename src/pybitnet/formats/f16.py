"""F16 (ggml type 1): one little-endian IEEE float16 per element, 2 bytes, no blocks.

Quantize rounds float32 to the nearest float16 (ties to even; overflow -> inf), as numpy and
ggml's GGML_FP32_TO_FP16 do.
"""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import F16_INF


def quantize(values: np.ndarray) -> np.ndarray:
    return values.astype("<f2").view(np.uint8).reshape(-1)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return data.view("<f2").astype(np.float32).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "value", data.view("<u2"), F16_INF
