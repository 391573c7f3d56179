"""The bitllama2.c importer, its float64 test oracle, and the embedded TinyStories model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.llama2c_ref import (
    Llama2cReference,
    decode,
    load_tokenizer_bin,
    read_sections,
    unpack_matrix,
)
from pybitnet.cli import app
from pybitnet.convert import convert
from pybitnet.convert.llama2c import read_checkpoint
from pybitnet.convert.metadata import read_sentencepiece
from pybitnet.data import default_model_path
from pybitnet.errors import ModelError
from pybitnet.gguf import open_gguf

FIXTURES = Path(__file__).parent.parent / "fixtures" / "bitllama2c"
MODEL_3M = FIXTURES / "tinystories-3m.bin"
MODEL_1M = FIXTURES / "tinystories-1m.bin"
TOKENIZER = FIXTURES / "tokenizer.model"
BOS = 1


def nll(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    top = logits.max(axis=1)
    logsumexp = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return logsumexp - logits[np.arange(len(targets)), targets]


def offset_of(path: Path, section: str) -> int:
    return {name: offset for name, offset, _ in read_sections(path)[1]}[section]


@pytest.fixture(scope="module")
def ref3m() -> Llama2cReference:
    return Llama2cReference(MODEL_3M)


@pytest.fixture(scope="module")
def story3m(ref3m: Llama2cReference) -> tuple[list[int], list[float]]:
    return ref3m.greedy([BOS], 100)


@pytest.fixture(scope="module")
def gguf3m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(
        "llama2c", MODEL_3M, tmp_path_factory.mktemp("c") / "3m.gguf", tokenizer=TOKENIZER
    )


# -- the float64 oracle (tests/helpers/llama2c_ref.py) ----------------------------------------


@pytest.mark.parametrize("path", [MODEL_1M, MODEL_3M])
def test_sections_tile_the_file(path: Path) -> None:
    _, sections = read_sections(path)
    ends = [offset + nbytes for _, offset, nbytes in sections]
    assert [offset for _, offset, _ in sections[1:]] == ends[:-1]
    assert ends[-1] == path.stat().st_size


def test_oracle_writes_a_story(story3m: tuple[list[int], list[float]]) -> None:
    tokens, margins = story3m
    text = decode(load_tokenizer_bin(FIXTURES / "tokenizer.bin", 512), tokens)
    assert text.startswith("Once upon a time"), text
    words = set(text.replace(",", " ").replace(".", " ").split())
    assert {"there", "was", "a", "little", "She"} <= words, text
    assert min(margins) > 0


def test_oracle_teacher_forcing_scores_its_story(
    ref3m: Llama2cReference, story3m: tuple[list[int], list[float]]
) -> None:
    seq = [BOS, *story3m[0]]
    logits = ref3m.logits(seq[:-1])
    assert list(logits.argmax(axis=1)) == seq[1:]  # teacher forcing agrees with greedy decoding
    ppl = np.exp(nll(logits, seq[1:]).mean())
    shuffled = [BOS, *np.random.default_rng(0).permutation(story3m[0])]
    ppl_shuffled = np.exp(nll(ref3m.logits(shuffled[:-1]), shuffled[1:]).mean())
    assert 1.0 < ppl < 2.5  # measured 1.48
    assert ppl_shuffled > 10 * ppl  # the model tells English from word salad


@pytest.mark.parametrize(
    ("fixture", "peer", "kv", "max_abs", "max_rms"),
    [("f32", "llama.cpp", "f32", 1e-4, 1e-5), ("i2_s", "bitnet.cpp", "f16", 1.0, 0.15)],
)
def test_naive_gguf_decoder_agrees_with_the_peers(
    fixture: str, peer: str, kv: str, max_abs: float, max_rms: float
) -> None:
    """The GGUF oracle (tests/helpers/naive_bitnet.py) against llama.cpp / bitnet.cpp logits;
    tolerances from tests/fixtures/peers/README.md (measured: 5e-6 and rms 0.10)."""
    from helpers.naive_bitnet import NaiveBitnet

    peers = FIXTURES.parent / "peers"
    goldens = json.loads((peers / "goldens.json").read_text())["forward"]
    golden = next(
        g
        for g in goldens
        if (g["fixture"], g["peer"], g["kv_cache"], g["prompt_index"]) == (fixture, peer, kv, 1)
    )
    want = np.load(peers / "logits.npz")[golden["logits_npz_key"]]
    diff = NaiveBitnet(peers / f"bitnet-tiny-s1-{fixture}.gguf").logits(golden["prompt_ids"]) - want
    assert np.abs(diff).max() <= max_abs and np.sqrt(np.mean(diff**2)) <= max_rms


# -- reading checkpoints and tokenizers ---------------------------------------------------------


def test_read_checkpoint_header() -> None:
    ckpt = read_checkpoint(MODEL_1M)
    assert (ckpt.dim, ckpt.hidden_dim, ckpt.n_layers, ckpt.n_heads) == (128, 256, 8, 8)
    assert (ckpt.n_kv_heads, ckpt.vocab_size, ckpt.seq_len) == (4, 512, 512)
    codes, scale = ckpt.matrix("wk", 3)
    expected_codes, expected_scale = unpack_matrix(
        MODEL_1M.read_bytes(), offset_of(MODEL_1M, "wk.3"), (64, 128)
    )
    np.testing.assert_array_equal(codes, expected_codes)
    assert scale == expected_scale


def _corrupt(tmp_path: Path, edit) -> Path:
    raw = bytearray(MODEL_1M.read_bytes())
    raw = edit(raw) or raw
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.__setitem__(slice(0, 4), b"GGUF"), "magic"),
        (lambda b: b.__setitem__(slice(4, 8), struct.pack("<i", 2)), "version 2"),
        (lambda b: b.__setitem__(slice(8, 12), struct.pack("<i", 0)), "dim = 0"),
        (
            lambda b: b.__setitem__(slice(8, 12), struct.pack("<i", 2**30)),
            "dim 1073741824.*describes",
        ),
        (lambda b: b.__setitem__(slice(16, 20), struct.pack("<i", 10**9)), "n_layers 1000000000"),
        (lambda b: b.__setitem__(slice(24, 28), struct.pack("<i", 3)), "n_kv_heads 3"),
        (lambda b: b.__setitem__(36, 0), "shared_classifier = 0"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:100], "shorter than the 256-byte header"),
        (lambda b: b + b"\0" * 4, "describes"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, edit, message: str) -> None:
    path = _corrupt(tmp_path, edit)
    with pytest.raises(ModelError, match=message) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_non_ternary_code_is_refused(tmp_path: Path) -> None:
    offset = offset_of(MODEL_1M, "w2.5")
    path = _corrupt(tmp_path, lambda b: b.__setitem__(offset + 10, 0b00100000))
    with pytest.raises(ModelError, match="w2 of layer 5.*code 10"):
        read_checkpoint(path).matrix("w2", 5)


def test_sentencepiece_reader_agrees_with_tokenizer_bin() -> None:
    meta = read_sentencepiece(TOKENIZER)
    tokens = meta["tokenizer.ggml.tokens"]
    raw = (FIXTURES / "tokenizer.bin").read_bytes()
    offset, scores = 4, []
    for i, piece in enumerate(load_tokenizer_bin(FIXTURES / "tokenizer.bin", 512)):
        scores.append(struct.unpack_from("<f", raw, offset)[0])
        offset += 8 + len(piece)
        # llama2.c's export writes "▁" as a space and pads BOS / EOS with newlines
        assert piece.decode().strip("\n") == tokens[i].replace("▁", " "), i
    np.testing.assert_array_equal(meta["tokenizer.ggml.scores"], np.float32(scores))
    types = meta["tokenizer.ggml.token_type"]
    assert list(types[:3]) == [2, 3, 3] and set(types[3:259]) == {6} and set(types[259:]) == {1}
    assert tokens[3] == "<0x00>" and tokens[258] == "<0xFF>"
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.unknown_token_id"] == 0
    assert meta["tokenizer.ggml.add_space_prefix"] is True


@pytest.mark.parametrize("cut", [1, 5, 100])
def test_truncated_tokenizer_is_refused(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(TOKENIZER.read_bytes()[:-cut])
    with pytest.raises(ModelError, match=str(path)):
        read_sentencepiece(path)


def test_corrupted_tokenizers_raise_model_errors_only(tmp_path: Path) -> None:
    raw, path = TOKENIZER.read_bytes(), tmp_path / "tokenizer.model"
    rng = np.random.default_rng(0)
    for _ in range(300):
        data = bytearray(raw)
        for at in rng.integers(0, len(raw), rng.integers(1, 4)):
            data[at] = rng.integers(0, 256)
        path.write_bytes(bytes(data[: rng.integers(len(raw) // 2, len(raw) + 1)]))
        try:
            read_sentencepiece(path)
        except ModelError as exc:
            assert str(path) in str(exc)


# -- conversion -------------------------------------------------------------------------------


def test_conversion_metadata(gguf3m: Path) -> None:
    md = open_gguf(gguf3m).metadata
    assert md["general.architecture"] == "bitnet"
    assert md["general.file_type"] == 40
    assert md["bitnet.embedding_length"] == 256 and md["bitnet.feed_forward_length"] == 256
    assert md["bitnet.block_count"] == 8 and md["bitnet.context_length"] == 512
    assert md["bitnet.attention.head_count"] == 8 and md["bitnet.attention.head_count_kv"] == 4
    assert md["bitnet.rope.dimension_count"] == 32 and md["bitnet.rope.freq_base"] == 10000.0
    assert 0 < md["bitnet.attention.layer_norm_rms_epsilon"] <= 1e-20
    assert md["tokenizer.ggml.model"] == "llama" and len(md["tokenizer.ggml.tokens"]) == 512
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.ggml.eot_token_id"] == BOS  # a story ends at BOS, as in llama2.c


def test_conversion_tensors_against_the_checkpoint(gguf3m: Path) -> None:
    """Every tensor, dequantized, against the checkpoint read by the independent helper."""
    f = open_gguf(gguf3m)
    cfg, sections = read_sections(MODEL_3M)
    at = {name: offset for name, offset, _ in sections}
    raw = MODEL_3M.read_bytes()
    dim, hidden, hs = cfg["dim"], cfg["hidden_dim"], cfg["dim"] // cfg["n_heads"]
    embedding = np.frombuffer(raw, np.float32, 512 * dim, at["embedding"]).reshape(512, dim)
    np.testing.assert_array_equal(f.dequantize("token_embd.weight"), embedding)
    np.testing.assert_array_equal(
        f.dequantize("output_norm.weight"), np.frombuffer(raw, np.float32, dim, at["rms_final"])
    )
    assert "output.weight" not in f.tensors  # tied to token_embd
    # split-halves order of each head's rows: new row j = old 2j, new row j + hs/2 = old 2j + 1
    perm = np.concatenate([np.arange(0, hs, 2), np.arange(1, hs, 2)])
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output"}
    names |= {"w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
    for layer in range(cfg["n_layers"]):
        p = f"blk.{layer}."
        for name, size in (("attn_norm", dim), ("attn_sub_norm", dim), ("ffn_norm", dim)):
            np.testing.assert_array_equal(f.dequantize(p + name + ".weight"), np.float32(1 / size))
        np.testing.assert_array_equal(
            f.dequantize(p + "ffn_sub_norm.weight"), np.float32(1 / hidden)
        )
        for kind, name in names.items():
            w, scale = unpack_matrix(raw, at[f"{kind}.{layer}"], cfg["shapes"][kind])
            if kind in ("wq", "wk"):
                w = w.reshape(-1, hs, w.shape[1])[:, perm].reshape(w.shape)
            got = f.dequantize(p + name + ".weight")
            assert f.tensors[p + name + ".weight"].wtype.name == "I2_S"
            np.testing.assert_array_equal(got, w * np.float32(scale), err_msg=p + name)


@pytest.mark.parametrize("model", [MODEL_1M, MODEL_3M])
def test_converted_model_decodes_like_the_checkpoint(tmp_path: Path, model: Path) -> None:
    """A naive float64 decoder of the GGUF's `bitnet` semantics (docs/SPEC.md §1) against the
    checkpoint's own math. The one intended difference is the final norm's eps (1e-5 there,
    the GGUF's tiny eps here): with it aligned the two agree to float64 rounding."""
    from helpers.naive_bitnet import NaiveBitnet

    naive = NaiveBitnet(convert("llama2c", model, tmp_path / "m.gguf", tokenizer=TOKENIZER))
    ref = Llama2cReference(model)
    story, _ = ref.greedy([BOS], 40)
    seq = [BOS, *story]
    got, want = naive.logits(seq), ref.logits(seq)
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()  # measured 0.11% (3M)
    assert naive.greedy([BOS], 40)[0] == story
    ref.final_norm_eps = naive.eps
    assert np.abs(naive.logits(seq) - ref.logits(seq)).max() < 1e-8  # measured 4e-11 (3M)


def test_shipped_model_is_the_conversion(gguf3m: Path) -> None:
    shipped = default_model_path()
    assert shipped.read_bytes() == gguf3m.read_bytes()
    readme = (shipped.parent / "README.md").read_text()
    assert "dd00e925dc1cd6445198e8245ea77f7c61b3e187" in readme
    assert "pybitnet convert --from llama2c" in readme
    assert (shipped.parent / "LICENSE").read_text() == (FIXTURES / "LICENSE").read_text()


def test_converted_tokenizer_encodes_the_story_as_the_model_wrote_it(
    gguf3m: Path, story3m: tuple[list[int], list[float]]
) -> None:
    """The GGUF's vocabulary, read by pybitnet's SentencePiece tokenizer, round-trips."""
    from pybitnet.tokenizer import Tokenizer

    text = decode(load_tokenizer_bin(FIXTURES / "tokenizer.bin", 512), story3m[0])
    tokenizer = Tokenizer.from_metadata(open_gguf(gguf3m).metadata)
    assert tokenizer.encode(text) == [BOS, *story3m[0]]


def test_tq2_0_keeps_the_exact_scale_in_scale_tensors(tmp_path: Path, gguf3m: Path) -> None:
    path = convert(
        "llama2c", MODEL_3M, tmp_path / "tq2.gguf", weight_type="TQ2_0", tokenizer=TOKENIZER
    )
    f, i2s = open_gguf(path), open_gguf(gguf3m)
    assert f.metadata["general.file_type"] == 37
    for name in ("blk.0.attn_q", "blk.7.ffn_down"):
        assert f.tensors[name + ".weight"].wtype.name == "TQ2_0"
        scale = f.dequantize(name + ".scale")
        np.testing.assert_array_equal(
            f.dequantize(name + ".weight") * scale[0], i2s.dequantize(name + ".weight")
        )


def test_1m_model_cannot_be_tq2_0(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"blk\.0\.attn_q\.weight.*256") as info:
        convert("llama2c", MODEL_1M, tmp_path / "x.gguf", weight_type="TQ2_0", tokenizer=TOKENIZER)
    assert str(MODEL_1M) in str(info.value)
    assert not (tmp_path / "x.gguf").exists()


def test_float_weight_types_and_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="ternary type"):
        convert("llama2c", MODEL_1M, tmp_path / "x.gguf", weight_type="F16", tokenizer=TOKENIZER)
    with pytest.raises(ModelError, match="unknown checkpoint source 'safetensors'"):
        convert("safetensors", MODEL_1M, tmp_path / "x.gguf")


def test_tokenizer_vocab_must_match(tmp_path: Path) -> None:
    raw = bytearray(MODEL_1M.read_bytes())
    raw[28:32] = struct.pack("<i", 256)  # vocab_size 256: then the file is too long
    (tmp_path / "m.bin").write_bytes(bytes(raw[: len(raw) - 256 * 128 * 4]))
    with pytest.raises(ModelError, match="512 pieces, but .* has vocab_size 256"):
        convert("llama2c", tmp_path / "m.bin", tmp_path / "x.gguf", tokenizer=TOKENIZER)


def test_cli_convert(tmp_path: Path) -> None:
    out = tmp_path / "1m.gguf"
    args = ["convert", "--from", "llama2c", str(MODEL_1M), "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--tokenizer", str(TOKENIZER)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    assert open_gguf(out).metadata["bitnet.embedding_length"] == 128
    # the tokenizer defaults to the tokenizer.model next to the checkpoint
    assert CliRunner().invoke(app, [*args[:-1], str(tmp_path / "2.gguf")]).exit_code == 0
    assert (tmp_path / "2.gguf").read_bytes() == out.read_bytes()
