"""write_gguf: byte-exact against the hand-built sample, round trips through our reader and the
gguf package's, streaming, and refusals."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_builders import SAMPLE_TENSORS, build_sample, sample_metadata, sample_tensor_bytes

from pybitnet import formats
from pybitnet.errors import GGUFError
from pybitnet.gguf import GGUFValueType, TensorSpec, open_gguf, write_gguf

V = GGUFValueType


def sample_specs() -> list[TensorSpec]:
    data = sample_tensor_bytes()
    return [TensorSpec(name, shape, t, data[name]) for name, shape, t in SAMPLE_TENSORS]


def test_writes_the_hand_built_sample_byte_for_byte(tmp_path: Path) -> None:
    metadata, types = sample_metadata()
    write_gguf(tmp_path / "s.gguf", metadata, sample_specs(), types=types)
    assert (tmp_path / "s.gguf").read_bytes() == bytes(build_sample().buf)


def test_rewriting_a_file_with_its_metadata_types_is_exact(tmp_path: Path) -> None:
    """metadata + metadata_types + tensor bytes are everything a file holds."""
    original = tmp_path / "s.gguf"
    original.write_bytes(bytes(build_sample().buf))
    f = open_gguf(original)
    specs = [TensorSpec(n, t.shape, t.wtype, f.tensor_bytes(n)) for n, t in f.tensors.items()]
    write_gguf(tmp_path / "copy.gguf", f.metadata, specs, types=f.metadata_types)
    assert (tmp_path / "copy.gguf").read_bytes() == original.read_bytes()


SCALARS = [  # (value, type written, value read back)
    (7, V.UINT32, 7),
    (2**32, V.UINT64, 2**32),
    (2**64 - 1, V.UINT64, 2**64 - 1),
    (-1, V.INT32, -1),
    (-(2**31) - 1, V.INT64, -(2**31) - 1),
    (-(2**63), V.INT64, -(2**63)),
    (0.1, V.FLOAT32, float(np.float32(0.1))),
    (True, V.BOOL, True),
    (False, V.BOOL, False),
    ("", V.STRING, ""),
    ("ünïcode ✓ \n\0", V.STRING, "ünïcode ✓ \n\0"),
    (np.uint8(255), V.UINT8, 255),
    (np.int8(-128), V.INT8, -128),
    (np.uint16(65535), V.UINT16, 65535),
    (np.int16(-32768), V.INT16, -32768),
    (np.uint32(1), V.UINT32, 1),
    (np.int32(-5), V.INT32, -5),
    (np.float32(1.5), V.FLOAT32, 1.5),
    (np.bool_(True), V.BOOL, True),
    (np.uint64(2**64 - 1), V.UINT64, 2**64 - 1),
    (np.int64(-(2**63)), V.INT64, -(2**63)),
    (np.float64(0.1), V.FLOAT64, 0.1),
]
ARRAYS = [  # (value, element type written, value read back (numpy arrays compared by dtype too))
    (["a", "", "☃"], V.STRING, ["a", "", "☃"]),
    ([1, 2, 3], V.UINT32, np.array([1, 2, 3], np.uint32)),
    ([-1, 2**31], V.INT64, np.array([-1, 2**31], np.int64)),
    ([0.5, 1], V.FLOAT32, np.array([0.5, 1], np.float32)),
    ((True, False), V.BOOL, np.array([True, False])),
    ([[1, 2], [3]], V.UINT32, [np.array([1, 2], np.uint32), np.array([3], np.uint32)]),
    ([["a"], ["b", "c"]], V.STRING, [["a"], ["b", "c"]]),
    ([[[np.float64(1)]]], V.FLOAT64, [[np.array([1.0])]]),
    (np.array(["x", "y"]), V.STRING, ["x", "y"]),
] + [
    (np.arange(3).astype(d), t, np.arange(3).astype(d))
    for d, t in [("u1", V.UINT8), ("i1", V.INT8), ("u2", V.UINT16), ("i2", V.INT16),
                 ("u4", V.UINT32), ("i4", V.INT32), ("f4", V.FLOAT32), ("?", V.BOOL),
                 ("u8", V.UINT64), ("i8", V.INT64), ("f8", V.FLOAT64)]
]  # fmt: skip
OVERRIDES = [  # (value, types= entry, element type written, value read back)
    ([3, 3, 1], V.INT32, V.INT32, np.array([3, 3, 1], np.int32)),
    ([0.0, -1.0], V.FLOAT32, V.FLOAT32, np.array([0, -1], np.float32)),
    (np.arange(3), V.UINT8, V.UINT8, np.arange(3, dtype=np.uint8)),
    (5, V.INT16, V.INT16, 5),
    (5, V.FLOAT64, V.FLOAT64, 5.0),
    ([], V.STRING, V.STRING, []),
    ([], V.INT32, V.INT32, np.zeros(0, np.int32)),
    ([], V.ARRAY, V.ARRAY, []),
    ([[1], []], V.INT16, V.INT16, [np.array([1], np.int16), np.zeros(0, np.int16)]),
]


def assert_same(got: object, want: object) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    else:
        assert got == want and type(got) is type(want)


def test_every_value_type_round_trips(tmp_path: Path) -> None:
    metadata, types, expected = {}, {}, {}
    cases = [(v, None, t, r) for v, t, r in SCALARS + ARRAYS] + OVERRIDES
    for i, (value, override, vtype, back) in enumerate(cases):
        metadata[f"k{i}"] = value
        expected[f"k{i}"] = (vtype, back)
        if override is not None:
            types[f"k{i}"] = override
    path = tmp_path / "values.gguf"
    write_gguf(path, metadata, [], types=types)
    f = open_gguf(path)
    assert list(f.metadata) == list(metadata)
    for key, (vtype, back) in expected.items():
        assert f.metadata_types[key] == vtype, (key, metadata[key])
        assert_same(f.metadata[key], back)
    # the gguf package reads the same scalars, strings and flat arrays
    fields = gguf.GGUFReader(path).fields
    for key, (_, back) in expected.items():
        if not isinstance(back, list) or all(isinstance(s, str) for s in back):
            want = back.tolist() if isinstance(back, np.ndarray) else back
            got = fields[key].contents()
            assert got == want or np.array_equal(got, want), key


@pytest.mark.parametrize("wtype", [t.name for t in formats.TYPES.values()])
@pytest.mark.parametrize("shape", [(512,), (3, 256), (2, 2, 256)])
def test_every_weight_type_round_trips(tmp_path: Path, wtype: str, shape: tuple[int, ...]) -> None:
    t = formats.weight_type(wtype)
    rng = np.random.default_rng(1)
    values = rng.standard_normal(shape).astype(np.float32)
    if t.ternary:
        values = rng.integers(-1, 2, shape).astype(np.float32) * np.float32(0.25)
    data = formats.quantize(t, values)
    path = tmp_path / "w.gguf"
    write_gguf(path, {"general.architecture": "test"}, [TensorSpec("w", shape, t, data)])
    f = open_gguf(path)
    info = f.tensors["w"]
    assert (info.shape, info.ne, info.wtype, info.nbytes) == (shape, shape[::-1], t, data.size)
    np.testing.assert_array_equal(f.tensor_bytes("w"), data)
    np.testing.assert_array_equal(f.dequantize("w"), formats.dequantize(t, data, shape))
    if t.name != "I2_S":  # the gguf package does not know type 36
        (theirs,) = gguf.GGUFReader(path).tensors
        assert (int(theirs.tensor_type), tuple(int(d) for d in theirs.shape)) == (t.id, shape[::-1])
        np.testing.assert_array_equal(theirs.data.reshape(-1).view(np.uint8), data)


def test_alignment_is_recorded_and_respected(tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    data = np.arange(12, dtype=np.uint8)
    specs = [TensorSpec(n, (3,), "F32", data) for n in ("a", "b", "c")]
    write_gguf(path, {"general.architecture": "test"}, specs, alignment=128)
    f, theirs = open_gguf(path), gguf.GGUFReader(path)
    assert f.alignment == theirs.alignment == 128 and f.metadata["general.alignment"] == 128
    assert [t.offset for t in f.tensors.values()] == [t.data_offset for t in theirs.tensors]
    assert all(t.offset % 128 == 0 for t in f.tensors.values())
    assert path.stat().st_size % 128 == 0  # the last tensor is padded too (llama.cpp reads it so)
    write_gguf(tmp_path / "d.gguf", {}, specs)
    assert "general.alignment" not in open_gguf(tmp_path / "d.gguf").metadata


def test_callables_are_streamed_one_tensor_at_a_time(tmp_path: Path) -> None:
    """Each callable runs when its tensor is written, after the previous one's bytes are freed."""
    alive: list[weakref.ref] = []
    calls: list[str] = []

    def make(name: str):
        def data() -> np.ndarray:
            gc.collect()
            assert all(ref() is None for ref in alive), "an earlier tensor is still in memory"
            calls.append(name)
            array = np.full(4096, len(calls), np.uint8)
            alive.append(weakref.ref(array))
            return array

        return data

    names = [f"t{i}" for i in range(5)]
    write_gguf(tmp_path / "s.gguf", {}, [TensorSpec(n, (1024,), "F32", make(n)) for n in names])
    assert calls == names
    f = open_gguf(tmp_path / "s.gguf")
    assert [int(f.tensor_bytes(n)[0]) for n in names] == [1, 2, 3, 4, 5]


def test_same_input_same_bytes(tmp_path: Path) -> None:
    metadata, types = sample_metadata()
    write_gguf(tmp_path / "a.gguf", metadata, sample_specs(), types=types)
    write_gguf(tmp_path / "b.gguf", metadata, sample_specs(), types=types)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


F32_4 = np.zeros(16, np.uint8)
BAD_METADATA = [
    ({"k": {"a": 1}}, {}, "cannot store values of types \\['dict'\\]"),
    ({"k": [1, "a"]}, {}, "mixed or unsupported"),
    ({"k": [True, 2]}, {}, "cannot mix bools and numbers"),
    ({"k": []}, {}, "an empty list has no element type"),
    ({"k": [[1], []]}, {}, "an empty list has no element type"),
    ({"k": 2**64}, {}, "do not fit in 64 bits"),
    ({"k": [-1, 2**63]}, {}, "-1..9223372036854775808 do not fit in 64 bits"),
    ({"k": 300}, {"k": V.UINT8}, "values 300..300 do not fit in UINT8"),
    ({"k": -1}, {"k": V.UINT32}, "values -1..-1 do not fit in UINT32"),
    ({"k": 1.5}, {"k": V.INT32}, "floating-point values cannot be stored as INT32"),
    ({"k": 1}, {"k": V.BOOL}, "cannot be stored as BOOL"),
    ({"k": True}, {"k": V.UINT8}, "cannot be stored as UINT8"),
    ({"k": "s"}, {"k": V.UINT8}, "a string cannot be stored as UINT8"),
    ({"k": ["s"]}, {"k": V.INT32}, "strings cannot be stored as INT32"),
    ({"k": 1}, {"k": V.STRING}, "a STRING cannot hold numbers"),
    ({"k": np.zeros((2, 2))}, {}, r"arrays must be 1-D, got shape \(2, 2\)"),
    ({"k": np.zeros(2, np.float16)}, {}, "numpy dtype float16 has no GGUF value type"),
    ({"k": np.zeros(2, ">u4")}, {}, "numpy dtype >u4 has no GGUF value type"),
    ({"k": "\udc80"}, {}, "not encodable as UTF-8"),
    ({1: 1}, {}, "keys must be strings"),
    ({"k": [[[[[[[[[1]]]]]]]]]}, {}, "nested more than 8 deep"),
    ({"general.alignment": 64}, {}, "disagrees with alignment=32"),
]


@pytest.mark.parametrize(("metadata", "types", "message"), BAD_METADATA)
def test_bad_metadata_is_refused(tmp_path: Path, metadata: dict, types: dict, message: str) -> None:
    path = tmp_path / "m.gguf"
    with pytest.raises(GGUFError, match=message) as info:
        write_gguf(path, metadata, [], types=types)
    assert str(info.value).startswith(f"{path}: ")
    assert not path.exists() and list(tmp_path.iterdir()) == []


BAD_TENSORS = [
    ([TensorSpec("w", (4,), "F32", F32_4)] * 2, "'w': the name is not a string or appears twice"),
    ([TensorSpec("w" * 64, (4,), "F32", F32_4)], "names are at most 63 bytes"),
    ([TensorSpec("\udc80", (4,), "F32", F32_4)], "the name is not encodable as UTF-8"),
    ([TensorSpec("w", (1, 1, 1, 1, 4), "F32", F32_4)], "at most 4 dimensions"),
    ([TensorSpec("w", (0, 4), "F32", F32_4)], "of size >= 1"),
    ([TensorSpec("w", (4,), "Q3_K", F32_4)], "unknown weight type 'Q3_K'"),
    ([TensorSpec("w", (4,), "Q8_0", F32_4)], "Q8_0 needs rows that are a multiple of 32"),
    ([TensorSpec("w", (4,), "F32", np.zeros(15, np.uint8))], "takes 16 bytes, but the data has 15"),
    (
        [TensorSpec("w", (4,), "F32", np.zeros(4, np.float32))],
        "data must be a uint8 array, got float32",
    ),
    ([TensorSpec("w", (4,), "F32", lambda: b"\0" * 16)], "data must be a uint8 array, got bytes"),
]


@pytest.mark.parametrize(("tensors", "message"), BAD_TENSORS)
def test_bad_tensors_are_refused(tmp_path: Path, tensors: list, message: str) -> None:
    path = tmp_path / "m.gguf"
    with pytest.raises(GGUFError, match=message) as info:
        write_gguf(path, {}, tensors)
    assert str(info.value).startswith(f"{path}: ")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"old")

    def broken() -> np.ndarray:
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError, match="generator failed"):
        write_gguf(
            path, {}, [TensorSpec("a", (4,), "F32", F32_4), TensorSpec("b", (4,), "F32", broken)]
        )
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    with pytest.raises(GGUFError, match="alignment 48 is not a power of two"):
        write_gguf(path, {}, [], alignment=48)
    with pytest.raises(GGUFError, match="cannot write: No such file or directory"):
        write_gguf(tmp_path / "missing" / "m.gguf", {}, [])
