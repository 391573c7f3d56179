"""The regression gate (SPEC section 7): compare two receipts metric by metric, from raw samples.

For each run that both receipts hold (same name and thread count) and each of its metrics
except `ms` (the reciprocal of the run's throughput, not counted twice), the change is the ratio
of the medians, current / baseline - 1, with a seeded percentile-bootstrap confidence interval;
a two-sided Mann-Whitney U p-value is shown beside it. A metric FAILs when its whole interval is
worse than its threshold (throughput -5%, latency +5%, RSS +3%) and asks for ATTENTION when its
whole interval is better than +10% (too good to trust, or a new baseline is due). Thresholds and
SLOs come from an optional TOML file:

    [thresholds]
    throughput_fail_pct = 5
    latency_fail_pct = 5
    rss_fail_pct = 3
    improvement_attention_pct = 10

    [slo]                                # <run kind>_<metric>_<min|max>, or <metric>_<min|max>
    decode_tokens_per_second_min = 10    # for every run of that kind (or every run)
    prefill_ms_max = 2000
    peak_rss_mb_max = 1500

SLOs are checked against the medians of the current receipt.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from scipy.stats import mannwhitneyu

from pybitnet.bench.receipt import load_receipt, metric_names, schema
from pybitnet.errors import BenchError

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_SAMPLES = 3  # fewer repetitions on a side cannot support a claim either way


class Verdict(enum.IntEnum):
    """Ordered by severity, so that the worst of several is their max."""

    PASS = 0
    ATTENTION = 1
    FAIL = 2

    @property
    def exit_code(self) -> int:
        return {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.ATTENTION: 3}[self]

    @property
    def conclusion(self) -> str:
        """The CI check-run conclusion."""
        return {Verdict.PASS: "success", Verdict.FAIL: "failure", Verdict.ATTENTION: "neutral"}[
            self
        ]


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


@dataclass(frozen=True)
class Comparison:
    """One metric of one run: medians, change = current / baseline - 1, its interval, verdict."""

    run: str
    threads: int
    metric: str
    baseline: float
    current: float
    change: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class SloCheck:
    slo: Slo
    run: str
    threads: int
    value: float
    verdict: Verdict


@dataclass(frozen=True)
class Note:
    """Something the tables do not show; ATTENTION notes count towards the verdict."""

    verdict: Verdict
    text: str


@dataclass(frozen=True)
class GateReport:
    comparisons: list[Comparison]
    slo_checks: list[SloCheck]
    notes: list[Note] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        items = [*self.comparisons, *self.slo_checks, *self.notes]
        return max((item.verdict for item in items), default=Verdict.PASS)

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


def run_gate(
    baseline: str | Path, current: str | Path, config: str | Path | None = None
) -> GateReport:
    """Load two receipts and an optional TOML configuration, and compare them."""
    gate_config = load_gate_config(config) if config is not None else GateConfig()
    return compare_receipts(load_receipt(baseline), load_receipt(current), gate_config)


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


def compare_receipts(
    baseline: dict[str, Any], current: dict[str, Any], config: GateConfig | None = None
) -> GateReport:
    """Compare two validated receipts. Raises BenchError when they are not comparable."""
    config = config or GateConfig()
    _check_comparable(baseline, current)
    base_runs, cur_runs = _runs_by_key(baseline), _runs_by_key(current)
    comparisons = [
        _compare_metric(base_runs[key], cur_runs[key], metric, config)
        for key in base_runs
        if key in cur_runs
        for metric in base_runs[key]["samples"]
        if metric != "ms" and metric in cur_runs[key]["samples"]
    ]
    if not comparisons:
        raise BenchError("cannot compare: the receipts have no run and metric in common")
    notes = [
        Note(
            Verdict.ATTENTION,
            f"run {name} at {threads} threads is missing from the current receipt",
        )
        for name, threads in base_runs
        if (name, threads) not in cur_runs
    ]
    notes += [
        Note(Verdict.PASS, f"run {name} at {threads} threads is new: not compared")
        for name, threads in cur_runs
        if (name, threads) not in base_runs
    ]
    for key in ("cpu_model", "logical_cores"):
        if baseline["host"][key] != current["host"][key]:
            notes.append(
                Note(
                    Verdict.ATTENTION,
                    f"the receipts come from different hosts: host.{key} "
                    f"{baseline['host'][key]!r} vs {current['host'][key]!r}",
                )
            )
    slo_checks, slo_notes = _check_slos(current, config.slos)
    return GateReport(comparisons, slo_checks, notes + slo_notes)


def print_report(report: GateReport, console: Console | None = None) -> None:
    """The comparison and SLO tables and the notes, for a terminal."""
    console = console or Console()
    table = Table(title=f"pybitnet gate: {report.verdict.name}")
    for column in ("run", "threads", "metric", "baseline", "current", "change"):
        table.add_column(column, justify="left" if column in ("run", "metric") else "right")
    table.add_column(f"{CONFIDENCE:.0%} CI", justify="right")
    table.add_column("p", justify="right")
    table.add_column("verdict")
    for c in report.comparisons:
        table.add_row(*map(escape, _comparison_cells(c)), _styled(c.verdict) + _reason(c))
    console.print(table)
    if report.slo_checks:
        slo_table = Table(title="SLOs")
        for column in ("SLO", "run", "threads", "limit", "current median", "verdict"):
            slo_table.add_column(column)
        for s in report.slo_checks:
            slo_table.add_row(*map(escape, _slo_cells(s)), _styled(s.verdict))
        console.print(slo_table)
    for note in report.notes:
        console.print(_note_prefix(note, _styled) + escape(note.text))
    console.print(_title(report))


def to_markdown(report: GateReport) -> str:
    """The report as Markdown, for a pull-request comment."""
    lines = [f"## pybitnet gate: {report.verdict.name}", "", _summary(report), ""]
    header = ["run", "threads", "metric", "baseline", "current", "change"]
    header += [f"{CONFIDENCE:.0%} CI", "p", "verdict"]
    rows = [[*_comparison_cells(c), _bold(c.verdict) + _reason(c)] for c in report.comparisons]
    lines += markdown_table(header, rows)
    if report.slo_checks:
        lines += ["", "### SLOs", ""]
        header = ["SLO", "run", "threads", "limit", "current median", "verdict"]
        lines += markdown_table(
            header, [[*_slo_cells(s), _bold(s.verdict)] for s in report.slo_checks]
        )
    if report.notes:
        lines += ["", "### Notes", ""]
        lines += [f"- {_note_prefix(n, _bold)}{n.text}" for n in report.notes]
    return "\n".join(lines) + "\n"


def to_check_run(report: GateReport) -> dict[str, str]:
    """The report shaped like a CI check run."""
    return {
        "name": "pybitnet gate",
        "conclusion": report.verdict.conclusion,
        "title": _title(report),
        "summary": _summary(report),
        "text": to_markdown(report),
    }


def write_report(
    report: GateReport, markdown: str | Path | None = None, json_path: str | Path | None = None
) -> None:
    """Write the Markdown and/or check-run JSON forms of a report."""
    for path, render in ((markdown, to_markdown), (json_path, _check_run_json)):
        if path is None:
            continue
        try:
            Path(path).write_text(render(report), encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"{path}: cannot write the gate report: {exc}") from None


def _check_run_json(report: GateReport) -> str:
    return json.dumps(to_check_run(report), indent=2) + "\n"


def _check_comparable(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse receipts of different kinds, models or workloads, naming the field and values."""
    pairs = [("kind", baseline["kind"], current["kind"])]
    if baseline["kind"] == "generation" == current["kind"]:
        pairs.append(("model.sha256", baseline["model"]["sha256"], current["model"]["sha256"]))
    # The number of repetitions may differ: it changes the confidence, not what is measured.
    for key in sorted((baseline["workload"].keys() | current["workload"].keys()) - {"repetitions"}):
        pairs.append(
            (f"workload.{key}", baseline["workload"].get(key), current["workload"].get(key))
        )
    base_runs, cur_runs = _runs_by_key(baseline), _runs_by_key(current)
    for key in base_runs.keys() & cur_runs.keys():
        fields = ("kind", "n_tokens", "kernel_id", "format", "direction", "shape", "elements")
        for field_name in fields:
            pairs.append(
                (
                    f"runs[{key[0]!r}, {key[1]} threads].{field_name}",
                    base_runs[key].get(field_name),
                    cur_runs[key].get(field_name),
                )
            )
    for name, base, cur in pairs:
        if base != cur:
            raise BenchError(
                f"cannot compare these receipts: {name} differs: baseline {base!r}, current {cur!r}"
            )


def _runs_by_key(receipt: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for run in receipt["runs"]:
        key = (run["name"], run["threads"])
        if key in runs:
            raise BenchError(f"receipt holds run {key[0]!r} at {key[1]} threads twice")
        runs[key] = run
    return runs


def _compare_metric(base_run: dict, cur_run: dict, metric: str, config: GateConfig) -> Comparison:
    a = np.asarray(base_run["samples"][metric], dtype=np.float64)
    b = np.asarray(cur_run["samples"][metric], dtype=np.float64)
    change = float(np.median(b) / np.median(a) - 1)
    low, high = _bootstrap_change_interval(a, b)
    higher_is_better = metric.endswith("_per_second")
    # The interval of the gain: positive is better, whichever way the metric points.
    gain_low, gain_high = (low, high) if higher_is_better else (-high, -low)
    fail_pct = (
        config.throughput_fail_pct
        if higher_is_better
        else config.rss_fail_pct
        if metric == "peak_rss_mb"
        else config.latency_fail_pct
    )
    attention_pct = config.improvement_attention_pct
    if min(a.size, b.size) < MIN_SAMPLES:
        verdict = Verdict.ATTENTION
        reason = f"fewer than {MIN_SAMPLES} samples on a side ({a.size}, {b.size}): no claim"
    elif gain_high < -fail_pct / 100:
        verdict = Verdict.FAIL
        reason = f"whole interval more than {fail_pct:g}% worse"
    elif gain_low > attention_pct / 100:
        verdict = Verdict.ATTENTION
        reason = (
            f"whole interval more than {attention_pct:g}% better: check it, or take a new baseline"
        )
    else:
        verdict, reason = Verdict.PASS, ""
    return Comparison(
        run=cur_run["name"],
        threads=cur_run["threads"],
        metric=metric,
        baseline=float(np.median(a)),
        current=float(np.median(b)),
        change=change,
        ci_low=low,
        ci_high=high,
        p_value=float(mannwhitneyu(b, a, alternative="two-sided").pvalue),
        verdict=verdict,
        reason=reason,
    )


def _bootstrap_change_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(b) / median(a) - 1, resampling each side."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    med_a = np.median(a[rng.integers(0, a.size, (RESAMPLES, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, (RESAMPLES, b.size))], axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(med_b / med_a, [tail, 1 - tail]) - 1
    return float(low), float(high)


def _check_slos(current: dict[str, Any], slos: tuple[Slo, ...]) -> tuple[list, list]:
    checks, notes = [], []
    for slo in slos:
        matched = [
            run
            for run in current["runs"]
            if slo.kind in (None, run["kind"]) and slo.metric in run["samples"]
        ]
        if not matched:
            notes.append(Note(Verdict.ATTENTION, f"SLO {slo.key} applies to no run: not checked"))
        for run in matched:
            value = float(np.median(run["samples"][slo.metric]))
            ok = value >= slo.limit if slo.bound == "min" else value <= slo.limit
            verdict = Verdict.PASS if ok else Verdict.FAIL
            checks.append(SloCheck(slo, run["name"], run["threads"], value, verdict))
    return checks, notes


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


def _comparison_cells(c: Comparison) -> list[str]:
    return [
        c.run,
        str(c.threads),
        c.metric,
        _fmt(c.baseline),
        _fmt(c.current),
        f"{c.change:+.1%}",
        f"[{c.ci_low:+.1%}, {c.ci_high:+.1%}]",
        f"{c.p_value:.2g}",
    ]


def _slo_cells(s: SloCheck) -> list[str]:
    limit = f"{'>=' if s.slo.bound == 'min' else '<='} {_fmt(s.slo.limit)}"
    return [s.slo.key, s.run, str(s.threads), limit, _fmt(s.value)]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table (the report uses it too)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _title(report: GateReport) -> str:
    failed = sum(c.verdict == Verdict.FAIL for c in report.comparisons)
    check = sum(c.verdict == Verdict.ATTENTION for c in report.comparisons)
    violated = sum(s.verdict == Verdict.FAIL for s in report.slo_checks)
    return (
        f"{report.verdict.name}: {failed} regressed, {check} to check, "
        f"{violated} SLO violations, {len(report.comparisons)} metrics compared"
    )


def _summary(report: GateReport) -> str:
    return (
        f"{_title(report)}. Change = current / baseline median - 1, with a {CONFIDENCE:.0%} "
        f"bootstrap interval ({RESAMPLES} resamples); p = two-sided Mann-Whitney U."
    )


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def _styled(verdict: Verdict) -> str:
    color = {Verdict.PASS: "green", Verdict.ATTENTION: "yellow", Verdict.FAIL: "bold red"}[verdict]
    return f"[{color}]{verdict.name}[/{color}]"


def _bold(verdict: Verdict) -> str:
    return f"**{verdict.name}**"


def _reason(c: Comparison) -> str:
    return f": {c.reason}" if c.reason else ""


def _note_prefix(note: Note, style: Callable[[Verdict], str]) -> str:
    return "" if note.verdict == Verdict.PASS else style(note.verdict) + " "
