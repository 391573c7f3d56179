"""The gate's statistics: one metric of two receipts compared from their raw samples.

The change is median(current) / median(baseline) - 1, with a seeded percentile-bootstrap
interval (each side resampled) and a two-sided Mann-Whitney U p-value beside it; the verdict
follows from where the whole interval lies against the thresholds of a GateConfig.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

from pybitnet.bench.gate_config import GateConfig

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_SAMPLES = 3  # fewer repetitions on a side cannot support a claim either way
# Tail latencies are reported, never gated: a repetition's p90 or p99 over a few dozen gaps is
# close to its maximum, so it measures the machine's other work (a loaded 2-core machine moved
# the CI bench's tg32 p90 and p99 by +700-800% with no change to the code).
REPORTED_ONLY = frozenset({"itl_p90_ms", "itl_p99_ms"})


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


def compare_metric(base_run: dict, cur_run: dict, metric: str, config: GateConfig) -> Comparison:
    """One metric of a run in both receipts: the change of its median and the verdict."""
    a = np.asarray(base_run["samples"][metric], dtype=np.float64)
    b = np.asarray(cur_run["samples"][metric], dtype=np.float64)
    change = float(np.median(b) / np.median(a) - 1)
    low, high = bootstrap_change_interval(a, b)
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
    if metric in REPORTED_ONLY:
        verdict, reason = Verdict.PASS, "a tail latency: reported, not gated"
    elif min(a.size, b.size) < MIN_SAMPLES:
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


def bootstrap_change_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(b) / median(a) - 1, resampling each side."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    med_a = np.median(a[rng.integers(0, a.size, (RESAMPLES, a.size))], axis=1)
    med_b = np.median(b[rng.integers(0, b.size, (RESAMPLES, b.size))], axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(med_b / med_a, [tail, 1 - tail]) - 1
    return float(low), float(high)
