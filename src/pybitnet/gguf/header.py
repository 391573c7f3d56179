"""Parsing a GGUF file's header: one validating pass over the metadata and the tensor table.

Everything in a GGUF file is untrusted. The parser bounds every count and length by the bytes
left in the file before it loops or allocates, does its arithmetic in Python ints (which cannot
overflow), and raises GGUFError naming the file, the field or tensor, and the bad value.

Compared with llama.cpp's reader (ggml/src/gguf.cpp): like it, we refuse version 1, duplicate
keys or tensor names, tensor names of 64 bytes or more, more than 4 dimensions, and a
general.alignment that is not a UINT32 power of two. We are stricter where it is unsafe or
silent: a dimension must be at least 1 (ggml accepts 0, then divides by ne[1..3]), and invalid
UTF-8 or a bool byte other than 0/1 is refused. We are more lenient in two places: arrays of
arrays are read (ggml refuses them; we bound their depth), and tensors may be stored in any
order and with gaps (ggml wants them back to back in file order) as long as each is aligned,
inside the file, and overlaps no other.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from pybitnet import formats
from pybitnet.errors import FormatError, GGUFError
from pybitnet.formats import WeightType
from pybitnet.gguf.values import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MAX_ALIGNMENT,
    MAX_ARRAY_DEPTH,
    MAX_DIMS,
    MAX_TENSOR_NAME_BYTES,
    NUMPY_DTYPES,
    U32,
    U64,
)

HEADER_BYTES = 24  # magic, version u32, tensor count u64, key-value count u64
MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims 0, type, offset
MIN_ARRAY_BYTES = 4 + 8  # element type, count
# Type ids that mean different things in bitnet.cpp and in ggml: guessing would misread weights.
AMBIGUOUS_TYPES = {
    37: "I8_S in bitnet.cpp and a removed type (IQ4_NL_4_8) in ggml",
    38: "TL1 in bitnet.cpp and a removed type (IQ4_NL_8_8) in ggml",
    39: "TL2 in bitnet.cpp and MXFP4 in upstream ggml",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    shape: tuple[int, ...]  # numpy order: reversed ne
    wtype: WeightType
    offset: int  # absolute, from the start of the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


class HeaderParser:
    """One pass over the header; every read is bounds-checked against the file size."""

    def __init__(self, buf: mmap.mmap, size: int, path: Path) -> None:
        self.buf, self.size, self.path = buf, size, path
        self.pos = 0
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        self.tensors: dict[str, TensorInfo] = {}

    def fail(self, what: str, message: str) -> NoReturn:
        raise GGUFError(f"{self.path}: {what}: {message}")

    def parse(self) -> None:
        self.header()
        for i in range(self.n_kv):
            self.key_value(i)
        self.alignment = self.check_alignment()
        self.check_architecture()
        self.tensor_infos()

    # -- primitives ---------------------------------------------------------------------------

    def take(self, n: int, what: str) -> int:
        """Start of the next ``n`` bytes, which must lie inside the file."""
        start = self.pos
        if n > self.size - start:
            self.fail(
                what,
                f"{n} bytes at offset {start} run past the end of the file ({self.size} bytes)",
            )
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        return U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return U64.unpack_from(self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"{what} (length)")
        start = self.take(n, f"{what} (string of {n} bytes)")
        try:
            return str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError as exc:
            self.fail(what, f"is not UTF-8 ({exc.reason} at byte {exc.start})")

    def check_count(self, count: int, min_bytes: int, what: str) -> None:
        """Refuse a count of items that cannot fit in the bytes left, before looping over it."""
        left = self.size - self.pos
        if count > left // min_bytes:
            self.fail(what, f"count {count} cannot fit in the {left} bytes left in the file")

    # -- header and metadata ------------------------------------------------------------------

    def header(self) -> None:
        magic = bytes(self.buf[0:4])
        if magic != GGUF_MAGIC:
            self.fail("magic", f"{magic!r} is not {GGUF_MAGIC!r}: not a GGUF file")
        self.pos = 4
        version = self.u32("version")
        if version == 1:
            self.fail(
                "version", "1 is not supported (llama.cpp dropped it too); re-convert the model"
            )
        if version not in (2, 3):
            hint = " (a big-endian file?)" if version > 0xFFFF and version & 0xFFFF == 0 else ""
            self.fail(
                "version", f"{version}{hint} is not supported; pybitnet reads versions 2 and 3"
            )
        self.version = version
        n_tensors = self.u64("tensor count")
        self.n_kv = self.u64("metadata key-value count")
        self.check_count(self.n_kv, MIN_KV_BYTES, "metadata key-value count")
        self.n_tensors = n_tensors

    def key_value(self, i: int) -> None:
        key = self.string(f"metadata key {i}")
        what = f"metadata key {key!r}"
        if key in self.metadata:
            self.fail(what, "appears twice")
        vtype = self.u32(f"{what} (value type)")
        if vtype == GGUFValueType.ARRAY:
            value, element_type = self.array(what, depth=1)
            self.metadata_types[key] = element_type
        else:
            value = self.scalar(vtype, what)
            self.metadata_types[key] = GGUFValueType(vtype)
        self.metadata[key] = value

    def scalar(self, vtype: int, what: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        return self.numbers(self.dtype(vtype, what), 1, what)[0].item()

    def dtype(self, vtype: int, what: str) -> np.dtype:
        dtype = NUMPY_DTYPES.get(vtype)  # type: ignore[call-overload]
        if dtype is None:
            self.fail(what, f"value type {vtype} is not a GGUF value type")
        return dtype

    def numbers(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        start = self.take(count * dtype.itemsize, f"{what} ({count} values)")
        if dtype.kind == "b":
            raw = np.frombuffer(self.buf, np.uint8, count, start)
            if count and raw.max() > 1:
                self.fail(what, f"bool byte {int(raw.max())} is neither 0 nor 1")
            return raw.astype(np.bool_)
        return np.frombuffer(self.buf, dtype, count, start).copy()

    def array(self, what: str, depth: int) -> tuple[np.ndarray | list, GGUFValueType]:
        """(values, element type): numbers as a 1-D numpy array of the stored dtype, strings as
        a list of str, arrays as a list of those. For arrays of arrays, the element type is that
        of the (first) innermost array, which is what write_gguf's ``types=`` takes."""
        element_type = self.u32(f"{what} (array element type)")
        count = self.u64(f"{what} (array length)")
        if element_type == GGUFValueType.STRING:
            return self.strings(count, what), GGUFValueType.STRING
        if element_type == GGUFValueType.ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                self.fail(what, f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
            self.check_count(count, MIN_ARRAY_BYTES, f"{what} (array length)")
            items = [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]
            return [v for v, _ in items], items[0][1] if items else GGUFValueType.ARRAY
        dtype = self.dtype(element_type, f"{what} (array element type)")
        return self.numbers(dtype, count, what), GGUFValueType(element_type)

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` strings; the loop is kept tight for 128k-token vocabularies."""
        self.check_count(count, 8, f"{what} (array length)")
        buf, pos, size, unpack = self.buf, self.pos, self.size, U64.unpack_from
        out: list[str] = []
        append = out.append
        try:
            for _ in range(count):
                if size - pos < 8:
                    break
                n = unpack(buf, pos)[0]
                pos += 8
                if n > size - pos:
                    break
                append(str(buf[pos : pos + n], "utf-8"))
                pos += n
        except UnicodeDecodeError as exc:
            self.fail(f"{what}[{len(out)}]", f"is not UTF-8 ({exc.reason} at byte {exc.start})")
        if len(out) < count:
            self.fail(
                f"{what}[{len(out)}]",
                f"string at offset {pos} runs past the end of the file ({size} bytes)",
            )
        self.pos = pos
        return out

    def check_alignment(self) -> int:
        what = "metadata key 'general.alignment'"
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        vtype = self.metadata_types["general.alignment"]
        value = self.metadata["general.alignment"]
        if vtype != GGUFValueType.UINT32:
            self.fail(what, f"must be a UINT32 (as llama.cpp reads it), got {vtype.name}")
        if not (0 < value <= MAX_ALIGNMENT and value & (value - 1) == 0):
            self.fail(what, f"{value} is not a power of two between 1 and {MAX_ALIGNMENT}")
        return value

    def check_architecture(self) -> None:
        arch = self.metadata.get("general.architecture")
        if arch is not None and not isinstance(arch, str):
            vtype = self.metadata_types["general.architecture"].name
            got = f"an array of {vtype}" if isinstance(arch, list | np.ndarray) else vtype
            self.fail("metadata key 'general.architecture'", f"must be a string, got {got}")

    # -- tensors ------------------------------------------------------------------------------

    def tensor_infos(self) -> None:
        self.check_count(self.n_tensors, MIN_TENSOR_INFO_BYTES, "tensor count")
        entries: dict[str, tuple[tuple[int, ...], WeightType, int]] = {}
        for i in range(self.n_tensors):
            name, ne, wtype, offset = self.tensor_info(i)
            if name in entries:
                self.fail(f"tensor {name!r}", "appears twice")
            entries[name] = ne, wtype, offset
        self.data_offset = -(-self.pos // self.alignment) * self.alignment
        for name, (ne, wtype, offset) in entries.items():
            self.tensors[name] = self.locate(name, ne, wtype, offset)
        self.check_overlaps()

    def tensor_info(self, i: int) -> tuple[str, tuple[int, ...], WeightType, int]:
        name = self.string(f"tensor {i} (name)")
        what = f"tensor {name!r}"
        name_bytes = len(name.encode())
        if name_bytes > MAX_TENSOR_NAME_BYTES:
            self.fail(
                what, f"name of {name_bytes} bytes is longer than ggml's {MAX_TENSOR_NAME_BYTES}"
            )
        n_dims = self.u32(f"{what} (n_dims)")
        if n_dims > MAX_DIMS:
            self.fail(what, f"n_dims {n_dims} is more than {MAX_DIMS}")
        ne = tuple(self.u64(f"{what} (ne[{j}])") for j in range(n_dims))
        for j, d in enumerate(ne):
            if not 1 <= d < 2**63:
                self.fail(what, f"ne[{j}] = {d} is not between 1 and 2^63 - 1")
        wtype = self.weight_type(self.u32(f"{what} (type)"), what)
        offset = self.u64(f"{what} (offset)")
        if offset % self.alignment:
            self.fail(
                what, f"data offset {offset} is not a multiple of the alignment {self.alignment}"
            )
        return name, ne, wtype, offset

    def weight_type(self, type_id: int, what: str) -> WeightType:
        found = formats.TYPES.get(type_id)
        if found is not None:
            return found
        reads = ", ".join(f"{t.name} ({t.id})" for t in formats.TYPES.values())
        if type_id in AMBIGUOUS_TYPES:
            self.fail(
                what,
                f"type {type_id} is {AMBIGUOUS_TYPES[type_id]}; pybitnet refuses ambiguous "
                f"types (it reads {reads})",
            )
        try:
            name = f" ({GGMLQuantizationType(type_id).name} in ggml)"
        except ValueError:
            name = ""
        self.fail(what, f"type {type_id}{name} is not supported; pybitnet reads {reads}")

    def locate(self, name: str, ne: tuple[int, ...], wtype: WeightType, offset: int) -> TensorInfo:
        what = f"tensor {name!r}"
        n_elements = math.prod(ne)
        try:
            nbytes = formats.tensor_nbytes(wtype, ne[0] if ne else 1, n_elements)
        except FormatError as exc:
            self.fail(what, f"ne {list(ne)}: {exc}")
        start = self.data_offset + offset
        if nbytes > self.size - start:
            self.fail(
                what,
                f"{wtype.name} ne {list(ne)} takes {nbytes} bytes at offset {start}, past the end "
                f"of the file ({self.size} bytes)",
            )
        return TensorInfo(name, ne, ne[::-1], wtype, start, nbytes)

    def check_overlaps(self) -> None:
        by_start = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_start, by_start[1:], strict=False):
            if b.offset < a.offset + a.nbytes:
                self.fail(
                    f"tensor {b.name!r}",
                    f"its bytes {b.offset}..{b.offset + b.nbytes} overlap tensor {a.name!r} "
                    f"({a.offset}..{a.offset + a.nbytes})",
                )
