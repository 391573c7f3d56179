"""Helpers of the gate tests (tests/bench/test_gate*.py)."""

from __future__ import annotations

import sys

import pytest

from pybitnet.bench import gate as g
from pybitnet.cli import main

THROUGHPUT = {"tokens_per_second", "elements_per_second"}
LATENCY = {"ttft_ms", "itl_p50_ms"}
TAILS = {"itl_p90_ms", "itl_p99_ms"}  # reported, never gated


def verdicts(report: g.GateReport) -> dict[str, set[g.Verdict]]:
    """The verdicts of each metric, over every run."""
    out: dict[str, set[g.Verdict]] = {}
    for c in report.comparisons:
        out.setdefault(c.metric, set()).add(c.verdict)
    return out


def run_cli(monkeypatch, *args: object) -> int:
    monkeypatch.setattr(sys, "argv", ["pybitnet", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code
