"""What the K-quants (Q4_K, Q5_K, Q6_K: 256-element super-blocks of 16- or 32-element sub-blocks)
share: llama.cpp's reference quantizers (ggml-quants.c, the *_ref functions), vectorized over
sub-blocks but with every float32 operation in C's order, so that the bytes are the same.

C sums a sub-block's terms one after the other; numpy's sum adds them pairwise, which rounds
differently, hence ``running_sum``. The reference is matched as C computes it without fused
multiply-adds (x86-64 baseline, or -ffp-contract=off); a build that contracts a * b + c into one
rounding may pick another scale in rare near-ties.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pybitnet.formats._blocks import f16_to_f32, f32_to_f16_bytes

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)  # a sub-block with max|x| below this is all zeros
_CHUNK = 1 << 12  # super-blocks quantized at once: the temporaries stay a few MB


def quantize_superblocks(
    values: np.ndarray, type_size: int, quantize_blocks: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``values`` as 256-element super-blocks through ``quantize_blocks`` ((B, 256) float32 ->
    (B, type_size) bytes), a chunk at a time, as one 1-D uint8 array."""
    blocks = values.reshape(-1, QK_K)
    # divisions by zero and overflows are the reference's too; their results are masked or kept
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        parts = [quantize_blocks(blocks[i : i + _CHUNK]) for i in range(0, len(blocks), _CHUNK)]
    return np.concatenate(parts or [np.zeros((0, type_size), np.uint8)]).reshape(-1)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: float32 + 1.5 * 2**23, read as int32 (ties to even; the same bits
    as C's for any input, as C does not check its range in release builds)."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(x, F32) + F32(12582912.0)
    return (v.view(np.int32) & 0x007FFFFF) - 0x00400000


def running_sum(terms: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """terms (S, n) summed left to right in float32, from ``start`` (else from 0) as C's loop."""
    acc = np.zeros(terms.shape[0], F32) if start is None else start.astype(F32)
    for column in np.ascontiguousarray(terms.T):  # one copy, then contiguous adds: 3x faster
        acc += column
    return acc


def running_max(values: np.ndarray) -> np.ndarray:
    """(B, n) -> (B,): C's ``m = 0; if (v > m) m = v;`` (NaN never wins, unlike np.max)."""
    m = np.zeros(values.shape[0], F32)
    for i in range(values.shape[1]):
        m = np.where(values[:, i] > m, values[:, i], m)
    return m


def _weighted_error(scale, lo, codes, x, w) -> np.ndarray:
    """sum of w * (scale * L + min - x)**2 over each sub-block, as make_qkx2_quants."""
    diff = scale[:, None] * codes.astype(F32) + lo[:, None] - x
    return running_sum(w * (diff * diff))


def make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants (use_mad false) on sub-blocks x (S, n) with weights w:
    (codes uint8 (S, n) in 0..nmax, scale (S,), the_min (S,)) with x ~ scale * L - the_min."""
    lo, hi = x[:, 0].copy(), x[:, 0].copy()
    for i in range(1, x.shape[1]):
        lo = np.where(x[:, i] < lo, x[:, i], lo)
        hi = np.where(x[:, i] > hi, x[:, i], hi)
    sum_w = running_sum(w[:, 1:], w[:, 0])
    sum_x = running_sum(w[:, 1:] * x[:, 1:], w[:, 0] * x[:, 0])
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo

    def codes(iscale: np.ndarray) -> np.ndarray:
        return np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)

    iscale = F32(nmax) / (hi - lo)
    scale = F32(1) / iscale
    best_codes = codes(iscale)
    best = _weighted_error(scale, lo, best_codes, x, w)
    for step in range(nstep + 1):  # as C, each trial starts from the best min so far
        trial = codes((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (hi - lo))
        lf = trial.astype(F32)
        wl = w * lf
        sum_l, sum_l2, sum_xl = running_sum(wl), running_sum(wl * lf), running_sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clipped = this_min > 0
        this_min = np.where(clipped, F32(0), this_min)
        this_scale = np.where(clipped, sum_xl / sum_l2, this_scale)
        error = _weighted_error(this_scale, this_min, trial, x, w)
        better = (det > 0) & (error < best)
        best_codes = np.where(better[:, None], trial, best_codes)
        best = np.where(better, error, best)
        scale = np.where(better, this_scale, scale)
        lo = np.where(better, this_min, lo)
    best_codes = np.where(flat[:, None], 0, best_codes)
    return best_codes.astype(np.uint8), np.where(flat, F32(0), scale), -lo


def pack_scales_mins(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 6-bit scales and 8 6-bit mins (B, 8) -> Q4_K / Q5_K's 12 bytes (B, 12): bytes 0..3 and
    4..7 hold scales and mins 0..3 in their low 6 bits and the top 2 bits of scales and mins
    4..7 in their high 2 bits; bytes 8..11 the low 4 bits of scale (low nibble) and min 4..7."""
    hi2 = np.uint8(6)
    return np.concatenate(
        [
            ls[:, :4] | ((ls[:, 4:] >> np.uint8(4)) << hi2),
            lm[:, :4] | ((lm[:, 4:] >> np.uint8(4)) << hi2),
            (ls[:, 4:] & np.uint8(15)) | ((lm[:, 4:] & np.uint8(15)) << np.uint8(4)),
        ],
        axis=1,
    )


def unpack_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of pack_scales_mins: (scales (B, 8), mins (B, 8)) as uint8 in 0..63."""
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    ls = np.concatenate([a & np.uint8(63), (c & np.uint8(15)) | ((a >> np.uint8(6)) << 4)], axis=1)
    lm = np.concatenate([b & np.uint8(63), (c >> np.uint8(4)) | ((b >> np.uint8(6)) << 4)], axis=1)
    return ls, lm


def quantize_scale_min(
    blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's quantize_row_q*_K_ref up to the packing of the codes: super-blocks
    (B, 256) -> (header (B, 16): f16 d, f16 dmin, 12 bytes of scales and mins; codes (B, 256)
    uint8 in 0..nmax), element = d * scale * L - dmin * min of its 32-element sub-block."""
    n_blocks = blocks.shape[0]
    x = blocks.reshape(-1, 32)
    av_x = np.sqrt(running_sum(x * x) / F32(32))
    codes, scales, mins = make_qkx2_quants(x, av_x[:, None] + np.abs(x), nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(n_blocks, 8), mins.reshape(n_blocks, 8)
    max_scale, max_min = running_max(scales), running_max(mins)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    # C stores nearest_int's int in a uint8 (wrapping), then takes MIN(63, .)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales).astype(np.uint8), np.uint8(63))
    lm = np.minimum(nearest_int(inv_min[:, None] * mins).astype(np.uint8), np.uint8(63))
    d = f32_to_f16_bytes((max_scale / F32(63))[:, None])
    dmin = f32_to_f16_bytes((max_min / F32(63))[:, None])
    # Requantize against the stored (rounded) scales; a sub-block whose scale is 0 keeps its codes.
    d_sub = (f16_to_f32(d) * ls.astype(F32)).reshape(-1, 1)
    m_sub = (f16_to_f32(dmin) * lm.astype(F32)).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(nearest_int((x + m_sub) / d_sub), 0, nmax).astype(np.uint8)
    codes = np.where(d_sub != 0, again, codes).reshape(n_blocks, QK_K)
    return np.concatenate([d, dmin, pack_scales_mins(ls, lm)], axis=1), codes


def dequantize_scale_min(header: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K's values from header (B, 16) and codes q (B, 256) as float32 in 0..31:
    (d * scale) * q - dmin * min, as gguf.quants and dequantize_row_q*_K."""
    ls, lm = unpack_scales_mins(header[:, 4:16])
    d = (f16_to_f32(header[:, 0:2]) * ls.astype(F32))[..., None]
    dm = (f16_to_f32(header[:, 2:4]) * lm.astype(F32))[..., None]
    return d * q.reshape(len(q), 8, 32) - dm
