"""GGUF metadata value types: the one table the reader and the writer share.

The type ids are the `gguf` package's GGUFValueType (the same numbers as ggml's gguf_type).
Numbers and bools are stored little-endian with the numpy dtypes below; a string is a u64 byte
length and UTF-8 bytes; an array is a u32 element type, a u64 count and the elements.
"""

from __future__ import annotations

import struct

import numpy as np
from gguf import GGUFValueType

NUMPY_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
VALUE_TYPES: dict[np.dtype, GGUFValueType] = {d: t for t, d in NUMPY_DTYPES.items()}

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

# Arrays of arrays are legal in the format (llama.cpp refuses them); this bounds their depth.
MAX_ARRAY_DEPTH = 8
# ggml's GGML_MAX_NAME (64) includes the terminating NUL; GGML_MAX_DIMS is 4.
MAX_TENSOR_NAME_BYTES = 63
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 20  # a power of two above any real file's (32, sometimes 64 or 4096)
GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
