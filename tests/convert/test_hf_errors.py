"""Bad Hugging Face checkpoints: one named error each (file, key or tensor, value), no output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers.hf_tiny import bf16, make_checkpoint, write_safetensors
from pybitnet.convert import convert
from pybitnet.errors import PyBitnetError


def checkpoint(tmp_path: Path, family: str = "bitnet", **config_changes) -> tuple[Path, dict]:
    folder = tmp_path / "ckpt"
    tensors = make_checkpoint(folder, family, seed=2)
    config = json.loads((folder / "config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder, tensors


def fails(folder: Path, *needles: str) -> None:
    out = folder.parent / "out.gguf"
    with pytest.raises(PyBitnetError) as info:
        convert("hf", folder, out)
    for needle in needles:
        assert needle in str(info.value)
    assert not out.exists()
    assert not list(folder.parent.glob(".out.gguf*"))  # no partial file left behind


QUANT = {"quant_method": "bitnet", "linear_class": "autobitlinear"}


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"model_type": None}, ["config.json", "model_type = None"]),
        ({"model_type": "gpt2"}, ["model_type = 'gpt2'"]),
        ({"quantization_config": {**QUANT, "linear_class": "foo"}}, ["linear_class = 'foo'"]),
        ({"quantization_config": {"quant_method": "gptq"}}, ["quant_method = 'gptq'"]),
        ({"quantization_config": {**QUANT, "use_rms_norm": True}}, ["use_rms_norm = True"]),
        ({"hidden_size": None}, ["config.json", "'hidden_size' is missing"]),
        ({"num_hidden_layers": "2"}, ["num_hidden_layers = '2'"]),
        ({"rope_theta": None}, ["rope_theta = None"]),
        ({"rope_scaling": {"rope_type": "llama3"}}, ["rope_scaling.rope_type = 'llama3'"]),
        ({"hidden_act": "gelu"}, ["hidden_act = 'gelu'"]),
        ({"intermediate_size": 256}, ["mlp.gate_proj.weight", "[128, 256]", "[256, 256]"]),
        ({"vocab_size": 200}, ["embed_tokens", "[300, 256]", "[200, 256]"]),
    ],
)
def test_bad_config(tmp_path: Path, changes, needles) -> None:
    fails(checkpoint(tmp_path, **changes)[0], *needles)


def test_llama_without_bitnet_quantization(tmp_path: Path) -> None:
    folder, _ = checkpoint(tmp_path, "llama", quantization_config=None)
    fails(folder, "without a bitnet quantization_config")


def test_tokenizer_larger_than_embedding(tmp_path: Path) -> None:
    folder, tensors = checkpoint(tmp_path, "bitnet", vocab_size=200)
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:200]
    write_safetensors(folder / "model.safetensors", tensors)
    fails(folder, "tokenizer.json")


def rewrite(folder: Path, tensors: dict, name: str, value: np.ndarray | None) -> None:
    tensors = dict(tensors)
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    write_safetensors(folder / "model.safetensors", tensors)


def test_packed_code_3(tmp_path: Path) -> None:
    folder, tensors = checkpoint(tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"  # the last ternary tensor: written mid-file
    packed = tensors[name].copy()
    packed[3, 5] |= 0b11 << 4
    rewrite(folder, tensors, name, packed)
    fails(folder, name, "packed code 3", f"row {3 + 2 * packed.shape[0]}, column 5")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_master(tmp_path: Path, bad: float) -> None:
    folder, tensors = checkpoint(tmp_path, "1bitllm")
    name = "model.layers.0.self_attn.v_proj.weight"
    master = tensors[name].copy()
    master[1, 2] = bad
    rewrite(folder, tensors, name, master)
    fails(folder, name, "non-finite")


@pytest.mark.parametrize("bad", [0.0, np.nan, -1.0])
def test_bad_weight_scale(tmp_path: Path, bad: float) -> None:
    folder, tensors = checkpoint(tmp_path)
    name = "model.layers.0.self_attn.k_proj.weight_scale"
    rewrite(folder, tensors, name, bf16(np.array([bad], np.float32)))
    fails(folder, name, "finite positive scale")


def test_unknown_and_missing_tensors(tmp_path: Path) -> None:
    folder, tensors = checkpoint(tmp_path)
    rewrite(folder, tensors, "model.layers.0.mystery.weight", np.zeros(4, "<f4"))
    fails(folder, "'model.layers.0.mystery.weight'", "no place in a GGUF bitnet-b1.58 model")
    rewrite(folder, tensors, "model.layers.1.mlp.ffn_sub_norm.weight", None)
    fails(folder, "no model.layers.1.mlp.ffn_sub_norm or mlp.ffn_layernorm.weight")
    rewrite(folder, tensors, "model.layers.0.self_attn.o_proj.weight_scale", None)
    fails(folder, "no tensor 'model.layers.0.self_attn.o_proj.weight_scale'")


def test_layout_that_the_class_does_not_load(tmp_path: Path) -> None:
    """1bitLLM's masters are float; a packed weight there has no transformers class."""
    folder, tensors = checkpoint(tmp_path, "1bitllm")
    name = "model.layers.0.mlp.up_proj.weight"
    rewrite(folder, tensors, name, np.zeros((128, 256), np.uint8))
    fails(folder, name, "dtype U8")
