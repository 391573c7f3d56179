"""`convert --from hf` on tiny checkpoints written by hand (tests/helpers/hf_tiny.py): each family
and layout converts, and the converted model computes what transformers' classes compute."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.hf_tiny import HFDecoder, make_checkpoint, pack, write_safetensors
from pybitnet import formats, load
from pybitnet.cli import app
from pybitnet.convert import convert
from pybitnet.convert.hf import unpack_hf
from pybitnet.errors import ModelError
from pybitnet.gguf import open_gguf
from pybitnet.model.reference import ReferenceModel

SENTENCEPIECE = Path(__file__).resolve().parents[1] / "fixtures" / "bitllama2c" / "tokenizer.model"
PROMPT = [1, 50, 120, 7, 260, 33, 99, 12, 257, 3]
CASES = [  # (family, linear_class, GGUF type)
    ("bitnet", "autobitlinear", "I2_S"),
    ("bitnet", "bitlinear", "TQ2_0"),
    ("bitnet-master", None, "TQ1_0"),
    ("1bitllm", None, "I2_S"),
    ("llama", "bitlinear", "I2_S"),
    ("llama", "autobitlinear", "TQ2_0"),
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_unpack_follows_transformers_docstring_example() -> None:
    """The example of transformers' unpack_weights docstring (integrations/bitnet.py)."""
    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], np.uint8)
    expected = [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]]
    np.testing.assert_array_equal(unpack_hf(packed, "example"), expected)


@pytest.mark.parametrize(("family", "linear_class", "wtype"), CASES)
def test_logits_match_transformers_semantics(tmp_path: Path, family, linear_class, wtype) -> None:
    tensors = make_checkpoint(tmp_path / "ckpt", family, seed=3, linear_class=linear_class or "")
    out = convert("hf", tmp_path / "ckpt", tmp_path / "m.gguf", weight_type=wtype)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    hf = HFDecoder(tensors, config).logits(PROMPT)
    model = load(out, kv_cache="f32")  # as transformers keeps it
    assert model.config.arch == {"bitnet": "bitnet-b1.58", "1bitllm": "bitnet"}.get(
        family.removesuffix("-master"), "llama"
    )
    # The float64 reference computes what transformers' classes compute, up to the rare int8
    # activation that rounds the other way (its s_x is float32, docs/SPEC.md §1); a wrong scale
    # direction or RoPE order costs far more (test_mistakes_are_caught).
    reference = ReferenceModel(model.weights)
    ref = reference.forward(PROMPT, reference.new_cache())
    assert cosines(ref, hf).min() > 0.99999
    np.testing.assert_array_equal(ref.argmax(1), hf.argmax(1))
    # the float32 engine: more such flips
    engine = model.logits(PROMPT)
    assert cosines(engine, hf).min() > 0.999
    top2 = np.sort(hf, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    np.testing.assert_array_equal(engine.argmax(1)[clear], hf.argmax(1)[clear])


def test_weight_scale_direction_follows_linear_class(tmp_path: Path) -> None:
    """The same packed tensors: BitLinear divides by weight_scale, AutoBitLinear multiplies."""
    scales = {}
    for linear_class in ("bitlinear", "autobitlinear"):
        folder = tmp_path / linear_class
        tensors = make_checkpoint(folder, "bitnet", seed=5, linear_class=linear_class)
        convert("hf", folder, folder / "m.gguf")
        f = open_gguf(folder / "m.gguf")
        info = f.tensors["blk.1.ffn_down.weight"]
        codes, scale = formats.unpack_ternary(info.wtype, f.tensor_bytes(info.name), info.shape)
        packed = tensors["model.layers.1.mlp.down_proj.weight"]
        np.testing.assert_array_equal(codes, unpack_hf(packed, "down_proj"))
        scales[linear_class] = float(scale[0, 0])
    bits = tensors["model.layers.1.mlp.down_proj.weight_scale"].view(np.ndarray)
    ws = float((bits.astype(np.uint32) << 16).view(np.float32)[0])
    assert scales["autobitlinear"] == pytest.approx(ws, rel=1e-7)
    assert scales["bitlinear"] == pytest.approx(1 / ws, rel=1e-7)


def test_packed_and_master_siblings_convert_to_the_same_file(tmp_path: Path) -> None:
    """A packed checkpoint made from a master by absmean (numpy, here) converts byte for byte
    into what the master converts into."""
    master = make_checkpoint(tmp_path / "master", "bitnet-master", seed=7)
    packed = {}
    for name, array in master.items():
        if ".mlp." in name and "norm" not in name or "_proj" in name:
            w = (array.view(np.ndarray).astype(np.uint32) << 16).view(np.float32)
            s = np.float32(max(np.abs(w).mean(dtype=np.float64), 1e-5))
            packed[name] = pack(np.clip(np.rint(w / s), -1, 1).astype(np.int8))
            packed[name.replace(".weight", ".weight_scale")] = np.array([s], "<f4")
        else:
            packed[name] = array
    folder = tmp_path / "packed"
    make_checkpoint(folder, "bitnet", seed=7)  # config and tokenizer; weights replaced below
    write_safetensors(folder / "model.safetensors", packed)
    a = convert("hf", tmp_path / "master", tmp_path / "a.gguf").read_bytes()
    b = convert("hf", folder, tmp_path / "b.gguf").read_bytes()
    assert a.replace(b"master", b"packed") == b


def test_cli_convert_types(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "ckpt", "llama", seed=1, linear_class="bitlinear")
    out = tmp_path / "m.gguf"
    args = ["convert", "--from", "hf", str(tmp_path / "ckpt"), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--type", "TQ2_0", "--embedding-type", "Q8_0"])
    assert result.exit_code == 0, result.output
    f = open_gguf(out)
    assert f.tensors["token_embd.weight"].wtype.name == "Q8_0"
    assert f.tensors["output.weight"].wtype.name == "Q8_0"
    assert f.tensors["blk.0.attn_q.weight"].wtype.name == "TQ2_0"
    assert f.tensors["blk.0.attn_q.scale"].wtype.name == "F32"
    assert f.metadata["general.architecture"] == "llama"
    result = CliRunner().invoke(app, [*args, "--type", "F16"])
    assert result.exit_code == 2 and "--type F16" in result.stderr


@pytest.mark.parametrize("mistake", ["scale direction", "rope order"])
def test_mistakes_are_caught(tmp_path: Path, monkeypatch, mistake) -> None:
    """The other weight_scale direction, or llama's q/k rows left in HF's order, is far outside
    the tolerances above: the logits test pins both."""
    from pybitnet.convert import hf, hf_config

    if mistake == "scale direction":
        swapped = {"bitlinear": "multiply", "autobitlinear": "divide"}
        monkeypatch.setattr(hf_config, "LINEAR_CLASSES", swapped)
    else:
        monkeypatch.setattr(hf, "_adjacent_pairs_rows", lambda codes, heads: codes)
    tensors = make_checkpoint(tmp_path / "ckpt", "llama", seed=3, linear_class="bitlinear")
    out = convert("hf", tmp_path / "ckpt", tmp_path / "m.gguf")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    hf_logits = HFDecoder(tensors, config).logits(PROMPT)
    assert cosines(load(out).logits(PROMPT), hf_logits).min() < 0.99


def test_1bitllm_sentencepiece_tokenizer(tmp_path: Path) -> None:
    """1bitLLM's folder holds LLaMA's tokenizer.model: it is read as SentencePiece (the
    embedding may have more rows than pieces, as 1bitLLM's 32002 against 32000)."""
    folder = tmp_path / "ckpt"
    make_checkpoint(folder, "1bitllm", seed=1, vocab=520)
    shutil.copy(SENTENCEPIECE, folder / "tokenizer.model")
    model = load(convert("hf", folder, tmp_path / "m.gguf"))
    assert model.file.metadata["tokenizer.ggml.model"] == "llama"
    assert model.tokenizer.vocab_size == 512 and model.config.vocab_size == 520
    make_checkpoint(folder, "1bitllm", seed=1, vocab=500)
    with pytest.raises(ModelError, match="512 pieces, more than the embedding's 500 rows"):
        convert("hf", folder, tmp_path / "m.gguf")
