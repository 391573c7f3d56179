"""The gate on pairs of receipts measured interleaved (baseline, current, current, baseline ...):
synthetic pairs whose true change and load are known, compared pair by pair."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from helpers.gate import LATENCY, TAILS, THROUGHPUT, run_cli, verdicts
from pybitnet.bench import gate as g
from pybitnet.bench import gate_stats as gs
from pybitnet.bench.gate_config import GateConfig
from pybitnet.bench.receipt import write_receipt
from pybitnet.errors import BenchError


def interleaved_pairs(make, n: int, *, slowdown: float = 1.0, seed: int = 0, **kwargs):
    """n pairs (baseline, current) measured in the order B C C B B C ...: each pair under its own
    load (both sides of a pair slowed alike, by up to 3x), the current side `slowdown` times
    slower on top."""
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n):
        load = rng.uniform(1 / 3, 1)
        base = make(2 * k + 100 * seed, speed=load, **kwargs)
        cur = make(2 * k + 1 + 100 * seed, speed=load / slowdown, **kwargs)
        first, second = (base, cur) if k % 2 == 0 else (cur, base)
        first["created_at"] = f"2026-12-06T08:00:{2 * k:02d}.000Z"
        second["created_at"] = f"2026-12-06T08:00:{2 * k + 1:02d}.000Z"
        pairs.append((base, cur))
    return pairs


def test_a_slowdown_under_a_load_that_swings_3x_is_caught_pair_by_pair(make_receipt):
    pairs = interleaved_pairs(make_receipt, 6, slowdown=1.5)
    report = g.compare_pairs(pairs, GateConfig(throughput_fail_pct=20, latency_fail_pct=25))
    by_metric = verdicts(report)
    for metric in THROUGHPUT & by_metric.keys() | LATENCY:
        assert by_metric[metric] == {g.Verdict.FAIL}, metric
    assert by_metric["peak_rss_mb"] == {g.Verdict.PASS}
    assert report.pairs == 6 and report.exit_code == 1
    for c in report.comparisons:
        if c.metric == "tokens_per_second":
            assert c.change == pytest.approx(1 / 1.5 - 1, abs=0.02)
            assert c.ci_low <= c.change <= c.ci_high
            assert c.p_value == pytest.approx(1 / 64)
    # Unpaired, the same samples pooled cannot establish it: the load swamps the change.
    pooled = g.compare_receipts(g._pooled([b for b, _ in pairs]), g._pooled([c for _, c in pairs]))
    assert pooled.verdict != g.Verdict.FAIL or any(
        c.ci_high > -0.2 for c in pooled.comparisons if c.metric == "tokens_per_second"
    )


def test_the_same_code_under_a_swinging_load_passes(make_receipt):
    for seed in range(10):
        report = g.compare_pairs(interleaved_pairs(make_receipt, 6, seed=seed, noise=0.05))
        assert report.verdict == g.Verdict.PASS, g.to_markdown(report)


def paired_runs(rng, n: int, shift: float) -> list[tuple[dict, dict]]:
    """n pairs of one-metric runs: the current side's log time shifted by `shift`."""
    base = np.exp(rng.normal(0, 0.3, n))  # the load of each pair, shared by both sides
    noise = np.exp(rng.normal(0, 0.1, (2, n)))
    return [
        (
            {"name": "pp32", "threads": 1, "samples": {"ttft_ms": [b * e]}},
            {"name": "pp32", "threads": 1, "samples": {"ttft_ms": [b * f * np.exp(shift)]}},
        )
        for b, e, f in zip(base, *noise, strict=True)
    ]


def test_the_paired_false_alarm_rate_is_the_stated_one_at_the_threshold():
    """A true slowdown exactly at the threshold FAILs at the stated rate (1/64 with 6 pairs),
    one below it much less often, one twice as slow nearly always."""
    rng = np.random.default_rng(0)
    config = GateConfig(latency_fail_pct=10)

    def fail_rate(shift: float, trials: int = 300) -> float:
        verdicts = [
            gs.compare_paired_metric(paired_runs(rng, 6, shift), "ttft_ms", config).verdict
            for _ in range(trials)
        ]
        return verdicts.count(g.Verdict.FAIL) / trials

    at_threshold = fail_rate(np.log(1.10), trials=2000)
    assert gs.ALPHA / 2 < at_threshold < gs.ALPHA * 1.6  # 31 expected in 2000, sd 5.5
    assert fail_rate(0.0) == 0
    assert fail_rate(np.log(2.0)) > 0.99


def test_paired_verdicts(make_receipt):
    config = GateConfig(throughput_fail_pct=20, latency_fail_pct=25, improvement_attention_pct=50)
    faster = g.compare_pairs(interleaved_pairs(make_receipt, 6, slowdown=1 / 2), config)
    assert verdicts(faster)["tokens_per_second"] == {g.Verdict.ATTENTION}
    assert "better by more than 50%" in faster.comparisons[0].reason
    few = g.compare_pairs(interleaved_pairs(make_receipt, 5, slowdown=3), config)
    gated = [c for c in few.comparisons if c.metric not in TAILS]
    assert {c.verdict for c in gated} == {g.Verdict.ATTENTION}
    assert "fewer than 6 pairs (5)" in gated[0].reason
    within = g.compare_pairs(interleaved_pairs(make_receipt, 8, slowdown=1.1), config)
    assert within.verdict == g.Verdict.PASS
    summary = g.to_check_run(within)["summary"]
    assert "8 pairs of receipts measured interleaved" in summary
    assert "reported only" in summary and "itl_p99_ms" in summary


def test_pairs_not_measured_one_after_the_other_are_refused(make_receipt):
    pairs = interleaved_pairs(make_receipt, 6)
    report = g.compare_pairs(pairs)
    assert "measured in the order BCCBBCCBBCCB" in report.notes[-1].text
    assert "commit unknown" in report.notes[-1].text
    with pytest.raises(BenchError, match="pairs 1 and 2: their receipts were not measured"):
        g.compare_pairs([pairs[1], pairs[0], *pairs[2:]])
    stale = [(pairs[0][0], pairs[5][1]), *pairs[1:5], (pairs[5][0], pairs[0][1])]
    with pytest.raises(BenchError, match="not measured one pair after the other"):
        g.compare_pairs(stale)  # a baseline from another time, however many pairs


def test_a_receipt_of_another_workload_in_any_pair_is_refused(make_receipt):
    pairs = interleaved_pairs(make_receipt, 6)
    pairs[3][0]["model"]["sha256"] = "0" * 64
    with pytest.raises(BenchError, match="model.sha256 differs"):
        g.compare_pairs(pairs)


def test_cli_takes_receipts_in_pairs(monkeypatch, capsys, tmp_path, make_receipt):
    files = []
    for k, (base, cur) in enumerate(interleaved_pairs(make_receipt, 6, slowdown=1.5)):
        for side, doc in (("base", base), ("cur", cur)):
            files.append(tmp_path / f"{side}-{k}.json")
            write_receipt(doc, files[-1])
    assert run_cli(monkeypatch, "gate", *files) == 1
    assert "BCCBBCCBBCCB" in capsys.readouterr().out  # the order measured
    assert run_cli(monkeypatch, "gate", *files[:3]) == 2
    assert "in pairs, baseline then current, got 3 receipts" in capsys.readouterr().err


def test_the_bootstrap_memory_does_not_grow_with_the_sample():
    """2000 resamples of 10,000 samples would hold 320 MB at once (values and indices); in
    chunks, a few MB."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(100, 1, 10_000), rng.normal(100, 1, 10_000)
    tracemalloc.start()
    try:
        low, high = gs.bootstrap_change_interval(a, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6, peak
    assert low < 0 < high


def test_slos_over_pairs_are_checked_on_the_pooled_current_samples(make_receipt):
    pairs = interleaved_pairs(make_receipt, 6)
    medians = [np.median(r["samples"]["tokens_per_second"]) for _, c in pairs for r in c["runs"]]
    slo = g.Slo("decode_tokens_per_second_min", "decode", "tokens_per_second", "min", 1e9)
    report = g.compare_pairs(pairs, GateConfig(slos=(slo,)))
    assert [s.verdict for s in report.slo_checks] == [g.Verdict.FAIL, g.Verdict.FAIL]
    assert min(medians) <= report.slo_checks[0].value <= max(medians)
