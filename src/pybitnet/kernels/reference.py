"""The numpy kernels: the fallback when no native tier runs, and the oracle the native tiers are
tested against. Each computes exactly what SPEC section 1 and 2 say, in float32."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError


def i2s_dequant(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """float32 weights of `shape` from I2_S tensor data (codes, then the scale in the tail)."""
    return formats.dequantize(formats.weight_type("I2_S"), data, shape)


@dataclass(frozen=True)
class TernaryCodes:
    """Ternary weights as the numpy BitLinear takes them: codes int8 (out, in) in {-1, 0, 1},
    scales float32 (out, groups), each group a run of in / groups columns."""

    codes: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape


def prepare_ternary(codes: np.ndarray, scales: np.ndarray) -> TernaryCodes:
    return TernaryCodes(np.asarray(codes, np.int8), np.asarray(scales, np.float32))


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 activations (SPEC section 1): x_q (n, in) as int32, and s_x (n, 1) float32."""
    s_x = np.float32(127) / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(1e-5))
    x_q = np.clip(np.rint(x * s_x), -128, 127).astype(np.int32)
    return x_q, s_x


def bitlinear(x: np.ndarray, w: TernaryCodes) -> np.ndarray:
    """y (n, out) float32 = BitLinear(x (n, in) float32): exact integer dot products per scale
    group, then (dot * w_scale) / s_x in float32 (with one group per row, the native kernels
    agree bit for bit; with several, to float32 rounding of the sum over groups)."""
    if not isinstance(w, TernaryCodes):
        raise FormatError(f"the numpy BitLinear needs weights from its own prepare(), got {w!r}")
    x_q, s_x = quantize_activations(x)
    n_out, groups = w.scales.shape
    width = w.codes.shape[1] // groups
    # The matmuls are exact: every partial sum is an integer of at most 128 * width in
    # magnitude, which float32 holds exactly below 2^24.
    exact = np.float32 if 128 * width < 2**24 else np.float64
    codes = w.codes.reshape(n_out, groups, width).transpose(1, 0, 2).astype(exact)
    dots = codes @ x_q.reshape(len(x), groups, width).transpose(1, 2, 0).astype(exact)
    if groups == 1:  # dots: (groups, out, n)
        return dots[0].T.astype(np.float32) * w.scales[:, 0] / s_x
    y = np.einsum("gon,og->no", dots.astype(np.float64), w.scales.astype(np.float64))
    return (y / s_x).astype(np.float32)
