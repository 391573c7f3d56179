"""pybitnet.gguf's reader against the gguf package's (an independent implementation), the peers'
fixtures (one written by bitnet.cpp), and hand-built malformed files."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_builders import (
    ARRAY,
    BOOL,
    F32,
    I64,
    STRING,
    U8,
    U32,
    U64,
    Builder,
    build_sample,
    one_f32_tensor,
)

from helpers.tokenizer_files import smollm2_path
from pybitnet.errors import FormatError, GGUFError
from pybitnet.gguf import GGUFFile, GGUFValueType, open_gguf

PEERS = Path(__file__).resolve().parents[1] / "fixtures" / "peers"
PEER_FILES = ["tq2_0", "tq1_0", "i2_s", "tq2_0-scaletensors"]


def write(tmp_path: Path, data: bytes, name: str = "x.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_same_as_gguf_package(ours: GGUFFile, theirs: gguf.GGUFReader) -> None:
    """Metadata, value types and tensor table agree with gguf.GGUFReader's reading."""
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields)
    for key, field in fields.items():
        value, want = ours.metadata[key], field.contents()
        assert ours.metadata_types[key] == field.types[-1], key
        if isinstance(value, np.ndarray):
            assert value.dtype == np.asarray(field.parts[field.data[0]]).dtype, key
            np.testing.assert_array_equal(value, want, err_msg=key)
        else:
            assert value == want and type(value) is type(want), key
    assert [t.name for t in theirs.tensors] == list(ours.tensors)
    for t in theirs.tensors:
        info = ours.tensors[t.name]
        assert info.ne == tuple(int(d) for d in t.shape)
        assert info.shape == info.ne[::-1]
        assert (info.wtype.id, info.nbytes, info.offset, info.n_elements) == (
            t.tensor_type,
            t.n_bytes,
            t.data_offset,
            t.n_elements,
        )
    assert ours.alignment == theirs.alignment and ours.data_offset == theirs.data_offset


@pytest.fixture(scope="module")
def smollm2() -> tuple[GGUFFile, gguf.GGUFReader]:
    path = smollm2_path()
    return open_gguf(path), gguf.GGUFReader(path)  # the gguf package takes ~2 s to read it


def test_smollm2_agrees_with_the_gguf_package(smollm2: tuple[GGUFFile, gguf.GGUFReader]) -> None:
    f, theirs = smollm2
    assert_same_as_gguf_package(f, theirs)
    assert (f.version, f.architecture, len(f.tensors)) == (3, "llama", 272)
    assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
    assert f.metadata_types["tokenizer.ggml.token_type"] == GGUFValueType.INT32


def test_smollm2_tensors_dequantize_like_the_gguf_package(
    smollm2: tuple[GGUFFile, gguf.GGUFReader],
) -> None:
    """Q8_0 (token_embd), Q4_1 (a block's matrices) and F32 (norms) against gguf.quants."""
    f, theirs = smollm2
    names = {"token_embd.weight", "output_norm.weight"} | {
        n for n in f.tensors if n.startswith("blk.7.")
    }
    seen = set()
    for t in theirs.tensors:
        if t.name in names:
            want = gguf.quants.dequantize(t.data, t.tensor_type)
            got = f.dequantize(t.name)
            assert got.dtype == np.float32 and got.shape == f.tensors[t.name].shape
            np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=t.name)
            seen.add(f.tensors[t.name].wtype.name)
    assert seen == {"Q8_0", "Q4_1", "F32"}


@pytest.mark.parametrize("name", ["tq2_0", "tq1_0", "f32", "tq2_0-scaletensors"])
def test_peer_fixtures_agree_with_the_gguf_package(name: str) -> None:
    path = PEERS / f"bitnet-tiny-s1-{name}.gguf"
    assert_same_as_gguf_package(open_gguf(path), gguf.GGUFReader(path))


def test_every_peer_fixture_holds_the_f32_fixture_weights() -> None:
    """The README: all five files encode bit-identical weights (the scaletensors one as pure
    ternary weights times a separate `.scale` tensor). The I2_S one was written by bitnet.cpp."""
    f32 = open_gguf(PEERS / "bitnet-tiny-s1-f32.gguf")
    assert {t.wtype.name for t in f32.tensors.values()} == {"F32"}
    types_seen = set()
    for name in PEER_FILES:
        f = open_gguf(PEERS / f"bitnet-tiny-s1-{name}.gguf")
        weights = [n for n in f.tensors if not n.endswith(".scale")]
        assert weights == list(f32.tensors), name
        for tensor in weights:
            got = f.dequantize(tensor)
            scale = tensor.removesuffix(".weight") + ".scale"
            if scale in f.tensors:
                got = got * f.dequantize(scale)[0]
            np.testing.assert_array_equal(got, f32.dequantize(tensor), err_msg=f"{name} {tensor}")
            types_seen.add(f.tensors[tensor].wtype.name)
    assert {"TQ2_0", "TQ1_0", "I2_S", "F16", "F32"} <= types_seen
    i2s = open_gguf(PEERS / "bitnet-tiny-s1-i2_s.gguf")
    assert i2s.tensors["blk.0.attn_q.weight"].wtype.name == "I2_S"
    assert i2s.tensors["blk.0.attn_q.weight"].nbytes == 256 * 256 // 4 + 32


def test_file_api(tmp_path: Path) -> None:
    path = write(tmp_path, bytes(build_sample().buf))
    with open_gguf(path) as f:
        assert f.path == path and f.version == 3 and f.alignment == 32
        assert f.architecture == "llama" and f.size == path.stat().st_size
        info = f.tensors["norm.weight"]
        assert info.offset == f.data_offset and info.offset % 32 == 0
        view = f.tensor_bytes("norm.weight")
        assert view.dtype == np.uint8 and view.size == info.nbytes == 256
        assert not view.flags.owndata and not view.flags.writeable  # a view of the mmap
        assert view.tobytes() == path.read_bytes()[info.offset : info.offset + 256]
        with pytest.raises(GGUFError, match="no tensor named 'missing'"):
            f.tensor_bytes("missing")
    with pytest.raises(GGUFError, match="closed"):
        f.tensor_bytes("norm.weight")
    assert view.sum() >= 0  # views handed out stay valid after close
    assert open_gguf(write(tmp_path, one_f32_tensor(), "plain.gguf")).architecture is None


def test_dequantize_errors_name_the_file_and_tensor(tmp_path: Path) -> None:
    b = Builder().header(1, 0).tensor_info("w", (128,), 36, 0).pad()
    path = write(tmp_path, bytes(b.raw(b"\xff" * 32 + b"\0" * 32).buf))
    f = open_gguf(path)  # opening does not look at the data
    with pytest.raises(FormatError, match=rf"{path}: tensor w: .*code 3"):
        f.dequantize("w")


def test_version_2_and_lenient_layouts_are_read(tmp_path: Path) -> None:
    f = open_gguf(write(tmp_path, one_f32_tensor(version=2)))
    assert f.version == 2
    np.testing.assert_array_equal(f.dequantize("t"), np.arange(4, dtype=np.float32))
    # tensors out of file order with a gap, and a 0-dimensional tensor (ggml allows both)
    b = Builder().header(2, 0).tensor_info("b", (4,), 0, 64).tensor_info("a", (), 0, 0).pad()
    b.raw(np.float32(7).tobytes() + b"\0" * 60 + np.arange(4, dtype="<f4").tobytes())
    f = open_gguf(write(tmp_path, bytes(b.buf), "lenient.gguf"))
    assert f.tensors["a"].shape == () and f.dequantize("a") == 7
    np.testing.assert_array_equal(f.dequantize("b"), np.arange(4, dtype=np.float32))
    # a metadata-only file needs no padding after its header
    f = open_gguf(write(tmp_path, bytes(Builder().header(0, 1).kv("k", U8, 1).buf), "md.gguf"))
    assert f.metadata == {"k": 1} and f.tensors == {}


def test_every_value_type_is_read(tmp_path: Path) -> None:
    """Hand-built values of all 13 types, nested arrays and a 64-byte alignment."""
    kvs = [
        ("general.alignment", U32, 64),
        ("u8", U8, 255), ("i8", 1, -128), ("u16", 2, 65535), ("i16", 3, -32768),
        ("u32", U32, 2**32 - 1), ("i32", 5, -(2**31)), ("f32", F32, 0.5), ("b", BOOL, 0),
        ("s", STRING, "héllo"), ("u64", U64, 2**64 - 1), ("i64", I64, -(2**63)), ("f64", 12, -0.1),
        ("strings", ARRAY, (STRING, ["a", "", "ü"])), ("bools", ARRAY, (BOOL, [1, 0])),
        ("i16s", ARRAY, (3, [-1, 2])), ("deep", ARRAY, (ARRAY, [(ARRAY, [(F32, [1.5])])])),
        ("empty_strings", ARRAY, (STRING, [])), ("empty_arrays", ARRAY, (ARRAY, [])),
    ]  # fmt: skip
    f = open_gguf(write(tmp_path, one_f32_tensor(*kvs)))
    md, types = f.metadata, f.metadata_types
    assert f.alignment == 64 and f.data_offset % 64 == 0 and f.tensors["t"].offset % 64 == 0
    expected = {"u8": 255, "i8": -128, "u16": 65535, "i16": -32768, "u32": 2**32 - 1,
                "i32": -(2**31), "f32": 0.5, "b": False, "s": "héllo", "u64": 2**64 - 1,
                "i64": -(2**63), "f64": -0.1, "strings": ["a", "", "ü"],
                "empty_strings": [], "empty_arrays": []}  # fmt: skip
    for key, value in expected.items():
        assert md[key] == value and type(md[key]) is type(value), key
    assert [types[k] for k in ("u8", "i8", "u16", "i16", "f32", "b", "s", "f64")] == [
        GGUFValueType(t) for t in (0, 1, 2, 3, 6, 7, 8, 12)
    ]
    assert md["bools"].dtype == np.bool_ and md["bools"].tolist() == [True, False]
    assert md["i16s"].dtype == np.int16 and md["i16s"].tolist() == [-1, 2]
    assert md["deep"][0][0].dtype == np.float32 and md["deep"][0][0].tolist() == [1.5]
    assert types["deep"] == GGUFValueType.FLOAT32 and types["empty_arrays"] == GGUFValueType.ARRAY
    assert types["strings"] == GGUFValueType.STRING and types["bools"] == GGUFValueType.BOOL


def _tensors_file(*infos: tuple, data: int = 64) -> bytes:
    b = Builder().header(len(infos), 0)
    for info in infos:
        b.tensor_info(*info)
    return bytes(b.pad().raw(b"\0" * data).buf)


def _deep(levels: int) -> tuple:
    value: tuple = (U8, [1])
    for _ in range(levels - 1):
        value = (ARRAY, [value])
    return value


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return bytes(Builder().header(n_tensors, n_kv, version).buf)


BAD_FILES = {
    "empty": (b"", "0 bytes is too short"),
    "short": (b"GGUF\x03\0\0\0", "8 bytes is too short"),
    "magic": (b"GGML" + one_f32_tensor()[4:], "not a GGUF file"),
    "version 1": (_header(0, 0, 1), "version: 1 is not supported"),
    "version 4": (_header(0, 0, 4), "version: 4 is not supported"),
    "big-endian": (_header(0, 0, 3 << 24), "big-endian"),
    "kv count": (_header(0, 2**64 - 1), r"key-value count: count 18446744073709551615 cannot fit"),
    "tensor count": (_header(2**40, 0) + b"\0" * 64, "tensor count: count 1099511627776"),
    "key length": (
        _header(0, 1) + (2**64 - 1).to_bytes(8, "little") + b"k" * 8,
        r"metadata key 0 \(string of 18446744073709551615 bytes\)",
    ),
    "key utf-8": (
        bytes(Builder().header(0, 1).kv(b"\xff\xfe", U8, 1).buf),
        "metadata key 0: is not UTF-8",
    ),
    "duplicate key": (
        one_f32_tensor(("k", U8, 1), ("k", U8, 2)),
        "metadata key 'k': appears twice",
    ),
    "value type": (
        one_f32_tensor(("k", 13, b"")),
        "metadata key 'k': value type 13 is not a GGUF value type",
    ),
    "element type": (
        one_f32_tensor(("k", ARRAY, (99, []))),
        r"'k' \(array element type\): value type 99",
    ),
    "array count": (
        bytes(Builder().header(0, 1).string("k").u32(ARRAY).u32(U32).u64(2**62).buf),
        r"'k' \(4611686018427387904 values\): 18446744073709551616 bytes",
    ),
    "string array count": (
        bytes(Builder().header(0, 1).string("k").u32(ARRAY).u32(STRING).u64(2**61).buf),
        r"'k' \(array length\): count 2305843009213693952 cannot fit",
    ),
    "string in array": (
        bytes(Builder().header(0, 1).kv("k", ARRAY, (STRING, ["ok"])).buf)[:-1],
        r"'k'\[0\]: string at offset \d+ runs past the end",
    ),
    "utf-8 in array": (
        one_f32_tensor(("k", ARRAY, (STRING, ["ok", b"\xc3\x28"]))),
        r"'k'\[1\]: is not UTF-8",
    ),
    "too deep": (one_f32_tensor(("k", ARRAY, _deep(9))), "nested more than 8 deep"),
    "bool": (one_f32_tensor(("k", BOOL, 2)), "bool byte 2 is neither 0 nor 1"),
    "alignment 0": (one_f32_tensor(("general.alignment", U32, 0)), "0 is not a power of two"),
    "alignment 48": (one_f32_tensor(("general.alignment", U32, 48)), "48 is not a power of two"),
    "alignment huge": (
        one_f32_tensor(("general.alignment", U32, 2**31)),
        "2147483648 is not a power of two",
    ),
    "alignment type": (
        one_f32_tensor(("general.alignment", U64, 32)),
        "must be a UINT32 .* got UINT64",
    ),
    "architecture": (
        one_f32_tensor(("general.architecture", U32, 1)),
        "must be a string, got UINT32",
    ),
    "n_dims": (_tensors_file(("w", (1, 1, 1, 1, 1), 0, 0)), "tensor 'w': n_dims 5 is more than 4"),
    "ne 0": (_tensors_file(("w", (4, 0), 0, 0)), r"'w': ne\[1\] = 0 is not between 1"),
    "ne huge": (_tensors_file(("w", (2**63, 1), 0, 0)), r"ne\[0\] = 9223372036854775808"),
    "product huge": (_tensors_file(("w", (2**62, 2**62, 2**62, 2**62), 0, 0)), "past the end"),
    "type Q3_K": (
        _tensors_file(("w", (256,), 11, 0)),
        r"type 11 \(Q3_K in ggml\) is not supported",
    ),
    "type 37": (_tensors_file(("w", (128,), 37, 0)), "type 37 is I8_S in bitnet.cpp.*ambiguous"),
    "type 38": (_tensors_file(("w", (128,), 38, 0)), "type 38 is TL1 in bitnet.cpp.*ambiguous"),
    "type 39": (
        _tensors_file(("w", (128,), 39, 0)),
        "TL2 in bitnet.cpp and MXFP4 in upstream ggml",
    ),
    "type huge": (_tensors_file(("w", (4,), 2**32 - 1, 0)), "type 4294967295 is not supported"),
    "name long": (_tensors_file(("w" * 64, (4,), 0, 0)), "name of 64 bytes is longer than"),
    "duplicate tensor": (
        _tensors_file(("w", (4,), 0, 0), ("w", (4,), 0, 32)),
        "'w': appears twice",
    ),
    "unaligned": (
        _tensors_file(("w", (4,), 0, 16)),
        "offset 16 is not a multiple of the alignment 32",
    ),
    "past the end": (
        _tensors_file(("w", (32,), 0, 0)),
        r"F32 ne \[32\] takes 128 bytes at offset \d+, past",
    ),
    "offset huge": (_tensors_file(("w", (4,), 0, 2**64 - 32)), "past the end of the file"),
    "overlap": (
        _tensors_file(("a", (16,), 0, 0), ("b", (4,), 0, 32)),
        "'b': its bytes .* overlap tensor 'a'",
    ),
    "row blocks": (
        _tensors_file(("w", (31, 2), 8, 0)),
        "Q8_0 needs rows that are a multiple of 32",
    ),
    "i2_s blocks": (_tensors_file(("w", (64,), 36, 0)), "I2_S needs a multiple of 128 elements"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_refused_with_the_file_field_and_value(tmp_path: Path, case: str) -> None:
    data, message = BAD_FILES[case]
    path = write(tmp_path, data)
    with pytest.raises(GGUFError, match=message) as info:
        open_gguf(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unopenable_paths(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open: No such file"):
        open_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="cannot open: Is a directory"):
        open_gguf(tmp_path)


def test_every_prefix_of_a_valid_file_is_refused(tmp_path: Path) -> None:
    """Truncation anywhere in the header or the data gives GGUFError, never anything else."""
    data = bytes(build_sample().buf)
    last = list(open_gguf(write(tmp_path, data)).tensors.values())[-1]
    assert last.offset + last.nbytes == len(data)  # no padding at the end that could go unmissed
    for n in range(len(data)):
        with pytest.raises(GGUFError):
            open_gguf(write(tmp_path, data[:n]))
