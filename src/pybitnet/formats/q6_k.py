"""Q6_K (ggml type 14): super-blocks of 256 elements in 210 bytes, 16 sub-blocks of 16.

    bytes 0..127    ql: the low 4 bits of the 6-bit codes q
    bytes 128..191  qh: their high 2 bits
    bytes 192..207  scales[0..15], int8, one a 16-element sub-block
    bytes 208..209  d, float16
    element = d * scales[e / 16] * (q[e] - 32)

Each 128-element half h (elements 128h + 32k + l, k in 0..3, l in 0..31) takes 64 bytes of ql
and 32 of qh: ql[64h + l] holds k = 0 (low nibble) and 2 (high), ql[64h + 32 + l] k = 1 and 3,
and qh[32h + l] the high bits of k = 0..3 in its bit pairs 0..3.

Quantize: llama.cpp's quantize_row_q6_K_ref (see _kquants): each sub-block's scale from
make_qx_quants (nmax 32, weights x**2, 19 trial scales), d = -max_scale / 128 over the scale of
largest magnitude, the scales rounded to int8 and the codes requantized against them.
"""

from __future__ import annotations

import numpy as np

from pybitnet.formats._blocks import F16_INF, as_blocks, f16_to_f32, f32_to_f16_bytes
from pybitnet.formats._kquants import (
    F32,
    GROUP_MAX_EPS,
    QK_K,
    nearest_int,
    quantize_superblocks,
    running_sum,
)

BLOCK = QK_K
TYPE_SIZE = 210


def _make_qx_quants(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants(16, 32, x, L, rmse_type 1, NULL) on sub-blocks x (S, 16):
    (codes (S, 16) in 0..63, scale (S,)) with x ~ scale * (L - 32)."""
    amax, peak = np.zeros(len(x), F32), np.zeros(len(x), F32)
    for i in range(x.shape[1]):  # the first element of largest magnitude, with its sign
        larger = np.abs(x[:, i]) > amax
        amax, peak = np.where(larger, np.abs(x[:, i]), amax), np.where(larger, x[:, i], peak)
    w = x * x

    def trial(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        levels = np.clip(nearest_int(iscale[:, None] * x), -32, 31)
        lf = levels.astype(F32)
        return levels, running_sum(w * x * lf), running_sum(w * lf * lf)

    levels, sumlx, suml2 = trial(F32(-32) / peak)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in (*range(-9, 0), *range(1, 10)):
        candidate, sumlx, suml2 = trial(-(F32(32) + F32(0.1) * F32(step)) / peak)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        levels = np.where(better[:, None], candidate, levels)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero[:, None], 0, levels + 32), np.where(zero, F32(0), scale)


def _quantize_blocks(blocks: np.ndarray) -> np.ndarray:
    n_blocks = len(blocks)
    x = blocks.reshape(-1, 16)
    codes, scales = _make_qx_quants(x)
    scales = scales.reshape(n_blocks, 16)
    amax, top = np.zeros(n_blocks, F32), np.zeros(n_blocks, F32)
    for i in range(16):  # the scale of largest magnitude, with its sign
        larger = np.abs(scales[:, i]) > amax
        amax, top = (
            np.where(larger, np.abs(scales[:, i]), amax),
            np.where(larger, scales[:, i], top),
        )
    iscale = F32(-128) / top
    d = f32_to_f16_bytes((F32(1) / iscale)[:, None])
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    d_sub = (f16_to_f32(d) * sc.astype(F32)).reshape(-1, 1)
    again = np.clip(nearest_int(x / d_sub), -32, 31) + 32
    codes = np.where(d_sub != 0, again, codes).astype(np.uint8).reshape(n_blocks, 2, 4, 32)
    low, high = codes & np.uint8(15), codes >> np.uint8(4)
    ql = low[:, :, :2] | (low[:, :, 2:] << np.uint8(4))
    qh = high[:, :, 0] | high[:, :, 1] << 2 | high[:, :, 2] << 4 | high[:, :, 3] << 6
    out = np.concatenate(
        [ql.reshape(n_blocks, 128), qh.reshape(n_blocks, 64), sc.view(np.uint8), d], axis=1
    )
    out[amax < GROUP_MAX_EPS] = 0  # an all-zero super-block: every byte 0
    return out


def quantize(values: np.ndarray) -> np.ndarray:
    return quantize_superblocks(values, TYPE_SIZE, _quantize_blocks)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    blocks = as_blocks(data, TYPE_SIZE)
    n_blocks = len(blocks)
    ql = blocks[:, :128].reshape(n_blocks, 2, 2, 32)
    qh = blocks[:, 128:192].reshape(n_blocks, 2, 1, 32)
    low = np.concatenate([ql & np.uint8(15), ql >> np.uint8(4)], axis=2)  # k = 0, 1, 2, 3
    high = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & np.uint8(3)
    q = (low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)
    d = f16_to_f32(blocks[:, 208:210]) * blocks[:, 192:208].view(np.int8).astype(F32)
    return (d.reshape(n_blocks, 16, 1) * q.reshape(n_blocks, 16, 16).astype(F32)).reshape(shape)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "super-block scale d", as_blocks(data, TYPE_SIZE)[:, 208:210].view("<u2"), F16_INF
