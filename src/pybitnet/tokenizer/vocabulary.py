"""A GGUF file's vocabulary: token texts, types and scores, checked; the special ids (BOS, EOS
and the end-of-generation set) as llama.cpp derives them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pybitnet.errors import TokenizerError, shown

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

# fail(key, problem): the error naming the file, the metadata key and the bad value
Fail = Callable[[str, str], TokenizerError]

# Token texts llama.cpp treats as end-of-generation (and forces to control type), plus the
# fill-in-the-middle pad / repo / file-separator tokens it also adds to that set.
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
        "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
        "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    }
)  # fmt: skip
_FIM_EOG = {
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}


def read_vocabulary(
    metadata: Mapping[str, Any], spm: bool, fail: Fail
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(token texts, token types, scores), checked."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, Sequence) or not tokens:
        raise fail("tokenizer.ggml.tokens", "is missing or empty")
    if not all(isinstance(t, str) for t in tokens):
        raise fail("tokenizer.ggml.tokens", "holds a value that is not a string")
    # llama.cpp renames empty tokens this way so that every text names one id
    tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    n = len(tokens)
    if len(set(tokens)) != n:
        seen: set[str] = set()
        duplicate = next(t for t in tokens if t in seen or seen.add(t))
        raise fail("tokenizer.ggml.tokens", f"holds {shown(duplicate)} twice")

    def per_token(key: str, default: float, dtype: type) -> np.ndarray:
        values = metadata.get(key)
        if values is None:
            return np.full(n, default, dtype)
        try:
            array = np.asarray(values)
        except ValueError:  # an array of arrays of different lengths
            array = np.asarray([])
        if array.ndim != 1 or array.size < n or not np.issubdtype(array.dtype, np.number):
            raise fail(key, f"has {array.size} values of type {array.dtype} for {n} tokens")
        return array[:n].astype(dtype)

    token_types = per_token("tokenizer.ggml.token_type", NORMAL, np.int32)
    bad = np.flatnonzero((token_types < UNDEFINED) | (token_types > BYTE))
    if bad.size:
        raise fail(f"tokenizer.ggml.token_type[{bad[0]}]", f"= {token_types[bad[0]]} is not 0..6")
    for i in np.flatnonzero(token_types == BYTE) if spm else ():
        if not re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", tokens[i]):
            raise fail(
                f"tokenizer.ggml.tokens[{i}]", f"= {shown(tokens[i])} is a byte token, not <0xNN>"
            )
    return tokens, token_types, per_token("tokenizer.ggml.scores", 0.0, np.float32)


def special_ids(
    metadata: Mapping[str, Any], tokens: list[str], spm: bool, fail: Fail
) -> tuple[int | None, int | None, frozenset[int]]:
    """(BOS id, EOS id, end-of-generation ids): the file's ids, else llama.cpp's defaults."""
    n = len(tokens)

    def token_id(key: str, default: int | None = None) -> int | None:
        """An id from tokenizer.ggml.<key>; llama.cpp's default only when it fits."""
        value = metadata.get(f"tokenizer.ggml.{key}")
        if value is None:
            return default if default is not None and default < n else None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise fail(f"tokenizer.ggml.{key}", f"= {shown(value)} is not a token id")
        if not 0 <= value < n:
            raise fail(f"tokenizer.ggml.{key}", f"= {value} is outside the vocabulary ({n})")
        return int(value)

    # llama.cpp's defaults when the ids are absent: SPM 1 / 2, gpt2 11 / 11
    bos_id = token_id("bos_token_id", 1 if spm else 11)
    eos_id = token_id("eos_token_id", 2 if spm else 11)
    eog = {eos_id, token_id("eot_token_id"), token_id("eom_token_id")}
    ids = {text: i for i, text in enumerate(tokens)}
    for key, texts in _FIM_EOG.items():
        found = token_id(f"{key}_token_id")
        eog.add(next((ids[t] for t in texts if t in ids), None) if found is None else found)
    eog.update(ids[text] for text in _EOG_TEXTS.intersection(ids))
    eog.discard(None)
    return bos_id, eos_id, frozenset(eog)
