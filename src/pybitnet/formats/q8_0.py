"""Q8_0 (ggml type 8): blocks of 32 elements in 34 bytes.

    bytes 0..1    d, float16
    bytes 2..33   q[0..31], int8; element j = q[j] * d

Quantize (ggml's quantize_row_q8_0_ref): d = max|x| / 127 (float32, stored as float16),
q = roundf(x * (1/d)) with ties away from zero; an all-zero block gets d = 0, q = 0.
"""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import (
    F16_INF,
    as_blocks,
    f16_to_f32,
    f32_to_f16_bytes,
    inverse,
    round_half_away,
)

BLOCK = 32
TYPE_SIZE = 34


def quantize(values: np.ndarray) -> np.ndarray:
    blocks = values.reshape(-1, BLOCK)
    d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    q = round_half_away(blocks * inverse(d)).astype(np.int8).view(np.uint8)
    return np.concatenate([f32_to_f16_bytes(d), q], axis=-1).reshape(-1)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    d = f16_to_f32(blocks[:, :2])
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (q * d).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "block scale d", as_blocks(data, TYPE_SIZE)[:, 0:2].view("<u2"), F16_INF
