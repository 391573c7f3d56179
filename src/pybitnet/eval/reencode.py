"""A model's ternary weights written into another ternary format, exactly where it can hold them.

The weights (codes and scales, any `.scale` tensor folded in) go into the new format, every other
tensor is copied as it is:
- I2_S holds one float32 scale per tensor, so it holds the weights exactly when every block of a
  tensor that has a nonzero weight has the same scale (I2_S and HF-derived models); a tensor with
  several block scales cannot be written in I2_S.
- TQ1_0/TQ2_0 hold a float16 scale per 256-block, which would round a float32 scale: as
  convert/llama2c.py does, a tensor with one scale becomes blocks of d = 1 with the exact scale
  in an F32 `.scale` tensor; a tensor with several block scales keeps its own (float16) ones.
A format that cannot hold a tensor's shape (I2_S: whole 128-element blocks; TQ: rows of whole
256-blocks) raises FormatError. `same_weights` checks the result rather than assuming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError
from pybitnet.formats import WeightType
from pybitnet.gguf import GGUFFile, TensorSpec, write_gguf


def reencode(f: GGUFFile, fmt: WeightType, target: Path) -> None:
    """Write ``f`` with its ternary weights in ``fmt`` (see the module docstring) to ``target``.

    Raises FormatError naming the tensor when ``fmt`` cannot hold its shape or its scales. The
    encoded tensors are held in memory until written (the size of the new file's ternary data).
    """
    folded = {_scale_name(n) for n, info in f.tensors.items() if info.wtype.ternary}
    specs = []
    for name, info in f.tensors.items():
        if name in folded:  # a ternary weight's `.scale`: made again with its weight below
            continue
        if not info.wtype.ternary:
            specs.append(TensorSpec(name, info.shape, info.wtype, f.tensor_bytes(name)))
            continue
        try:
            formats.tensor_nbytes(fmt, info.shape[-1], info.n_elements)
        except FormatError as exc:
            raise FormatError(f"tensor {name} {list(info.ne)}: {exc}") from None
        data, scale = _encode(f, name, fmt)
        specs.append(TensorSpec(name, info.shape, fmt, data))
        if scale is not None:
            specs.append(TensorSpec(_scale_name(name), (1,), "F32", _f32_bytes(scale)))
    metadata = dict(f.metadata)
    if "general.file_type" in metadata:
        metadata["general.file_type"] = np.uint32(fmt.file_type)
    write_gguf(target, metadata, specs, alignment=f.alignment, types=f.metadata_types)


def _encode(f: GGUFFile, name: str, fmt: WeightType) -> tuple[np.ndarray, np.float32 | None]:
    """(bytes in ``fmt``, the value of its `.scale` tensor or None) of ternary tensor ``name``."""
    info = f.tensors[name]
    codes, block_scales = formats.unpack_ternary(info.wtype, f.tensor_bytes(name), info.shape)
    extra = _scale(f, name)
    rows, groups = block_scales.shape
    used = codes.reshape(rows, groups, -1).any(axis=2)  # an all-zero block's scale is moot
    distinct = np.unique(block_scales[used] * extra)
    if len(distinct) <= 1:
        s = distinct[0] if len(distinct) else np.float32(0)
        if fmt.tensor_scale:
            return formats.quantize(fmt, codes * s), None
        return formats.quantize(fmt, codes.astype(np.float32)), s  # blocks of d = 1
    if fmt.tensor_scale:
        raise FormatError(
            f"tensor {name} has {len(distinct)} different block scales; "
            f"{fmt.name} holds one per tensor"
        )
    # TQ to TQ: the blocks keep their float16 scales, the tensor its `.scale`.
    values = codes * np.repeat(block_scales, codes.shape[1] // groups, axis=1)
    return formats.quantize(fmt, values), extra


def same_weights(a: GGUFFile, b: GGUFFile, names: Sequence[str]) -> bool:
    """Whether tensors ``names`` hold the same values in both files, `.scale` tensors applied."""
    return all(np.array_equal(_values(a, n), _values(b, n)) for n in names)


def _values(f: GGUFFile, name: str) -> np.ndarray:
    return f.dequantize(name) * _scale(f, name)


def _scale(f: GGUFFile, name: str) -> np.float32:
    """The tensor's `.scale` (1 when it has none), as the model's weights read it."""
    scale_name = _scale_name(name)
    return np.float32(f.dequantize(scale_name)[0] if scale_name in f.tensors else 1.0)


def _scale_name(name: str) -> str:
    return name.removesuffix(".weight") + ".scale"


def _f32_bytes(value: np.float32) -> np.ndarray:
    return np.array([value], "<f4").view(np.uint8)
