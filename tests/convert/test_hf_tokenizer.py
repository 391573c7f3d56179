"""convert/hf_tokenizer.py: a checkpoint's tokenizer as GGUF metadata, read back by pybitnet's
Tokenizer, must encode as HF `tokenizers` does on the same tokenizer.json (and, for the real
Llama-3 vocabulary, as quicktok's exact tiktoken-style `encode`).

Vocabularies: small byte-level BPEs trained here by HF `tokenizers` with Llama-3's and GPT-2's
pre-tokenizers, and Llama-3's 128k vocabulary rebuilt at test time from the quicktok-v1 package
(tokens from its byte values, merges from its ranks), never committed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Regex, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from pybitnet.convert.hf_tokenizer import CHECK_TEXT, tokenizer_metadata
from pybitnet.errors import TokenizerError
from pybitnet.gguf import open_gguf, write_gguf
from pybitnet.tokenizer import Tokenizer
from pybitnet.tokenizer.bpe import PRE_TOKENIZERS, _gpt2_byte_chars
from pybitnet.tokenizer.vocabulary import CONTROL, NORMAL, UNUSED, USER_DEFINED

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>"]
USER_TOKEN = "<tool_call>"  # a non-special added token: matched in text even without specials
TEXTS = [
    "Hello world",
    " leading space, trailing space ",
    "我想在apple工作1314151天～ 東京タワー 한국어 텍스트",
    "emoji 🚀🦙🦙 😶\u200d🌫️ flags 🇫🇷 skin 👍🏽",
    "combining: e\u0301 n\u0303 a\u030a\u0323 Zalgo Z\u0351\u0334a\u0330l\u0315g\u0343o",
    "Кириллица, Ελληνικά, עברית, العربية, हिन्दी, ไทย, កាន់តែពិសេសអាច",
    "digits 3 33 333 3333 33333 123456789012345678901234567890 3.14159 1,000,000 0x1F",
    "   many   spaces\t\ttabs\t \n\nnewlines\r\n\r\nCRLF \n \n\n \n   \n",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D We'Ve a'lL",
    "don't won't can't shouldn't y'all o'clock rock'n'roll",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != 0: print(x ** 2)\n",
    "int main() { std::vector<int> v{1,2}; return v[0] >= 0 ? 0 : -1; }",
    "''''''```````\"\"\"\"......!!!!!!?????? ------=======",
    "<|eot_id|>",
    "before<|eot_id|>after <|start_header_id|>user<|end_header_id|>\n\nhi",
    "<|eot_id> <|eot_id|<|eot_id|>|> <| eot_id |> <|EOT_ID|> <|begin_of_text|",
    f"call {USER_TOKEN}{{}}</tool_call> and <tool_call > <tool_call{USER_TOKEN}",
    "<s></s>[INST] <<SYS>> <unk> <pad> [PAD0]",
    "https://example.com/path?q=a+b&x=%20#frag user@example.org",
    "\u00a0nbsp\u2003emsp\u200bzwsp\u3000ideographic\ufeffbom",
    "",
    " ",
    "\n",
    "a",
    "ÀÁÂÃÄÅ àáâãäå ß ẞ ﬁ ﬀ Ⅻ ½ ² ①",
    "mixed123abc456DEF789 ABC123 abc-123_def.456",
    CHECK_TEXT,
]


def _hf_without_specials(path: Path) -> HFTokenizer:
    """The same tokenizer.json with its special added tokens dropped: HF `tokenizers` always
    matches added tokens, so this is the oracle for encoding with parse_special=False."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["special"]]
    return HFTokenizer.from_str(json.dumps(spec))


def _read_back(metadata: dict[str, Any], tmp_path: Path) -> Tokenizer:
    """Write the metadata into a GGUF file and build pybitnet's Tokenizer from what is read."""
    path = tmp_path / "vocab.gguf"
    write_gguf(path, {"general.architecture": "llama", **metadata}, [])
    return Tokenizer.from_metadata(open_gguf(path).metadata, source=str(path))


def _train(folder: Path, pre: str, list_merges: bool) -> None:
    """A small byte-level BPE trained by HF `tokenizers` on TEXTS with a pre-tokenizer of
    pybitnet's table, saved as a checkpoint's tokenizer files."""
    regexes, ignore_merges, _ = PRE_TOKENIZERS[pre]
    tok = HFTokenizer(models.BPE(ignore_merges=ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    gpt2 = pre == "gpt-2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=gpt2)
    tok.pre_tokenizer = byte_level if gpt2 else pre_tokenizers.Sequence([*splits, byte_level])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=alphabet, special_tokens=SPECIALS
    )
    tok.train_from_iterator(TEXTS * 3, trainer)
    tok.add_tokens([USER_TOKEN])
    bos = SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    spec["model"]["merges"] = [m.split(" ") for m in merges] if list_merges else merges
    _write_json(folder / "tokenizer.json", spec)
    _write_json(folder / "tokenizer_config.json", {"bos_token": bos, "eos_token": SPECIALS[1]})


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


@pytest.fixture(scope="module", params=["llama-bpe", "gpt-2"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained") / request.param
    _train(folder, request.param, list_merges=True)
    return folder


@pytest.fixture(scope="module")
def llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3's tokenizer.json rebuilt from quicktok-v1, with quicktok's NOTICE beside it."""
    quicktok = pytest.importorskip("quicktok", reason="the test extra installs quicktok-v1")
    enc = quicktok.get_encoding("llama3")
    folder = tmp_path_factory.mktemp("llama3")
    chars = _gpt2_byte_chars()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    specials = {enc.encode_single_token(s): s for s in enc.special_tokens_set}
    normal = [enc.decode_single_token_bytes(i) for i in range(min(specials))]
    rank = {token: i for i, token in enumerate(normal)}
    # every split of a token into two tokens is a merge, ordered by the rank of the result and
    # then of its parts (tiktoken's ranks as HF merges, the way Llama-3's own file was made)
    merges = sorted(
        (rank[t], rank[t[:k]], rank[t[k:]], text(t[:k]), text(t[k:]))
        for t in normal
        for k in range(1, len(t))
        if t[:k] in rank and t[k:] in rank
    )
    vocab = {text(t): i for i, t in enumerate(normal)}
    tok = HFTokenizer(models.BPE(vocab, [m[3:] for m in merges], ignore_merges=True))
    regex = PRE_TOKENIZERS["llama-bpe"][0][0]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.add_special_tokens([specials[i] for i in sorted(specials)])
    assert all(tok.token_to_id(s) == i for i, s in specials.items())
    bos = specials[min(specials)]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, min(specials))]
    )
    tok.save(str(folder / "tokenizer.json"))
    notice = Path(quicktok.__file__).parent.parent.glob("quicktok_v1-*.dist-info/licenses/NOTICE")
    for path in notice:
        shutil.copy(path, folder / "NOTICE")
    config = {"bos_token": bos, "eos_token": "<|eot_id|>"}
    _write_json(folder / "tokenizer_config.json", config)
    # 2B-4T's generation_config.json: a turn ends on <|end_of_text|> or <|eot_id|>
    _write_json(folder / "generation_config.json", {"eos_token_id": [128001, 128009]})
    return folder


def test_trained_vocabularies_encode_as_hf_tokenizers(trained: Path, tmp_path: Path) -> None:
    hf = HFTokenizer.from_file(str(trained / "tokenizer.json"))
    plain = _hf_without_specials(trained / "tokenizer.json")
    metadata = tokenizer_metadata(trained, hf.get_vocab_size())
    assert metadata["tokenizer.ggml.pre"] == trained.name
    tok = _read_back(metadata, tmp_path)
    for text in TEXTS:
        assert tok.encode(text, parse_special=True) == hf.encode(text).ids, text
        assert (
            tok.encode(text, add_bos=False) == plain.encode(text, add_special_tokens=False).ids
        ), text
        assert tok.decode(tok.encode(text, add_bos=False)) == text


def test_llama3_encodes_as_quicktok_and_hf_tokenizers(llama3: Path, tmp_path: Path) -> None:
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("llama3")
    hf = HFTokenizer.from_file(str(llama3 / "tokenizer.json"))
    metadata = tokenizer_metadata(llama3, enc.n_vocab)
    # llama.cpp names this vocabulary by the hash of CHECK_TEXT: the rebuild is Meta's
    assert metadata["tokenizer.ggml.pre"] == "llama-bpe"
    tok = _read_back(metadata, tmp_path)
    assert tok.bos_id == enc.encode_single_token("<|begin_of_text|>") and tok.add_bos
    assert {enc.encode_single_token(t) for t in ("<|end_of_text|>", "<|eot_id|>")} <= tok.eog_ids
    for text in TEXTS:
        ordinary = enc.encode_ordinary(text)
        with_specials = enc.encode(text, allowed_special="all")
        assert tok.encode(text, add_bos=False) == ordinary, text
        assert tok.encode(text, add_bos=False, parse_special=True) == with_specials, text
        assert tok.encode(text, parse_special=True) == hf.encode(text).ids, text
        assert tok.encode(text) == [tok.bos_id, *ordinary], text


def test_merges_in_either_form_give_the_same_metadata(tmp_path: Path) -> None:
    for list_merges in (True, False):
        _train(tmp_path / str(list_merges), "llama-bpe", list_merges)
    as_lists, as_strings = (tokenizer_metadata(tmp_path / str(f), 800) for f in (True, False))
    assert as_lists["tokenizer.ggml.merges"] == as_strings["tokenizer.ggml.merges"]
    assert all(m.count(" ") == 1 for m in as_lists["tokenizer.ggml.merges"])


def test_token_types_and_padding_as_llama_cpp_writes_them(trained: Path) -> None:
    hf = HFTokenizer.from_file(str(trained / "tokenizer.json"))
    rows = hf.get_vocab_size() + 3
    metadata = tokenizer_metadata(trained, rows)
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == rows and types.dtype == np.int32
    assert tokens[-3:] == [f"[PAD{i}]" for i in range(rows - 3, rows)]
    assert list(types[-3:]) == [UNUSED] * 3
    for text, token_id in hf.get_vocab().items():
        assert tokens[token_id] == text
    added = {t.content: t.special for t in hf.get_added_tokens_decoder().values()}
    expected = [CONTROL if added.get(t) else USER_DEFINED if t in added else NORMAL for t in tokens]
    assert list(types[:-3]) == expected[:-3]
    assert metadata["tokenizer.ggml.bos_token_id"] == hf.token_to_id(SPECIALS[0])
    assert metadata["tokenizer.ggml.eos_token_id"] == hf.token_to_id(SPECIALS[1])


def test_a_vocabulary_larger_than_the_embedding_is_named(trained: Path) -> None:
    rows = HFTokenizer.from_file(str(trained / "tokenizer.json")).get_vocab_size() - 1
    with pytest.raises(
        TokenizerError,
        match=rf"tokenizer\.json: token .* has id {rows}, outside the embedding's {rows} rows",
    ):
        tokenizer_metadata(trained, rows)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "llama-bpe"
    _train(folder, "llama-bpe", list_merges=False)
    return folder


def _copy(small: Path, tmp_path: Path, **files: Any) -> Path:
    """A copy of the `small` checkpoint folder with some files replaced (None: removed;
    a function: applied to the parsed JSON; str: raw text; else written as JSON)."""
    folder = shutil.copytree(small, tmp_path / "checkpoint")
    for name, value in files.items():
        path = folder / name.replace("__", ".")
        if value is None:
            path.unlink()
        elif callable(value):
            spec = json.loads(path.read_text(encoding="utf-8"))
            value(spec)
            _write_json(path, spec)
        elif isinstance(value, str):
            path.write_text(value, encoding="utf-8")
        else:
            _write_json(path, value)
    return folder


def _id(small: Path, text: str) -> int:
    return HFTokenizer.from_file(str(small / "tokenizer.json")).token_to_id(text)


def test_every_generation_end_id_ends_generation(small: Path, tmp_path: Path) -> None:
    # two of these texts are in no list of end-of-generation texts: only the file says so
    ends = [_id(small, t) for t in ("<|end_of_text|>", "<|start_header_id|>", "<|begin_of_text|>")]
    folder = _copy(small, tmp_path, generation_config__json={"eos_token_id": ends})
    rows = HFTokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    tok = _read_back(tokenizer_metadata(folder, rows), tmp_path)
    assert tok.eos_id == ends[0] and set(ends) <= tok.eog_ids

    ends.append(_id(small, USER_TOKEN))
    _write_json(folder / "generation_config.json", {"eos_token_id": ends})
    with pytest.raises(TokenizerError, match=rf"generation_config\.json: eos_token_id {ends[3]} "):
        tokenizer_metadata(folder, rows)


def test_eos_falls_back_to_generation_config(small: Path, tmp_path: Path) -> None:
    end = _id(small, "<|eot_id|>")
    folder = _copy(
        small, tmp_path, tokenizer_config__json={}, generation_config__json={"eos_token_id": end}
    )
    metadata = tokenizer_metadata(folder, 800)
    assert metadata["tokenizer.ggml.eos_token_id"] == end
    assert "tokenizer.ggml.bos_token_id" not in metadata


@pytest.mark.parametrize(
    ("config", "expected"),
    [({}, True), ({"add_bos_token": False}, False), ({"add_bos_token": True}, True)],
)
def test_add_bos_and_eos_from_the_config_else_the_post_processor(
    small: Path, tmp_path: Path, config: dict[str, Any], expected: bool
) -> None:
    folder = _copy(small, tmp_path, tokenizer_config__json={**config, "add_eos_token": True})
    metadata = tokenizer_metadata(folder, 800)
    assert metadata["tokenizer.ggml.add_bos_token"] is expected
    assert metadata["tokenizer.ggml.add_eos_token"] is True
    folder = _copy(
        small, tmp_path / "bare", tokenizer__json=lambda s: s.update(post_processor=None)
    )
    assert "tokenizer.ggml.add_bos_token" not in tokenizer_metadata(folder, 800)


def test_chat_template_from_the_checkpoint(small: Path, tmp_path: Path) -> None:
    template = "{% for m in messages %}<|start_header_id|>{{ m.content }}<|eot_id|>{% endfor %}"
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}]
    for value in (template, named):
        folder = _copy(
            small, tmp_path / str(len(value)), tokenizer_config__json={"chat_template": value}
        )
        assert tokenizer_metadata(folder, 800)["tokenizer.chat_template"] == template
    # transformers now saves the template as chat_template.jinja; it wins
    (folder / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    tok = _read_back(tokenizer_metadata(folder, 800), tmp_path)
    assert tok.chat_template == "{{ messages }}"


def _set_split(regex: str) -> Any:
    return lambda spec: spec["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=regex)


@pytest.mark.parametrize(
    "edit",
    [
        _set_split(r"\s+"),
        lambda spec: spec.update(normalizer={"type": "NFC"}),
        lambda spec: spec["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True),
        lambda spec: spec["model"].update(ignore_merges=False),
        lambda spec: spec.update(pre_tokenizer={"type": "Whitespace"}),
    ],
    ids=["regex", "normalizer", "prefix-space", "ignore-merges", "whitespace"],
)
def test_an_unknown_pre_tokenizer_is_named(small: Path, tmp_path: Path, edit: Any) -> None:
    folder = _copy(small, tmp_path, tokenizer__json=edit)
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: pre_tokenizer .* is none that"):
        tokenizer_metadata(folder, 800)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"tokenizer__json": None}, r"tokenizer\.json: cannot read it"),
        ({"tokenizer__json": "{"}, r"tokenizer\.json: not valid JSON"),
        ({"tokenizer__json": "[]"}, r"tokenizer\.json: holds list, not a JSON object"),
        (
            {"tokenizer__json": lambda s: s["model"].update(type="WordPiece")},
            r"tokenizer\.json: model\.type = 'WordPiece'",
        ),
        (
            {"tokenizer__json": lambda s: s["model"].update(byte_fallback=True)},
            r"tokenizer\.json: model\.byte_fallback = True; pybitnet converts plain byte-level",
        ),
        (
            {"tokenizer__json": lambda s: s["model"]["merges"].insert(0, "abc")},
            r"tokenizer\.json: model\.merges\[0\] = 'abc' is not a pair",
        ),
        (
            {"tokenizer__json": lambda s: s["added_tokens"][0].update(id=-1)},
            r"tokenizer\.json: token '<\|begin_of_text\|>' has id -1, outside",
        ),
        (
            {"tokenizer__json": lambda s: s["added_tokens"][0].update(content="!")},
            r"tokenizer\.json: id 0 names both '<\|begin_of_text\|>' and '!'",
        ),
        (
            {"tokenizer__json": lambda s: s["added_tokens"][-1].update(content="!")},
            r"tokenizer\.json: token '!' has two ids",
        ),
        (
            {"tokenizer_config__json": {"eos_token": "<|nope|>"}},
            r"tokenizer_config\.json: eos_token = '<\|nope\|>' is not a token",
        ),
        (
            {"tokenizer_config__json": {"chat_template": 5}},
            r"tokenizer_config\.json: chat_template = '5' is not a string",
        ),
        (
            {"generation_config__json": {"eos_token_id": [2, "3"]}},
            r"generation_config\.json: eos_token_id holds '3', not a token id",
        ),
        (
            {"generation_config__json": {"eos_token_id": 800}},
            r"generation_config\.json: eos_token_id 800 is outside the vocabulary \(800 tokens\)",
        ),
    ],
)
def test_bad_files_are_named(
    small: Path, tmp_path: Path, files: dict[str, Any], message: str
) -> None:
    folder = _copy(small, tmp_path, **files)
    with pytest.raises(TokenizerError, match=message):
        tokenizer_metadata(folder, 800)
