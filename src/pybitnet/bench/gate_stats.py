"""The gate's statistics: one metric compared from raw samples, in one of two ways.

Two receipts (unpaired: a baseline recorded on another day, on a quiet machine): the change is
median(current) / median(baseline) - 1, with a seeded percentile-bootstrap interval (each side
resampled, in chunks of bounded size) and a two-sided Mann-Whitney U p-value beside it; the
verdict follows from where the whole interval lies against the thresholds of a GateConfig.

Pairs of receipts measured interleaved in the same job (baseline, current, current, baseline,
...): each pair gives one log-ratio of the receipts' medians, oriented so that positive is worse.
Load that slows both sides of a pair cancels in its ratio. A metric FAILs when a one-sided sign
test says the median log-ratio exceeds the threshold's (p <= ALPHA): a FAIL needs a slowdown both
significant and larger than the threshold, and its false-alarm rate is at most ALPHA per metric
whenever the true median slowdown is at most the threshold (pairs independent; no assumption on
the distribution). With MIN_PAIRS pairs, every pair must be worse than the threshold.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import mannwhitneyu

from pybitnet.bench.gate_config import GateConfig

CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_SAMPLES = 3  # fewer repetitions on a side cannot support a claim either way
BOOTSTRAP_CHUNK_VALUES = 1 << 20  # resampled values held at once (8 MB), whatever the sample size
ALPHA = 1 / 64  # the paired test's false-alarm rate per metric (at most; see the docstring)
MIN_PAIRS = 6  # the fewest pairs whose sign test can reach ALPHA (0.5 ** 6 = 1/64)
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
    # The interval of the gain: positive is better, whichever way the metric points.
    gain_low, gain_high = (low, high) if _higher_is_better(metric) else (-high, -low)
    fail_pct, attention_pct = _fail_pct(metric, config), config.improvement_attention_pct
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
    med_a, med_b = _bootstrap_medians(rng, a), _bootstrap_medians(rng, b)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(med_b / med_a, [tail, 1 - tail]) - 1
    return float(low), float(high)


def _bootstrap_medians(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """RESAMPLES medians of resamples of x, drawn a chunk of rows at a time: memory stays
    bounded by BOOTSTRAP_CHUNK_VALUES, not RESAMPLES times the sample size."""
    rows = max(1, BOOTSTRAP_CHUNK_VALUES // x.size)
    return np.concatenate(
        [
            np.median(x[rng.integers(0, x.size, (min(rows, RESAMPLES - start), x.size))], axis=1)
            for start in range(0, RESAMPLES, rows)
        ]
    )


def compare_paired_metric(
    pairs: list[tuple[dict, dict]], metric: str, config: GateConfig
) -> Comparison:
    """One metric of a run over pairs of (baseline run, current run) measured interleaved."""
    base = np.array([np.median(b["samples"][metric]) for b, _ in pairs], dtype=np.float64)
    cur = np.array([np.median(c["samples"][metric]) for _, c in pairs], dtype=np.float64)
    sign = -1.0 if _higher_is_better(metric) else 1.0
    worse = sign * np.log(cur / base)  # per pair: positive is worse
    fail_margin = _worse_margin(metric, _fail_pct(metric, config))
    better_margin = np.log1p(config.improvement_attention_pct / 100)  # that many % faster
    p_worse = sign_test_p(int(np.sum(worse > fail_margin)), worse.size)
    p_better = sign_test_p(int(np.sum(-worse > better_margin)), worse.size)
    low, high = np.exp(sign * np.array(median_interval(worse))) - 1
    if metric in REPORTED_ONLY:
        verdict, reason = Verdict.PASS, "a tail latency: reported, not gated"
    elif worse.size < MIN_PAIRS:
        verdict = Verdict.ATTENTION
        reason = f"fewer than {MIN_PAIRS} pairs ({worse.size}): no claim at p <= {ALPHA:.2g}"
    elif p_worse <= ALPHA:
        verdict = Verdict.FAIL
        reason = f"worse by more than {_fail_pct(metric, config):g}% (sign test p <= {ALPHA:.2g})"
    elif p_better <= ALPHA:
        verdict = Verdict.ATTENTION
        reason = (
            f"better by more than {config.improvement_attention_pct:g}% (sign test): "
            "check it, or the baseline revision is slower"
        )
    else:
        verdict, reason = Verdict.PASS, ""
    return Comparison(
        run=pairs[0][1]["name"],
        threads=pairs[0][1]["threads"],
        metric=metric,
        baseline=float(np.median(base)),
        current=float(np.median(cur)),
        change=float(np.exp(sign * np.median(worse)) - 1),
        ci_low=float(min(low, high)),
        ci_high=float(max(low, high)),
        p_value=min(p_worse, p_better),
        verdict=verdict,
        reason=reason,
    )


def sign_test_p(count: int, n: int) -> float:
    """One-sided sign test: P(at least `count` of `n` fair coin flips land one way)."""
    return 1 - _coin_cdf(count - 1, n)


def _coin_cdf(k: int, n: int) -> float:
    """P(at most k of n fair coin flips land one way), exactly (n is a few dozen at most)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(x: np.ndarray) -> tuple[float, float]:
    """Distribution-free interval of the median (order statistics), at least CONFIDENCE where
    the sample allows it, else the whole range."""
    ordered, tail = np.sort(x), (1 - CONFIDENCE) / 2
    k = 0  # values left out on each side: P(the median lies beyond) = _coin_cdf(k - 1, n)
    while k < (x.size - 1) // 2 and _coin_cdf(k, x.size) <= tail:
        k += 1
    return float(ordered[k]), float(ordered[-1 - k])


def _higher_is_better(metric: str) -> bool:
    return metric.endswith("_per_second")


def _fail_pct(metric: str, config: GateConfig) -> float:
    if _higher_is_better(metric):
        return config.throughput_fail_pct
    return config.rss_fail_pct if metric == "peak_rss_mb" else config.latency_fail_pct


def _worse_margin(metric: str, pct: float) -> float:
    """The log-ratio (positive: worse) that a change of `pct` percent amounts to: a throughput
    `pct`% lower, or a time or size `pct`% higher."""
    return -np.log1p(-pct / 100) if _higher_is_better(metric) else np.log1p(pct / 100)
