"""GGUF files: a validating, memory-mapped reader and a streaming writer (docs/SPEC.md §3).

    f = open_gguf(path)              # header, metadata and tensor table parsed and checked
    f.metadata["general.architecture"], f.tensors["token_embd.weight"].shape
    f.tensor_bytes(name)             # zero-copy uint8 view of the file
    f.dequantize(name)               # float32, via pybitnet.formats
    write_gguf(path, metadata, [TensorSpec(name, shape, "I2_S", data_or_callable), ...])

Metadata values read back as str, int, float and bool; arrays of numbers as 1-D numpy arrays of
the stored dtype; arrays of strings as list[str]; arrays of arrays as lists of those.
``metadata_types`` holds each key's GGUFValueType (an array's element type), in the form
write_gguf's ``types=`` takes. Weight type ids and sizes come from pybitnet.formats.TYPES.
"""

from gguf import GGUFValueType

from pybitnet.gguf.reader import GGUFFile, TensorInfo, open_gguf
from pybitnet.gguf.writer import TensorSpec, write_gguf

__all__ = ["GGUFFile", "GGUFValueType", "TensorInfo", "TensorSpec", "open_gguf", "write_gguf"]
