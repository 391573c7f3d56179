"""Q4_K (ggml type 12): super-blocks of 256 elements in 144 bytes, 8 sub-blocks of 32.

    bytes 0..1     d, float16
    bytes 2..3     dmin, float16
    bytes 4..15    8 6-bit scales and 8 6-bit mins (_kquants.pack_scales_mins)
    bytes 16..143  4-bit codes q: byte 32i + l holds element 64i + l (low nibble) and
                   64i + 32 + l (high nibble)
    element e = d * scale[e / 32] * q[e] - dmin * min[e / 32]

Quantize: llama.cpp's quantize_row_q4_K_ref (see _kquants.quantize_scale_min): each
sub-block's scale and min from make_qkx2_quants (nmax 15, weights av|x| + |x|, 21 trial
scales), the scales and mins rounded to 6 bits against their maxima, the codes requantized.
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
TYPE_SIZE = 144


def _quantize_blocks(blocks: np.ndarray) -> np.ndarray:
    header, codes = quantize_scale_min(blocks, 15, -1.0, 0.1, 20)
    pairs = codes.reshape(len(blocks), 4, 2, 32)
    qs = pairs[:, :, 0] | (pairs[:, :, 1] << np.uint8(4))
    return np.concatenate([header, qs.reshape(len(blocks), 128)], axis=1)


def quantize(values: np.ndarray) -> np.ndarray:
    return quantize_superblocks(values, TYPE_SIZE, _quantize_blocks)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    qs = blocks[:, 16:].reshape(len(blocks), 4, 1, 32)
    q = (qs >> np.array([0, 4], np.uint8)[:, None]) & np.uint8(15)
    return dequantize_scale_min(blocks[:, :16], q.astype(np.float32)).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "super-block scale d or dmin", as_blocks(data, TYPE_SIZE)[:, 0:4].view("<u2"), F16_INF
