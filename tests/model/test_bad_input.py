"""Bad models and prompts through the public API (pybitnet.load, Model.complete / generate):
each raises a pybitnet.errors exception whose message names the file, the field and the value.

The broken files are a small synthetic model rewritten with one defect each.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import pybitnet
from helpers.gguf_files import rewrite
from pybitnet.convert.synthetic import make_model
from pybitnet.errors import ModelError
from pybitnet.gguf import TensorSpec

SHAPE = dict(vocab=300, dim=128, layers=2, heads=4, kv_heads=2, ffn=256, ctx=32)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("good") / "good.gguf", **SHAPE)


def assert_names(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_the_unbroken_model_loads_and_generates(good: Path) -> None:
    model = pybitnet.load(rewrite(good, good.with_name("copy.gguf")))
    assert len(model.complete("a b", max_tokens=3, temperature=0).token_ids) == 3


def test_unknown_architecture(good: Path, tmp_path: Path) -> None:
    path = rewrite(
        good, tmp_path / "m.gguf", lambda md: md.update({"general.architecture": "rwkv"})
    )
    with pytest.raises(ModelError) as error:
        pybitnet.load(path)
    assert_names(error, str(path), "general.architecture", "'rwkv'")


def test_missing_tensor(good: Path, tmp_path: Path) -> None:
    def drop(specs: list[TensorSpec]) -> None:
        specs[:] = [s for s in specs if s.name != "blk.1.ffn_up.weight"]

    path = rewrite(good, tmp_path / "m.gguf", tensors=drop)
    with pytest.raises(ModelError) as error:
        pybitnet.load(path)
    assert_names(error, str(path), "blk.1.ffn_up.weight", "missing")


def test_tensor_shape_mismatch(good: Path, tmp_path: Path) -> None:
    def widen_attn_k(specs: list[TensorSpec]) -> None:
        """blk.0.attn_k takes attn_q's [128, 128] data where the config needs [128, 64]."""
        named = {s.name: i for i, s in enumerate(specs)}
        q = specs[named["blk.0.attn_q.weight"]]
        specs[named["blk.0.attn_k.weight"]] = replace(q, name="blk.0.attn_k.weight")

    path = rewrite(good, tmp_path / "m.gguf", tensors=widen_attn_k)
    with pytest.raises(ModelError) as error:
        pybitnet.load(path)
    assert_names(error, str(path), "blk.0.attn_k.weight", "[128, 128]", "[128, 64]")


def add_tokens(md: dict, n: int = 20) -> None:
    """n more normal tokens in the vocabulary than token_embd has rows."""
    md["tokenizer.ggml.tokens"] = [*md["tokenizer.ggml.tokens"], *(f"▁extra{i}" for i in range(n))]
    scores = md["tokenizer.ggml.scores"]
    md["tokenizer.ggml.scores"] = np.concatenate([scores, scores.min() - 1 - np.arange(n)])
    types = md["tokenizer.ggml.token_type"]
    md["tokenizer.ggml.token_type"] = np.concatenate([types, np.full(n, 1, types.dtype)])


def test_tokenizer_larger_than_the_vocabulary(good: Path, tmp_path: Path) -> None:
    def more_tokens_than_rows(md: dict) -> None:
        add_tokens(md)
        md["bitnet.vocab_size"] = np.uint32(300)  # agrees with token_embd, not the tokenizer

    path = rewrite(good, tmp_path / "m.gguf", more_tokens_than_rows)
    with pytest.raises(ModelError) as error:
        pybitnet.load(path)
    assert_names(error, str(path), "tokenizer", "320 tokens", "token_embd.weight", "300 rows")


def test_tokenizer_larger_than_token_embd_without_vocab_size(good: Path, tmp_path: Path) -> None:
    """Without a vocab_size key the vocabulary is the token list, which token_embd must fit."""
    path = rewrite(good, tmp_path / "m.gguf", add_tokens)
    with pytest.raises(ModelError) as error:
        pybitnet.load(path)
    assert_names(error, str(path), "token_embd.weight", "[128, 300]", "[128, 320]")


@pytest.mark.parametrize("n_ctx", [None, 8])
def test_prompt_longer_than_the_context(good: Path, n_ctx: int | None) -> None:
    model = pybitnet.load(good, n_ctx=n_ctx)
    limit = n_ctx or SHAPE["ctx"]
    prompt = " ".join(["a"] * 40)  # BOS + 40 tokens "▁a"
    assert len(model.tokenize(prompt)) == 41
    with pytest.raises(ModelError) as error:
        model.generate(prompt, max_tokens=4)
    assert_names(error, str(good), "prompt", "41 tokens", f"context holds {limit}")
    with pytest.raises(ModelError) as error:
        model.complete(list(range(3, 3 + limit)), max_tokens=1)  # a full context leaves no room
    assert_names(error, str(good), f"{limit} tokens", f"context holds {limit}")


def test_token_ids_are_checked_against_the_file():
    model = pybitnet.load()
    name = str(model.path)
    with pytest.raises(ModelError, match=rf"{re.escape(name)}: token id 5000 is outside"):
        model.complete([5000])
    with pytest.raises(ModelError, match=rf"{re.escape(name)}: token id -1 is outside"):
        model.logits([1, -1])
    for ids in ([], [1] * (model.n_ctx + 1)):
        with pytest.raises(ModelError, match=rf"{re.escape(name)}: logits need 1 to 512"):
            model.logits(ids)
