"""Helpers shared by the block formats: reshaping bytes into blocks, float16 scales, rounding."""

from __future__ import annotations

import numpy as np

# The bits of +inf of each float kind the formats store: a value is NaN or infinite when its
# bits without the sign are at least these (formats.check_finite reads the raw bits, so no
# float conversion and no temporaries the size of the tensor).
F32_INF, F16_INF, BF16_INF = 0x7F800000, 0x7C00, 0x7F80


def as_blocks(data: np.ndarray, type_size: int) -> np.ndarray:
    """The tensor's bytes as one row per block: (n_blocks, type_size)."""
    return data.reshape(-1, type_size)


def f16_to_f32(raw: np.ndarray) -> np.ndarray:
    """(n, 2) little-endian float16 bytes (may be a strided column of blocks) -> (n, 1) float32."""
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32)


def f32_to_f16_bytes(x: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 2) bytes of the nearest float16 (ggml's GGML_FP32_TO_FP16)."""
    return x.astype("<f2").view(np.uint8)


def inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, and 0 where d == 0 (ggml: ``id = d ? 1.0f/d : 0.0f``)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf (ties away from zero), which ggml's reference quantizers use; not numpy.rint."""
    a = np.abs(x)
    floored = np.floor(a)
    return np.sign(x) * (floored + np.floor(2 * (a - floored)))


def ternary_codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TQ1_0 / TQ2_0 quantization of float32 blocks (n, 256): (codes uint8 in 0..2, d (n, 1)).

    d = max|x| over the block and code = roundf(x / d) + 1, as ggml's quantize_row_tq*_0_ref.
    """
    d = np.abs(blocks).max(axis=-1, keepdims=True)
    codes = round_half_away(blocks * inverse(d)).astype(np.int8) + np.int8(1)
    return codes.view(np.uint8), d


def first_code3_byte(codes: np.ndarray) -> int | None:
    """Index of the first byte of 2-bit codes that holds the invalid code 3, or None."""
    bad = np.flatnonzero(codes & (codes >> 1) & 0x55)
    return int(bad[0]) if bad.size else None


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Q4_0 / Q4_1 codes (n, 32) in 0..15 -> (n, 16) bytes: byte k = q[k] | q[k + 16] << 4."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) uint8 codes in 0..15 (the inverse of pack_nibbles)."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)
