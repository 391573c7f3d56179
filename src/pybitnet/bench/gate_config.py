"""The gate's configuration: thresholds and SLOs, read from an optional TOML file (the format is
in gate.py's docstring); anything unknown in it is an error naming the file and key."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybitnet.bench.receipt import metric_names, schema
from pybitnet.errors import BenchError


@dataclass(frozen=True)
class Slo:
    """A bound on the median of one metric, for the runs of one kind (or all runs)."""

    key: str
    kind: str | None
    metric: str
    bound: str  # "min" or "max"
    limit: float


@dataclass(frozen=True)
class GateConfig:
    throughput_fail_pct: float = 5.0
    latency_fail_pct: float = 5.0
    rss_fail_pct: float = 3.0
    improvement_attention_pct: float = 10.0
    slos: tuple[Slo, ...] = ()


def load_gate_config(path: str | Path) -> GateConfig:
    """Read [thresholds] and [slo] from a TOML file; anything unknown is an error."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"{path}: cannot read the gate configuration: {exc}") from None
    unknown = set(doc) - {"thresholds", "slo"}
    if unknown:
        raise BenchError(f"{path}: unknown section {sorted(unknown)[0]!r} (known: thresholds, slo)")
    for section in ("thresholds", "slo"):
        if not isinstance(doc.get(section, {}), dict):
            raise BenchError(f"{path}: {section} must be a table, got {doc[section]!r}")
    thresholds = {}
    known = [f.name for f in dataclasses.fields(GateConfig) if f.name != "slos"]
    for key, value in doc.get("thresholds", {}).items():
        if key not in known:
            raise BenchError(f"{path}: unknown threshold {key!r} (known: {', '.join(known)})")
        thresholds[key] = _number(path, f"thresholds.{key}", value, minimum=0)
    slos = tuple(_parse_slo(path, key, value) for key, value in doc.get("slo", {}).items())
    return GateConfig(**thresholds, slos=slos)


def _parse_slo(path: str | Path, key: str, value: Any) -> Slo:
    """`decode_tokens_per_second_min` -> runs of kind decode, tokens_per_second, median >= value."""
    limit = _number(path, f"slo.{key}", value)
    stem, _, bound = key.rpartition("_")
    kind, _, rest = stem.partition("_")
    metrics = metric_names()
    kinds = schema()["$defs"]["run"]["properties"]["kind"]["enum"]
    if bound in ("min", "max") and stem in metrics:
        return Slo(key, None, stem, bound, limit)
    if bound in ("min", "max") and kind in kinds and rest in metrics:
        return Slo(key, kind, rest, bound, limit)
    raise BenchError(
        f"{path}: unknown SLO {key!r}: expected [<run kind>_]<metric>_<min|max> with a run kind "
        f"in {', '.join(kinds)} and a metric in {', '.join(metrics)}"
    )


def _number(path: str | Path, name: str, value: Any, minimum: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BenchError(f"{path}: {name} must be a number, got {value!r}")
    if value < minimum:
        raise BenchError(f"{path}: {name} must be >= {minimum:g}, got {value!r}")
    return float(value)
