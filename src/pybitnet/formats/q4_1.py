"""Q4_1 (ggml type 3): blocks of 32 elements in 20 bytes.

    bytes 0..1    d, float16
    bytes 2..3    m, float16
    bytes 4..19   16 bytes of 4-bit codes q: byte k = q[k] | q[k + 16] << 4
    element j = q[j] * d + m

Quantize (ggml's quantize_row_q4_1_ref): m = min, d = (max - min) / 15 (both float32, stored
as float16), q = min(15, trunc((x - m) * (1/d) + 0.5)).
"""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import (
    F16_INF,
    as_blocks,
    f16_to_f32,
    f32_to_f16_bytes,
    inverse,
    pack_nibbles,
    unpack_nibbles,
)

BLOCK = 32
TYPE_SIZE = 20


def quantize(values: np.ndarray) -> np.ndarray:
    blocks = values.reshape(-1, BLOCK)
    lo = blocks.min(axis=-1, keepdims=True)
    d = (blocks.max(axis=-1, keepdims=True) - lo) / np.float32(15)
    q = np.trunc((blocks - lo) * inverse(d) + np.float32(0.5)).astype(np.uint8).clip(0, 15)
    parts = [f32_to_f16_bytes(d), f32_to_f16_bytes(lo), pack_nibbles(q)]
    return np.concatenate(parts, axis=-1).reshape(-1)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    d, m = f16_to_f32(blocks[:, 0:2]), f16_to_f32(blocks[:, 2:4])
    q = unpack_nibbles(blocks[:, 4:]).astype(np.float32)
    return (d * q + m).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "block scale d or minimum m", as_blocks(data, TYPE_SIZE)[:, 0:4].view("<u2"), F16_INF
