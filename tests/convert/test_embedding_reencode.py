"""`pybitnet convert --from gguf --embedding-type T`: an existing model with its embedding (and
untied output layer) in another ggml type, everything else copied byte for byte; rows that are
not whole 256-blocks of a K-quant take llama.cpp's fallback type."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.tokenizer_files import smollm2_path
from pybitnet import formats, generate, kernels
from pybitnet.cli import app
from pybitnet.convert import convert
from pybitnet.convert.synthetic import make_model
from pybitnet.data import default_model_path
from pybitnet.errors import ModelError
from pybitnet.gguf import open_gguf


@pytest.fixture(scope="module")
def tq2_model(tmp_path_factory) -> Path:
    """A small TQ2_0 model (the gguf package reads TQ2_0, not I2_S) with an F16 embedding."""
    path = tmp_path_factory.mktemp("src") / "tiny-tq2.gguf"
    return make_model(path, "tiny", arch="bitnet", weight_type="TQ2_0", dim=256, ffn=512)


@pytest.mark.parametrize("etype", ["Q6_K", "Q4_K", "Q8_0", "BF16"])
def test_the_embedding_is_re_encoded_and_nothing_else_changes(tq2_model, tmp_path, etype) -> None:
    src, dst = tq2_model, tmp_path / "out.gguf"
    result = CliRunner().invoke(
        app, ["convert", str(src), "--from", "gguf", "-o", str(dst), "--embedding-type", etype]
    )
    assert result.exit_code == 0, result.output
    assert f"token_embd.weight: F16 -> {etype}" in result.output
    with open_gguf(src) as a, open_gguf(dst) as b:
        assert b.metadata_types == a.metadata_types
        assert all(np.array_equal(b.metadata[k], v) for k, v in a.metadata.items())
        assert list(b.tensors) == list(a.tensors)
        for name, info in a.tensors.items():
            if name == "token_embd.weight":
                assert b.tensors[name].wtype.name == etype
                expected = kernels.quantize(etype, a.dequantize(name), "numpy")
                np.testing.assert_array_equal(b.tensor_bytes(name), expected)
            else:
                assert b.tensors[name].wtype == info.wtype
                np.testing.assert_array_equal(b.tensor_bytes(name), a.tensor_bytes(name))
    # the gguf package (llama.cpp's own reader) reads the tensor as we wrote it
    tensor = next(t for t in gguf.GGUFReader(dst).tensors if t.name == "token_embd.weight")
    shape = tuple(int(d) for d in reversed(tensor.shape))
    ours = formats.dequantize(etype, np.asarray(tensor.data).view(np.uint8).ravel(), shape)
    np.testing.assert_array_equal(gguf.quants.dequantize(tensor.data, tensor.tensor_type), ours)
    m = generate.load(dst)
    assert m.engine.output_type == etype
    logits = m.engine.forward([1, 2, 3], m.engine.new_cache(16))
    assert logits.shape == (3, m.config.vocab_size) and np.isfinite(logits).all()


def test_rows_that_are_not_whole_super_blocks_take_llama_cpps_fallback(tmp_path: Path) -> None:
    dst = tmp_path / "smollm2-q6k.gguf"
    convert("gguf", smollm2_path(), dst, embedding_type="q6_k")
    with open_gguf(dst) as f:
        assert f.tensors["token_embd.weight"].wtype.name == "Q8_0"  # rows of 576
    with pytest.raises(ModelError, match="rows of 576\\): llama.cpp would store it in Q5_0"):
        convert("gguf", smollm2_path(), tmp_path / "q4k.gguf", embedding_type="q4_k")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give --embedding-type"),
        ({"embedding_type": "q6_k", "weight_type": "TQ2_0"}, "--type TQ2_0: a gguf model keeps"),
        ({"embedding_type": "TQ2_0"}, "--embedding-type TQ2_0 must be a float or Q type"),
        ({"embedding_type": "q7"}, "unknown weight type 'q7'"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(Exception, match=message) as caught:
        convert("gguf", default_model_path(), tmp_path / "x.gguf", **options)
    assert "\n" not in str(caught.value) and not (tmp_path / "x.gguf").exists()
