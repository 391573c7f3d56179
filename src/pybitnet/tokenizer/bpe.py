"""Byte-level BPE (`tokenizer.ggml.model = gpt2`): the pre-tokenizers and the merges, run in HF
`tokenizers`.

The text is cut by the pre-tokenizer regexes that `tokenizer.ggml.pre` names (llama.cpp's table),
each piece is written in GPT-2's byte alphabet, and `tokenizer.ggml.merges` joins the pieces.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from pybitnet.errors import shown
from pybitnet.tokenizer.vocabulary import Fail

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_SMOLLM = (r"\p{N}", _GPT2)

# tokenizer.ggml.pre -> (regexes applied in turn, ignore_merges, default add_bos); the subset of
# llama.cpp's table (llm_tokenizer_bpe, llama_vocab::impl::load) that pybitnet's models use.
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "default": (_DEFAULT, False, False),
    "gpt-2": ((_GPT2,), False, False),
    "llama-bpe": ((_LLAMA3,), True, True),
    "llama3": ((_LLAMA3,), True, True),
    "llama-v3": ((_LLAMA3,), True, True),
    "falcon3": ((_LLAMA3,), True, True),  # Falcon3(-1.58bit): llama.cpp reads it as llama3
    "smollm": (_SMOLLM, False, False),
    "starcoder": (_SMOLLM, False, False),
}


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (byte-level BPE alphabet)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in chars)
    chars.update((b, chr(256 + n)) for n, b in enumerate(others))
    return [chars[b] for b in range(256)]


_BYTE_OF_CHAR = {c: b for b, c in enumerate(_gpt2_byte_chars())}


def byte_level_bytes(text: str) -> bytes:
    """The bytes a normal token's text stands for, read back from GPT-2's byte alphabet."""
    return b"".join(bytes([_BYTE_OF_CHAR[c]]) if c in _BYTE_OF_CHAR else c.encode() for c in text)


def gpt2_bpe(
    metadata: Mapping[str, Any], tokens: list[str], source: str, fail: Fail
) -> tuple[HFTokenizer, bool]:
    """(the byte-level BPE, whether BOS is added by default) for a gpt2 vocabulary."""
    pre = metadata.get("tokenizer.ggml.pre")
    if pre is None:
        warnings.warn(
            f"{source}: tokenizer.ggml.pre is missing; using 'default' like llama.cpp "
            "(tokenization may differ from the model's own)",
            stacklevel=3,
        )
        pre = "default"
    if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise fail("tokenizer.ggml.pre", f"= {shown(pre)} is not supported (known: {known})")
    regexes, ignore_merges, add_bos = PRE_TOKENIZERS[pre]
    merges = _merges(metadata.get("tokenizer.ggml.merges"), tokens, fail)
    vocab = {text: i for i, text in enumerate(tokens)}
    bpe = HFTokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    # each regex splits the pieces further, keeping both its matches and the text between them
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    return bpe, add_bos


def _merges(raw: Any, tokens: list[str], fail: Fail) -> list[tuple[str, str]]:
    """`tokenizer.ggml.merges` ("left right" strings) as pairs, each joining two tokens into one."""
    if not isinstance(raw, Sequence) or not raw:
        raise fail("tokenizer.ggml.merges", "is missing or empty (a gpt2 vocabulary needs it)")
    vocab = set(tokens)
    pairs = []
    for i, merge in enumerate(raw):
        cut = merge.find(" ", 1) if isinstance(merge, str) else -1
        left, right = merge[:cut], merge[cut + 1 :]
        if cut < 0 or left not in vocab or right not in vocab or left + right not in vocab:
            raise fail(f"tokenizer.ggml.merges[{i}]", f"= {shown(merge)} does not join two tokens")
        pairs.append((left, right))
    return pairs
