"""Helpers shared by the kernel tests."""

import numpy as np

from pybitnet import kernels

NATIVE_TIERS = [t for t in kernels.supported_tiers() if t != "numpy"]


def pack_i2s(codes: np.ndarray, scale: float) -> np.ndarray:
    """I2_S bytes for flat codes in {0, 1, 2, 3}, written from SPEC section 2: element j of each
    128-block sits in byte j mod 32 at bit shift 6 - 2 * (j div 32); then a 32-byte tail whose
    first 4 bytes are the float32 scale."""
    blocks = codes.astype(np.uint8).reshape(-1, 4, 32)
    shifts = np.array([6, 4, 2, 0], np.uint8)[None, :, None]
    packed = np.bitwise_or.reduce(blocks << shifts, axis=1).ravel()
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([packed, tail])
