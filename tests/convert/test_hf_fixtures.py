"""transformers is the oracle: each checkpoint of tests/fixtures/hf/ (written by transformers'
own classes, goldens recorded by scripts/record_hf_fixtures.py) converts, and the engine's
logits and greedy continuation match transformers'. The engine keeps a float32 KV cache here,
as transformers does: the prompts are chosen robust to float32 rounding, not to float16's."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from pybitnet import formats, load
from pybitnet.convert import convert
from pybitnet.convert.safetensors import Checkpoint
from pybitnet.gguf import open_gguf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
NEAR_TIE = 0.05  # logit margin under which float32 rounding may pick either token
ARCHS = {
    "bitnet-b1.58-2b4t": "bitnet-b1.58",
    "bitnet-b1.58-2b4t-bf16": "bitnet-b1.58",
    "1bitllm-bitnet-b1.58": "bitnet",
    "llama-1.58bit": "llama",
}


@functools.cache
def goldens() -> dict:
    return json.loads((FIXTURES / "goldens.json").read_text())["fixtures"]


@functools.cache
def converted(name: str, tmp: Path) -> Path:
    return convert("hf", FIXTURES / name, tmp / f"{name}.gguf")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf")


def test_every_fixture_is_covered() -> None:
    assert sorted(goldens()) == sorted(ARCHS)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_logits_match_transformers(tmp: Path, name: str) -> None:
    """Cosine >= 0.9999 per position, the same top-1 wherever transformers' margin exceeds 0.05
    (the recorder keeps prompts that transformers computes alike in float32 and float64, so no
    int8 activation sits on a rounding boundary)."""
    model = load(converted(name, tmp), kv_cache="f32")
    assert model.config.arch == ARCHS[name]
    for prompt in goldens()[name]["prompts"]:
        expected = np.asarray(prompt["logits"])
        logits = model.logits(prompt["ids"])
        assert cosines(logits, expected).min() >= 0.9999, prompt["ids"]
        clear = np.asarray(prompt["margins"]) > NEAR_TIE
        np.testing.assert_array_equal(logits.argmax(1)[clear], expected.argmax(1)[clear])


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_greedy_continuation_matches_up_to_the_first_near_tie(tmp: Path, name: str) -> None:
    model = load(converted(name, tmp), kv_cache="f32")
    for prompt in goldens()[name]["prompts"]:
        expected, margins = prompt["greedy"], prompt["greedy_margins"]
        n = first_near_tie(margins)  # the near-tie token itself may differ
        got = model.complete(prompt["ids"], max_tokens=len(expected), temperature=0).token_ids
        assert got[:n] == expected[:n], prompt["ids"]


def first_near_tie(margins: list[float]) -> int:
    """How many greedy tokens come before the first whose margin is a near-tie."""
    return next((i for i, m in enumerate(margins) if m < NEAR_TIE), len(margins))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_run_on_the_folder_tells_transformers_greedy_story(tmp: Path, name: str, monkeypatch):
    """`pybitnet run -m DIR PROMPT` as a user types it: the folder is converted into the cache
    on first use, and the text continues as transformers' greedy continuation does."""
    from typer.testing import CliRunner

    from pybitnet.cli import app

    monkeypatch.setenv("PYBITNET_CACHE", str(tmp / "cache"))
    prompt = goldens()[name]["prompts"][0]
    model = load(converted(name, tmp), kv_cache="f32")
    if model.tokenize(prompt["text"]) != prompt["ids"]:
        pytest.skip(f"{name}: its first prompt was not given as plain text")
    n = first_near_tie(prompt["greedy_margins"])
    args = ["run", "-m", str(FIXTURES / name), prompt["text"], "--temperature", "0", "--json"]
    args += ["--kv-cache", "f32"]
    result = CliRunner().invoke(app, [*args, "--max-tokens", str(len(prompt["greedy"]))])
    assert result.exit_code == 0, (result.output, result.exception)
    got = json.loads(result.stdout.strip().splitlines()[-1])["token_ids"]
    assert got[:n] == prompt["greedy"][:n]


def test_packed_codes_and_scale_are_absmean_of_the_master(tmp: Path) -> None:
    """2B-4T packed and its bf16 master describe the same ternary weights (the recorder packed
    the master's absmean codes with transformers' pack_weights and stored its scale in bf16):
    this pins how packed codes unpack and which way weight_scale goes (AutoBitLinear
    multiplies)."""
    info = Checkpoint(FIXTURES / "bitnet-b1.58-2b4t").info(
        "model.layers.0.mlp.up_proj.weight_scale"
    )
    assert info.dtype == "BF16"
    packed, master = (
        open_gguf(converted(n, tmp)) for n in ("bitnet-b1.58-2b4t", "bitnet-b1.58-2b4t-bf16")
    )
    ternary = [n for n, t in packed.tensors.items() if t.wtype.ternary]
    assert len(ternary) == 7 * 2
    for name in ternary:
        info = packed.tensors[name]
        a_codes, a_scale = formats.unpack_ternary(info.wtype, packed.tensor_bytes(name), info.shape)
        b_codes, b_scale = formats.unpack_ternary(info.wtype, master.tensor_bytes(name), info.shape)
        np.testing.assert_array_equal(a_codes, b_codes, err_msg=name)
        # the packed file keeps weight_scale in bf16: the master's absmean, rounded to it
        rounded = formats.dequantize("BF16", formats.quantize("BF16", b_scale[:1, 0]), (1,))
        np.testing.assert_array_equal(a_scale[:, 0], np.repeat(rounded, len(a_scale)), name)
