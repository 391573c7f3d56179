"""Hostile GGUF metadata and weights (issue 15, items 4 and 9), one table: each case is a small
valid model with one value replaced, and its clean outcome: a one-line PyBitnetError naming the
file, the key or tensor and the value, or a load whose sizes follow the effective context."""

from __future__ import annotations

import resource
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import pybitnet
from helpers.gguf_files import rewrite
from pybitnet.cli import app
from pybitnet.convert.synthetic import make_model
from pybitnet.errors import PyBitnetError
from pybitnet.gguf import TensorSpec
from pybitnet.model.config import DEFAULT_MAX_CTX

SHAPE = dict(vocab=300, dim=128, layers=2, heads=4, kv_heads=2, ffn=256, ctx=32)
A = "bitnet."  # the architecture's key prefix

# (id, key, value as written: a numpy scalar or array keeps its GGUF type, expected message)
METADATA = [
    ("theta as a string", A + "rope.freq_base", "10000",
     "bitnet.rope.freq_base = '10000' must be a finite number from 1 to 1e+09"),
    ("theta inf", A + "rope.freq_base", np.float32(np.inf), "rope.freq_base = inf must be"),
    ("theta 1e-45", A + "rope.freq_base", np.float32(1e-45), "rope.freq_base = 1.4012984"),
    ("theta 0", A + "rope.freq_base", np.float32(0), "rope.freq_base = 0.0 must be"),
    ("theta NaN", A + "rope.freq_base", np.float64(np.nan), "rope.freq_base = nan must be"),
    ("eps inf", A + "attention.layer_norm_rms_epsilon", np.float32(np.inf),
     "bitnet.attention.layer_norm_rms_epsilon = inf must be a finite number from 0 to 0.1"),
    ("eps 1e300", A + "attention.layer_norm_rms_epsilon", np.float64(1e300),
     "layer_norm_rms_epsilon = 1e+300 must be"),
    ("eps negative", A + "attention.layer_norm_rms_epsilon", np.float32(-0.5),
     "layer_norm_rms_epsilon = -0.5 must be"),
    ("eps as a bool", A + "attention.layer_norm_rms_epsilon", True,
     "layer_norm_rms_epsilon = True must be"),
    ("context 0", A + "context_length", np.uint32(0),
     "bitnet.context_length = 0 must be a positive integer"),
    ("context negative", A + "context_length", np.int32(-1), "context_length = -1 must be"),
    ("context as a float", A + "context_length", np.float32(4096), "context_length = 4096.0 must"),
    ("context as a string", A + "context_length", "4096", "context_length = '4096' must be"),
    ("heads as an array", A + "attention.head_count", np.arange(3, dtype=np.uint32),
     "bitnet.attention.head_count = array([0, 1, 2], dtype=uint32) must be an integer from 1"),
    ("kv heads do not divide", A + "attention.head_count_kv", np.uint32(3),
     "attention.head_count = 4 is not a multiple of bitnet.attention.head_count_kv = 3"),
    ("dim not a multiple of heads", A + "embedding_length", np.uint32(130),
     "bitnet.embedding_length = 130 is not a multiple of bitnet.attention.head_count = 4"),
    ("blocks 2^31", A + "block_count", np.uint32(2**31),
     "bitnet.block_count = 2147483648 must be an integer from 1 to 4096"),
    ("vocab 2^40", A + "vocab_size", np.uint64(2**40), "vocab_size = 1099511627776 must be"),
    ("rope dims odd", A + "rope.dimension_count", np.uint32(15), "rope.dimension_count = 15"),
    ("value length differs", A + "attention.value_length", np.uint32(16),
     "bitnet.attention.value_length must equal the key length 32"),
    ("rope scaling yarn", A + "rope.scaling.type", "yarn",
     "bitnet.rope.scaling.type = 'yarn' is not supported"),
    ("rope scaling factor", A + "rope.scaling.factor", np.float32(4),
     "bitnet.rope.scaling.factor = 4: RoPE scaling is not supported"),
    ("architecture an array", "general.architecture", ["bitnet"],
     "'general.architecture': must be a string, got an array of STRING"),
    ("add_bos an array", "tokenizer.ggml.add_bos_token", np.array([1, 1], np.uint8),
     "tokenizer.ggml.add_bos_token = array([1, 1], dtype=uint8) must be a bool"),
    ("tokenizer kind an array", "tokenizer.ggml.model", ["llama", "gpt2"],
     "tokenizer.ggml.model = ['llama', 'gpt2']: pybitnet reads"),
    ("scores ragged", "tokenizer.ggml.scores", [np.arange(2.0), np.arange(3.0)],
     "tokenizer.ggml.scores has 0 values"),
    ("eos a long string", "tokenizer.ggml.eos_token_id", "x" * 100_000,
     f"tokenizer.ggml.eos_token_id = '{'x' * 56}... is not a token id"),
]  # fmt: skip


def poison(name: str, index: int, bits: int) -> Callable[[list[TensorSpec]], None]:
    """Sets float ``index`` of tensor ``name`` (its values or scales, where its format keeps
    them: formats' floats) to the raw ``bits``."""

    def edit(specs: list[TensorSpec]) -> None:
        at = next(i for i, s in enumerate(specs) if s.name == name)
        spec = specs[at]
        data = np.array(spec.data)
        _, floats, _ = spec.wtype.codec.floats(data)
        floats.reshape(len(floats), -1)[index, 0] = bits
        specs[at] = TensorSpec(name, spec.shape, spec.wtype, data)

    return edit


F32_NAN, F32_INF, F16_NAN, F16_NEG_INF = 0x7FC00000, 0x7F800000, 0x7E00, 0xFC00
# (id, model ("i2s": bitnet / I2_S / F16 embd; "tq": llama / TQ2_0 / Q8_0 embd), tensor edit,
# expected message)
TENSORS = [
    ("NaN I2_S scale", "i2s", poison("blk.0.attn_q.weight", 0, F32_NAN),
     "tensor blk.0.attn_q.weight: I2_S tensor (128, 128): scale 0 is NaN"),
    ("+inf in a norm", "i2s", poison("blk.1.ffn_norm.weight", 5, F32_INF),
     "tensor blk.1.ffn_norm.weight: F32 tensor (128,): value 5 is +inf"),
    ("-inf in the F16 embedding", "i2s", poison("token_embd.weight", 777, F16_NEG_INF),
     "tensor token_embd.weight: F16 tensor (300, 128): value 777 is -inf"),
    ("NaN TQ2_0 block scale", "tq", poison("blk.0.ffn_down.weight", 1, F16_NAN),
     "tensor blk.0.ffn_down.weight: TQ2_0 tensor (256, 256): block scale d 1 is NaN"),
    ("NaN Q8_0 block scale", "tq", poison("token_embd.weight", 3, F16_NAN),
     "tensor token_embd.weight: Q8_0 tensor (300, 256): block scale d 3 is NaN"),
]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "i2s": make_model(root / "i2s.gguf", **SHAPE),
        "tq": make_model(
            root / "tq.gguf",
            arch="llama",
            weight_type="TQ2_0",
            embd_type="Q8_0",
            **{**SHAPE, "dim": 256},
        ),  # fmt: skip
    }


def refusal(path: Path, **load: Any) -> str:
    with pytest.raises(PyBitnetError) as error:
        pybitnet.load(path, **load)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize(("key", "value", "message"), [c[1:] for c in METADATA],
                         ids=[c[0] for c in METADATA])  # fmt: skip
def test_a_hostile_metadata_value_is_refused_naming_it(models, tmp_path, key, value, message):
    path = rewrite(models["i2s"], tmp_path / "m.gguf", lambda md: md.update({key: value}))
    assert message in refusal(path)


@pytest.mark.parametrize(("model", "edit", "message"), [c[1:] for c in TENSORS],
                         ids=[c[0] for c in TENSORS])  # fmt: skip
def test_a_non_finite_weight_or_scale_is_refused_naming_the_tensor(
    models, tmp_path, model, edit, message
):
    path = rewrite(models[model], tmp_path / "m.gguf", tensors=edit)
    assert message in refusal(path)


def claiming(models: dict[str, Path], tmp_path: Path, context_length: int) -> Path:
    value = np.uint64(context_length) if context_length >= 2**32 else np.uint32(context_length)
    return rewrite(models["i2s"], tmp_path / "m.gguf",
                   lambda md: md.update({A + "context_length": value}))  # fmt: skip


@pytest.mark.parametrize("context_length", [2**24, 2**31, 2**40])
def test_a_huge_context_length_runs_on_the_default_context(models, tmp_path, context_length):
    """Sizes follow the effective context: the RoPE table over 2^31 positions once took 16 GiB."""
    path = claiming(models, tmp_path, context_length)
    tracemalloc.start()
    try:
        model = pybitnet.load(path)
        assert model.n_ctx == DEFAULT_MAX_CTX and model.config.context_length == context_length
        assert len(model.complete("a b", max_tokens=3, temperature=0).token_ids) == 3
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak  # the KV cache of 8192 positions here is 4 MiB
    assert pybitnet.load(path, n_ctx=100).n_ctx == 100


@pytest.mark.parametrize(("kv_cache", "gib"), [("f16", "1024.0"), ("f32", "2048.0")])
def test_a_context_too_large_for_the_machine_is_refused_at_load(models, tmp_path, kv_cache, gib):
    message = refusal(claiming(models, tmp_path, 2**31), n_ctx=2**31, kv_cache=kv_cache)
    assert f"a context of 2147483648 tokens needs {gib} GiB of KV cache" in message
    assert "--ctx" in message


@pytest.mark.parametrize(("n_ctx", "shown"), [(0, "0"), (-5, "-5"), ("8", "'8'"), (True, "True")])
def test_n_ctx_must_be_a_positive_integer(models, n_ctx, shown):
    with pytest.raises(PyBitnetError, match=f"n_ctx must be a positive integer, got {shown}"):
        pybitnet.load(models["i2s"], n_ctx=n_ctx)


def test_a_file_claiming_2_31_positions_loads_and_runs_under_1_gb(models, tmp_path):
    """Peak RSS of a fresh process that loads the file and generates (the issue measured 16.4 GB
    before the RoPE table followed the effective context)."""
    path = claiming(models, tmp_path, 2**31)
    script = (
        "import resource, sys, pybitnet\n"
        "m = pybitnet.load(sys.argv[1])\n"
        "print(len(m.complete('a b', max_tokens=4, temperature=0).token_ids))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    limit = resource.RLIMIT_AS, (4 << 30, 4 << 30)  # a regression fails here, not the machine
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(*limit), timeout=120,
    ).stdout.split()  # fmt: skip
    assert out[0] == "4" and int(out[1]) < 1 << 20, out  # ru_maxrss is in KiB


def test_the_cli_says_one_line_for_a_hostile_file(models, tmp_path):
    path = rewrite(models["i2s"], tmp_path / "bad.gguf",
                   lambda md: md.update({A + "rope.freq_base": "10000"}))  # fmt: skip
    result = CliRunner().invoke(app, ["run", "-m", str(path), "x", "--max-tokens", "1"])
    lines = result.stderr.strip().splitlines()  # the stage ("loading model"), then the error
    errors = [line for line in lines if line.startswith("pybitnet: error: ")]
    assert result.exit_code != 0 and errors == lines[-1:], result.stderr
    assert "Traceback" not in result.output and str(path) in errors[0]
    assert "bitnet.rope.freq_base = '10000' must be a finite number" in errors[0]
