"""`pybitnet inspect`: the report's content, and that it reads no tensor data."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf_builders import ARRAY, F32, STRING, U32, Builder
from typer.testing import CliRunner

from pybitnet import formats
from pybitnet.cli import app
from pybitnet.errors import FormatError
from pybitnet.gguf import TensorSpec, open_gguf, write_gguf

TENSORS = [  # name, numpy shape, type
    ("token_embd.weight", (300, 256), "F16"),
    ("output_norm.weight", (256,), "F32"),
    ("blk.0.attn_q.weight", (256, 256), "I2_S"),
    ("blk.0.ffn_up.weight", (512, 256), "I2_S"),
    ("blk.0.attn_norm.weight", (256,), "F32"),
]


def nbytes(shape: tuple[int, ...], type_name: str) -> int:
    return formats.tensor_nbytes(formats.weight_type(type_name), shape[-1], int(np.prod(shape)))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A small model whose I2_S tensors hold garbage (code 3 everywhere): inspect must not care."""
    metadata = {
        "general.architecture": "bitnet-b1.58",
        "general.name": "inspect test",
        "general.file_type": 40,
        "bitnet-b1.58.block_count": 1,
        "bitnet-b1.58.embedding_length": 256,
        "bitnet-b1.58.rope.freq_base": 500000.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(300)],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.chat_template": "{{ messages }}",
    }
    specs = [TensorSpec(n, s, t, np.full(nbytes(s, t), 0xFF, np.uint8)) for n, s, t in TENSORS]
    write_gguf(tmp_path / "m.gguf", metadata, specs)
    return tmp_path / "m.gguf"


def test_json_report(model: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", "--json", str(model)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tensors"] == [
        {"name": n, "shape": list(s), "type": t, "bytes": nbytes(s, t)} for n, s, t in TENSORS
    ]
    assert report["types"] == {
        "F16": {"count": 1, "bytes": 300 * 256 * 2},
        "F32": {"count": 2, "bytes": 2 * 256 * 4},
        "I2_S": {"count": 2, "bytes": (256 * 256 + 512 * 256) // 4 + 2 * 32},
    }
    assert report["tensor_bytes"] == sum(e["bytes"] for e in report["types"].values())
    assert report["parameters"] == 300 * 256 + 2 * 256 + 256 * 256 + 512 * 256
    assert report["architecture"] == "bitnet-b1.58" and report["file_type"] == 40
    assert report["hyperparameters"] == {
        "block_count": 1, "embedding_length": 256, "rope.freq_base": 500000.0
    }  # fmt: skip
    assert report["tokenizer"] == {
        "model": "gpt2", "pre": "llama-bpe", "vocab_size": 300, "bos_token_id": 1,
        "eos_token_id": 2, "has_chat_template": True,
    }  # fmt: skip
    assert report["file_bytes"] == model.stat().st_size and report["gguf_version"] == 3
    assert "sha256" not in report
    with pytest.raises(FormatError, match="code 3"):
        open_gguf(model).dequantize("blk.0.attn_q.weight")  # the data is garbage indeed


def test_sha256_only_when_asked(model: Path) -> None:
    report = json.loads(
        CliRunner().invoke(app, ["inspect", "--json", "--sha256", str(model)]).stdout
    )
    assert report["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_terminal_tables(model: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", "--sha256", str(model)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    for text in ("bitnet-b1.58", "block_count", "llama-bpe", "blk.0.ffn_up.weight", "512 x 256",
                 "I2_S", "49,216", "5 tensors", sha):  # fmt: skip
        assert text in result.stdout, text


def test_bad_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 30)
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "bad.gguf")])
    assert result.exit_code == 2 and "version: 0" in result.stderr


def sparse_2b_model(path: Path) -> int:
    """The header of microsoft/bitnet-b1.58-2B-4T's GGUF (332 tensors, 128256 tokens) followed by
    1.2 GB of tensor data that is never written: a sparse file, mostly holes."""
    vocab, dim, ffn, kv = 128256, 2560, 6912, 640
    tensors = [("token_embd.weight", (dim, vocab), 1), ("output_norm.weight", (dim,), 0)]
    for i in range(30):
        tensors += [
            (f"blk.{i}.{n}.weight", (dim,), 0) for n in ("attn_norm", "ffn_norm", "attn_sub_norm")
        ]
        tensors += [(f"blk.{i}.ffn_sub_norm.weight", (ffn,), 0)]
        tensors += [(f"blk.{i}.{n}.weight", ne, 36) for n, ne in (
            ("attn_q", (dim, dim)), ("attn_k", (dim, kv)), ("attn_v", (dim, kv)),
            ("attn_output", (dim, dim)), ("ffn_gate", (dim, ffn)), ("ffn_up", (dim, ffn)),
            ("ffn_down", (ffn, dim)))]  # fmt: skip
    kvs = [("general.architecture", STRING, "bitnet-b1.58"),
           ("bitnet-b1.58.block_count", U32, 30),
           ("tokenizer.ggml.tokens", ARRAY, (STRING, [f"tok{i}" for i in range(vocab)])),
           ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * vocab))]  # fmt: skip
    b = Builder().header(len(tensors), len(kvs))
    for entry in kvs:
        b.kv(*entry)
    offset = 0
    for name, ne, type_id in tensors:
        b.tensor_info(name, ne, type_id, offset)
        n = int(np.prod(ne))
        size = n // 4 + 32 if type_id == 36 else n * (2 if type_id == 1 else 4)
        offset += -(-size // 32) * 32
    b.pad()
    with open(path, "wb") as fh:
        fh.write(b.buf)
        fh.truncate(len(b.buf) + offset)
    return len(tensors)


@pytest.mark.slow
def test_inspect_reads_no_tensor_data(tmp_path: Path) -> None:
    """On a 1.2 GB 2B-shaped file, inspect's resident memory grows by far less than the 656 MB
    embedding it would map in if it read the data (its time is in benchmarks/, not asserted)."""
    path = tmp_path / "2b.gguf"
    n_tensors = sparse_2b_model(path)
    assert path.stat().st_size > 1_100_000_000
    code = (
        "import json, resource, sys, time\n"
        "from pybitnet.gguf.inspect import inspect_gguf\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter(); report = inspect_gguf(sys.argv[1]); t = time.perf_counter() - t\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'seconds': t, 'grown_kib': grown, 'types': report['types'],\n"
        "    'tensors': len(report['tensors']), 'vocab': report['tokenizer']['vocab_size']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tensors"] == n_tensors == 332 and result["vocab"] == 128256
    assert result["types"]["I2_S"]["count"] == 210
    assert result["grown_kib"] < 100 * 1024, result
