"""The regression gate (docs/SPEC.md §7): compare receipts metric by metric, from raw samples.

Given one baseline and one current receipt, for each run that both hold (same name and thread
count) and each of its metrics except `ms` (the reciprocal of the run's throughput, not counted
twice), the change is the ratio of the medians, current / baseline - 1, with a seeded
percentile-bootstrap confidence interval; a two-sided Mann-Whitney U p-value is shown beside it.
A metric FAILs when its whole interval is worse than its threshold (throughput -5%, latency +5%,
RSS +3%) and asks for ATTENTION when its whole interval is better than +10% (too good to trust,
or a new baseline is due).

Given several pairs (baseline, current) measured interleaved in the same job, it compares them
pair by pair instead (gate_stats.py: a sign test on the per-pair ratios, false-alarm rate at most
ALPHA per metric), so that the machine's other work, which slows both sides of a pair, cancels.

Thresholds and SLOs come from an optional TOML file:

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

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet.bench.gate_config import GateConfig, Slo, load_gate_config
from pybitnet.bench.gate_output import (
    print_report,
    to_check_run,
    to_markdown,
    write_report,
)
from pybitnet.bench.gate_stats import (
    Comparison,
    Verdict,
    compare_metric,
    compare_paired_metric,
)
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
    "compare_pairs",
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
    pairs: int = 0  # receipt pairs compared pair by pair; 0: one baseline and one current

    @property
    def verdict(self) -> Verdict:
        items = [*self.comparisons, *self.slo_checks, *self.notes]
        return max((item.verdict for item in items), default=Verdict.PASS)

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


def run_gate(receipts: list[str | Path], config: str | Path | None = None) -> GateReport:
    """Load receipts (baseline, current[, baseline, current ...]) and an optional TOML
    configuration, and compare them: one pair from its samples, several pair by pair."""
    if len(receipts) < 2 or len(receipts) % 2:
        raise BenchError(
            f"the gate takes receipts in pairs, baseline then current, got {len(receipts)} receipts"
        )
    gate_config = load_gate_config(config) if config is not None else GateConfig()
    docs = [load_receipt(path) for path in receipts]
    pairs = list(zip(docs[::2], docs[1::2], strict=True))
    if len(pairs) == 1:
        return compare_receipts(*pairs[0], gate_config)
    return compare_pairs(pairs, gate_config)


def compare_receipts(
    baseline: dict[str, Any], current: dict[str, Any], config: GateConfig | None = None
) -> GateReport:
    """Compare two validated receipts. Raises BenchError when they are not comparable."""
    config = config or GateConfig()
    _check_comparable(baseline, current)
    base_runs, cur_runs = _runs_by_key(baseline), _runs_by_key(current)
    comparisons = [
        compare_metric(base_runs[key], cur_runs[key], metric, config)
        for key, metric in _common_metrics(base_runs, cur_runs)
    ]
    slo_checks, slo_notes = _check_slos(current, config.slos)
    return GateReport(comparisons, slo_checks, _notes(baseline, current) + slo_notes)


def compare_pairs(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]], config: GateConfig | None = None
) -> GateReport:
    """Compare pairs of validated receipts (baseline, current) measured interleaved, each metric
    pair by pair. Raises BenchError when any two are not comparable."""
    config = config or GateConfig()
    order = _check_interleaved(pairs)
    first_base, first_cur = pairs[0]
    for base, cur in pairs:  # every receipt measures the first one's workload
        for other in (first_base, cur):
            _check_comparable(other, base)
    runs = [(_runs_by_key(base), _runs_by_key(cur)) for base, cur in pairs]
    comparisons = [
        compare_paired_metric([(b[key], c[key]) for b, c in runs], metric, config)
        for key, metric in _common_metrics(*runs[0])
        if all(key in b and key in c for b, c in runs)
    ]
    currents = [cur for _, cur in pairs]
    slo_checks, slo_notes = _check_slos(_pooled(currents), config.slos)
    notes = _notes(first_base, first_cur) + [_identity_note(first_base, first_cur, order)]
    return GateReport(comparisons, slo_checks, notes + slo_notes, pairs=len(pairs))


def _common_metrics(
    base_runs: dict[tuple[str, int], dict], cur_runs: dict[tuple[str, int], dict]
) -> list[tuple[tuple[str, int], str]]:
    """(run key, metric) of every run and metric both hold, but `ms`; at least one."""
    common = [
        (key, metric)
        for key in base_runs
        if key in cur_runs
        for metric in base_runs[key]["samples"]
        if metric != "ms" and metric in cur_runs[key]["samples"]
    ]
    if not common:
        raise BenchError("cannot compare: the receipts have no run and metric in common")
    return common


def _notes(baseline: dict[str, Any], current: dict[str, Any]) -> list[Note]:
    """Runs on one side only, a different host or a different kernel: what the tables omit."""
    base_runs, cur_runs = _runs_by_key(baseline), _runs_by_key(current)
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
    notes += [
        Note(
            Verdict.PASS,
            f"run {key[0]} at {key[1]} threads ran kernel {cur_runs[key]['kernel_id']} "
            f"(baseline: {base_runs[key]['kernel_id']})",
        )
        for key in base_runs.keys() & cur_runs.keys()
        if base_runs[key].get("kernel_id") != cur_runs[key].get("kernel_id")
    ]
    one_sided = baseline["workload"].keys() ^ current["workload"].keys()
    notes += [
        Note(Verdict.PASS, f"workload.{key} is recorded by one side only: not compared")
        for key in sorted(one_sided - _compared_workload_keys(baseline, current))
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
    return notes


def _check_interleaved(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Refuse pairs that were not measured one after the other, each pair's two receipts next to
    each other in time (created_at), so that no pair spans another's; return the order measured,
    B for baseline and C for current ("BCCB...")."""
    times = [(_created_at(base), _created_at(cur)) for base, cur in pairs]
    for k in range(len(times) - 1):
        if max(times[k]) >= min(times[k + 1]):
            stamps = [f"{b['created_at']}, {c['created_at']}" for b, c in pairs[k : k + 2]]
            raise BenchError(
                f"cannot compare pairs {k + 1} and {k + 2}: their receipts were not measured "
                f"one pair after the other (created_at {stamps[0]} then {stamps[1]}); "
                "give the pairs in the order measured"
            )
    return "".join("BC" if base < cur else "CB" for base, cur in times)


def _created_at(receipt: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(receipt["created_at"])


def _identity_note(baseline: dict[str, Any], current: dict[str, Any], order: str) -> Note:
    """What the pairs compare: the commits the receipts were measured with (tool.git_commit),
    and the order they were measured in."""
    base, cur = (doc["tool"]["git_commit"] or "unknown" for doc in (baseline, current))
    return Note(
        Verdict.PASS,
        f"baseline (B): commit {base}; current (C): commit {cur}; measured in the order {order}",
    )


def _pooled(receipts: list[dict[str, Any]]) -> dict[str, Any]:
    """The current receipts as one, each run's samples concatenated (for the SLO medians)."""
    pooled_runs = {key: {**run, "samples": {}} for key, run in _runs_by_key(receipts[0]).items()}
    for doc in receipts:
        for key, run in _runs_by_key(doc).items():
            if key in pooled_runs:
                for metric, values in run["samples"].items():
                    pooled_runs[key]["samples"].setdefault(metric, []).extend(values)
    return {**receipts[0], "runs": list(pooled_runs.values())}


# Workload fields whose absence is itself a setting (plain decoding), so that one side's field
# is a difference. Any other field only one side records is one the other's version did not
# know yet (the base revision of a CI gate): it is noted, not compared.
_ABSENT_IS_A_SETTING = frozenset({"draft_tokens"})


def _compared_workload_keys(baseline: dict[str, Any], current: dict[str, Any]) -> set[str]:
    base, cur = baseline["workload"].keys(), current["workload"].keys()
    return (base & cur) | ((base | cur) & _ABSENT_IS_A_SETTING)


def _check_comparable(baseline: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse receipts of different kinds, models or workloads, naming the field and values."""
    pairs = [("kind", baseline["kind"], current["kind"])]
    if baseline["kind"] == "generation" == current["kind"]:
        pairs.append(("model.sha256", baseline["model"]["sha256"], current["model"]["sha256"]))
    # The number of repetitions may differ: it changes the confidence, not what is measured.
    for key in sorted(_compared_workload_keys(baseline, current) - {"repetitions"}):
        pairs.append(
            (
                f"workload.{key}",
                baseline["workload"].get(key),
                current["workload"].get(key),
            )
        )
    base_runs, cur_runs = _runs_by_key(baseline), _runs_by_key(current)
    for key in base_runs.keys() & cur_runs.keys():
        # The kernel may differ (a tier lost or gained): its speed is what the gate judges.
        fields = ("kind", "n_tokens", "format", "direction", "shape", "elements")
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
