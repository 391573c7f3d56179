"""Receipt verification (docs/SPEC.md §6): every rule a receipt must satisfy, each with a verdict.

    report = verify_receipt("receipt.json", replay=True)
    print_report(report)        # a table: rule, PASS / FAIL / SKIP, detail
    report.exit_code            # 0 when no rule failed, 1 otherwise

The rules, in the order they run (RULES holds their names). When the schema fails, the others
are not run: they read fields the schema promises. A rule that does not apply says SKIP and why.
They live by what they read: verify_kernels.py the kernel list, verify_runs.py the figures and
ids, verify_files.py the model file; verify_common.py holds what they share.

- schema: the receipt validates against receipt.schema.json, which also requires a non-empty
  kernel list. Version 1.0.0 receipts are accepted too: they call compute_path "reference" where
  1.1.0 says "numpy" (only the numpy kernel tier ran), and are otherwise the same.
- kernel_ids: every kernel id, and every kernel run's kernel_id, is known to the installed
  kernel registry; every codec run's format is one pybitnet.formats knows.
- compute_path: a receipt that claims "native" ran at least one native (non-numpy) kernel.
- kernel_counters: the kernel list reads like the registry's counters over this workload, not
  like a list written by hand. The registry lists each id once, and only kernels that ran (calls
  >= 1, seconds > 0). Kernel time is timed inside the runs, so it cannot exceed their wall time:
  every repetition's ms (+ ttft_ms), with the warmups counted at the same pace. The engine
  makes a fixed number of BitLinear calls per forward pass, whatever the batch, and says how
  many (engine.forward.bitlinear_calls_per_pass: a block's stacked linear layers, and a ternary
  output layer). So when the model's tensor types hold T ternary tensors, the bitlinear kernels
  ran, and their calls are the token loop's forward passes over the timed repetitions
  (ceil(P / PREFILL_CHUNK) for a P-token prompt, then generated_tokens per decode repetition)
  times the engine's calls per pass for T. Each kernel run's kernel was called at least once
  per timed repetition.
- summaries: each run has one sample per repetition (workload.repetitions), and its derived
  samples and summaries are what receipt.rebuild_run makes from its raw measurements, within
  1% (medians, tok/s = tokens / seconds, latency percentiles); a decode repetition lasts at
  least as long as the gaps between its tokens.
- token_counts: outputs hold `batch` sequences of `generated_tokens` ids whose sha256 is
  outputs.sha256; prompt_ids, when recorded, hold `batch` prompts of `prompt_tokens` ids; each
  decode run generated generated_tokens x batch tokens (its tok/s counts them).
- vocabulary: every generated and prompt id is below the vocabulary size: the model file's when
  the file is present and is the receipt's model, else the receipt's model.vocab_size.
- created_at: not in the future, allowing CLOCK_SKEW (5 minutes) between the machine that
  wrote the receipt and this one.
- model_sha256: when the model file is present, its size and sha256 (streamed in chunks) are
  the receipt's.
- replay (with --replay): replay_workload decodes the recorded prompts as the bench does (the
  receipt's sampler and seed, never stopping early), and the generated ids and the set of
  kernel ids must be the receipt's. The kernel tier is this host's choice (PYBITNET_KERNELS
  picks another), so replay a receipt on a CPU that runs the tiers it names.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pybitnet.bench import verify_files, verify_kernels, verify_runs
from pybitnet.bench.receipt import validate_receipt
from pybitnet.bench.receipt_reader import read_receipt_json
from pybitnet.bench.verify_common import Context, Result, Verdict
from pybitnet.bench.verify_files import replay_workload
from pybitnet.engine.forward import bitlinear_calls_per_pass
from pybitnet.errors import BenchError

__all__ = [
    "RULES",
    "Check",
    "Verdict",
    "VerifyReport",
    "bitlinear_calls_per_pass",
    "check_receipt",
    "print_report",
    "replay_workload",
    "to_json",
    "verify_receipt",
    "write_json",
]


@dataclass(frozen=True)
class Check:
    rule: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    source: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.verdict != Verdict.FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def verdict(self, rule: str) -> Verdict:
        return next(c.verdict for c in self.checks if c.rule == rule)


def verify_receipt(
    path: str | Path,
    *,
    model: str | Path | None = None,
    replay: bool = False,
    now: dt.datetime | None = None,
) -> VerifyReport:
    """Apply every rule to the receipt file at `path`. `model` overrides the model path the
    receipt records; `now` (UTC) is the time created_at is judged against."""
    return check_receipt(read_receipt_json(path), str(path), model=model, replay=replay, now=now)


def check_receipt(
    doc: Any,
    source: str = "receipt",
    *,
    model: str | Path | None = None,
    replay: bool = False,
    now: dt.datetime | None = None,
) -> VerifyReport:
    """Apply every rule to a receipt already parsed from JSON."""
    rules = [rule for rule in RULES if replay or rule != "replay"]
    try:
        validate_receipt(doc, source)
    except BenchError as exc:
        skipped = [Check(r, Verdict.SKIP, "not checked: the schema failed") for r in rules[1:]]
        return VerifyReport(source, [Check("schema", Verdict.FAIL, str(exc)), *skipped])
    ctx = Context(doc, model, now or dt.datetime.now(dt.UTC))
    return VerifyReport(source, [Check(rule, *_RULES[rule](ctx)) for rule in rules])


def print_report(report: VerifyReport, console: Console | None = None) -> None:
    """The verdict of each rule, as a table."""
    console = console or Console()
    overall = "PASS" if report.passed else "FAIL"
    table = Table(title=f"pybitnet verify {escape(report.source)}: {overall}")
    for column in ("rule", "verdict", "detail"):
        table.add_column(column, overflow="fold")
    color = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.SKIP: "yellow"}
    for c in report.checks:
        styled = f"[{color[c.verdict]}]{c.verdict}[/{color[c.verdict]}]"
        table.add_row(c.rule, styled, escape(c.detail))
    console.print(table)


def to_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "receipt": report.source,
        "passed": report.passed,
        "checks": [
            {"rule": c.rule, "verdict": str(c.verdict), "detail": c.detail} for c in report.checks
        ],
    }


def write_json(report: VerifyReport, path: str | Path) -> None:
    try:
        Path(path).write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"{path}: cannot write the verify report: {exc}") from None


_RULES: dict[str, Callable[[Context], Result]] = {
    "schema": lambda ctx: (Verdict.PASS, "valid against receipt.schema.json"),
    "kernel_ids": verify_kernels.check_kernel_ids,
    "compute_path": verify_kernels.check_compute_path,
    "kernel_counters": verify_kernels.check_kernel_counters,
    "summaries": verify_runs.check_summaries,
    "token_counts": verify_runs.check_token_counts,
    "vocabulary": verify_runs.check_vocabulary,
    "created_at": verify_runs.check_created_at,
    "model_sha256": verify_files.check_model_sha256,
    "replay": verify_files.check_replay,
}

RULES = tuple(_RULES)  # the rules' names, in the order they run
