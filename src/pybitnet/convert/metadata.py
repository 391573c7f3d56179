"""GGUF metadata that pybitnet writes: SentencePiece-style (`llama`) tokenizers.

Used by the importers (convert/llama2c.py) and the synthetic model generator (convert/synthetic.py).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet.errors import ModelError

# Token types, the same numbers in SentencePiece's ModelProto and in GGUF.
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def llama_tokenizer(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], add_space_prefix: bool
) -> dict[str, Any]:
    """tokenizer.ggml.* metadata of a SentencePiece vocabulary; BOS is added, EOS is not."""

    def special(piece: str) -> np.uint32:
        if piece not in tokens:
            raise ModelError(f"the tokenizer has no {piece} piece")
        return np.uint32(tokens.index(piece))

    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": list(tokens),
        "tokenizer.ggml.scores": np.asarray(scores, np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
        "tokenizer.ggml.bos_token_id": special("<s>"),
        "tokenizer.ggml.eos_token_id": special("</s>"),
        "tokenizer.ggml.unknown_token_id": special("<unk>"),
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }


# SentencePiece's ModelProto, as much of it as a GGUF needs: repeated SentencePiece pieces = 1
# {string piece = 1; float score = 2; Type type = 3 (default NORMAL)}, NormalizerSpec
# normalizer_spec = 3 {bool add_dummy_prefix = 3 (default true)}.


def read_sentencepiece(path: Path) -> dict[str, Any]:
    """The tokenizer.ggml.* metadata of a SentencePiece `tokenizer.model` (no sentencepiece)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the tokenizer: {exc.strerror}") from None
    tokens, scores, types = [], [], []
    add_dummy_prefix = True
    for field, value in _proto_fields(raw, f"{path}: ModelProto"):
        if field not in (1, 3):
            continue
        if not isinstance(value, bytes):
            raise ModelError(f"{path}: ModelProto field {field} is not a message")
        if field == 3:
            add_dummy_prefix = bool(dict(_proto_fields(value, f"{path}: NormalizerSpec")).get(3, 1))
            continue
        where = f"{path}: SentencePiece {len(tokens)}"
        piece = dict(_proto_fields(value, where))
        text, score, kind = piece.get(1), piece.get(2, bytes(4)), piece.get(3, NORMAL)
        if not (isinstance(text, bytes) and isinstance(score, bytes) and len(score) == 4):
            raise ModelError(f"{where}: text {text!r} or score {score!r} is malformed")
        if not (isinstance(kind, int) and 0 <= kind < 2**31):
            raise ModelError(f"{where}: type {kind!r} is malformed")
        try:
            tokens.append(text.decode("utf-8"))
        except UnicodeDecodeError:
            raise ModelError(f"{where}: text {text!r} is not UTF-8") from None
        scores.append(struct.unpack("<f", score)[0])
        types.append(kind)
    if not tokens:
        raise ModelError(f"{path}: no SentencePiece pieces found; is this a tokenizer.model?")
    try:
        return llama_tokenizer(tokens, scores, types, add_dummy_prefix)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _proto_fields(raw: bytes, where: str) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message: varints as int, fixed32 and
    length-delimited fields as bytes, fixed64 skipped. Bounds-checked against the buffer."""
    fields, i = [], 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            if i >= len(raw) or shift > 63:
                raise ModelError(f"{where}: truncated or malformed varint")
            byte = raw[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(raw):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            fields.append((field, varint()))
            continue
        size = varint() if wire == 2 else {1: 8, 5: 4}.get(wire)
        if size is None or i + size > len(raw):
            raise ModelError(
                f"{where}: field {field} (wire type {wire}) is malformed or runs past "
                "the end of the data"
            )
        if wire != 1:
            fields.append((field, raw[i : i + size]))
        i += size
    return fields
