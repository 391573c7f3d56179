"""Reading safetensors checkpoints: memory-mapped, the header checked against the file, tensors
handed out as zero-copy numpy views (no dependency: the format is small).

A file is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data after the header; an
optional "__metadata__" entry holds strings), then the data. A sharded checkpoint adds
`model.safetensors.index.json`, whose "weight_map" names the shard file of each tensor.
Everything in a checkpoint is untrusted: every size and offset is checked before it is used, and
a failure is a ModelError naming the file, the tensor and the value.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pybitnet.errors import ModelError

# Bytes per element of every safetensors dtype; VIEWS holds the ones handed out as numpy arrays
# (BF16 as its raw uint16 bits: numpy has no bfloat16).
ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
VIEWS = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1", "I8": "i1"}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


class SafetensorsFile:
    """One mapped `.safetensors` file: ``tensors`` (name -> TensorInfo), ``array(name)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(8)
                if len(head) < 8:
                    raise ModelError(
                        f"{self.path}: {size} bytes is too short for a safetensors file"
                    )
                n = int.from_bytes(head, "little")
                if n > min(size - 8, MAX_HEADER_BYTES):
                    raise ModelError(
                        f"{self.path}: header length {n} runs past the end of the file "
                        f"({size} bytes) or over {MAX_HEADER_BYTES}"
                    )
                header = fh.read(n)
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as exc:
            raise ModelError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        self.tensors = _parse_header(self.path, header, 8 + n, size)

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view of the mapped file (F32, F16, U8, I8; BF16 as
        uint16 bits)."""
        info = self.tensors[name]
        if info.dtype not in VIEWS:
            raise ModelError(
                f"{self.path}: tensor {name!r} has dtype {info.dtype}; pybitnet reads "
                f"{', '.join(VIEWS)}"
            )
        raw = np.frombuffer(self._map, np.uint8, info.end - info.begin, info.begin)
        return raw.view(VIEWS[info.dtype]).reshape(info.shape)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process's memory (they are read again if used):
        a conversion touches each tensor once, so its resident set stays one tensor deep."""
        info = self.tensors[name]
        start = info.begin - info.begin % mmap.PAGESIZE
        if self._map is not None and info.end > start and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, start, info.end - start)


def _parse_header(path: Path, raw: bytes, data_start: int, size: int) -> dict[str, TensorInfo]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: the header is a {type(header).__name__}, not a JSON object")
    tensors, data_bytes = {}, size - data_start
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_info(path, name, entry, data_start, data_bytes)
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values())
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise ModelError(f"{path}: tensors {first!r} and {second!r} overlap")
    return tensors


def _tensor_info(path: Path, name: str, entry: object, data_start: int, data_bytes: int):
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: entry {entry!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEM_BYTES:
        raise ModelError(f"{where}: unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        raise ModelError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ModelError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise ModelError(f"{where}: data_offsets {offsets} run past the {data_bytes} bytes of data")
    nbytes = math.prod(shape) * ITEM_BYTES[dtype]  # Python integers: no overflow
    if end - begin != nbytes:
        raise ModelError(
            f"{where}: {dtype} {shape} takes {nbytes} bytes but data_offsets {offsets} hold "
            f"{end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Checkpoint:
    """The safetensors of a checkpoint folder, one file or shards through the index:
    ``names``, ``info(name)``, ``array(name)``, ``release(name)``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._where: dict[str, SafetensorsFile] = {}
        index = self.folder / INDEX
        if index.is_file():
            self._open_shards(index)
        elif (self.folder / SINGLE).is_file():
            shard = SafetensorsFile(self.folder / SINGLE)
            self._where = dict.fromkeys(shard.tensors, shard)
        else:
            raise ModelError(f"{self.folder}: has neither {SINGLE} nor {INDEX}")

    def _open_shards(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text("utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ModelError(f"{index}: cannot read the index ({exc})") from None
        if not isinstance(weight_map, dict):
            raise ModelError(f"{index}: weight_map {weight_map!r} is not an object")
        shards: dict[str, SafetensorsFile] = {}
        for name, file in weight_map.items():
            if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
                raise ModelError(f"{index}: tensor {name!r}: shard {file!r} is not a file name")
            if file not in shards:
                if not (self.folder / file).is_file():
                    raise ModelError(f"{index}: tensor {name!r}: shard {file!r} is missing")
                shards[file] = SafetensorsFile(self.folder / file)
            if name not in shards[file].tensors:
                raise ModelError(f"{index}: tensor {name!r} is not in its shard {file!r}")
            self._where[name] = shards[file]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def info(self, name: str) -> TensorInfo:
        return self._file(name).tensors[name]

    def file(self, name: str) -> Path:
        return self._file(name).path

    def array(self, name: str) -> np.ndarray:
        return self._file(name).array(name)

    def release(self, name: str) -> None:
        self._file(name).release(name)

    def _file(self, name: str) -> SafetensorsFile:
        if name not in self._where:
            raise ModelError(f"{self.folder}: the checkpoint has no tensor {name!r}")
        return self._where[name]


def write_safetensors(
    path: str | Path, tensors: Sequence[tuple[str, str, tuple[int, ...], Callable[[], np.ndarray]]]
) -> Path:
    """Write (name, dtype, shape, data function) tensors as one safetensors file, each made only
    when written (how benchmarks/convert_hf.py makes a 2B-shaped checkpoint in little memory)."""
    header, offset = {}, 0
    for name, dtype, shape, _ in tensors:
        nbytes = math.prod(shape) * ITEM_BYTES[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # data aligned to 8 bytes, as the safetensors library does
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for name, _, _, data in tensors:
            array = np.ascontiguousarray(data())
            if array.nbytes != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                raise ModelError(f"{path}: tensor {name!r}: data of {array.nbytes} bytes")
            out.write(array.reshape(-1).view(np.uint8).data)
    return Path(path)
