"""I2_S (Microsoft bitnet.cpp, type 36): ternary weights with one float32 scale per tensor.

A tensor of n elements (n % 128 == 0, rows may be any length) takes n/4 + 32 bytes:
    bytes 0 .. n/4-1   2-bit codes c = w + 1 (0 -> -1, 1 -> 0, 2 -> +1; 3 is invalid).
                       The row-major elements go in blocks of 128; byte 32*b + k holds elements
                       128*b + k, +32, +64, +96 in bits 7-6, 5-4, 3-2, 1-0.
    bytes n/4 .. +3    the scale, float32; element = (c - 1) * scale
    bytes n/4+4 .. +31 padding (written as zeros, ignored when read)

Quantize as bitnet.cpp's quantize_i2_s, which expects ternary values times one scale:
scale = max|x| over the tensor (NaN ignored, like C's fmax), c = 1 where |x| < 1e-6 (compared
in double), else 2 for x > 0 and 0 otherwise (NaN included).
"""

from __future__ import annotations

import math

import numpy as np

from pybitnet.errors import FormatError
from pybitnet.formats._blocks import F32_INF, first_code3_byte

BLOCK = 128
TAIL_BYTES = 32
_SHIFTS = np.array([6, 4, 2, 0], np.uint8).reshape(1, 4, 1)


def tensor_nbytes(ne0: int, n_elements: int) -> int:
    """n / 4 bytes of codes, then the tail. The blocks run over the flattened tensor, so rows may
    be any length, but the tensor must be whole blocks."""
    if n_elements % BLOCK:
        raise FormatError(
            f"I2_S needs a multiple of {BLOCK} elements, got {n_elements}; "
            "store this tensor in another type"
        )
    return n_elements // 4 + TAIL_BYTES


def quantize(values: np.ndarray) -> np.ndarray:
    x = values.reshape(-1)
    scale = np.fmax.reduce(np.abs(x), initial=np.float32(0))
    codes = np.where(x > 0, np.int8(1), np.int8(-1))
    codes[np.abs(x) < np.float64(1e-6)] = 0
    return pack(codes, scale)


def pack(codes: np.ndarray, scale: float) -> np.ndarray:
    """The I2_S bytes of ternary ``codes`` (int8 in {-1, 0, 1}, taken flat, row-major; a multiple
    of 128 of them) times one ``scale``: a 1-D uint8 array of len(codes) / 4 + 32 bytes."""
    if codes.dtype != np.int8:
        raise FormatError(f"I2_S packs int8 codes, got {codes.dtype}")
    c = codes.reshape(-1)
    if c.size % BLOCK:
        raise FormatError(f"I2_S packs whole blocks of {BLOCK} codes, got {c.size}")
    u = (c + np.int8(1)).view(np.uint8)  # code = w + 1; -2 (and anything below) wraps high
    if u.size and u.max() > 2:
        bad = int(np.argmax(u > 2))
        raise FormatError(f"I2_S packs codes -1, 0 and 1, got {c[bad]} at index {bad}")
    # Four codes of 2 bits each share a byte, element j of a block at shift 6 - 2*(j div 32).
    # Shifting 8 codes at once as one uint64 is exact: a code (<= 2) shifted by <= 6 stays
    # inside its own byte, whatever the byte order.
    groups = u.view(np.uint64).reshape(-1, 4, 4)  # (block, j div 32, 32 bytes as 4 uint64)
    packed = groups[:, 0] << np.uint64(6)
    packed |= groups[:, 1] << np.uint64(4)
    packed |= groups[:, 2] << np.uint64(2)
    packed |= groups[:, 3]
    tail = np.zeros(TAIL_BYTES, np.uint8)
    tail[:4] = np.array([scale], "<f4").view(np.uint8)
    return np.concatenate([packed.view(np.uint8).reshape(-1), tail])


def _codes_and_scale(data: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.float32]:
    """(codes int8 in {-1, 0, 1} in element order, the float32 scale)."""
    n_packed = math.prod(shape) // 4
    packed = data[:n_packed]
    bad = first_code3_byte(packed)
    if bad is not None:
        raise FormatError(f"I2_S tensor {shape}: invalid 2-bit code 3 in byte {bad}")
    codes = ((packed.reshape(-1, 1, 32) >> _SHIFTS) & np.uint8(3)).reshape(-1)
    scale = data[n_packed : n_packed + 4].view("<f4")[0]
    return codes.view(np.int8) - np.int8(1), np.float32(scale)


def dequantize(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    codes, scale = _codes_and_scale(data, shape)
    return (codes.astype(np.float32) * scale).reshape(shape)


def unpack(data: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 (rows, ne0) in {-1, 0, 1}, scales float32 (rows, 1): the tensor's scale)."""
    codes, scale = _codes_and_scale(data, shape)
    rows = math.prod(shape[:-1])
    return codes.reshape(rows, shape[-1]), np.full((rows, 1), scale, np.float32)


def scales(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor's scale on every row, float32 (rows, 1), without decoding the codes."""
    n_packed = math.prod(shape) // 4
    scale = data[n_packed : n_packed + 4].view("<f4")[0]
    return np.full((math.prod(shape[:-1]), 1), scale, np.float32)


def floats(data: np.ndarray) -> tuple[str, np.ndarray, int]:
    return "scale", data[-TAIL_BYTES:][:4].view("<u4"), F32_INF
