"""GGUF `gpt2` tokenizer metadata from a Hugging Face checkpoint folder (docs/SPEC.md section 4).

`tokenizer.json` (byte-level BPE) gives the tokens, merges, added tokens and the pre-tokenizer;
`tokenizer_config.json` gives BOS, EOS, `add_bos_token`, `add_eos_token` and the chat template;
`generation_config.json` gives every id that ends generation. The layout of the result follows
llama.cpp's convert_hf_to_gguf.py, so that a file converted here reads as one converted there.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from pybitnet.errors import TokenizerError
from pybitnet.tokenizer.bpe import PRE_TOKENIZERS
from pybitnet.tokenizer.vocabulary import CONTROL, NORMAL, UNUSED, USER_DEFINED, special_ids

# llama.cpp's get_vocab_base_pre: the sha256 of str(ids) of this text, encoded with the
# checkpoint's own tokenizer (post-processor included), names the pre-tokenizer.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# hashes from llama.cpp's table, for the names pybitnet's tokenizer knows
_KNOWN_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
}


def tokenizer_metadata(folder: Path, vocab_rows: int) -> dict[str, Any]:
    """The GGUF `tokenizer.*` metadata of the checkpoint in `folder`, with exactly `vocab_rows`
    tokens (the embedding's rows): missing ids become `[PAD<i>]` tokens, as in llama.cpp."""
    path = folder / "tokenizer.json"
    spec = _read_json(path)
    model = spec.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else model
        raise TokenizerError(f"{path}: model.type = {kind!r}; pybitnet converts byte-level BPE")
    # options that make HF's BPE something other than GPT-2's byte-level BPE
    for key in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise TokenizerError(
                f"{path}: model.{key} = {model[key]!r}; pybitnet converts plain byte-level BPE"
            )
    tokens, types = _tokens(path, spec, vocab_rows)
    merges = _merges(path, model.get("merges"))  # checked before HF tokenizers reads them
    config = _read_json(folder / "tokenizer_config.json", missing_ok=True)
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_tokenizer_name(path, spec),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
        "tokenizer.ggml.merges": merges,
    }
    metadata.update(_special_ids(folder, config, {t: i for i, t in enumerate(tokens)}))
    add_bos = config.get("add_bos_token", _post_processor_adds_bos(spec))
    if add_bos is not None:
        metadata["tokenizer.ggml.add_bos_token"] = bool(add_bos)
    if "add_eos_token" in config:
        metadata["tokenizer.ggml.add_eos_token"] = bool(config["add_eos_token"])
    template = _chat_template(folder, config)
    if template is not None:
        metadata["tokenizer.chat_template"] = template
    _check_end_ids(folder, metadata)
    return metadata


def _pre_tokenizer_name(path: Path, spec: dict[str, Any]) -> str:
    """llama.cpp's name for the pre-tokenizer: by the hash of the check text, else by the
    regexes of tokenizer.json's `pre_tokenizer`; an unknown one is an error."""
    try:
        ids = HFTokenizer.from_file(str(path)).encode(CHECK_TEXT).ids
    except Exception as exc:  # tokenizers raises its own exception types
        raise TokenizerError(f"{path}: HF tokenizers cannot load it: {exc}") from None
    name = _KNOWN_HASHES.get(sha256(str(ids).encode()).hexdigest())
    if name is not None:
        return name
    regexes = _split_regexes(spec.get("pre_tokenizer"))
    ignore_merges = bool(spec["model"].get("ignore_merges", False))
    if spec.get("normalizer") is None and regexes is not None:
        for name, (known, known_ignore, _) in PRE_TOKENIZERS.items():
            if known == regexes and known_ignore == ignore_merges:
                return name
    raise TokenizerError(
        f"{path}: pre_tokenizer {json.dumps(spec.get('pre_tokenizer'))[:300]} (normalizer "
        f"{spec.get('normalizer')!r}, ignore_merges {ignore_merges}) is none that pybitnet "
        f"knows ({', '.join(PRE_TOKENIZERS)})"
    )


def _split_regexes(pre: Any) -> tuple[str, ...] | None:
    """The regexes of a Sequence of isolating Splits ended by a plain ByteLevel, or of a lone
    GPT-2 ByteLevel; None for any other pre-tokenizer."""
    sequence = isinstance(pre, dict) and pre.get("type") == "Sequence"
    steps = pre.get("pretokenizers") if sequence else [pre]
    if not steps or not all(isinstance(s, dict) for s in steps):
        return None
    *splits, last = steps
    if last.get("type") != "ByteLevel" or last.get("add_prefix_space"):
        return None
    regexes: tuple[str, ...] = ()
    for split in splits:
        pattern = split.get("pattern", {})
        if (
            split.get("type") != "Split"
            or split.get("behavior") != "Isolated"
            or split.get("invert")
            or not isinstance(pattern.get("Regex"), str)
        ):
            return None
        regexes += (_as_llama_cpp_writes_it(pattern["Regex"]),)
    if last.get("use_regex", True):  # ByteLevel's own regex is GPT-2's
        regexes += PRE_TOKENIZERS["gpt-2"][0]
    return regexes or None


# Meta's files spell Llama-3's contractions with a case-insensitive group, which llama.cpp (whose
# regex engine has none) writes out letter by letter: the same regex, two spellings.
_SAME_REGEX = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)": "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
}


def _as_llama_cpp_writes_it(regex: str) -> str:
    for theirs, ours in _SAME_REGEX.items():
        regex = regex.replace(theirs, ours)
    return regex


def _tokens(path: Path, spec: dict[str, Any], vocab_rows: int) -> tuple[list[str], list[int]]:
    """Token texts and types for ids 0..vocab_rows-1: the BPE vocabulary, the added tokens
    (control when special, user-defined otherwise) and `[PAD<i>]` (unused) for the rest."""
    vocab = spec["model"].get("vocab")
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{path}: model.vocab is not an object of token -> id")
    by_id: dict[int, tuple[str, int]] = {}
    entries = [(t, i, NORMAL) for t, i in vocab.items()]
    for k, added in enumerate(spec.get("added_tokens") or []):
        if not isinstance(added, dict):
            raise TokenizerError(f"{path}: added_tokens[{k}] = {added!r} is not an object")
        kind = CONTROL if added.get("special") else USER_DEFINED
        entries.append((added.get("content"), added.get("id"), kind))
    for text, token_id, kind in entries:
        if not isinstance(text, str) or isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TokenizerError(f"{path}: token {text!r} has id {token_id!r}, not a token id")
        if not 0 <= token_id < vocab_rows:
            raise TokenizerError(
                f"{path}: token {text!r} has id {token_id}, outside the embedding's "
                f"{vocab_rows} rows"
            )
        if by_id.get(token_id, (text,))[0] != text:
            raise TokenizerError(
                f"{path}: id {token_id} names both {by_id[token_id][0]!r} and {text!r}"
            )
        by_id[token_id] = (text, kind)
    texts = [text for text, _ in by_id.values()]
    if len(set(texts)) != len(texts):
        twice = next(t for t in texts if texts.count(t) > 1)
        raise TokenizerError(f"{path}: token {twice!r} has two ids")
    rows = [by_id.get(i, (f"[PAD{i}]", UNUSED)) for i in range(vocab_rows)]
    return [text for text, _ in rows], [kind for _, kind in rows]


def _merges(path: Path, raw: Any) -> list[str]:
    """The merges as GGUF stores them ("left right"), from either tokenizer.json form."""
    if not isinstance(raw, list):
        raise TokenizerError(f"{path}: model.merges = {str(raw)[:80]!r} is not a list")
    merges = []
    for i, merge in enumerate(raw):
        if isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
            merge = " ".join(merge)
        if not isinstance(merge, str) or merge.count(" ") != 1:
            raise TokenizerError(f"{path}: model.merges[{i}] = {merge!r} is not a pair")
        merges.append(merge)
    return merges


def _special_ids(folder: Path, config: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """BOS, EOS, unknown and padding ids from tokenizer_config.json's token texts, and the other
    end-of-generation ids of generation_config.json as EOT and EOM."""
    out: dict[str, Any] = {}
    for key, gguf_key in (
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unknown"),
        ("pad_token", "padding"),
    ):
        text = config.get(key)
        text = text.get("content") if isinstance(text, dict) else text
        if text is None:
            continue
        if text not in ids:
            where = folder / "tokenizer_config.json"
            raise TokenizerError(f"{where}: {key} = {text!r} is not a token of the vocabulary")
        out[f"tokenizer.ggml.{gguf_key}_token_id"] = np.uint32(ids[text])
    end_ids = _generation_end_ids(folder, len(ids))
    if end_ids and "tokenizer.ggml.eos_token_id" not in out:
        out["tokenizer.ggml.eos_token_id"] = np.uint32(end_ids[0])
    others = [i for i in end_ids if i != out.get("tokenizer.ggml.eos_token_id")]
    for gguf_key, token_id in zip(("eot", "eom"), others, strict=False):
        out[f"tokenizer.ggml.{gguf_key}_token_id"] = np.uint32(token_id)
    return out


def _generation_end_ids(folder: Path, n_tokens: int) -> list[int]:
    """generation_config.json's `eos_token_id` (one id or a list), checked."""
    path = folder / "generation_config.json"
    raw = _read_json(path, missing_ok=True).get("eos_token_id")
    end_ids = raw if isinstance(raw, list) else [] if raw is None else [raw]
    for token_id in end_ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TokenizerError(f"{path}: eos_token_id holds {token_id!r}, not a token id")
        if not 0 <= token_id < n_tokens:
            raise TokenizerError(
                f"{path}: eos_token_id {token_id} is outside the vocabulary ({n_tokens} tokens)"
            )
    return list(dict.fromkeys(end_ids))


def _check_end_ids(folder: Path, metadata: dict[str, Any]) -> None:
    """Every end-of-generation id of generation_config.json must end generation in pybitnet."""

    def fail(key: str, problem: str) -> TokenizerError:
        return TokenizerError(f"{folder}: {key} {problem}")

    tokens = metadata["tokenizer.ggml.tokens"]
    _, _, eog = special_ids(metadata, tokens, False, fail)
    lost = [i for i in _generation_end_ids(folder, len(tokens)) if i not in eog]
    if lost:
        raise TokenizerError(
            f"{folder / 'generation_config.json'}: eos_token_id {lost[0]} "
            f"({tokens[lost[0]]!r}) does not fit the GGUF's EOS, EOT and EOM ids"
        )


def _post_processor_adds_bos(spec: dict[str, Any]) -> bool | None:
    """Whether tokenizer.json's TemplateProcessing puts a special token before the text."""
    post = spec.get("post_processor")
    steps = post.get("processors", []) if isinstance(post, dict) else []
    for step in [post, *steps]:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            single = step.get("single") or [{}]
            return "SpecialToken" in single[0]
    return None


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """The chat template: chat_template.jinja, else tokenizer_config.json's (the "default" one
    when it holds a list of named templates)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return _read_text(jinja)
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        where = folder / "tokenizer_config.json"
        raise TokenizerError(f"{where}: chat_template = {str(template)[:80]!r} is not a string")
    return template


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: cannot read it: {exc}") from None


def _read_json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from `path`; {} for a missing optional file."""
    if missing_ok and not path.exists():
        return {}
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: holds {type(value).__name__}, not a JSON object")
    return value
