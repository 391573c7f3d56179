"""The numpy kernel tier: the fallback when no native tier runs, and the oracle the native tiers
are tested against. Each computes exactly what docs/SPEC.md §1 and 2 say, in float32.
(Not to be confused with model/reference.py, the float64 reference forward pass.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError
from pybitnet.kernels.layout import KEY_BLOCK


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
    """Per-row int8 activations (docs/SPEC.md §1): x_q (n, in) as int32, and s_x (n, 1) float32."""
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


def prepare_ternary_packed(
    parts: list[tuple[str, np.ndarray, int]], cols: int, scales: np.ndarray
) -> TernaryCodes:
    """Like prepare_ternary, from file bytes: parts [(type name, bytes, rows)] stacked row-wise."""
    codes = [formats.unpack_ternary(name, data, (rows, cols))[0] for name, data, rows in parts]
    return prepare_ternary(np.concatenate(codes), scales)


def prepare_dense(wtype: str, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float or Q-format matrix, dequantized to float32 once."""
    return formats.dequantize(wtype, data, shape)


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y (n, out) = x (n, in) . w^T in float32."""
    return x @ w.T


@dataclass(frozen=True)
class Int8Rows:
    """A matrix quantized per row: w ~ q * scales[:, None]; q int8 (out, in), scales float32."""

    q: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape


def prepare_int8(wtype: str, data: np.ndarray, shape: tuple[int, int]) -> Int8Rows:
    """Per-row int8: s = max|w_row| / 127, q = rint(w / s) (0 where the row is all zeros)."""
    w = formats.dequantize(wtype, data, shape)
    scales = np.abs(w).max(axis=1) / np.float32(127)
    safe = np.where(scales > 0, scales, np.float32(1))
    return Int8Rows(np.rint(w / safe[:, None]).astype(np.int8), scales.astype(np.float32))


def int8_linear(x: np.ndarray, w: Int8Rows) -> np.ndarray:
    """(x_q . q_row) * s_row / s_x with x quantized per row as BitLinear does (exact integers)."""
    x_q, s_x = quantize_activations(x)
    dots = x_q.astype(np.int64) @ w.q.T.astype(np.int64)
    return dots.astype(np.float32) * w.scales / s_x


def embedding(w: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w[ids])


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(ms + np.float32(eps)) * weight).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rope_dim: int, neox: bool) -> np.ndarray:
    """x (n, heads, head_dim) rotated in place by cos, sin (n, rope_dim / 2); returns x.
    NEOX pairs element j with j + rope_dim / 2; NORM pairs 2j with 2j + 1."""
    half = rope_dim // 2
    first = np.arange(half) if neox else np.arange(0, rope_dim, 2)
    second = first + (half if neox else 1)
    a, b = x[..., first], x[..., second]
    c, s = cos[:, None, :], sin[:, None, :]
    x[..., first] = a * c - b * s
    x[..., second] = a * s + b * c
    return x


def gated(act: str, g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """act(g) * u with act silu (g * sigmoid(g)) or relu2 (max(g, 0)^2)."""
    if act == "silu":
        with np.errstate(over="ignore"):
            a = g / (np.float32(1) + np.exp(-g))
    else:
        a = np.square(np.maximum(g, np.float32(0)))
    return (a * u).astype(np.float32)


def store_kv(k: np.ndarray, v: np.ndarray, kc: np.ndarray, vc: np.ndarray, start: int) -> None:
    """Writes keys and values (n, n_kv, d) of positions start.. into the caches: kc (n_kv,
    ctx / KEY_BLOCK, d, KEY_BLOCK), each block of positions transposed; vc (n_kv, ctx, d)."""
    pos = np.arange(start, start + k.shape[0])
    kc[:, pos // KEY_BLOCK, :, pos % KEY_BLOCK] = k  # advanced indices first: (n, n_kv, d)
    vc[:, pos] = v.transpose(1, 0, 2)


# One sequence of a batched attention call: its key and value caches, the position of its first
# new row, and how many rows (consecutive in q, k, v) it has.
AttentionSeq = tuple[np.ndarray, np.ndarray, int, int]


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, seqs: Sequence[AttentionSeq]
) -> np.ndarray:
    """For each sequence (kc, vc, start, rows), in order, its next `rows` rows of q (n, H, d),
    k and v (n, n_kv, d): stores k and v at positions start.. in its caches (store_kv), and
    returns the causal softmax attention of q over positions 0 .. start + rows - 1; q head i
    reads kv head i // (H / n_kv). Returns (n, H * d)."""
    bounds = np.cumsum([0, *(rows for *_, rows in seqs)])
    if bounds[-1] != q.shape[0]:
        raise ValueError(f"attention: the sequences hold {bounds[-1]} rows, q has {q.shape[0]}")
    parts = [
        _attention_one(q[a:b], k[a:b], v[a:b], kc, vc, start)
        for (kc, vc, start, _), a, b in zip(seqs, bounds[:-1], bounds[1:], strict=True)
    ]
    return np.concatenate(parts)


def _attention_one(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, kc: np.ndarray, vc: np.ndarray, start: int
) -> np.ndarray:
    store_kv(k, v, kc, vc, start)
    n, n_heads, d = q.shape
    n_kv = kc.shape[0]
    total = start + n
    keys = kc.transpose(0, 1, 3, 2).reshape(n_kv, -1, d)[:, :total]
    qg = q.reshape(n, n_kv, n_heads // n_kv, d)
    scores = np.einsum("nkgd,ktd->kgnt", qg, keys) / np.float32(np.sqrt(d))
    future = np.arange(total)[None, :] > (start + np.arange(n))[:, None]
    scores[..., future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("kgnt,ktd->nkgd", probs, vc[:, :total])
    return np.ascontiguousarray(out.reshape(n, n_heads * d), dtype=np.float32)
