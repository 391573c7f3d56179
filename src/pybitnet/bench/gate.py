"""The regression gate (docs/SPEC.md §7): compare two receipts metric by metric, from raw samples.

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

Here: the comparison of two receipts. The statistics are in gate_stats.py, the TOML file's
reading in gate_config.py, the terminal, Markdown and check-run forms in gate_output.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet.bench.gate_config import GateConfig, Slo, load_gate_config
from pybitnet.bench.gate_output import print_report, to_check_run, to_markdown, write_report
from pybitnet.bench.gate_stats import Comparison, Verdict, compare_metric
from pybitnet.bench.receipt import load_receipt
from pybitnet.errors import BenchError

__all__ = [
    "Comparison",
    "GateConfig",
    "GateReport",
    "Note",
    "Slo",
    "SloCheck",
    "Verdict",
    "compare_receipts",
    "load_gate_config",
    "print_report",
    "run_gate",
    "to_check_run",
    "to_markdown",
    "write_report",
]


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


def compare_receipts(
    baseline: dict[str, Any], current: dict[str, Any], config: GateConfig | None = None
) -> GateReport:
    """Compare two validated receipts. Raises BenchError when they are not comparable."""
    config = config or GateConfig()
    _check_comparable(baseline, current)
    base_runs, cur_runs = _runs_by_key(baseline), _runs_by_key(current)
    comparisons = [
        compare_metric(base_runs[key], cur_runs[key], metric, config)
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
