"""The regression gate on synthetic receipts whose true change is known, and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from helpers.gate import LATENCY, TAILS, THROUGHPUT, run_cli, verdicts
from pybitnet.bench import gate as g
from pybitnet.bench.receipt import write_receipt
from pybitnet.errors import BenchError


def test_a_clear_slowdown_fails_every_time_metric_and_leaves_memory_alone(make_receipt):
    report = g.compare_receipts(make_receipt(0), make_receipt(1, speed=0.9))
    by_metric = verdicts(report)
    for metric in THROUGHPUT & by_metric.keys() | LATENCY:
        assert by_metric[metric] == {g.Verdict.FAIL}, metric
    assert by_metric["peak_rss_mb"] == {g.Verdict.PASS}
    for metric in TAILS:
        assert by_metric[metric] == {g.Verdict.PASS}, metric
    tails = [c for c in report.comparisons if c.metric in TAILS]
    assert tails and all(c.change > 0.05 and "not gated" in c.reason for c in tails)
    assert "ms" not in by_metric  # the reciprocal of tokens_per_second, not counted twice
    assert report.verdict == g.Verdict.FAIL and report.exit_code == 1
    tps = [c for c in report.comparisons if c.metric == "tokens_per_second"]
    for c in tps:  # times divided by 0.9: throughput 10% lower
        assert c.change == pytest.approx(-0.10, abs=0.01)
        assert c.ci_low <= c.change <= c.ci_high


@pytest.mark.parametrize("seed", range(5))
def test_two_samples_of_the_same_distribution_pass(make_receipt, seed):
    report = g.compare_receipts(make_receipt(2 * seed), make_receipt(2 * seed + 1, noise=0.02))
    assert report.verdict == g.Verdict.PASS, g.to_markdown(report)
    assert report.notes == []


def test_a_small_slowdown_within_the_threshold_passes(make_receipt):
    report = g.compare_receipts(make_receipt(0), make_receipt(1, speed=0.98))
    assert report.verdict == g.Verdict.PASS


def test_a_noisy_slowdown_that_the_samples_cannot_establish_passes(make_receipt):
    baseline = make_receipt(0, noise=0.3, reps=5)
    current = make_receipt(1, speed=0.93, noise=0.3, reps=5)
    report = g.compare_receipts(baseline, current)
    tps = [c for c in report.comparisons if c.metric == "tokens_per_second"]
    assert all(c.ci_high > -0.05 for c in tps)  # the interval reaches past the threshold
    assert {c.verdict for c in tps} == {g.Verdict.PASS}


def test_a_clear_speedup_asks_for_attention(make_receipt):
    report = g.compare_receipts(make_receipt(0), make_receipt(1, speed=1.2))
    assert verdicts(report)["tokens_per_second"] == {g.Verdict.ATTENTION}
    assert verdicts(report)["ttft_ms"] == {g.Verdict.ATTENTION}
    assert report.verdict == g.Verdict.ATTENTION and report.exit_code == 3


def test_a_memory_rise_of_4_percent_fails_and_of_2_percent_passes(make_receipt):
    report = g.compare_receipts(make_receipt(0), make_receipt(1, rss=1.04))
    assert verdicts(report)["peak_rss_mb"] == {g.Verdict.FAIL}
    assert verdicts(report)["tokens_per_second"] == {g.Verdict.PASS}
    assert report.verdict == g.Verdict.FAIL
    assert g.compare_receipts(make_receipt(0), make_receipt(1, rss=1.02)).verdict == g.Verdict.PASS


def test_too_few_samples_ask_for_attention(make_receipt):
    report = g.compare_receipts(make_receipt(0, reps=2), make_receipt(1, reps=2))
    gated = [c for c in report.comparisons if c.metric not in TAILS]
    assert {c.verdict for c in gated} == {g.Verdict.ATTENTION}
    assert "fewer than 3 samples" in report.comparisons[0].reason


def test_kernel_receipts_are_gated_the_same_way(make_kernel_receipt):
    base = make_kernel_receipt(0)
    assert g.compare_receipts(base, make_kernel_receipt(1)).verdict == g.Verdict.PASS
    slower = g.compare_receipts(base, make_kernel_receipt(1, speed=0.8))
    assert [(c.metric, c.verdict) for c in slower.comparisons] == [
        ("elements_per_second", g.Verdict.FAIL)
    ]


def test_the_number_of_repetitions_may_differ(make_receipt):
    report = g.compare_receipts(make_receipt(0, reps=10), make_receipt(1, reps=7))
    assert report.verdict == g.Verdict.PASS


def test_results_are_reproducible(make_receipt):
    a, b = make_receipt(0), make_receipt(1, speed=0.97)
    assert g.compare_receipts(a, b) == g.compare_receipts(a, b)


def test_thresholds_come_from_the_config_file(tmp_path, make_receipt):
    config = tmp_path / "gate.toml"
    config.write_text("[thresholds]\nthroughput_fail_pct = 15\nlatency_fail_pct = 15\n")
    report = g.compare_receipts(
        make_receipt(0), make_receipt(1, speed=0.9), g.load_gate_config(config)
    )
    assert report.verdict == g.Verdict.PASS


def write_config(tmp_path: Path, text: str) -> g.GateConfig:
    path = tmp_path / "gate.toml"
    path.write_text(text)
    return g.load_gate_config(path)


def test_slos_are_checked_on_the_current_medians(tmp_path, make_receipt):
    baseline, current = make_receipt(0), make_receipt(1)
    # tg16 at 1 thread runs at about 10 tok/s, at 2 threads about 20; RSS is about 800 MB.
    config = write_config(
        tmp_path, "[slo]\ndecode_tokens_per_second_min = 15\npeak_rss_mb_max = 900\n"
    )
    report = g.compare_receipts(baseline, current, config)
    failed = {
        (s.slo.key, s.run, s.threads) for s in report.slo_checks if s.verdict == g.Verdict.FAIL
    }
    assert failed == {("decode_tokens_per_second_min", "tg16", 1)}
    assert len(report.slo_checks) == 2 + 4  # two decode runs, four runs with RSS
    assert report.verdict == g.Verdict.FAIL
    config = write_config(tmp_path, "[slo]\nprefill_ms_max = 1000\ndecode_itl_p99_ms_max = 200\n")
    assert g.compare_receipts(baseline, current, config).verdict == g.Verdict.PASS


def test_an_slo_that_applies_to_no_run_asks_for_attention(tmp_path, make_kernel_receipt):
    config = write_config(tmp_path, "[slo]\ndecode_tokens_per_second_min = 1\n")
    report = g.compare_receipts(make_kernel_receipt(0), make_kernel_receipt(1), config)
    assert report.verdict == g.Verdict.ATTENTION
    assert "applies to no run" in report.notes[0].text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[slo]\ndecode_flops_min = 1\n", "unknown SLO 'decode_flops_min'"),
        ("[slo]\ndecode_tokens_per_second_at_least = 1\n", "unknown SLO"),
        ("[slo]\npeak_rss_mb_max = 'big'\n", "slo.peak_rss_mb_max must be a number, got 'big'"),
        ("[thresholds]\nthroughput_pct = 5\n", "unknown threshold 'throughput_pct'"),
        ("[thresholds]\nrss_fail_pct = -1\n", "thresholds.rss_fail_pct must be >= 0, got -1"),
        ("[gate]\nx = 1\n", "unknown section 'gate'"),
        ("[slo\n", "cannot read the gate configuration"),
        ("slo = 3\n", "slo must be a table, got 3"),
    ],
)
def test_bad_config_files_are_refused(tmp_path, text, message):
    with pytest.raises(BenchError, match=message):
        write_config(tmp_path, text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["model"].update(sha256="f" * 64), "model.sha256 differs: baseline '655f"),
        (lambda r: r["workload"].update(prompt_tokens=64), "workload.prompt_tokens differs: "),
        (lambda r: r["workload"]["sampler"].update(top_k=5), "workload.sampler differs"),
        (lambda r: r["workload"].update(draft_tokens=4), "workload.draft_tokens differs: "),
        (lambda r: r["workload"].update(kv_cache="q8_0"), "workload.kv_cache differs: "),
        (lambda r: r["runs"][0].update(n_tokens=31), r"runs\['pp32', 1 threads\].n_tokens"),
    ],
)
def test_receipts_of_different_models_or_workloads_are_refused(make_receipt, change, message):
    current = make_receipt(1)
    change(current)
    with pytest.raises(BenchError, match=message):
        g.compare_receipts(make_receipt(0), current)


def test_a_workload_field_one_side_does_not_record_is_named_not_compared(make_receipt):
    # A newer version may record a field an older one does not know (the base of a CI gate).
    baseline, current = make_receipt(0), make_receipt(1)
    del baseline["workload"]["kv_cache"]  # a receipt from before the cache had a type
    report = g.compare_receipts(baseline, current)
    assert report.verdict != g.Verdict.FAIL
    texts = [n.text for n in report.notes]
    assert "workload.kv_cache is recorded by one side only: not compared" in texts


def test_receipts_of_different_kinds_are_refused(make_receipt, make_kernel_receipt):
    with pytest.raises(BenchError, match="kind differs: baseline 'generation', current 'kernels'"):
        g.compare_receipts(make_receipt(0), make_kernel_receipt(0))


def test_a_run_missing_from_the_current_receipt_asks_for_attention(make_receipt):
    baseline, current = make_receipt(0), make_receipt(1)
    current["runs"] = current["runs"][:2]
    report = g.compare_receipts(baseline, current)
    assert report.verdict == g.Verdict.ATTENTION
    missing = [n.text for n in report.notes if n.verdict == g.Verdict.ATTENTION]
    assert missing == [
        "run pp32 at 2 threads is missing from the current receipt",
        "run tg16 at 2 threads is missing from the current receipt",
    ]
    # The other way round, the extra runs are only mentioned.
    assert g.compare_receipts(current, baseline).verdict == g.Verdict.PASS


def test_receipts_from_different_hosts_ask_for_attention(make_receipt):
    current = make_receipt(1)
    current["host"]["cpu_model"] = "Another CPU"
    report = g.compare_receipts(make_receipt(0), current)
    assert report.verdict == g.Verdict.ATTENTION
    assert "host.cpu_model 'Synthetic CPU' vs 'Another CPU'" in report.notes[0].text


def test_markdown_and_check_run_outputs(make_receipt):
    report = g.compare_receipts(make_receipt(0), make_receipt(1, speed=0.9))
    markdown = g.to_markdown(report)
    assert markdown.startswith("## pybitnet gate: FAIL\n")
    table_rows = [
        line
        for line in markdown.splitlines()
        if line.startswith("| pp32") or line.startswith("| tg16")
    ]
    assert len(table_rows) == len(report.comparisons)
    assert "**FAIL**: whole interval more than 5% worse" in markdown
    check = g.to_check_run(report)
    assert set(check) == {"name", "conclusion", "title", "summary", "text"}
    assert check["conclusion"] == "failure" and check["text"] == markdown
    assert check["title"].startswith("FAIL: 8 regressed, 0 to check, 0 SLO violations")
    better = g.to_check_run(g.compare_receipts(make_receipt(0), make_receipt(1, speed=1.2)))
    assert better["conclusion"] == "neutral"
    same = g.to_check_run(g.compare_receipts(make_receipt(0), make_receipt(1)))
    assert same["conclusion"] == "success"


@pytest.fixture
def receipt_files(tmp_path, make_receipt):
    """Receipt files: a baseline and currents that pass, fail, need attention, or do not compare."""
    files = {}
    for name, doc in {
        "base": make_receipt(0),
        "same": make_receipt(1),
        "slower": make_receipt(1, speed=0.9),
        "faster": make_receipt(1, speed=1.2),
        "other_model": make_receipt(1),
    }.items():
        if name == "other_model":
            doc["model"]["sha256"] = "0" * 64
        files[name] = tmp_path / f"{name}.json"
        write_receipt(doc, files[name])
    return files


@pytest.mark.parametrize(("current", "code"), [("same", 0), ("slower", 1), ("faster", 3)])
def test_cli_exit_codes(monkeypatch, receipt_files, current, code):
    assert run_cli(monkeypatch, "gate", receipt_files["base"], receipt_files[current]) == code


def test_cli_refuses_bad_input_with_exit_code_2(monkeypatch, capsys, receipt_files, tmp_path):
    base = receipt_files["base"]
    assert run_cli(monkeypatch, "gate", base, receipt_files["other_model"]) == 2
    assert "model.sha256 differs" in capsys.readouterr().err
    assert run_cli(monkeypatch, "gate", base, tmp_path / "missing.json") == 2
    assert "missing.json: cannot read" in capsys.readouterr().err
    assert run_cli(monkeypatch, "gate", base) == 2  # usage: CURRENT is missing
    assert run_cli(monkeypatch, "gate", base, base, "--markdown", tmp_path / "no" / "x.md") == 2
    assert "cannot write the gate report" in capsys.readouterr().err


def test_cli_writes_markdown_and_json(monkeypatch, receipt_files, tmp_path):
    md, js = tmp_path / "gate.md", tmp_path / "gate.json"
    args = ["gate", receipt_files["base"], receipt_files["slower"], "--markdown", md]
    args += ["--json-file", js]
    assert run_cli(monkeypatch, *args) == 1
    assert md.read_text().startswith("## pybitnet gate: FAIL")
    assert json.loads(js.read_text())["conclusion"] == "failure"


def test_cli_reads_the_config_file(monkeypatch, receipt_files, tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text("[slo]\ndecode_tokens_per_second_min = 1000\n")
    args = ["gate", receipt_files["base"], receipt_files["same"], "--config", config]
    assert run_cli(monkeypatch, *args) == 1


def test_installed_console_script_exits_with_the_gate_code(receipt_files):
    script = Path(sys.executable).parent / "pybitnet"
    done = subprocess.run(
        [script, "gate", receipt_files["base"], receipt_files["faster"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "pybitnet gate: ATTENTION" in done.stdout


def test_terminal_report_shows_names_literally(make_receipt):
    baseline, current = make_receipt(0), make_receipt(1, speed=0.9)
    for doc in (baseline, current):
        doc["runs"][0]["name"] = "pp[bold]32"
    console = Console(record=True, width=250)
    g.print_report(g.compare_receipts(baseline, current), console)
    text = console.export_text()
    assert "pp[bold]32" in text and "FAIL: whole interval more than 5% worse" in text
    assert "FAIL: 8 regressed" in text


def test_a_run_on_another_kernel_is_compared_and_noted(make_kernel_receipt):
    base, slower = make_kernel_receipt(0), make_kernel_receipt(1, speed=0.5)
    slower["runs"][0]["kernel_id"] = "bitlinear_scalar"  # a tier lost: what the gate is for
    report = g.compare_receipts(base, slower)
    assert report.verdict == g.Verdict.FAIL
    assert "ran kernel bitlinear_scalar (baseline: i2s_gemv)" in report.notes[0].text
