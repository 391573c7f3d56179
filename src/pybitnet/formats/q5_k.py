"""Q5_K (ggml type 13): super-blocks of 256 elements in 176 bytes, 8 sub-blocks of 32.

    bytes 0..1     d, float16
    bytes 2..3     dmin, float16
    bytes 4..15    8 6-bit scales and 8 6-bit mins (_kquants.pack_scales_mins)
    bytes 16..47   qh: the high bits of the 5-bit codes q; bit k of qh[l] is element 32k + l's
    bytes 48..175  their low 4 bits, as Q4_K's codes
    element e = d * scale[e / 32] * q[e] - dmin * min[e / 32]

Quantize: llama.cpp's quantize_row_q5_K_ref (see _kquants.quantize_scale_min), as Q4_K's
with nmax 31 and 16 trial scales.
"""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import F16_INF, as_blocks
from pybitnet.formats._kquants import (
    QK_K,
    dequantize_scale_min,
    quantize_scale_min,
    quantize_superblocks,
)

BLOCK = QK_K
TYPE_SIZE = 176
_BITS = np.arange(8, dtype=np.uint8)[:, None]  # sub-block k's high bits: bit k of qh


def _quantize_blocks(blocks: np.ndarray) -> np.ndarray:
    header, codes = quantize_scale_min(blocks, 31, -0.5, 0.1, 15)
    subs = codes.reshape(len(blocks), 8, 32)
    qh = np.bitwise_or.reduce((subs >> np.uint8(4)) << _BITS, axis=1)
    pairs = (subs & np.uint8(15)).reshape(len(blocks), 4, 2, 32)
    qs = pairs[:, :, 0] | (pairs[:, :, 1] << np.uint8(4))
    return np.concatenate([header, qh, qs.reshape(len(blocks), 128)], axis=1)


def quantize(values: np.ndarray) -> np.ndarray:
    return quantize_superblocks(values, TYPE_SIZE, _quantize_blocks)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    qh = blocks[:, 16:48].reshape(len(blocks), 1, 32)
    qs = blocks[:, 48:].reshape(len(blocks), 4, 1, 32)
    low = ((qs >> np.array([0, 4], np.uint8)[:, None]) & np.uint8(15)).reshape(len(blocks), 8, 32)
    q = low | (((qh >> _BITS) & np.uint8(1)) << np.uint8(4))
    return dequantize_scale_min(blocks[:, :16], q.astype(np.float32)).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "super-block scale d or dmin", as_blocks(data, TYPE_SIZE)[:, 0:4].view("<u2"), F16_INF
