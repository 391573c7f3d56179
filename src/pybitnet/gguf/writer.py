"""Writing GGUF files (version 3), one tensor in memory at a time.

Why not the gguf package's GGUFWriter: its tensor types are the GGMLQuantizationType enum,
which has no 36 (I2_S), and its raw-bytes path looks the type up in GGML_QUANT_SIZES, so I2_S
could only be written by declaring a fake dtype and passing an int where the enum is expected.
It also refuses empty arrays, silently drops empty strings (add_string) and always writes
general.architecture first. The format is small (values.py), so this writer is too; the tests
check that the gguf package's reader reads what it writes.

Metadata typing: str -> STRING; bool -> BOOL; int -> UINT32 (UINT64 above 2^32 - 1, INT32 or
INT64 when negative); float -> FLOAT32; numpy scalars and 1-D arrays keep their dtype; a list or
tuple is an array whose element type follows the same rules over all its items (numpy scalars of one
dtype keep it; a list of str is an array of strings; a list of lists or arrays is an array of
arrays). ``types`` overrides the
type of a key's value, or of its array's elements (e.g. INT32 for tokenizer.ggml.token_type);
``GGUFFile.metadata_types`` has the same form, so a file can be rewritten with the types it had.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from gguf import GGUFValueType

from pybitnet import formats
from pybitnet.errors import FormatError, GGUFError
from pybitnet.formats import WeightType
from pybitnet.gguf.values import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    MAX_ALIGNMENT,
    MAX_ARRAY_DEPTH,
    MAX_DIMS,
    MAX_TENSOR_NAME_BYTES,
    NUMPY_DTYPES,
    U32,
    U64,
    VALUE_TYPES,
)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: ``data`` is its bytes in ``wtype`` (uint8, formats.tensor_nbytes of
    them), or a function returning them, called only when the tensor is written."""

    name: str
    shape: Sequence[int]  # numpy order: the last dimension is the row length (ggml's ne0)
    wtype: WeightType | int | str
    data: np.ndarray | Callable[[], np.ndarray]


def write_gguf(
    path: str | Path,
    metadata: Mapping[str, Any],
    tensors: Sequence[TensorSpec],
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    types: Mapping[str, GGUFValueType] | None = None,
) -> None:
    """Write a GGUF v3 file: ``metadata`` in its order, then ``tensors`` in theirs, each at an
    offset that is a multiple of ``alignment`` (recorded as general.alignment when not 32).

    The file appears at ``path`` only when complete (it is written next to it, then renamed).
    Raises GGUFError naming the file and the key or tensor for values or tensors that cannot be
    written.
    """
    path = Path(path)
    if not (0 < alignment <= MAX_ALIGNMENT and alignment & (alignment - 1) == 0):
        raise GGUFError(
            f"{path}: alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}"
        )
    metadata = dict(metadata)
    types = {key: GGUFValueType(t) for key, t in (types or {}).items()}
    if metadata.get("general.alignment", alignment) != alignment:
        raise GGUFError(
            f"{path}: metadata general.alignment = {metadata['general.alignment']!r} disagrees "
            f"with alignment={alignment}"
        )
    if alignment != DEFAULT_ALIGNMENT or "general.alignment" in metadata:
        metadata["general.alignment"] = alignment
        types["general.alignment"] = GGUFValueType.UINT32
    layout = _layout(path, tensors, alignment)

    header = [GGUF_MAGIC, U32.pack(GGUF_VERSION), U64.pack(len(layout)), U64.pack(len(metadata))]
    header += [_key_value(path, key, value, types.get(key)) for key, value in metadata.items()]
    for spec, wtype, ne, _, offset in layout:
        header += [_string(spec.name), U32.pack(len(ne)), *map(U64.pack, ne)]
        header += [U32.pack(wtype.id), U64.pack(offset)]

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            out.write(b"".join(header))
            _pad(out, alignment)
            for spec, wtype, _, nbytes, _ in layout:
                out.write(_tensor_data(path, spec, wtype, nbytes).data)
                _pad(out, alignment)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise GGUFError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _pad(out: Any, alignment: int) -> None:
    out.write(b"\0" * (-out.tell() % alignment))


def _layout(
    path: Path, tensors: Sequence[TensorSpec], alignment: int
) -> list[tuple[TensorSpec, WeightType, tuple[int, ...], int, int]]:
    """(spec, wtype, ne, nbytes, offset in the data section) of each tensor, checked."""
    layout, names, offset = [], set(), 0
    for spec in tensors:
        what = f"{path}: tensor {spec.name!r}"
        if not isinstance(spec.name, str) or spec.name in names:
            raise GGUFError(f"{what}: the name is not a string or appears twice")
        try:
            name_bytes = len(spec.name.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise GGUFError(f"{what}: the name is not encodable as UTF-8 ({exc.reason})") from None
        if name_bytes > MAX_TENSOR_NAME_BYTES:
            raise GGUFError(
                f"{what}: names are at most {MAX_TENSOR_NAME_BYTES} bytes (ggml's limit)"
            )
        names.add(spec.name)
        shape = tuple(int(d) for d in spec.shape)
        if len(shape) > MAX_DIMS or any(d < 1 for d in shape):
            raise GGUFError(
                f"{what}: shape {shape} needs at most {MAX_DIMS} dimensions of size >= 1"
            )
        try:
            wtype = (
                spec.wtype
                if isinstance(spec.wtype, WeightType)
                else formats.weight_type(spec.wtype)
            )
            nbytes = formats.tensor_nbytes(wtype, shape[-1] if shape else 1, math.prod(shape))
        except FormatError as exc:
            raise GGUFError(f"{what}: {exc}") from None
        layout.append((spec, wtype, shape[::-1], nbytes, offset))
        offset += -(-nbytes // alignment) * alignment
    return layout


def _tensor_data(path: Path, spec: TensorSpec, wtype: WeightType, nbytes: int) -> np.ndarray:
    data = spec.data() if callable(spec.data) else spec.data
    what = f"{path}: tensor {spec.name!r} ({wtype.name} {tuple(spec.shape)})"
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise GGUFError(f"{what}: data must be a uint8 array, got {found}")
    if data.size != nbytes:
        raise GGUFError(f"{what}: takes {nbytes} bytes, but the data has {data.size}")
    return np.ascontiguousarray(data).reshape(-1)


# -- metadata -------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return U64.pack(len(raw)) + raw


def _key_value(path: Path, key: Any, value: Any, vtype: GGUFValueType | None) -> bytes:
    what = f"{path}: metadata key {key!r}"
    if not isinstance(key, str):
        raise GGUFError(f"{what}: keys must be strings")
    try:
        value_type, payload = _encode(what, value, vtype, depth=0)
        return _string(key) + U32.pack(value_type) + payload
    except UnicodeEncodeError as exc:
        raise GGUFError(f"{what}: text is not encodable as UTF-8 ({exc.reason})") from None


def _fail(what: str, message: str) -> NoReturn:
    raise GGUFError(f"{what}: {message}")


def _encode(
    what: str, value: Any, vtype: GGUFValueType | None, depth: int
) -> tuple[GGUFValueType, bytes]:
    """(value type, encoded value) of one value; ``vtype`` is the type asked for, if any."""
    if isinstance(value, list | tuple | np.ndarray):
        if isinstance(value, np.ndarray) and value.ndim != 1:
            _fail(what, f"arrays must be 1-D, got shape {value.shape}")
        if depth >= MAX_ARRAY_DEPTH:
            _fail(what, f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
        element_type, payload = _encode_array(what, value, vtype, depth)
        return GGUFValueType.ARRAY, U32.pack(element_type) + U64.pack(len(value)) + payload
    if isinstance(value, str):
        if vtype not in (None, GGUFValueType.STRING):
            _fail(what, f"a string cannot be stored as {vtype.name}")
        return GGUFValueType.STRING, _string(value)
    if isinstance(value, np.generic):
        return _encode_numbers(what, np.asarray(value).reshape(1), vtype)
    return _encode_numbers(what, [value], vtype)


def _encode_array(
    what: str, values: Sequence[Any] | np.ndarray, vtype: GGUFValueType | None, depth: int
) -> tuple[GGUFValueType, bytes]:
    """(element type, encoded elements) of an array."""
    if isinstance(values, np.ndarray) and values.dtype.kind != "U":
        return _encode_numbers(what, values, vtype)
    items = list(values)
    if not items:
        if vtype is None:
            _fail(
                what, "an empty list has no element type: give one in types= or pass a numpy array"
            )
        return vtype, b""
    if all(isinstance(v, str) for v in items):
        if vtype not in (None, GGUFValueType.STRING):
            _fail(what, f"strings cannot be stored as {vtype.name}")
        return GGUFValueType.STRING, b"".join(map(_string, items))
    if all(isinstance(v, list | tuple | np.ndarray) for v in items):
        # each element is an array with its own header; ``vtype`` (unless ARRAY) types the leaves
        inner = None if vtype == GGUFValueType.ARRAY else vtype
        parts = [_encode(f"{what}[{i}]", v, inner, depth + 1)[1] for i, v in enumerate(items)]
        return GGUFValueType.ARRAY, b"".join(parts)
    if all(isinstance(v, np.generic) for v in items) and len({v.dtype for v in items}) == 1:
        return _encode_numbers(what, np.array(items), vtype)  # numpy scalars keep their dtype
    return _encode_numbers(what, items, vtype)


def _encode_numbers(
    what: str, values: Sequence[Any] | np.ndarray, vtype: GGUFValueType | None
) -> tuple[GGUFValueType, bytes]:
    """(type, little-endian bytes) of numbers: a numpy array keeps its dtype's type, Python
    values get the smallest of the default types that holds them (module docstring)."""
    if isinstance(values, np.ndarray):
        array = values
        if vtype is None:
            vtype = VALUE_TYPES.get(array.dtype)
            if vtype is None:
                _fail(what, f"numpy dtype {array.dtype} has no GGUF value type")
    else:
        array = _exact_array(what, values)
        if vtype is None:
            kind = array.dtype.kind
            if kind == "b":
                vtype = GGUFValueType.BOOL
            elif kind == "f":
                vtype = GGUFValueType.FLOAT32
            else:
                vtype = _int_type(int(array.min()), int(array.max()))
    dtype = NUMPY_DTYPES.get(vtype)
    if dtype is None:
        _fail(what, f"a {GGUFValueType(vtype).name} cannot hold numbers")
    kind = array.dtype.kind
    if (dtype.kind == "b") != (kind == "b") or kind not in "biuf":
        _fail(what, f"{array.dtype} values cannot be stored as {vtype.name}")
    if dtype.kind in "iu":
        if kind == "f":
            _fail(what, f"floating-point values cannot be stored as {vtype.name}")
        if array.size:
            low, high, limits = int(array.min()), int(array.max()), np.iinfo(dtype)
            if low < limits.min or high > limits.max:
                _fail(what, f"values {low}..{high} do not fit in {vtype.name}")
    return vtype, array.astype(dtype).tobytes()


def _exact_array(what: str, values: Sequence[Any]) -> np.ndarray:
    """Python or numpy numbers as a numpy array, keeping integers exact (numpy would turn a
    list mixing -1 and 2^63 into float64)."""
    if all(isinstance(v, bool | np.bool_) for v in values):
        return np.array(values, np.bool_)
    if not all(isinstance(v, int | float | np.integer | np.floating) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        _fail(what, f"cannot store values of types {kinds} (mixed or unsupported)")
    if any(isinstance(v, bool | np.bool_) for v in values):
        _fail(what, "cannot mix bools and numbers in one array")
    if any(isinstance(v, float | np.floating) for v in values):
        return np.array(values, np.float64)
    low, high = int(min(values)), int(max(values))
    if low >= 0 and high < 2**64:
        return np.array(values, np.uint64)
    if low >= -(2**63) and high < 2**63:
        return np.array(values, np.int64)
    _fail(what, f"integers {low}..{high} do not fit in 64 bits")


def _int_type(low: int, high: int) -> GGUFValueType:
    if low >= 0:
        return GGUFValueType.UINT32 if high < 2**32 else GGUFValueType.UINT64
    return GGUFValueType.INT32 if low >= -(2**31) and high < 2**31 else GGUFValueType.INT64
