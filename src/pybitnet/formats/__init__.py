"""Weight formats: one table of block sizes, and one module per format.

Every module under this package has the same four parts: the block layout (documented in its
docstring), ``quantize`` (float32 -> bytes), ``dequantize`` (bytes -> float32) and, where the
engine needs one, a reference dot product. Sizes come from ``TYPES``, which the GGUF reader uses
too.
"""

from __future__ import annotations

from dataclasses import dataclass

from pybitnet.errors import FormatError


@dataclass(frozen=True)
class WeightType:
    name: str
    id: int  # the GGUF / ggml type id
    block_size: int  # elements per block
    type_size: int  # bytes per block (I2_S: see tensor_nbytes)
    ternary: bool


TYPES: dict[int, WeightType] = {
    t.id: t
    for t in (
        WeightType("F32", 0, 1, 4, False),
        WeightType("F16", 1, 1, 2, False),
        WeightType("Q4_0", 2, 32, 18, False),
        WeightType("Q4_1", 3, 32, 20, False),
        WeightType("Q8_0", 8, 32, 34, False),
        WeightType("BF16", 30, 1, 2, False),
        WeightType("TQ1_0", 34, 256, 54, True),
        WeightType("TQ2_0", 35, 256, 66, True),
        # bitnet.cpp's I2_S: 4 codes per byte in 128-element blocks, then a 32-byte tail whose
        # first 4 bytes are the float32 per-tensor scale (SPEC section 2).
        WeightType("I2_S", 36, 128, 32, True),
    )
}
I2_S_TAIL_BYTES = 32

_BY_NAME = {t.name: t for t in TYPES.values()}


def weight_type(key: int | str) -> WeightType:
    """The WeightType for a type id or a name (case-insensitive)."""
    found = TYPES.get(key) if isinstance(key, int) else _BY_NAME.get(str(key).upper())
    if found is None:
        known = ", ".join(f"{t.name} ({t.id})" for t in TYPES.values())
        raise FormatError(f"unknown weight type {key!r}; pybitnet knows {known}")
    return found


def tensor_nbytes(wtype: WeightType, ne0: int, n_elements: int) -> int:
    """Bytes that a tensor of ``n_elements`` with rows of ``ne0`` elements takes in ``wtype``.

    Raises FormatError when the shape does not fit the format's blocks (rows must be whole
    blocks; I2_S needs the whole tensor to be whole 128-element blocks).
    """
    if ne0 < 0 or n_elements < 0:
        raise FormatError(f"{wtype.name}: negative size (row {ne0}, elements {n_elements})")
    if wtype.id == 36:
        if n_elements % wtype.block_size:
            raise FormatError(
                f"I2_S needs a multiple of {wtype.block_size} elements, got {n_elements}"
            )
        return n_elements // 4 + I2_S_TAIL_BYTES
    if ne0 % wtype.block_size:
        raise FormatError(
            f"{wtype.name} needs rows that are a multiple of {wtype.block_size} elements, "
            f"got rows of {ne0}; store this tensor in another type"
        )
    return n_elements // wtype.block_size * wtype.type_size
