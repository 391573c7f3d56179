"""Tokenizers built from GGUF metadata, token for token the same as llama.cpp's.

Two vocabulary kinds (`tokenizer.ggml.model`), following llama.cpp's `llama-vocab.cpp` (upstream
@0c1e57098, the copy in llama-cpp-python 0.3.36):

- `gpt2`: byte-level BPE over `tokenizer.ggml.merges`, after the pre-tokenizer regexes named by
  `tokenizer.ggml.pre` (llama.cpp's table). The BPE itself runs in HF `tokenizers`.
- `llama`: SentencePiece-style BPE that merges the adjacent pair whose token has the highest
  score (leftmost on ties), spaces written as `▁`, a space prefix, and characters without a
  token falling back to `<0xNN>` byte tokens. HF `tokenizers` has no score-ordered BPE, so this
  one is written here (`_spm_encode`).

Special tokens (control and unknown) are matched as whole tokens in text only with
`parse_special=True`; user-defined tokens always are, as in llama.cpp. Longer special texts are
matched first, over the whole text, as llama.cpp's `tokenizer_st_partition` does.
"""

from __future__ import annotations

import codecs
import heapq
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from pybitnet.errors import TokenizerError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

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
    "smollm": (_SMOLLM, False, False),
    "starcoder": (_SMOLLM, False, False),
}

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


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (byte-level BPE alphabet)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    others = (b for b in range(256) if b not in chars)
    chars.update((b, chr(256 + n)) for n, b in enumerate(others))
    return [chars[b] for b in range(256)]


_BYTE_OF_CHAR = {c: b for b, c in enumerate(_gpt2_byte_chars())}


class Tokenizer:
    """Text <-> token ids for one model, built from its GGUF `tokenizer.*` metadata."""

    def __init__(
        self,
        tokens: list[str],
        token_types: np.ndarray,
        scores: np.ndarray,
        bpe: HFTokenizer | None,
        *,
        source: str,
        bos_id: int | None,
        eos_id: int | None,
        eog_ids: frozenset[int],
        add_bos: bool,
        add_eos: bool,
        add_space_prefix: bool,
        chat_template: str | None,
    ) -> None:
        """Use `from_metadata`."""
        self._tokens = tokens
        self._types = token_types
        self._scores = scores
        self._bpe = bpe
        self._source = source
        self._bos_id = bos_id
        self._eos_id = eos_id
        self._eog_ids = eog_ids
        self._add_bos = add_bos
        self._add_eos = add_eos
        self._add_space_prefix = add_space_prefix
        self.chat_template = chat_template
        self._ids = {text: i for i, text in enumerate(tokens)}
        self._pieces = [self._piece(i) for i in range(len(tokens))]
        self._hidden = np.isin(token_types, (CONTROL, UNKNOWN))
        specials = np.flatnonzero(np.isin(token_types, (CONTROL, UNKNOWN, USER_DEFINED)))
        by_length = sorted(specials.tolist(), key=lambda i: -len(tokens[i].encode()))
        self._specials = [(i, tokens[i]) for i in by_length]
        self._user_defined = [(i, s) for i, s in self._specials if token_types[i] == USER_DEFINED]
        self._byte_ids = [self._byte_token(b) for b in range(256)]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, source: str = "<metadata>") -> Tokenizer:
        """Build the tokenizer that `metadata` (a GGUF file's key/value pairs) describes.

        `source` (usually the file's path) starts every error message.
        """

        def fail(key: str, problem: str) -> TokenizerError:
            return TokenizerError(f"{source}: {key} {problem}")

        kind = metadata.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise fail("tokenizer.ggml.model", f"= {kind!r}: pybitnet reads 'gpt2' and 'llama'")
        spm = kind == "llama"
        tokens, token_types, scores = _vocabulary(metadata, spm, fail)
        n = len(tokens)

        def token_id(key: str, default: int | None = None) -> int | None:
            """An id from tokenizer.ggml.<key>; llama.cpp's default only when it fits."""
            value = metadata.get(f"tokenizer.ggml.{key}")
            if value is None:
                return default if default is not None and default < n else None
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise fail(f"tokenizer.ggml.{key}", f"= {value!r} is not a token id")
            if not 0 <= value < n:
                raise fail(f"tokenizer.ggml.{key}", f"= {value} is outside the vocabulary ({n})")
            return int(value)

        bpe, add_bos_default = (None, True) if spm else _gpt2_bpe(metadata, tokens, source, fail)
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
        token_types[list(eog)] = CONTROL  # as llama.cpp does, whatever the file says

        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default))
        if add_bos and bos_id is None:
            raise fail("tokenizer.ggml.add_bos_token", "is true but there is no BOS token")
        template = metadata.get("tokenizer.chat_template")
        return cls(
            tokens,
            token_types,
            scores,
            bpe,
            source=source,
            bos_id=bos_id,
            eos_id=eos_id,
            eog_ids=frozenset(eog),
            add_bos=add_bos,
            add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
            add_space_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", spm)),
            chat_template=template if isinstance(template, str) else None,
        )

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS, EOT and the others llama.cpp treats so."""
        return self._eog_ids

    @property
    def add_bos(self) -> bool:
        """Whether `encode` adds BOS by default (the file's `add_bos_token`)."""
        return self._add_bos

    def token_to_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly `text`, or None."""
        return self._ids.get(text)

    def is_special(self, token_id: int) -> bool:
        """True for control and unknown tokens, the ones `skip_special` leaves out."""
        self._check_id(token_id)
        return bool(self._hidden[token_id])

    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = False
    ) -> list[int]:
        """Token ids of `text`, as llama.cpp's `llama_tokenize` gives them.

        add_bos: None follows the file's `add_bos_token` (and appends EOS when the file's
        `add_eos_token` says so, like llama.cpp's add_special); False adds neither.
        parse_special: match control-token texts such as `<|im_start|>` as single tokens.
        """
        use_bos = self._add_bos if add_bos is None else add_bos
        ids: list[int] = []
        if use_bos:
            if self._bos_id is None:
                raise TokenizerError(f"{self._source}: add_bos=True but the vocabulary has no BOS")
            ids.append(self._bos_id)
        after_special = True
        for part in self._split_special(text, parse_special):
            if isinstance(part, int):
                ids.append(part)
                after_special = True
                continue
            if self._bpe is not None:
                ids.extend(self._bpe.encode(part, add_special_tokens=False).ids)
            else:
                prefix = " " if self._add_space_prefix and after_special else ""
                ids.extend(self._spm_encode((prefix + part).replace(" ", "▁")))
            after_special = False
        if self._add_eos and add_bos is not False and self._eos_id is not None:
            ids.append(self._eos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """The text of `ids`, as llama.cpp's `llama_detokenize` gives it.

        Control and unknown tokens appear as their text unless `skip_special`. Like llama.cpp,
        one leading space of the first piece is dropped when the vocabulary adds a space prefix
        (SPM). llama.cpp's optional clean-up of spaces before punctuation (used by some gpt2
        vocabularies) is not applied: decode(encode(text)) gives text back.
        """
        pieces = [b"" if skip_special and self._hidden[i] else self.token_bytes(i) for i in ids]
        if self._add_space_prefix and pieces and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token `token_id` stands for (special tokens: their text)."""
        self._check_id(token_id)
        return self._pieces[token_id]

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(
                f"{self._source}: token id {token_id} is outside the vocabulary "
                f"({len(self._tokens)} tokens)"
            )

    def _piece(self, i: int) -> bytes:
        """llama.cpp's token_to_piece with special tokens rendered."""
        text, kind = self._tokens[i], self._types[i]
        if kind in (CONTROL, UNKNOWN, USER_DEFINED):
            return text.encode()
        if kind == NORMAL and self._bpe is not None:
            return b"".join(
                bytes([_BYTE_OF_CHAR[c]]) if c in _BYTE_OF_CHAR else c.encode() for c in text
            )
        if kind == NORMAL:
            return text.replace("▁", " ").encode()
        if kind == BYTE and self._bpe is None:
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens have no text in llama.cpp

    def _byte_token(self, b: int) -> int | None:
        """The token SPM byte fallback uses for byte `b` (llama.cpp's byte_to_token)."""
        found = self._ids.get(f"<0x{b:02X}>")
        return self._ids.get(chr(b)) if found is None and b < 0x80 else found

    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        """`text` cut into plain-text parts and special-token ids, longest specials first."""
        parts: list[str | int] = [text] if text else []
        for token_id, special in self._specials if parse_special else self._user_defined:
            if not any(isinstance(p, str) and special in p for p in parts):
                continue
            cut: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or special not in part:
                    cut.append(part)
                    continue
                for k, chunk in enumerate(part.split(special)):
                    if k:
                        cut.append(token_id)
                    if chunk:
                        cut.append(chunk)
            parts = cut
        return parts

    def _spm_encode(self, text: str) -> list[int]:
        """llama.cpp's llm_tokenizer_spm_session: merge the best-scoring adjacent pair first."""
        symbols = list(text)
        nxt = [*range(1, len(symbols)), -1]
        prev = list(range(-1, len(symbols) - 1))
        queue: list[tuple[float, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left != -1 and right != -1:
                merged = symbols[left] + symbols[right]
                token_id = self._ids.get(merged)
                if token_id is not None:
                    heapq.heappush(queue, (-float(self._scores[token_id]), left, right, merged))

        for i in range(1, len(symbols)):
            push(i - 1, i)
        while queue:
            _, left, right, merged = heapq.heappop(queue)
            if not symbols[right] or symbols[left] + symbols[right] != merged:
                continue  # one side was merged since this pair was queued
            symbols[left], symbols[right] = merged, ""
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        ids: list[int] = []
        for symbol in filter(None, symbols):
            token_id = self._ids.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            for b in symbol.encode():
                if self._byte_ids[b] is None:
                    raise TokenizerError(
                        f"{self._source}: cannot encode {symbol!r}: no token <0x{b:02X}>"
                    )
                ids.append(self._byte_ids[b])
        return ids


class StreamDecoder:
    """Turns generated token ids into text as they arrive, never splitting a UTF-8 character.

    Pieces are joined as they are (no leading-space removal): this is the text llama.cpp's
    generation prints token by token.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by `token_id` (may be empty while a character is incomplete)."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """What is left at the end (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def _vocabulary(
    metadata: Mapping[str, Any], spm: bool, fail: Callable[[str, str], TokenizerError]
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
        raise fail("tokenizer.ggml.tokens", f"holds {duplicate!r} twice")

    def per_token(key: str, default: float, dtype: type) -> np.ndarray:
        values = metadata.get(key)
        if values is None:
            return np.full(n, default, dtype)
        array = np.asarray(values)
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
                f"tokenizer.ggml.tokens[{i}]", f"= {tokens[i]!r} is a byte token, not <0xNN>"
            )
    return tokens, token_types, per_token("tokenizer.ggml.scores", 0.0, np.float32)


def _gpt2_bpe(
    metadata: Mapping[str, Any],
    tokens: list[str],
    source: str,
    fail: Callable[[str, str], TokenizerError],
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
    if pre not in PRE_TOKENIZERS:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise fail("tokenizer.ggml.pre", f"= {pre!r} is not supported (known: {known})")
    regexes, ignore_merges, add_bos = PRE_TOKENIZERS[pre]
    merges = _merges(metadata.get("tokenizer.ggml.merges"), tokens, fail)
    vocab = {text: i for i, text in enumerate(tokens)}
    bpe = HFTokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    # each regex splits the pieces further, keeping both its matches and the text between them
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    return bpe, add_bos


def _merges(
    raw: Any, tokens: list[str], fail: Callable[[str, str], TokenizerError]
) -> list[tuple[str, str]]:
    """`tokenizer.ggml.merges` ("left right" strings) as pairs, each joining two tokens into one."""
    if not isinstance(raw, Sequence) or not raw:
        raise fail("tokenizer.ggml.merges", "is missing or empty (a gpt2 vocabulary needs it)")
    vocab = set(tokens)
    pairs = []
    for i, merge in enumerate(raw):
        cut = merge.find(" ", 1) if isinstance(merge, str) else -1
        left, right = merge[:cut], merge[cut + 1 :]
        if cut < 0 or left not in vocab or right not in vocab or left + right not in vocab:
            raise fail(f"tokenizer.ggml.merges[{i}]", f"= {merge!r} does not join two tokens")
        pairs.append((left, right))
    return pairs
