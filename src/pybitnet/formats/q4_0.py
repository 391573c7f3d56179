"""Q4_0 (ggml type 2): blocks of 32 elements in 18 bytes.

    bytes 0..1    d, float16
    bytes 2..17   16 bytes of 4-bit codes q: byte k = q[k] | q[k + 16] << 4
    element j = (q[j] - 8) * d

Quantize (ggml's quantize_row_q4_0_ref): m = the element of largest magnitude (the first one on
ties, keeping its sign), d = m / -8, q = min(15, trunc(x * (1/d) + 8.5)).
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
TYPE_SIZE = 18


def quantize(values: np.ndarray) -> np.ndarray:
    blocks = values.reshape(-1, BLOCK)
    signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[:, None], axis=-1)
    d = signed_max / np.float32(-8)
    q = np.trunc(blocks * inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([f32_to_f16_bytes(d), pack_nibbles(q)], axis=-1).reshape(-1)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    d = f16_to_f32(blocks[:, :2])
    q = unpack_nibbles(blocks[:, 2:]).view(np.int8) - np.int8(8)
    return (d * q.astype(np.float32)).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "block scale d", as_blocks(data, TYPE_SIZE)[:, 0:2].view("<u2"), F16_INF
