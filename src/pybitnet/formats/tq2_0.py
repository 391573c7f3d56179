"""TQ2_0 (ggml type 35): ternary weights, blocks of 256 elements in 66 bytes.

    bytes 0..63   qs, 2-bit codes c = w + 1 (0 -> -1, 1 -> 0, 2 -> +1):
                  element 128*j + 32*l + k (j = 0..1, l = 0..3, k = 0..31) is bits 2l..2l+1
                  of byte 32*j + k
    bytes 64..65  d, float16; element = (c - 1) * d

Quantize (ggml's quantize_row_tq2_0_ref): d = max|x| over the block, c = roundf(x / d) + 1.
Dequantize follows ggml and the gguf package and turns the unused code 3 into +2 * d;
``unpack`` (the ternary path) rejects code 3 instead.
"""

from __future__ import annotations

import math

import numpy as np

from pybitnet.errors import FormatError
from pybitnet.formats._blocks import (
    F16_INF,
    as_blocks,
    f16_to_f32,
    f32_to_f16_bytes,
    first_code3_byte,
    ternary_codes,
)

BLOCK = 256
TYPE_SIZE = 66
_SHIFTS = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)


def _codes(blocks: np.ndarray) -> np.ndarray:
    """(n, 66) blocks -> (n, 256) uint8 codes 0..3 in element order."""
    qs = blocks[:, :64].reshape(-1, 2, 1, 32)
    return ((qs >> _SHIFTS) & np.uint8(3)).reshape(-1, BLOCK)


def quantize(values: np.ndarray) -> np.ndarray:
    codes, d = ternary_codes(values.reshape(-1, BLOCK))
    shifted = codes.reshape(-1, 2, 4, 32) << _SHIFTS
    qs = np.bitwise_or.reduce(shifted, axis=2).reshape(-1, 64)
    return np.concatenate([qs, f32_to_f16_bytes(d)], axis=-1).reshape(-1)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    w = _codes(blocks).view(np.int8) - np.int8(1)
    return (f16_to_f32(blocks[:, 64:]) * w.astype(np.float32)).reshape(shape)


def unpack(data: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 (rows, ne0) in {-1, 0, 1}, scales float32 (rows, ne0 / 256))."""
    blocks = as_blocks(data, TYPE_SIZE)
    bad = first_code3_byte(blocks[:, :64])
    if bad is not None:
        offset = bad // 64 * TYPE_SIZE + bad % 64
        raise FormatError(f"TQ2_0 tensor {shape}: invalid 2-bit code 3 in byte {offset}")
    rows, ne0 = math.prod(shape[:-1]), shape[-1]
    codes = (_codes(blocks).view(np.int8) - np.int8(1)).reshape(rows, ne0)
    return codes, scales(data, shape)


def scales(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each block's d as float32 (rows, ne0 / 256), without decoding the codes."""
    d = f16_to_f32(as_blocks(data, TYPE_SIZE)[:, 64:])
    return d.reshape(math.prod(shape[:-1]), shape[-1] // BLOCK)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "block scale d", as_blocks(data, TYPE_SIZE)[:, 64:66].view("<u2"), F16_INF
