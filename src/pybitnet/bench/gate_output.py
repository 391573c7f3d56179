"""The gate's report in three forms: a terminal table (rich), Markdown for a pull-request
comment, and JSON shaped like a CI check run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pybitnet.bench.gate_stats import (
    ALPHA,
    CONFIDENCE,
    REPORTED_ONLY,
    RESAMPLES,
    Comparison,
    Verdict,
)
from pybitnet.bench.tables import markdown_table
from pybitnet.errors import BenchError

if TYPE_CHECKING:
    from pybitnet.bench.gate import GateReport, Note, SloCheck


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


def _title(report: GateReport) -> str:
    failed = sum(c.verdict == Verdict.FAIL for c in report.comparisons)
    check = sum(c.verdict == Verdict.ATTENTION for c in report.comparisons)
    violated = sum(s.verdict == Verdict.FAIL for s in report.slo_checks)
    return (
        f"{report.verdict.name}: {failed} regressed, {check} to check, "
        f"{violated} SLO violations, {len(report.comparisons)} metrics compared"
    )


def _summary(report: GateReport) -> str:
    tails = ", ".join(sorted(REPORTED_ONLY))
    gated = (
        f"Gated: every metric but {tails}, reported only: a tail over a few dozen gaps measures "
        "the machine's other work."
    )
    if not report.pairs:
        return (
            f"{_title(report)}. Change = current / baseline median - 1, with a {CONFIDENCE:.0%} "
            f"bootstrap interval ({RESAMPLES} resamples); p = two-sided Mann-Whitney U. {gated}"
        )
    return (
        f"{_title(report)}. {report.pairs} pairs of receipts measured interleaved in this job; "
        "change = the median over pairs of current / baseline (each receipt's median) - 1, "
        f"with a distribution-free interval of at least {CONFIDENCE:.0%} (order statistics); "
        "p = one-sided sign test that the pairs are worse (or better) than the threshold. "
        f"A metric FAILs at p <= {ALPHA:.2g}: its false-alarm rate is at most {ALPHA:.2g} "
        f"whenever its true slowdown is within the threshold. {gated}"
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
