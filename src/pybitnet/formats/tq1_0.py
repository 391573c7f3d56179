"""TQ1_0 (ggml type 34): ternary weights, blocks of 256 elements in 54 bytes, base-3 packed.

Codes c = w + 1 in 0..2 are packed as base-3 digits, most significant first:
    bytes 0..31   byte k: elements k, k+32, k+64, k+96, k+128        (elements 0..159)
    bytes 32..47  byte k: elements 160+k, 176+k, 192+k, 208+k, 224+k (elements 160..239)
    bytes 48..51  byte k: elements 240+k, 244+k, 248+k, 252+k, then a 0 digit (240..255)
    bytes 52..53  d, float16; element = (c - 1) * d
A byte stores ceil(v * 256 / 243) for the base-3 number v, so that digit i (from the most
significant) is ((byte * 3**i mod 256) * 3) >> 8, as ggml's dequantize_row_tq1_0 computes it.

Quantize (ggml's quantize_row_tq1_0_ref): d = max|x| over the block, c = roundf(x / d) + 1.
Every byte decodes to digits 0..2, so unlike TQ2_0 there is no invalid code.
"""

from __future__ import annotations

import math

import numpy as np

from pybitnet.formats._blocks import F16_INF, as_blocks, f16_to_f32, f32_to_f16_bytes, ternary_codes

BLOCK = 256
TYPE_SIZE = 54
# (first byte, bytes, first element, digits per byte) of the three packed groups
_GROUPS = ((0, 32, 0, 5), (32, 16, 160, 5), (48, 4, 240, 4))
_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def _codes(blocks: np.ndarray) -> np.ndarray:
    """(n, 54) blocks -> (n, 256) uint8 codes 0..2 in element order."""
    n = len(blocks)
    parts = []
    for start, width, _, digits in _GROUPS:
        qs = blocks[:, start : start + width].reshape(n, 1, width)
        trits = qs * _POW3[:digits].reshape(1, digits, 1)  # uint8: wraps mod 256, as in ggml
        parts.append(trits.reshape(n, digits * width))
    return ((np.concatenate(parts, axis=-1).astype(np.uint16) * 3) >> 8).astype(np.uint8)


def quantize(values: np.ndarray) -> np.ndarray:
    codes, d = ternary_codes(values.reshape(-1, BLOCK))
    n = len(codes)
    packed = []
    for _, width, first, digits in _GROUPS:
        trits = codes[:, first : first + width * digits].reshape(n, digits, width)
        weights = _POW3[::-1][:digits].astype(np.uint16).reshape(1, digits, 1)  # 81, 27, ...
        v = (trits * weights).sum(axis=1, dtype=np.uint16)
        packed.append(((v * 256 + 242) // 243).astype(np.uint8))
    return np.concatenate([*packed, f32_to_f16_bytes(d)], axis=-1).reshape(-1)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    w = _codes(blocks).view(np.int8) - np.int8(1)
    return (f16_to_f32(blocks[:, 52:]) * w.astype(np.float32)).reshape(shape)


def unpack(data: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 (rows, ne0) in {-1, 0, 1}, scales float32 (rows, ne0 / 256))."""
    blocks = as_blocks(data, TYPE_SIZE)
    rows, ne0 = math.prod(shape[:-1]), shape[-1]
    codes = (_codes(blocks).view(np.int8) - np.int8(1)).reshape(rows, ne0)
    return codes, scales(data, shape)


def scales(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each block's d as float32 (rows, ne0 / 256), without decoding the codes."""
    d = f16_to_f32(as_blocks(data, TYPE_SIZE)[:, 52:])
    return d.reshape(math.prod(shape[:-1]), shape[-1] // BLOCK)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "block scale d", as_blocks(data, TYPE_SIZE)[:, 52:54].view("<u2"), F16_INF
