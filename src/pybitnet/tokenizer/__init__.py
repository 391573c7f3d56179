"""Tokenizers built from GGUF metadata, token for token the same as llama.cpp's.

Two vocabulary kinds (`tokenizer.ggml.model`), following llama.cpp's `llama-vocab.cpp` (upstream
@0c1e57098, the copy in llama-cpp-python 0.3.36):

- `gpt2`: byte-level BPE over `tokenizer.ggml.merges`, after the pre-tokenizer regexes named by
  `tokenizer.ggml.pre` (llama.cpp's table). The BPE itself runs in HF `tokenizers` (`bpe.py`).
- `llama`: SentencePiece-style BPE that merges the adjacent pair whose token has the highest
  score (leftmost on ties), spaces written as `▁`, a space prefix, and characters without a
  token falling back to `<0xNN>` byte tokens. HF `tokenizers` has no score-ordered BPE, so this
  one is written here (`spm.py`).

Special tokens (control and unknown) are matched as whole tokens in text only with
`parse_special=True`; user-defined tokens always are, as in llama.cpp. Longer special texts are
matched first, over the whole text, as llama.cpp's `tokenizer_st_partition` does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from pybitnet.errors import TokenizerError, shown
from pybitnet.tokenizer.bpe import byte_level_bytes, gpt2_bpe
from pybitnet.tokenizer.spm import ScoredBPE
from pybitnet.tokenizer.stream import StreamDecoder
from pybitnet.tokenizer.vocabulary import (
    BYTE,
    CONTROL,
    NORMAL,
    UNKNOWN,
    USER_DEFINED,
    read_vocabulary,
    special_ids,
)

__all__ = ["StreamDecoder", "Tokenizer"]


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
        self._spm = ScoredBPE(self._ids, scores, source) if bpe is None else None
        self._pieces = [self._piece(i) for i in range(len(tokens))]
        self._hidden = np.isin(token_types, (CONTROL, UNKNOWN))
        specials = np.flatnonzero(np.isin(token_types, (CONTROL, UNKNOWN, USER_DEFINED)))
        by_length = sorted(specials.tolist(), key=lambda i: -len(tokens[i].encode()))
        self._specials = [(i, tokens[i]) for i in by_length]
        self._user_defined = [(i, s) for i, s in self._specials if token_types[i] == USER_DEFINED]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, source: str = "<metadata>") -> Tokenizer:
        """Build the tokenizer that `metadata` (a GGUF file's key/value pairs) describes.

        `source` (usually the file's path) starts every error message.
        """

        def fail(key: str, problem: str) -> TokenizerError:
            return TokenizerError(f"{source}: {key} {problem}")

        kind = metadata.get("tokenizer.ggml.model")
        if not isinstance(kind, str) or kind not in ("gpt2", "llama"):
            raise fail(
                "tokenizer.ggml.model", f"= {shown(kind)}: pybitnet reads 'gpt2' and 'llama'"
            )
        spm = kind == "llama"
        tokens, token_types, scores = read_vocabulary(metadata, spm, fail)
        bpe, add_bos_default = (None, True) if spm else gpt2_bpe(metadata, tokens, source, fail)
        bos_id, eos_id, eog_ids = special_ids(metadata, tokens, spm, fail)
        token_types[list(eog_ids)] = CONTROL  # as llama.cpp does, whatever the file says

        def flag(key: str, default: bool) -> bool:
            value = metadata.get(f"tokenizer.ggml.{key}", default)
            if not isinstance(value, bool):
                raise fail(f"tokenizer.ggml.{key}", f"= {shown(value)} must be a bool")
            return value

        add_bos = flag("add_bos_token", add_bos_default)
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
            eog_ids=eog_ids,
            add_bos=add_bos,
            add_eos=flag("add_eos_token", False),
            add_space_prefix=flag("add_space_prefix", spm),
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
                ids.extend(self._spm.encode((prefix + part).replace(" ", "▁")))
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

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token stands for (its bytes; at least 1), so a text longer
        than n times this cannot be n tokens or fewer."""
        return max(1, max(map(len, self._pieces), default=1))

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
            return byte_level_bytes(text)
        if kind == NORMAL:
            return text.replace("▁", " ").encode()
        if kind == BYTE and self._bpe is None:
            return bytes([int(text[3:5], 16)])
        return b""  # unused and undefined tokens have no text in llama.cpp

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
