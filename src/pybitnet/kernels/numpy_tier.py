"""The numpy kernel tier: the fallback when no native tier runs, and the oracle the native tiers
are tested against. Each computes exactly what docs/SPEC.md §1 and 2 say, in float32.
(Not to be confused with model/reference.py, the float64 reference forward pass.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError
from pybitnet.formats._blocks import f16_to_f32
from pybitnet.kernels.layout import KEY_BLOCK, KV_Q8_CHUNK


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
class Q6KRows:
    """A Q6_K matrix as the numpy Q6_K kernel takes it: codes - 32 as float32 (out, in), the int8
    sub-block scales (out, in / 16) and the super-block scales d (out, in / 256) float32."""

    codes: np.ndarray
    scales: np.ndarray
    d: np.ndarray
    data: np.ndarray  # the bytes (rows, bytes a row), for the embedding's rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape


def prepare_q6_k(wtype: str, data: np.ndarray, shape: tuple[int, int]) -> Q6KRows:
    rows, cols = shape
    blocks = np.asarray(data, np.uint8).reshape(rows * cols // 256, 210)
    unit = blocks.copy()  # every scale 1 and d = 1.0: dequantize gives the codes - 32
    unit[:, 192:208], unit[:, 208:210] = 1, np.array([0x00, 0x3C], np.uint8)
    return Q6KRows(
        formats.dequantize("Q6_K", unit.ravel(), shape),
        blocks[:, 192:208].view(np.int8).reshape(rows, cols // 16).astype(np.float64),
        f16_to_f32(blocks[:, 208:210]).reshape(rows, cols // 256),
        blocks.reshape(rows, -1),
    )


def quantize_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activations per 256-block (docs/SPEC.md §1): x_q (n, in) float32 holding integers in
    -127..127, and the block scales d_x (n, in / 256) float32."""
    blocks = x.reshape(len(x), -1, 256)
    m = np.maximum(np.abs(blocks).max(axis=2), np.float32(1e-5))
    q = np.clip(np.rint(blocks * (np.float32(127) / m)[..., None]), -127, 127)
    return q.reshape(x.shape).astype(np.float32), m / np.float32(127)


def q6_k_linear(x: np.ndarray, w: Q6KRows) -> np.ndarray:
    """Q6_K rows . activations quantized per 256-block: per super-block the exact integer
    isum = sum_j sc_j * (codes - 32) . x_q over its 16 sub-blocks, then y += (d * d_x) * isum in
    float32, super-block after super-block, as every native tier computes it."""
    x_q, d_x = quantize_blocks(np.asarray(x, np.float32))
    n, (rows, cols) = len(x), w.shape
    # exact in float32 (|sum| <= 16 * 32 * 127), then in float64 (|isum| < 2^29)
    dots = x_q.reshape(n, -1, 16).transpose(1, 0, 2) @ w.codes.reshape(rows, -1, 16).transpose(
        1, 2, 0
    )
    weighted = dots.astype(np.float64) * w.scales.T[:, None, :]
    isum = weighted.reshape(cols // 256, 16, n, rows).sum(axis=1).astype(np.float32)
    y = np.zeros((n, rows), np.float32)
    for s in range(cols // 256):
        y = y + (w.d[:, s] * d_x[:, s, None]) * isum[s]
    return y


@dataclass(frozen=True)
class Q4KRows:
    """A Q4_K matrix as the numpy Q4_K kernel takes it: the 4-bit codes as float32 (out, in), the
    sub-block scales and mins (out, in / 32) float64, the super-block d and dmin (out, in / 256)
    float32."""

    codes: np.ndarray
    scales: np.ndarray
    mins: np.ndarray
    d: np.ndarray
    dmin: np.ndarray
    data: np.ndarray  # the bytes (rows, bytes a row), for the embedding's rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape


def prepare_q4_k(wtype: str, data: np.ndarray, shape: tuple[int, int]) -> Q4KRows:
    rows, cols = shape
    blocks = np.asarray(data, np.uint8).reshape(rows * cols // 256, 144)
    one, zero = np.array([0x00, 0x3C], np.uint8), np.zeros(2, np.uint8)  # float16 1.0 and 0.0

    def decoded(d, dmin, scales=None, qs=None) -> np.ndarray:
        """dequantize of the blocks with these fields replaced: values (d sc) q - dmin m."""
        b = blocks.copy()
        b[:, 0:2], b[:, 2:4] = d, dmin
        if scales is not None:
            b[:, 4:16] = scales
        if qs is not None:
            b[:, 16:] = qs
        return formats.dequantize("Q4_K", b.ravel(), shape)

    # every sc 1 and m 0 (docs/SPEC.md §2 has the 12 bytes' packing), d 1, dmin 0: the codes
    unit_scales = np.array([1] * 4 + [0] * 4 + [1] * 4, np.uint8)
    sub = (rows, cols // 32, 32)
    return Q4KRows(
        decoded(one, zero, scales=unit_scales),
        decoded(one, zero, qs=0x11).reshape(sub)[..., 0].astype(np.float64),  # codes 1: sc
        -decoded(zero, one).reshape(sub)[..., 0].astype(np.float64),  # d 0: -m
        f16_to_f32(blocks[:, 0:2]).reshape(rows, cols // 256),
        f16_to_f32(blocks[:, 2:4]).reshape(rows, cols // 256),
        blocks.reshape(rows, -1),
    )


def q4_k_linear(x: np.ndarray, w: Q4KRows) -> np.ndarray:
    """Q4_K rows . activations quantized per 256-block: per super-block the exact integers
    isum = sum_j sc_j * codes_j . x_q,j and msum = sum_j m_j * sum(x_q,j) over its 8 sub-blocks
    j, then y += (d * d_x) * isum - (dmin * d_x) * msum in float32, super-block after
    super-block, as every native tier computes it."""
    x_q, d_x = quantize_blocks(np.asarray(x, np.float32))
    n, (rows, cols) = len(x), w.shape
    # exact in float32 (|dot| <= 32 * 15 * 127), then in float64 (|isum| < 2^31)
    sub_x = x_q.reshape(n, -1, 32)
    dots = sub_x.transpose(1, 0, 2) @ w.codes.reshape(rows, -1, 32).transpose(1, 2, 0)
    isum = (dots.astype(np.float64) * w.scales.T[:, None, :]).reshape(cols // 256, 8, n, rows)
    msum = sub_x.sum(axis=2).T.astype(np.float64)[:, :, None] * w.mins.T[:, None, :]
    isum = isum.sum(axis=1).astype(np.float32)
    msum = msum.reshape(cols // 256, 8, n, rows).sum(axis=1).astype(np.float32)
    y = np.zeros((n, rows), np.float32)
    for s in range(cols // 256):
        scale = w.d[:, s] * d_x[:, s, None]
        offset = w.dmin[:, s] * d_x[:, s, None]
        y = y + (scale * isum[s] - offset * msum[s])
    return y


@dataclass(frozen=True)
class Int8Rows:
    """A matrix quantized per row: w ~ q * scales[:, None]; q int8 (out, in), scales float32."""

    q: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape


# The K-quants whose linear layers take int8 activations per 256-block (docs/SPEC.md §1):
# format -> (prepare, linear).
INT8_ACTIVATION_KQUANTS = {
    "Q6_K": (prepare_q6_k, q6_k_linear),
    "Q4_K": (prepare_q4_k, q4_k_linear),
}


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


def embedding(w: np.ndarray | Q6KRows | Q4KRows, ids: np.ndarray) -> np.ndarray:
    if isinstance(w, Q6KRows | Q4KRows):
        wtype = "Q6_K" if isinstance(w, Q6KRows) else "Q4_K"
        return formats.dequantize(wtype, w.data[ids], (len(ids), w.shape[1]))
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
    """Writes keys and values (n, n_kv, d) of positions start.. into the caches, as
    kernels/layout.py kv_cache_shapes lays them out: kc (n_kv, ctx / KEY_BLOCK, d, KEY_BLOCK),
    each block of positions transposed; vc (n_kv, ctx, d); converted to the caches' dtype
    (float16: to nearest even). uint8 caches hold q8_0 (docs/SPEC.md §1, KV cache)."""
    pos = np.arange(start, start + k.shape[0])
    if kc.dtype == np.uint8:
        codes, scales = _kv_q8_0_parts(kc, v.shape[2])
        key_codes, key_scales = _q8_0_split(k)
        codes[:, pos // KEY_BLOCK, :, pos % KEY_BLOCK] = key_codes
        scales[:, pos // KEY_BLOCK, :, pos % KEY_BLOCK] = key_scales
        v = formats.quantize("Q8_0", v).reshape(*v.shape[:2], vc.shape[2])
    else:
        kc[:, pos // KEY_BLOCK, :, pos % KEY_BLOCK] = k  # advanced indices first: (n, n_kv, d)
    vc[:, pos] = v.transpose(1, 0, 2)


def _q8_0_split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (n, n_kv, d) as q8_0: codes int8 (n, n_kv, d) and float16 scales (n, n_kv, d / 32)."""
    n, n_kv, d = x.shape
    blocks = formats.quantize("Q8_0", x).reshape(n, n_kv, d // KV_Q8_CHUNK, 2 + KV_Q8_CHUNK)
    scales = np.ascontiguousarray(blocks[..., :2]).view("<f2")[..., 0]
    return blocks[..., 2:].view(np.int8).reshape(x.shape), scales


def _kv_q8_0_parts(kc: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of a q8_0 key cache's blocks: codes int8 (n_kv, blocks, d, KEY_BLOCK), then float16
    scales (n_kv, blocks, d / 32, KEY_BLOCK)."""
    n_kv, blocks, _ = kc.shape
    codes = kc[..., : d * KEY_BLOCK].view(np.int8).reshape(n_kv, blocks, d, KEY_BLOCK)
    scales = kc[..., d * KEY_BLOCK :].view("<f2").reshape(n_kv, blocks, -1, KEY_BLOCK)
    return codes, scales


def _kv_floats(kc: np.ndarray, vc: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values (n_kv, total, d) of positions 0 .. total - 1, as floats: float16 and
    q8_0 (code * scale, exact) read as float32, float32 and float64 as they are."""
    kc = kc[:, : -(-total // KEY_BLOCK)]
    if kc.dtype == np.uint8:
        n_kv, ctx, row = vc.shape
        d = row // (2 + KV_Q8_CHUNK) * KV_Q8_CHUNK
        codes, scales = (part.astype(np.float32) for part in _kv_q8_0_parts(kc, d))
        keys = codes * np.repeat(scales, KV_Q8_CHUNK, axis=2)
        values = formats.dequantize("Q8_0", np.ascontiguousarray(vc[:, :total]), (n_kv, total, d))
    else:
        keys, values = kc, vc[:, :total]
    n_kv, _, d, _ = keys.shape
    keys = keys.transpose(0, 1, 3, 2).reshape(n_kv, -1, d)[:, :total]
    real = np.promote_types(keys.dtype, np.float32)
    return keys.astype(real, copy=False), values.astype(real, copy=False)


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
    keys, values = _kv_floats(kc, vc, total)
    qg = q.reshape(n, n_kv, n_heads // n_kv, d)
    scores = np.einsum("nkgd,ktd->kgnt", qg, keys) / np.float32(np.sqrt(d))
    future = np.arange(total)[None, :] > (start + np.arange(n))[:, None]
    scores[..., future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("kgnt,ktd->nkgd", probs, values)
    return np.ascontiguousarray(out.reshape(n, n_heads * d), dtype=np.float32)
