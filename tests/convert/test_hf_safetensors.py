"""The safetensors reader: zero-copy views, every header field checked, sharded checkpoints."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers.hf_tiny import bf16, write_safetensors
from pybitnet.convert import safetensors
from pybitnet.convert.safetensors import Checkpoint, SafetensorsFile
from pybitnet.errors import ModelError


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def test_views_are_zero_copy_and_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.normal(size=(3, 5)).astype("<f4"),
        "f16": rng.normal(size=(7,)).astype("<f2"),
        "u8": rng.integers(0, 256, (2, 4, 3)).astype(np.uint8),
        "bf16": bf16(np.array([1.5, -2.0, 0.25], np.float32)),
        "empty": np.zeros((0, 4), "<f4"),
    }
    write_safetensors(tmp_path / "a.safetensors", tensors)
    f = SafetensorsFile(tmp_path / "a.safetensors")
    for name, array in tensors.items():
        view = f.array(name)
        assert view.shape == array.shape
        np.testing.assert_array_equal(view, array.view(np.ndarray))
        assert not view.flags.writeable and not view.flags.owndata
    assert f.array("bf16").dtype == np.uint16
    f.release("f32")  # pages dropped, the data reads back the same
    np.testing.assert_array_equal(f.array("f32"), tensors["f32"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype 'F17'"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, r"shape \[-1\]"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "takes 8 bytes"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "run past the 4 bytes"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, r"data_offsets \[0\]"),
        ({"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}, "takes"),
        ("nonsense", "is not an object"),
    ],
)
def test_bad_entries_name_file_tensor_and_value(tmp_path: Path, entry, message) -> None:
    path = raw_file(tmp_path / "bad.safetensors", {"w": entry}, bytes(4))
    with pytest.raises(ModelError, match=message) as info:
        SafetensorsFile(path)
    assert str(path) in str(info.value) and "'w'" in str(info.value)


def test_bad_headers(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="header length 99999"):
        SafetensorsFile(raw_file(tmp_path / "a", {}, length=99999))
    (tmp_path / "b").write_bytes(b"\x01\x00")
    with pytest.raises(ModelError, match="too short"):
        SafetensorsFile(tmp_path / "b")
    (tmp_path / "c").write_bytes(struct.pack("<Q", 3) + b"{x}")
    with pytest.raises(ModelError, match="not JSON"):
        SafetensorsFile(tmp_path / "c")
    overlap = {
        "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
    }
    with pytest.raises(ModelError, match="'a' and 'b' overlap"):
        SafetensorsFile(raw_file(tmp_path / "d", overlap, bytes(6)))
    odd = {"i": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}
    with pytest.raises(ModelError, match="dtype I64"):
        SafetensorsFile(raw_file(tmp_path / "e", odd, bytes(8))).array("i")


def test_sharded_checkpoint(tmp_path: Path) -> None:
    a, b = np.arange(6, dtype="<f4").reshape(2, 3), np.arange(4, dtype=np.uint8)
    write_safetensors(tmp_path / "s1.safetensors", {"a": a})
    write_safetensors(tmp_path / "s2.safetensors", {"b": b})
    index = {"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = Checkpoint(tmp_path)
    assert sorted(ckpt) == ["a", "b"]
    np.testing.assert_array_equal(ckpt.array("a"), a)
    np.testing.assert_array_equal(ckpt.array("b"), b)
    assert ckpt.file("b") == tmp_path / "s2.safetensors"
    with pytest.raises(ModelError, match="no tensor 'c'"):
        ckpt.array("c")


@pytest.mark.parametrize(
    ("weight_map", "message"),
    [
        ({"a": "s1.safetensors", "b": "s3.safetensors"}, "'b': shard 's3.safetensors' is missing"),
        ({"a": "../s1.safetensors"}, "is not a file name"),
        ({"z": "s1.safetensors"}, "'z' is not in its shard"),
        ([1, 2], "weight_map"),
    ],
)
def test_bad_index(tmp_path: Path, weight_map, message) -> None:
    write_safetensors(tmp_path / "s1.safetensors", {"a": np.zeros(2, "<f4")})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelError, match=message) as info:
        Checkpoint(tmp_path)
    assert str(index) in str(info.value)


def test_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither model.safetensors nor"):
        Checkpoint(tmp_path)


def test_streaming_writer_round_trips(tmp_path: Path) -> None:
    a = np.arange(12, dtype="<f4").reshape(3, 4)
    b = np.arange(5, dtype=np.uint8)
    specs = [("a", "F32", (3, 4), lambda: a), ("b", "U8", (5,), lambda: b)]
    f = SafetensorsFile(safetensors.write_safetensors(tmp_path / "w.safetensors", specs))
    np.testing.assert_array_equal(f.array("a"), a)
    np.testing.assert_array_equal(f.array("b"), b)
    assert (f.tensors["a"].begin - 8) % 8 == 0
    with pytest.raises(ModelError, match="'b': data of 4 bytes"):
        safetensors.write_safetensors(tmp_path / "x", [("b", "U8", (5,), lambda: b[:4])])
