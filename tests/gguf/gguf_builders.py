"""GGUF files built byte by byte for the tests, written from docs/SPEC.md §3 and sharing no code
with pybitnet.gguf: malformed files for the validation tests, and a sample file (with the
position of every numeric field and string recorded) for the writer comparison and the fuzzer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pybitnet import formats

# GGUF value type ids (ggml's gguf_type)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "B",
           U64: "Q", I64: "q", F64: "d"}  # fmt: skip


@dataclass
class Builder:
    buf: bytearray = field(default_factory=bytearray)
    numbers: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) of each u32/u64
    strings: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of string bytes

    def raw(self, data: bytes) -> Builder:
        self.buf += data
        return self

    def u32(self, v: int) -> Builder:
        self.numbers.append((len(self.buf), 4))
        return self.raw(struct.pack("<I", v))

    def u64(self, v: int) -> Builder:
        self.numbers.append((len(self.buf), 8))
        return self.raw(struct.pack("<Q", v))

    def string(self, s: str | bytes) -> Builder:
        data = s.encode() if isinstance(s, str) else s
        self.u64(len(data))
        self.strings.append((len(self.buf), len(data)))
        return self.raw(data)

    def header(self, n_tensors: int, n_kv: int, version: int = 3) -> Builder:
        return self.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)

    def value(self, vtype: int, value: Any) -> Builder:
        """A value without its type; an ARRAY value is (element type, items); bytes are
        written as they are (for invalid types)."""
        if isinstance(value, bytes) and vtype != STRING:
            return self.raw(value)
        if vtype == STRING:
            return self.string(value)
        if vtype == ARRAY:
            element_type, items = value
            self.u32(element_type).u64(len(items))
            for item in items:
                self.value(element_type, item)
            return self
        if vtype in (U32, U64):
            return self.u32(value) if vtype == U32 else self.u64(value)
        return self.raw(struct.pack("<" + FORMATS[vtype], value))

    def kv(self, key: str | bytes, vtype: int, value: Any) -> Builder:
        return self.string(key).u32(vtype).value(vtype, value)

    def tensor_info(
        self, name: str | bytes, ne: tuple[int, ...], type_id: int, offset: int
    ) -> Builder:
        self.string(name).u32(len(ne))
        for d in ne:
            self.u64(d)
        return self.u32(type_id).u64(offset)

    def pad(self, alignment: int = 32) -> Builder:
        return self.raw(b"\0" * (-len(self.buf) % alignment))


def one_f32_tensor(
    *kvs: tuple[str, int, Any], ne: tuple[int, ...] = (4,), version: int = 3
) -> bytes:
    """A small valid file: the given key-value pairs and one F32 tensor 't' of ``ne``."""
    b = Builder().header(1, len(kvs), version)
    for kv in kvs:
        b.kv(*kv)
    alignment = {k: v for k, _, v in kvs}.get("general.alignment", 32)
    if not (isinstance(alignment, int) and 0 < alignment <= 4096):
        alignment = 32  # a bad alignment is the point of such a test: pad as usual
    b.tensor_info("t", ne, 0, 0).pad(alignment)
    return bytes(b.raw(np.arange(int(np.prod(ne)), dtype="<f4").tobytes()).pad(alignment).buf)


# -- the sample file: the same content built here by hand and by pybitnet's writer -------------

SAMPLE_TENSORS = [  # (name, numpy shape, type name)
    ("norm.weight", (64,), "F32"),
    ("half.weight", (2, 32), "F16"),
    ("embd.weight", (3, 64), "Q8_0"),
    ("tq.weight", (2, 256), "TQ2_0"),
    ("i2s.weight", (2, 128), "I2_S"),
]


def sample_values(name: str, shape: tuple[int, ...], type_name: str) -> np.ndarray:
    rng = np.random.default_rng(len(name))
    if formats.weight_type(type_name).ternary:
        return rng.integers(-1, 2, shape).astype(np.float32) * np.float32(0.5)
    return rng.standard_normal(shape).astype(np.float32)


def sample_tensor_bytes() -> dict[str, np.ndarray]:
    return {n: formats.quantize(t, sample_values(n, s, t)) for n, s, t in SAMPLE_TENSORS}


def sample_metadata() -> tuple[dict[str, Any], dict[str, int]]:
    """(metadata, types=) for pybitnet's writer; build_sample() writes the same by hand."""
    return {
        "general.architecture": "llama",
        "general.name": "sample ✓",
        "llama.block_count": 2,
        "llama.rope.freq_base": 10000.0,
        "test.i8": np.int8(-5),
        "test.u16": np.uint16(65535),
        "test.i64": -(2**40),
        "test.f64": np.float64(0.1),
        "test.flag": True,
        "tokenizer.ggml.tokens": ["<s>", "</s>", "▁a", ""],
        "tokenizer.ggml.scores": [0.0, -1.0, -2.5, 3.0],
        "tokenizer.ggml.token_type": [3, 3, 1, 1],
        "test.nested": [[1, 2], [3]],
        "test.nested_strings": [["x", "yz"], []],
        "test.empty": np.zeros(0, np.uint8),
    }, {"tokenizer.ggml.token_type": I32, "test.nested_strings": STRING}


def build_sample() -> Builder:
    """The sample file, by hand. Returns the builder (bytes in .buf, field positions recorded)."""
    kvs = [
        ("general.architecture", STRING, "llama"),
        ("general.name", STRING, "sample ✓"),
        ("llama.block_count", U32, 2),
        ("llama.rope.freq_base", F32, 10000.0),
        ("test.i8", I8, -5),
        ("test.u16", U16, 65535),
        ("test.i64", I64, -(2**40)),
        ("test.f64", F64, 0.1),
        ("test.flag", BOOL, 1),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "▁a", ""])),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, -1.0, -2.5, 3.0])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 3, 1, 1])),
        ("test.nested", ARRAY, (ARRAY, [(U32, [1, 2]), (U32, [3])])),
        ("test.nested_strings", ARRAY, (ARRAY, [(STRING, ["x", "yz"]), (STRING, [])])),
        ("test.empty", ARRAY, (U8, [])),
    ]
    data = sample_tensor_bytes()
    b = Builder().header(len(SAMPLE_TENSORS), len(kvs))
    for kv in kvs:
        b.kv(*kv)
    offset = 0
    for name, shape, type_name in SAMPLE_TENSORS:
        b.tensor_info(name, shape[::-1], formats.weight_type(type_name).id, offset)
        offset += -(-data[name].size // 32) * 32
    b.pad()
    for name, _, _ in SAMPLE_TENSORS:
        b.raw(data[name].tobytes()).pad()
    return b
