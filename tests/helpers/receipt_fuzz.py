"""Seeded, structure-aware mutations of real receipts, and what reading each one must give.

Shared by tests/bench/test_receipt_fuzz.py (a few hundred cases) and scripts/fuzz_receipts.py
(as many as asked). A case takes one of the committed baselines (benchmarks/baseline), replaces
a value somewhere in it by a hostile one (huge, negative, NaN, infinite, of the wrong type,
deeply nested, very long), deletes or duplicates a key, or damages its bytes (truncation, a
flipped byte); `fuzz` then runs verify and the gate's loader on it. Each must end cleanly: a
verdict, or a PyBitnetError of one line. Any other exception is a fault, which `fuzz` counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO, TextIOWrapper
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from pybitnet.bench import receipt, verify
from pybitnet.errors import PyBitnetError

BASELINES = Path(__file__).resolve().parents[2] / "benchmarks" / "baseline"
BASES = ("generation.json", "kernels.json")
_RAW = "\x00raw\x00"  # a placeholder string, replaced in the JSON text by raw JSON


@dataclass(frozen=True)
class Case:
    number: int
    what: str  # the mutation, for a report
    data: bytes


@dataclass
class Summary:
    """What a fuzz run found: outcomes counted as (verify, loader), e.g. ("FAIL", "refused");
    the faults (any other exception, or an error of more than one line); the slowest case."""

    outcomes: Counter = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")


def fuzz(seed: int, count: int, workdir: Path, longest: int = 3_000_000) -> Summary:
    """Run `count` cases, each written to a file in `workdir`, verified and loaded."""
    summary = Summary()
    path = workdir / "case.json"
    for case in cases(seed, count, longest):
        path.write_bytes(case.data)
        start = time.perf_counter()
        try:
            outcome = _verify(path), _load(path)
        except Exception as exc:  # a fault: reported, and the run goes on
            summary.faults.append(f"case {case.number} ({case.what}): {exc!r}"[:1000])
            continue
        seconds = time.perf_counter() - start
        summary.outcomes[outcome] += 1
        summary.slowest = max(summary.slowest, (seconds, f"case {case.number} ({case.what})"))
    return summary


def cases(seed: int, count: int, longest: int = 3_000_000) -> Iterator[Case]:
    """`count` mutated receipts, the same for the same seed; a long value (a string, a list,
    a nesting, an integer's digits) is up to `longest` long."""
    rng = np.random.default_rng(seed)
    bases = [(BASELINES / name).read_bytes() for name in BASES]
    for number in range(count):
        base = bases[number % len(bases)]
        kind = rng.choice(["value", "value", "value", "key", "bytes"])
        if kind == "bytes":
            yield Case(number, *_damage(rng, base))
            continue
        holder = {"receipt": json.loads(base)}  # every value, the receipt too, has a parent
        path = _pick_path(rng, holder)
        change = _replace_value if kind == "value" else _change_key
        what, raw = change(rng, holder, path, longest)
        text = json.dumps(holder["receipt"], indent=1).replace(json.dumps(_RAW), raw, 1)
        yield Case(number, what, text.encode("utf-8"))


def _verify(path: Path) -> str:
    try:
        report = verify.verify_receipt(path)
    except PyBitnetError as exc:
        _one_line(exc)
        return "refused"
    terminal = TextIOWrapper(BytesIO(), encoding="utf-8")  # as strict as a UTF-8 terminal
    verify.print_report(report, Console(file=terminal, width=120))
    terminal.flush()
    json.dumps(verify.to_json(report)).encode("utf-8")
    return "PASS" if report.passed else "FAIL"


def _load(path: Path) -> str:
    try:
        receipt.load_receipt(path)
    except PyBitnetError as exc:
        _one_line(exc)
        return "refused"
    return "loaded"


def _one_line(exc: PyBitnetError) -> None:
    str(exc).encode("utf-8")  # the command line prints it
    if "\n" in str(exc):
        raise AssertionError(f"an error of more than one line: {str(exc)[:500]!r}")


def _pick_path(rng: np.random.Generator, holder: dict[str, Any]) -> list[Any]:
    """A random path to a value of the receipt in `holder` (the receipt itself included)."""
    paths: list[list[Any]] = []
    stack: list[tuple[list[Any], Any]] = [(["receipt"], holder["receipt"])]
    while stack:
        path, value = stack.pop()
        paths.append(path)
        if isinstance(value, dict):
            stack += [([*path, key], child) for key, child in value.items()]
        elif isinstance(value, list):
            stack += [([*path, i], child) for i, child in enumerate(value)]
    return paths[rng.integers(len(paths))]


def _raw(value: Any) -> str:
    return value.text if isinstance(value, _Raw) else json.dumps(value)


@dataclass(frozen=True)
class _Raw:
    """JSON text spliced in as it is: what json.dumps would not write."""

    text: str


# Hostile values, each made from a random generator and a length n.
HOSTILE = {
    "huge int": lambda rng, n: int(rng.choice([2**31, 2**53, 2**63, 2**64, 10**30, 2**70])),
    "negative int": lambda rng, n: -int(rng.integers(1, 2**62)),
    "long int": lambda rng, n: _Raw("9" * n),
    "float for int": lambda rng, n: float(rng.choice([1.0, 1e9, 1e30, 1e308, 0.5])),
    "nan": lambda rng, n: _Raw("NaN"),
    "infinite": lambda rng, n: _Raw(str(rng.choice(["1e400", "-1e400", "Infinity"]))),
    "bool": lambda rng, n: bool(rng.integers(2)),
    "null": lambda rng, n: None,
    "long string": lambda rng, n: "x" * n,
    "lone surrogate": lambda rng, n: "\ud800",
    "long list": lambda rng, n: [int(rng.integers(0, 2**31))] * n,
    "list of lists": lambda rng, n: [[1.5] * 8] * (n // 8 + 1),
    "deep nesting": lambda rng, n: _Raw("[" * n + "]" * n),
    "deep opening": lambda rng, n: _Raw("{" * n),
    "wide object": lambda rng, n: {f"k{i}": i for i in range(min(n, 100_000))},
    "empty": lambda rng, n: [[], {}, ""][rng.integers(3)],
    "zero": lambda rng, n: 0,
    "tiny": lambda rng, n: 5e-324,
}


def _hostile(rng: np.random.Generator, longest: int) -> tuple[str, str]:
    """A hostile value's name and JSON text."""
    name = list(HOSTILE)[rng.integers(len(HOSTILE))]
    n = int(longest ** rng.uniform(0, 1))  # log-uniform: as many short lengths as long ones
    return name, _raw(HOSTILE[name](rng, n))


def _replace_value(
    rng: np.random.Generator, holder: Any, path: list[Any], longest: int
) -> tuple[str, str]:
    what, raw = _hostile(rng, longest)
    _parent(holder, path)[path[-1]] = _RAW
    return f"{what} at {_name(path)}", raw


def _change_key(
    rng: np.random.Generator, holder: Any, path: list[Any], longest: int
) -> tuple[str, str]:
    """Delete the value at `path`, or, when it is an object, write it with one key twice (the
    receipt itself is never deleted)."""
    parent = _parent(holder, path)
    target = parent[path[-1]]
    if len(path) > 1 and (not isinstance(target, dict) or not target or rng.integers(2)):
        del parent[path[-1]]
        return f"deleted {_name(path)}", json.dumps(_RAW)  # nothing to splice
    key = list(target)[rng.integers(len(target))]
    what, extra = _hostile(rng, longest)
    items = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in target.items()]
    parent[path[-1]] = _RAW
    raw = "{" + ", ".join([*items, f"{json.dumps(key)}: {extra}"]) + "}"
    return f"key {key!r} of {_name(path)} again, with {what}", raw


def _damage(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    at = int(rng.integers(len(data)))
    if rng.integers(2):
        return f"truncated at byte {at}", data[:at]
    flipped = bytes([data[at] ^ (1 << int(rng.integers(8)))])
    return f"byte {at} flipped", data[:at] + flipped + data[at + 1 :]


def _parent(doc: Any, path: list[Any]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def _name(path: list[Any]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
