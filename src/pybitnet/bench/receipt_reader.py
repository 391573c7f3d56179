"""Reading a receipt file within bounds, before anything depends on its contents (docs/SPEC.md
§6): its size, its number of values and its depth are checked before it is parsed, and its
strings after. ReceiptValidator is JSON Schema (draft 2020-12) as the receipt's schema means it:
an integer is an integer literal, never 1.0 or 1e30, and arrays of numbers are checked fast.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator, validators

from pybitnet.errors import BenchError

# What a receipt file may hold, checked before it is parsed, so that parsing it allocates at most
# a few hundred MB. Generous: a 2B model's receipt at batch 32, 2048 tokens and 100 repetitions
# at two thread counts is 13 MB and 0.6 million values, and nests 5 deep.
MAX_BYTES = 32 * 2**20
MAX_VALUES = 2**21  # counted by commas, brackets and strings: at most ~70 bytes each once parsed
MAX_DEPTH = 32


def read_receipt_json(path: str | Path) -> Any:
    """Read a receipt file's JSON without validating it (verify reports the schema's verdict),
    refusing a file too large or too deeply nested before parsing it."""
    data = _read_at_most(path, MAX_BYTES)
    _check_structure(path, data)
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not JSON: {exc}") from None
    except ValueError as exc:  # NaN, or an integer of over 4300 digits (Python's limit)
        raise BenchError(f"{path}: {str(exc).split('; use sys.')[0]}") from None
    if _SURROGATE_ESCAPE.search(data):  # only a pair of \uD800-\uDFFF escapes is a character
        _check_characters(path, doc)
    return doc


def _read_at_most(path: str | Path, limit: int) -> bytes:
    """The file's bytes, read a MiB at a time (a single read of `limit` bytes would allocate
    them all, however small the file), refused once they pass `limit`."""
    chunks, size = [], 0
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(2**20):
                size += len(chunk)
                if size > limit:
                    raise BenchError(f"{path}: the receipt is larger than {limit:,} bytes")
                chunks.append(chunk)
    except OSError as exc:
        raise BenchError(f"{path}: cannot read the receipt: {exc}") from None
    return b"".join(chunks)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a receipt may hold")


# every byte but the quote and the brackets, which are all that nesting depends on
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')


def _check_structure(path: str | Path, data: bytes) -> None:
    """Refuse JSON with more than MAX_VALUES values or nested deeper than MAX_DEPTH, before
    parsing it (the parser recurses once per level, and allocates per value). Linear in the
    size: escaped backslashes and quotes are dropped first (a run of backslashes pairs up from
    its left, as in JSON strings), then only quotes and brackets are kept, and the brackets
    between an odd and an even quote are inside strings."""
    values = sum(data.count(c) for c in (b",", b"[", b"{")) + data.count(b'"') // 2
    if values > MAX_VALUES:
        raise BenchError(
            f"{path}: the receipt holds about {values:,} values (counted by commas, brackets "
            f"and strings), more than the {MAX_VALUES:,} a receipt may hold"
        )
    marks = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    chars = np.frombuffer(marks, np.uint8)
    quotes = chars == ord('"')
    outside = ~quotes & (np.cumsum(quotes, dtype=np.int32) % 2 == 0)
    brackets = chars[outside]
    opens = (brackets == ord("[")) | (brackets == ord("{"))
    depth = int(np.cumsum(np.where(opens, 1, -1), dtype=np.int32).max(initial=0))
    if depth > MAX_DEPTH:
        raise BenchError(
            f"{path}: the receipt nests arrays and objects {depth:,} deep, more than the "
            f"{MAX_DEPTH} a receipt may"
        )


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_characters(path: str | Path, doc: Any) -> None:
    """Refuse a string holding half a surrogate pair: no character, it cannot be printed."""
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        half = exc.object[exc.start : exc.end]
        raise BenchError(f"{path}: a string holds {half!r}, half of a surrogate pair") from None


def _is_integer(checker: Any, instance: Any) -> bool:
    """A JSON integer literal: never a bool, and never 1.0 or 1e3 (which JSON Schema would
    count as integers, and which no integer field of a receipt may hold)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_SCALAR_BOUNDS = {"type", "minimum", "exclusiveMinimum", "maximum"}


def _items(validator: Any, items: Any, instance: Any, schema: dict[str, Any]) -> Any:
    """The items keyword, with a fast path for the arrays of bounded numbers that make up most
    of a receipt: when every item is of its type and within its bounds there is nothing to
    report, otherwise the keyword itself says what is wrong."""
    if isinstance(items, dict) and items.keys() <= _SCALAR_BOUNDS and isinstance(instance, list):
        kind = items.get("type")
        low = items.get("minimum", -math.inf)
        low_open = items.get("exclusiveMinimum", -math.inf)
        high = items.get("maximum", math.inf)
        if kind in ("number", "integer") and all(
            validator.is_type(x, kind) and x >= low and x > low_open and x <= high for x in instance
        ):
            return
    yield from Draft202012Validator.VALIDATORS["items"](validator, items, instance, schema)


ReceiptValidator = validators.extend(
    Draft202012Validator,
    validators={"items": _items},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)
