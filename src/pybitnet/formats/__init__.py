"""Weight formats: one table of block sizes, and one module per format.

Every format module has the same parts: the block layout (documented in its docstring),
``quantize`` (float32 -> bytes) and ``dequantize`` (bytes -> float32); the ternary ones also have
``unpack`` (bytes -> codes and scales), which the numpy BitLinear uses (the native kernels do
the dot products), and ``scales``. ``floats`` says where a tensor's floats are (its values, its
block scales or its tensor scale): (what they are, a view of their raw bits, the bits of +inf),
which ``check_finite`` reads. Sizes come from ``TYPES``, which the GGUF reader, the writers,
the kernel registry and the accuracy report use too (docs/adding-a-weight-format.md). Callers
use the checked entry points here: ``dequantize``, ``quantize``, ``unpack_ternary``,
``ternary_scales``, ``check_finite``, ``ternarize_absmean``.
Shapes are in numpy order: the last dimension is ggml's ne0, the row length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from pybitnet.errors import FormatError
from pybitnet.formats import (
    bf16,
    f16,
    f32,
    i2_s,
    q4_0,
    q4_1,
    q4_k,
    q5_k,
    q6_k,
    q8_0,
    tq1_0,
    tq2_0,
)


@dataclass(frozen=True)
class WeightType:
    """One row of the format table: what the GGUF reader, the writers and the kernels know of a
    weight type. csrc/formats.h holds the same ids and sizes for C++ (a test compares them)."""

    name: str
    id: int  # the GGUF / ggml type id
    block_size: int  # elements per block
    type_size: int  # bytes per block (I2_S: see its module's tensor_nbytes)
    ternary: bool  # BitLinear weights (codes and scales), else a float linear layer's
    file_type: int  # general.file_type of a model whose linear weights are of this type
    codec: ModuleType = field(repr=False, compare=False)  # quantize, dequantize (unpack, scales)
    tensor_scale: bool = False  # ternary with one float32 scale a tensor (else one a block)


# file_type: llama.cpp's LLAMA_FTYPE_MOSTLY_* values, and bitnet.cpp's 40 for I2_S.
TYPES: dict[int, WeightType] = {
    t.id: t
    for t in (
        WeightType("F32", 0, 1, 4, False, 0, f32),
        WeightType("F16", 1, 1, 2, False, 1, f16),
        WeightType("Q4_0", 2, 32, 18, False, 2, q4_0),
        WeightType("Q4_1", 3, 32, 20, False, 3, q4_1),
        WeightType("Q8_0", 8, 32, 34, False, 7, q8_0),
        # K-quants: 256-element super-blocks; file types Q4_K_S, Q5_K_S, Q6_K
        WeightType("Q4_K", 12, 256, 144, False, 14, q4_k),
        WeightType("Q5_K", 13, 256, 176, False, 16, q5_k),
        WeightType("Q6_K", 14, 256, 210, False, 18, q6_k),
        WeightType("BF16", 30, 1, 2, False, 32, bf16),
        WeightType("TQ1_0", 34, 256, 54, True, 36, tq1_0),
        WeightType("TQ2_0", 35, 256, 66, True, 37, tq2_0),
        # bitnet.cpp's I2_S: 4 codes per byte in 128-element blocks, then a 32-byte tail whose
        # first 4 bytes are the float32 per-tensor scale (docs/SPEC.md §2).
        WeightType("I2_S", 36, 128, 32, True, 40, i2_s, tensor_scale=True),
    )
}
TERNARY = tuple(t.name for t in TYPES.values() if t.ternary)
DENSE = tuple(t.name for t in TYPES.values() if not t.ternary)

_BY_NAME = {t.name: t for t in TYPES.values()}


def weight_type(key: int | str) -> WeightType:
    """The WeightType for a type id or a name (case-insensitive)."""
    found = TYPES.get(key) if isinstance(key, int) else _BY_NAME.get(str(key).upper())
    if found is None:
        known = ", ".join(f"{t.name} ({t.id})" for t in TYPES.values())
        raise FormatError(f"unknown weight type {key!r}; pybitnet knows {known}")
    return found


# llama.cpp's type for rows that are not whole 256-blocks of a K-quant (llama-quant.cpp,
# tensor_type_fallback): what a requantized head or embedding takes instead.
KQUANT_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def type_for_rows(wtype: str, cols: int) -> str:
    """The name of ``wtype``, or of llama.cpp's fallback when rows of ``cols`` elements are not
    whole blocks of it (a name pybitnet may not read: Q5_0, Q5_1)."""
    name = weight_type(wtype).name
    if cols % weight_type(name).block_size == 0:
        return name
    return KQUANT_FALLBACK.get(name, name)


def tensor_nbytes(wtype: WeightType, ne0: int, n_elements: int) -> int:
    """Bytes that a tensor of ``n_elements`` with rows of ``ne0`` elements takes in ``wtype``:
    ggml's formula (whole blocks a row), or the format module's own ``tensor_nbytes``.

    Raises FormatError when the shape does not fit the format's blocks (rows must be whole
    blocks; I2_S needs the whole tensor to be whole 128-element blocks).
    """
    if ne0 < 0 or n_elements < 0:
        raise FormatError(f"{wtype.name}: negative size (row {ne0}, elements {n_elements})")
    own_size = getattr(wtype.codec, "tensor_nbytes", None)
    if own_size is not None:  # a format whose blocks do not follow the rows (I2_S)
        return own_size(ne0, n_elements)
    if ne0 % wtype.block_size:
        raise FormatError(
            f"{wtype.name} needs rows that are a multiple of {wtype.block_size} elements, "
            f"got rows of {ne0}; store this tensor in another type"
        )
    return n_elements // wtype.block_size * wtype.type_size


def _resolve(wtype: WeightType | int | str) -> WeightType:
    if isinstance(wtype, WeightType):
        return wtype
    return weight_type(int(wtype) if isinstance(wtype, np.integer) else wtype)


def _checked_bytes(t: WeightType, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``data`` as 1-D uint8 after checking that it is exactly the tensor's size."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise FormatError(f"{t.name} tensor {shape}: data must be a uint8 array, got {found}")
    if any(d < 0 for d in shape):
        raise FormatError(f"{t.name} tensor: negative dimension in shape {shape}")
    try:
        expected = tensor_nbytes(t, shape[-1] if shape else 1, math.prod(shape))
    except FormatError as e:
        raise FormatError(f"{t.name} tensor {shape}: {e}") from None
    if data.size != expected:
        raise FormatError(
            f"{t.name} tensor {shape} takes {expected} bytes, but the data has {data.size}"
        )
    return data.reshape(-1)


def dequantize(
    wtype: WeightType | int | str, data: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """The float32 values, of ``shape``, of a tensor stored as ``data`` (uint8 bytes, e.g. a
    zero-copy slice of a memory-mapped file) in ``wtype``. F32 returns a view of ``data``."""
    t = _resolve(wtype)
    shape = tuple(int(d) for d in shape)
    return t.codec.dequantize(_checked_bytes(t, data, shape), shape)


def quantize(wtype: WeightType | int | str, values: np.ndarray) -> np.ndarray:
    """``values`` (converted to float32; last dimension = row length) stored in ``wtype``, as
    a 1-D uint8 array of ``tensor_nbytes`` bytes."""
    t = _resolve(wtype)
    values = np.asarray(values, dtype=np.float32)
    try:
        tensor_nbytes(t, values.shape[-1] if values.shape else 1, values.size)
    except FormatError as e:
        raise FormatError(f"cannot quantize a tensor of shape {values.shape}: {e}") from None
    return t.codec.quantize(values)


def unpack_ternary(
    wtype: WeightType | int | str, data: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The ternary weights of a TQ1_0 / TQ2_0 / I2_S tensor of ``shape`` (..., ne0) as
    (codes int8 (rows, ne0) in {-1, 0, 1}, scales float32 (rows, n_groups)).

    n_groups is ne0 / 256 for TQ1_0 / TQ2_0 (each block's d) and 1 for I2_S (the tensor's
    scale on every row), so that row r of W @ x is
    ``sum_g scales[r, g] * (codes[r, group g] . x[group g])``.
    Raises FormatError for non-ternary types and for invalid 2-bit codes (3).
    """
    t = _resolve(wtype)
    if not t.ternary:
        ternary = ", ".join(w.name for w in TYPES.values() if w.ternary)
        raise FormatError(f"{t.name} is not a ternary type; unpack_ternary reads {ternary}")
    shape = tuple(int(d) for d in shape)
    return t.codec.unpack(_checked_bytes(t, data, shape), shape)


def ternary_scales(
    wtype: WeightType | int | str, data: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    """unpack_ternary's scales alone, read without decoding the codes (what a kernel that
    decodes the codes itself needs)."""
    t = _resolve(wtype)
    if not t.ternary:
        raise FormatError(f"{t.name} is not a ternary type; it has no ternary scales")
    shape = tuple(int(d) for d in shape)
    return t.codec.scales(_checked_bytes(t, data, shape), shape)


# Floats checked at once: temporaries that stay in cache (256K floats was the fastest, 2x of 4M).
_CHECK_CHUNK = 1 << 18


def check_finite(wtype: WeightType | int | str, data: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raises FormatError when a float that a tensor stores (a value, a block scale, the tensor
    scale) is NaN or infinite. It reads the raw bits in place, chunk by chunk (a 2B model's
    ~1.2 GB in well under a second, once paged in)."""
    t = _resolve(wtype)
    shape = tuple(int(d) for d in shape)
    what, bits, inf = t.codec.floats(_checked_bytes(t, data, shape))
    sign_bit = 1 << (8 * bits.itemsize - 1)
    per_row = bits[:1].size or 1
    step = max(1, _CHECK_CHUNK // per_row)
    for start in range(0, len(bits), step):
        chunk = bits[start : start + step] & (sign_bit - 1)
        if chunk.max() < inf:
            continue
        at = int(np.argmax(chunk.reshape(-1) >= inf))
        raw = chunk.reshape(-1)[at]
        sign = "-" if bits[start : start + step].reshape(-1)[at] & sign_bit else "+"
        value = "NaN" if raw > inf else f"{sign}inf"
        raise FormatError(f"{t.name} tensor {shape}: {what} {start * per_row + at} is {value}")


def ternarize_absmean(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """BitNet b1.58's absmean ternarization (docs/SPEC.md §2): s = max(mean|W|, 1e-5),
    T = clamp(rint(W / s), -1, 1) (ties to even). Returns (T as int8, s as float32).

    mean|W| is accumulated in float64 and rounded to float32; W / s is computed in float32.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.size == 0:
        raise FormatError("cannot ternarize an empty tensor")
    mean_abs = np.mean(np.abs(w), dtype=np.float64)
    if not np.isfinite(mean_abs):
        raise FormatError(
            f"cannot ternarize a tensor with non-finite values (mean|W| = {mean_abs})"
        )
    s = np.float32(max(mean_abs, 1e-5))
    return np.clip(np.rint(w / s), -1, 1).astype(np.int8), s
