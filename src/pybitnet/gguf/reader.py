"""Reading GGUF files: memory-mapped, validated up front, tensor bytes handed out zero-copy.

Opening reads the header only (parsed and checked by `header.HeaderParser`, which says what is
refused and why): tensor data is touched when a caller asks for it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from pybitnet import formats
from pybitnet.errors import FormatError, GGUFError
from pybitnet.gguf.header import HEADER_BYTES, HeaderParser, TensorInfo


class GGUFFile:
    """A parsed, validated GGUF file (see open_gguf).

    Attributes: path, size (bytes), version (2 or 3), alignment, data_offset (where the data
    section starts), metadata, metadata_types (each key's GGUFValueType; for arrays, the element
    type), tensors (name -> TensorInfo, in file order).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < HEADER_BYTES:
                    raise GGUFError(
                        f"{self.path}: {size} bytes is too short for a GGUF header "
                        f"({HEADER_BYTES} bytes)"
                    )
                self._mmap: mmap.mmap | None = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise GGUFError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            parser = HeaderParser(self._mmap, size, self.path)
            parser.parse()
        except BaseException:
            self.close()
            raise
        self.size = size
        self.version = parser.version
        self.alignment = parser.alignment
        self.data_offset = parser.data_offset
        self.metadata: dict[str, Any] = parser.metadata
        self.metadata_types: dict[str, GGUFValueType] = parser.metadata_types
        self.tensors: dict[str, TensorInfo] = parser.tensors
        self._data: np.ndarray | None = np.frombuffer(self._mmap, np.uint8)

    @property
    def architecture(self) -> str | None:
        """general.architecture, or None when the file has none."""
        return self.metadata.get("general.architecture")

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's bytes: a read-only uint8 view of the memory map (no copy)."""
        info = self._info(name)
        if self._data is None:
            raise GGUFError(f"{self.path}: tensor {name}: the file is closed")
        return self._data[info.offset : info.offset + info.nbytes]

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor's values as float32, of its numpy-order shape."""
        info = self._info(name)
        try:
            return formats.dequantize(info.wtype, self.tensor_bytes(name), info.shape)
        except FormatError as exc:
            raise FormatError(f"{self.path}: tensor {name}: {exc}") from None

    def close(self) -> None:
        """Release the memory map. Views from tensor_bytes keep it alive until they are freed."""
        self._data = None
        if self._mmap is not None:
            # views handed out hold the map open; it is unmapped when the last one goes
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.tensors)} tensors)"

    def _info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.path}: no tensor named {name!r}")
        return info


def open_gguf(path: str | Path) -> GGUFFile:
    """Memory-map a GGUF file (version 2 or 3) and parse and validate its header, metadata and
    tensor table. Raises GGUFError naming the file, the field or tensor, and the bad value."""
    return GGUFFile(path)
