"""The committed CI baselines (benchmarks/baseline) keep verifying, and the gate compares them
with receipts of the schema bench writes now: a schema version bump must not strand them (they
are schema 1.0.0 until they are next recorded)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pybitnet.bench import receipt as rc
from pybitnet.bench import verify as v
from pybitnet.bench.gate import Verdict, compare_receipts

BASELINE = Path(__file__).resolve().parents[2] / "benchmarks" / "baseline"
NAMES = ["generation", "kernels"]


@pytest.mark.parametrize("name", NAMES)
def test_a_committed_baseline_passes_verify(name):
    report = v.verify_receipt(BASELINE / f"{name}.json")
    assert report.passed, [c for c in report.checks if c.verdict == v.Verdict.FAIL]


@pytest.mark.parametrize("name", NAMES)
def test_the_gate_compares_a_baseline_with_a_receipt_of_the_current_schema(name):
    baseline = rc.load_receipt(BASELINE / f"{name}.json")
    current = copy.deepcopy(baseline) | {"schema_version": rc.SCHEMA_VERSION}
    if current["compute_path"] == "reference":  # 1.0.0's name for the numpy tier
        current["compute_path"] = "numpy"
    rc.validate_receipt(current)
    assert compare_receipts(baseline, current).verdict == Verdict.PASS
