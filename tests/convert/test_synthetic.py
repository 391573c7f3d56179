"""Synthetic models (`pybitnet make-model`): complete, seeded, streamed GGUF files."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from pybitnet.cli import app
from pybitnet.convert.synthetic import make_model, synthetic_vocab
from pybitnet.generate import load
from pybitnet.gguf import open_gguf
from pybitnet.model.config import ModelConfig

PEERS = Path(__file__).parent.parent / "fixtures" / "peers"
SMALL = dict(vocab=300, dim=128, layers=2, heads=4, kv_heads=2, ffn=256)  # rows of 128 and 256
LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def build(tmp_path: Path, name: str = "m", **kwargs) -> Path:
    return make_model(tmp_path / f"{name}.gguf", **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    ("arch", "wtype"),
    [("bitnet-b1.58", "I2_S"), ("bitnet", "TQ2_0"), ("bitnet", "TQ1_0"), ("llama", "Q4_0")],
)
def test_model_is_complete(tmp_path: Path, arch: str, wtype: str) -> None:
    path = build(tmp_path, arch=arch, weight_type=wtype, dim=256, ffn=512)
    f = open_gguf(path)
    config = ModelConfig.from_metadata(f.metadata)
    assert (config.arch, config.dim, config.n_layers, config.n_heads) == (arch, 256, 2, 4)
    assert (config.n_kv_heads, config.ffn_dim, config.vocab_size) == (2, 512, 300)
    assert config.rms_eps == pytest.approx(1e-5) and config.rope_theta == 500000.0
    expected = {"token_embd.weight", "output_norm.weight"}
    norms = ("attn_norm", "ffn_norm") + (
        ("attn_sub_norm", "ffn_sub_norm") if arch != "llama" else ()
    )
    for i in range(2):
        expected |= {f"blk.{i}.{name}.weight" for name in LINEAR + norms}
    assert set(f.tensors) == expected
    assert f.tensors["blk.1.ffn_down.weight"].wtype.name == wtype
    assert f.tensors["token_embd.weight"].wtype.name == "F16"
    assert (
        f.metadata["general.file_type"] == {"I2_S": 40, "TQ2_0": 37, "TQ1_0": 36, "Q4_0": 2}[wtype]
    )


def test_weights_follow_the_recipe(tmp_path: Path) -> None:
    f = open_gguf(build(tmp_path, dim=256, ffn=512, vocab=4000, seed=3))
    scales = []
    for i in range(2):
        for name in LINEAR:
            w = f.dequantize(f"blk.{i}.{name}.weight")
            s = np.abs(w).max()
            assert set(np.unique(w)) == {-s, 0, s}
            assert np.float16(s) == s  # exactly representable: every format holds the same value
            fractions = [np.mean(w == v) for v in (-s, 0, s)]
            assert np.allclose(fractions, 1 / 3, atol=0.02)
            scales.append(s * np.sqrt(w.shape[1]))
        norm = f.dequantize(f"blk.{i}.ffn_sub_norm.weight")
        assert norm.min() >= 0.5 and norm.max() <= 1.5 and norm.std() > 0.2
    assert min(scales) >= 0.5 and max(scales) <= 1.5
    assert len(set(scales)) > len(scales) // 2  # varied (f16 rounding may make two equal)
    embd = f.dequantize("token_embd.weight")
    assert embd.std() == pytest.approx(3.2 / np.sqrt(256), rel=0.02)


def test_every_ternary_format_holds_the_same_weights(tmp_path: Path) -> None:
    files = {
        t: open_gguf(build(tmp_path, t, weight_type=t, dim=256, ffn=512))
        for t in ("I2_S", "TQ2_0", "TQ1_0", "F32", "F16")
    }
    embd = {
        t: open_gguf(build(tmp_path, "e" + t, embd_type=t, dim=256, ffn=512))
        for t in ("F32", "BF16", "Q8_0")
    }
    for name in files["I2_S"].tensors:
        want = files["I2_S"].dequantize(name)
        for f in files.values():
            np.testing.assert_array_equal(f.dequantize(name), want, err_msg=name)
    np.testing.assert_array_equal(
        embd["F32"].dequantize("token_embd.weight"), files["I2_S"].dequantize("token_embd.weight")
    )
    for t in ("BF16", "Q8_0"):
        np.testing.assert_allclose(
            embd[t].dequantize("token_embd.weight"),
            embd["F32"].dequantize("token_embd.weight"),
            atol=0.02,
        )


def test_the_gguf_package_reads_our_files(tmp_path: Path) -> None:
    """An independent reader (the gguf package) sees the same metadata and tensors."""
    path = build(tmp_path, weight_type="TQ2_0", dim=256, ffn=512)
    ours, theirs = open_gguf(path), gguf.GGUFReader(path)
    assert theirs.fields["general.architecture"].contents() == "bitnet"
    assert theirs.fields["tokenizer.ggml.tokens"].contents() == synthetic_vocab(300)[0]
    for t in theirs.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(data.reshape(-1), ours.dequantize(t.name).reshape(-1))


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a, b = build(tmp_path, "a", seed=7), build(tmp_path, "b", seed=7)
    assert a.read_bytes() == b.read_bytes()
    fa, fc = open_gguf(a), open_gguf(build(tmp_path, "c", seed=8))
    q = fa.dequantize("blk.1.attn_q.weight")
    assert not np.array_equal(q, fc.dequantize("blk.1.attn_q.weight"))
    # each tensor's stream depends on its name only: a llama model has the same weights
    llama = open_gguf(build(tmp_path, "l", seed=7, arch="llama"))
    np.testing.assert_array_equal(llama.dequantize("blk.1.attn_q.weight"), q)


def test_vocabulary_is_the_peers(tmp_path: Path) -> None:
    """The tokenizer matches the peers' fixture, which llama.cpp and bitnet.cpp loaded and used."""
    peer = gguf.GGUFReader(PEERS / "bitnet-tiny-s1-tq2_0.gguf")
    md = open_gguf(make_model(tmp_path / "tiny.gguf", layers=1)).metadata
    for key in ("tokens", "scores", "token_type"):
        want = peer.fields[f"tokenizer.ggml.{key}"].contents()
        np.testing.assert_array_equal(np.asarray(md[f"tokenizer.ggml.{key}"]), np.asarray(want))
    for key in ("model", "bos_token_id", "eos_token_id", "unknown_token_id", "add_bos_token"):
        assert md[f"tokenizer.ggml.{key}"] == peer.fields[f"tokenizer.ggml.{key}"].contents()
    assert md["tokenizer.ggml.add_space_prefix"] is True
    tokens, scores, types = synthetic_vocab(260)
    assert tokens[-1] == "▁" and scores[-1] == 0 and types[-1] == 1


def test_a_larger_vocabulary_extends_the_peers_with_a_chat_format(tmp_path: Path) -> None:
    """Past the peers' 1000 tokens: the 2B model's end-of-turn token and chat template, and
    longer pieces, so that a chat prompt is not spelled letter by letter."""
    small, large = synthetic_vocab(1000), synthetic_vocab(30000)
    for a, b in zip(small, large, strict=True):
        assert b[:1000] == a
    assert len(set(large[0])) == 30000
    m = load(make_model(tmp_path / "m.gguf", **{**SMALL, "vocab": 30000}))
    t = m.tokenizer
    eot = t.token_to_id("<|eot_id|>")
    assert eot == 1000 and eot in t.eog_ids
    text = m.render_chat([{"role": "user", "content": "Tell me a story about a cat."}])
    assert text == "User: Tell me a story about a cat.<|eot_id|>Assistant: "
    ids = t.encode(text, parse_special=True)
    pieces = [t.token_bytes(i) for i in ids]
    assert pieces[:3] == [b"<s>", b" Us", b"er"] and b" cat" in pieces
    assert ids.count(eot) == 1 and len(ids) == 27  # ChatML over the peers' pieces alone: 70
    # the peers' size has neither (its tokens must stay the peers')
    md = open_gguf(build(tmp_path, "small", vocab=1000)).metadata
    assert "tokenizer.chat_template" not in md and "tokenizer.ggml.eot_token_id" not in md


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(preset="7b"), "unknown preset '7b'"),
        (dict(arch="gpt2"), "unknown architecture 'gpt2'"),
        (dict(weight_type="Q3_K"), "unknown weight type"),
        (dict(embd_type="I2_S"), "token_embd cannot be I2_S"),
        (dict(weight_type="TQ2_0"), r"blk\.0\.attn_q\.weight \[128, 128\].*256"),
        (dict(heads=3), "heads 3"),
        (dict(kv_heads=3), "kv_heads 3"),
        (dict(vocab=100), "vocab 100 is too small"),
        (dict(layers=0), "layers = 0"),
        (dict(depth=3), "depth"),
        (dict(seed=-1), "seed -1"),
    ],
)
def test_bad_requests_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(tmp_path, **kwargs)
    assert not (tmp_path / "m.gguf").exists()


def test_cli_make_model(tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    args = ["make-model", "-o", str(out), "--arch", "llama", "--type", "Q8_0", "--seed", "5"]
    args += ["--vocab", "300", "--dim", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1"]
    args += ["--ffn", "96", "--ctx", "128", "--rope-theta", "10000", "--embd-type", "F32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        out.read_bytes()
        == make_model(
            tmp_path / "api.gguf",
            arch="llama",
            weight_type="Q8_0",
            embd_type="F32",
            seed=5,
            vocab=300,
            dim=64,
            layers=1,
            heads=2,
            kv_heads=1,
            ffn=96,
            ctx=128,
            rope_theta=10000.0,
        ).read_bytes()
    )
    bad = CliRunner().invoke(app, ["make-model", "-o", str(tmp_path / "x"), "--heads", "7"])
    assert bad.exit_code == 2 and "pybitnet: error:" in bad.stderr


def _peak_rss_mb(tmp_path: Path, layers: int) -> float:
    code = (
        "import resource, sys; from pybitnet.convert.synthetic import make_model; "
        f"make_model(sys.argv[1], '2b', vocab=32000, layers={layers}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / f"{layers}.gguf")],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout) / 1024


@pytest.mark.slow
def test_writing_streams_one_tensor_at_a_time(tmp_path: Path) -> None:
    """Peak memory does not grow with the number of layers (2B shape, 2 vs 6 layers)."""
    small, large = _peak_rss_mb(tmp_path, 2), _peak_rss_mb(tmp_path, 6)
    size_mb = (tmp_path / "6.gguf").stat().st_size / 2**20
    assert large - small < 0.25 * size_mb, (small, large, size_mb)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 < 4096
