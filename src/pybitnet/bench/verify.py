"""Receipt verification (SPEC section 6): every rule a receipt must satisfy, each with a verdict.

    report = verify_receipt("receipt.json", replay=True)
    print_report(report)        # a table: rule, PASS / FAIL / SKIP, detail
    report.exit_code            # 0 when no rule failed, 1 otherwise

The rules, in the order they run (RULES holds their names). When the schema fails, the others
are not run: they read fields the schema promises. A rule that does not apply says SKIP and why.

- schema: the receipt validates against receipt.schema.json, which also requires a non-empty
  kernel list.
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
  ran, and their calls are the runner's forward passes over the timed repetitions (one per
  prefill repetition, generated_tokens + 1 per decode repetition) times the engine's calls per
  pass for T. Each kernel run's kernel was called at least once per timed repetition.
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
import enum
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pybitnet import formats, kernels
from pybitnet.bench.receipt import (
    read_receipt_json,
    rebuild_run,
    token_ids_sha256,
    validate_receipt,
)
from pybitnet.engine.forward import bitlinear_calls_per_pass
from pybitnet.errors import BenchError, PyBitnetError
from pybitnet.kernels.registry import NATIVE_TIERS
from pybitnet.sampling import SamplerConfig

TOLERANCE = 0.01  # how far a derived figure may be from its recomputation (SPEC: 1%)
ABS_TOLERANCE = 1e-9  # for figures that are zero (a standard deviation of equal samples)
CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_SHOWN = 4  # problems shown per rule; the rest are counted


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"  # the rule does not apply to this receipt, or could not be run


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
    ctx = _Context(doc, model, now or dt.datetime.now(dt.UTC))
    return VerifyReport(source, [Check(rule, *_RULES[rule](ctx)) for rule in rules])


def replay_workload(
    doc: dict[str, Any], model_path: str | Path
) -> tuple[list[list[int]], set[str]]:
    """Generate from the receipt's prompts as the bench did (its decode repetition: the prompts
    decoded together as one batch, the sampler and seed of the workload, generated_tokens ids,
    never stopping early); return the ids and the ids of the kernels that ran."""
    # the model stack, needed only here
    from pybitnet.bench.runner import decode_once
    from pybitnet.generate import load

    workload = doc["workload"]
    model = load(model_path)
    sampler = SamplerConfig(**workload["sampler"], seed=workload["seed"])
    with kernels.profile() as prof:
        ids = decode_once(model, workload["prompt_ids"], workload["generated_tokens"], sampler)[0]
    return ids, {k["id"] for k in prof.stats()}


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


# --- the rules -------------------------------------------------------------------------------

Result = tuple[Verdict, str]


@dataclass
class _Context:
    doc: dict[str, Any]
    model_override: str | Path | None
    now: dt.datetime

    @property
    def generation(self) -> bool:
        return self.doc["kind"] == "generation"

    @cached_property
    def model(self) -> _ModelFile:
        m = self.doc["model"]
        return _ModelFile(Path(self.model_override or m["path"]), m["sha256"], m["bytes"])


class _ModelFile:
    """The model file a generation receipt names; hashed once, only when it is present."""

    def __init__(self, path: Path, sha256: str, nbytes: int) -> None:
        self.path, self.sha256, self.nbytes = path, sha256, nbytes

    @property
    def present(self) -> bool:
        return self.path.is_file()

    @cached_property
    def mismatch(self) -> str | None:
        """Why the present file is not the receipt's model, or None when it is."""
        size = self.path.stat().st_size
        if size != self.nbytes:
            return f"{self.path} has {size:,} bytes, the receipt's model.bytes is {self.nbytes:,}"
        with self.path.open("rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if sha != self.sha256:
            return f"{self.path} has sha256 {sha}, the receipt's model.sha256 is {self.sha256}"
        return None

    def vocab_size(self) -> int:
        # the GGUF reader and model config are needed only when the file is present
        from pybitnet.gguf import open_gguf
        from pybitnet.model import ModelConfig

        with open_gguf(self.path) as f:
            return ModelConfig.from_metadata(f.metadata, str(self.path)).vocab_size


def _outcome(problems: list[str], ok: str) -> Result:
    if not problems:
        return Verdict.PASS, ok
    more = len(problems) - MAX_SHOWN
    return Verdict.FAIL, "; ".join(problems[:MAX_SHOWN]) + (
        f"; and {more} more" if more > 0 else ""
    )


@cache
def _registry() -> dict[str, tuple[str, str]]:
    """(op, tier) of every id the installed registry knows (ids are `<op>_<tier>`)."""
    return {kid: tuple(kid.rsplit("_", 1)) for kid in kernels.known_ids()}


def _check_kernel_ids(ctx: _Context) -> Result:
    ids = [k["id"] for k in ctx.doc["kernels"]]
    ids += [run["kernel_id"] for run in ctx.doc["runs"] if run["kind"] == "kernel"]
    unknown = sorted(set(ids) - _registry().keys())
    problems = []
    if unknown:
        known = ", ".join(sorted(_registry()))
        problems.append(
            f"kernel ids the installed registry does not know: {unknown} (it knows {known})"
        )
    codecs = {run["format"] for run in ctx.doc["runs"] if run["kind"] == "codec"}
    names = {t.name for t in formats.TYPES.values()}
    if codecs - names:
        problems.append(
            f"codec runs of formats pybitnet.formats does not know: {sorted(codecs - names)} "
            f"(it knows {', '.join(sorted(names))})"
        )
    codec_note = f", and the {len(codecs)} codec formats to pybitnet.formats" if codecs else ""
    return _outcome(
        problems,
        f"all {len(set(ids))} kernel ids are known to the installed registry{codec_note}",
    )


def _check_compute_path(ctx: _Context) -> Result:
    ids = [k["id"] for k in ctx.doc["kernels"]]
    native = [i for i in ids if i in _registry() and _registry()[i][1] in NATIVE_TIERS]
    if ctx.doc["compute_path"] != "native":
        return Verdict.PASS, f"compute_path {ctx.doc['compute_path']!r}: no native claim"
    if not native:
        return Verdict.FAIL, f"compute_path 'native', but no native kernel ran: only {ids}"
    return Verdict.PASS, f"compute_path 'native' with native kernels {native}"


def _check_kernel_counters(ctx: _Context) -> Result:
    doc = ctx.doc
    entries = doc["kernels"]
    problems = []
    repeated = sorted(i for i, n in Counter(k["id"] for k in entries).items() if n > 1)
    if repeated:
        problems.append(f"ids listed more than once: {repeated} (the registry counts each id once)")
    idle = [k["id"] for k in entries if k["calls"] == 0 or k["seconds"] <= 0]
    if idle:
        problems.append(f"{idle} listed with no calls or no time (the registry lists what ran)")
    kernel_seconds = sum(k["seconds"] for k in entries)
    wall = _wall_seconds(doc)
    if kernel_seconds > wall * (1 + TOLERANCE):
        problems.append(
            f"the kernels took {kernel_seconds:.4g} s, more than the {wall:.4g} s of wall time "
            "the runs measured (warmups included)"
        )
    problems += _generation_calls(doc) if ctx.generation else _kernel_run_calls(doc)
    return _outcome(
        problems,
        f"{len(entries)} kernels, {kernel_seconds:.4g} s of {wall:.4g} s wall time; "
        "calls consistent with the workload",
    )


def _wall_seconds(doc: dict[str, Any]) -> float:
    """Seconds of every run's repetitions (ms, plus ttft_ms when separate), warmups counted at
    the same pace."""
    total = 0.0
    for run in doc["runs"]:
        samples = run["samples"]
        per_rep = np.asarray(samples["ms"]) + np.asarray(samples.get("ttft_ms", 0.0))
        total += per_rep.sum() * (1 + doc["workload"]["warmup"] / per_rep.size) / 1000
    return float(total)


def _generation_calls(doc: dict[str, Any]) -> list[str]:
    types = doc["model"]["tensor_types"]
    try:
        ternary = sum(n for name, n in types.items() if formats.weight_type(name).ternary)
    except PyBitnetError as exc:
        return [f"model.tensor_types: {exc}"]
    if ternary == 0:
        return []  # no BitLinear weights: nothing required of the bitlinear kernels
    calls = sum(
        k["calls"] for k in doc["kernels"] if _registry().get(k["id"], ("",))[0] == "bitlinear"
    )
    if calls == 0:
        return [f"the model has {ternary} ternary tensors ({types}), but no bitlinear kernel ran"]
    fewest, most = bitlinear_calls_per_pass(ternary)
    passes = _forward_passes(doc)
    if passes * fewest <= calls <= passes * most:
        return []
    exact = fewest == most
    claim = f"make {calls / most:g} passes" if exact else "do not fit"
    per_pass = f"{most}" if exact else f"{fewest} to {most}"
    return [
        f"{calls} bitlinear calls {claim}: the runs made {passes} forward passes (one per "
        "prefill repetition, generated_tokens + 1 per decode repetition, warmups not counted) "
        f"of {per_pass} calls (the engine's over {ternary} ternary tensors)"
    ]


def _forward_passes(doc: dict[str, Any]) -> int:
    """The forward passes of the timed repetitions, as the runner makes them: a prefill
    repetition prefills every prompt of the batch in one pass; a decode repetition prefills and
    then makes generated_tokens decode steps of one pass each."""
    w = doc["workload"]
    steps = {"prefill": 1, "decode": w["generated_tokens"] + 1}
    return w["repetitions"] * sum(steps[run["kind"]] for run in doc["runs"])


def _kernel_run_calls(doc: dict[str, Any]) -> list[str]:
    calls = {k["id"]: k["calls"] for k in doc["kernels"]}
    timed = Counter()
    for run in doc["runs"]:
        if run["kind"] == "kernel":
            timed[run["kernel_id"]] += len(run["samples"]["ms"])
    problems = []
    for kernel_id, reps in sorted(timed.items()):
        if kernel_id not in calls:
            problems.append(f"runs time kernel {kernel_id}, which the kernel list does not hold")
        elif calls[kernel_id] < reps:
            problems.append(
                f"{kernel_id}: {calls[kernel_id]} calls cannot give {reps} timed repetitions"
            )
    return problems


def _check_summaries(ctx: _Context) -> Result:
    reps = ctx.doc["workload"]["repetitions"]
    problems = []
    for run in ctx.doc["runs"]:
        where = f"run {run['name']!r} at {run['threads']} threads"
        counts = {len(values) for values in run["samples"].values()}
        if counts != {reps}:
            problems.append(f"{where}: {sorted(counts)} samples per metric, {reps} repetitions")
            continue
        try:
            rebuilt = rebuild_run(run)
        except BenchError as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where}: {p}" for p in _derived_differences(run, rebuilt)]
        if run["kind"] == "decode":  # generating n tokens takes at least the gaps between them
            gaps = np.array([sum(g) for g in run["inter_token_ms"]])
            short = np.flatnonzero(np.asarray(run["samples"]["ms"]) < gaps * (1 - TOLERANCE))
            if short.size:
                i = short[0]
                problems.append(
                    f"{where}: samples.ms[{i}] = {run['samples']['ms'][i]:.6g} is shorter than "
                    f"the {gaps[i]:.6g} ms of inter_token_ms[{i}]"
                )
    return _outcome(
        problems,
        f"{len(ctx.doc['runs'])} runs: every sample and summary follows from the raw "
        f"measurements (within {TOLERANCE:.0%})",
    )


def _derived_differences(run: dict[str, Any], rebuilt: dict[str, Any]) -> list[str]:
    """What differs between a run's derived figures and their recomputation: per metric, the
    first differing sample and how many differ, and every differing summary statistic."""
    problems = []
    for part in ("samples", "summary"):
        claimed, want = run[part], rebuilt[part]
        problems += [
            f"{part}.{metric} {'is missing' if metric in want else 'has no raw measurements'}"
            for metric in sorted(claimed.keys() ^ want.keys())
        ]
        for metric in sorted(claimed.keys() & want.keys()):
            if part == "samples":
                got, ref = np.asarray(claimed[metric]), np.asarray(want[metric])
                off = np.flatnonzero(np.abs(got - ref) > TOLERANCE * np.abs(ref) + ABS_TOLERANCE)
                if off.size:
                    problems.append(
                        f"samples.{metric}: {off.size} of {ref.size} differ, [{off[0]}] is "
                        f"{got[off[0]]:.6g}, its raw measurements give {ref[off[0]]:.6g}"
                    )
            else:
                problems += [
                    f"summary.{metric}.{stat} is {claimed[metric][stat]}, its samples give {value}"
                    for stat, value in want[metric].items()
                    if not _close(claimed[metric][stat], value)
                ]
    return problems


def _close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is want
    return abs(got - want) <= TOLERANCE * abs(want) + ABS_TOLERANCE


def _check_token_counts(ctx: _Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt generates no tokens"
    w, ids = ctx.doc["workload"], ctx.doc["outputs"]["token_ids"]
    problems = []
    lengths = [len(row) for row in ids]
    if lengths != [w["generated_tokens"]] * w["batch"]:
        problems.append(
            f"outputs.token_ids holds sequences of {lengths} ids; the workload generated "
            f"batch={w['batch']} sequences of generated_tokens={w['generated_tokens']}"
        )
    if token_ids_sha256(ids) != ctx.doc["outputs"]["sha256"]:
        problems.append(
            f"outputs.sha256 is {ctx.doc['outputs']['sha256']}, the ids' sha256 is "
            f"{token_ids_sha256(ids)}"
        )
    prompts = w.get("prompt_ids")
    if prompts is not None and [len(p) for p in prompts] != [w["prompt_tokens"]] * w["batch"]:
        problems.append(
            f"workload.prompt_ids holds prompts of {[len(p) for p in prompts]} ids; the workload "
            f"has batch={w['batch']} prompts of prompt_tokens={w['prompt_tokens']}"
        )
    generated = w["generated_tokens"] * w["batch"]
    problems += [
        f"run {run['name']!r} at {run['threads']} threads: n_tokens {run['n_tokens']}, the "
        f"workload generates {generated} (generated_tokens x batch)"
        for run in ctx.doc["runs"]
        if run["kind"] == "decode" and run["n_tokens"] != generated
    ]
    return _outcome(problems, f"{sum(lengths)} generated ids agree with the workload and runs")


def _check_vocabulary(ctx: _Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt holds no token ids"
    claimed = ctx.doc["model"]["vocab_size"]
    model = ctx.model
    problems = []
    if model.present and model.mismatch is None:
        try:
            vocab = model.vocab_size()
        except PyBitnetError as exc:
            return Verdict.FAIL, f"cannot read the vocabulary size of {model.path}: {exc}"
        source = f"{model.path}"
        if vocab != claimed:
            problems.append(f"model.vocab_size is {claimed}, the model file's is {vocab}")
    else:
        why = "does not match the receipt" if model.present else "is not present"
        vocab, source = claimed, f"model.vocab_size ({model.path} {why})"
    sequences = {
        f"outputs.token_ids[{i}]": row for i, row in enumerate(ctx.doc["outputs"]["token_ids"])
    }
    prompts = ctx.doc["workload"].get("prompt_ids") or []
    sequences |= {f"workload.prompt_ids[{i}]": row for i, row in enumerate(prompts)}
    for name, row in sequences.items():
        outside = np.flatnonzero(np.asarray(row, dtype=np.int64) >= vocab)
        if outside.size:
            problems.append(
                f"{name}[{outside[0]}] = {row[outside[0]]} is outside the vocabulary of {vocab} "
                f"({outside.size} such ids)"
            )
    return _outcome(problems, f"every token id is below the vocabulary size {vocab}, from {source}")


def _check_created_at(ctx: _Context) -> Result:
    created = dt.datetime.fromisoformat(ctx.doc["created_at"].replace("Z", "+00:00"))
    minutes = CLOCK_SKEW.total_seconds() / 60
    if created > ctx.now + CLOCK_SKEW:
        ahead = created - ctx.now
        return (
            Verdict.FAIL,
            f"created_at {ctx.doc['created_at']} is {ahead} in the future "
            f"(clock skew of {minutes:g} minutes allowed)",
        )
    return (
        Verdict.PASS,
        f"created_at {ctx.doc['created_at']} is not in the future "
        f"({minutes:g} minutes of clock skew allowed)",
    )


def _check_model_sha256(ctx: _Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt names no model"
    model = ctx.model
    if not model.present:
        return Verdict.SKIP, f"{model.path} is not present: not checked (--model names the file)"
    if model.mismatch is not None:
        return Verdict.FAIL, model.mismatch
    return Verdict.PASS, f"{model.path} has the receipt's size and sha256 {model.sha256[:16]}..."


def _check_replay(ctx: _Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt has no generation to replay"
    model = ctx.model
    if not model.present:
        return Verdict.FAIL, f"cannot replay: {model.path} is not present"
    if model.mismatch is not None:
        return Verdict.FAIL, f"cannot replay: {model.mismatch}"
    if "prompt_ids" not in ctx.doc["workload"]:
        return Verdict.FAIL, "cannot replay: the receipt records no workload.prompt_ids"
    try:
        ids, kernel_ids = replay_workload(ctx.doc, model.path)
    except (PyBitnetError, ImportError) as exc:
        return Verdict.FAIL, f"the replay could not run: {type(exc).__name__}: {exc}"
    problems = []
    claimed_ids = ctx.doc["outputs"]["token_ids"]
    if len(ids) != len(claimed_ids):
        problems.append(f"the replay made {len(ids)} sequences, the receipt {len(claimed_ids)}")
    for i, (got, want) in enumerate(zip(ids, claimed_ids, strict=False)):
        if got != want:
            at = _first_difference(got, want)
            problems.append(
                f"sequence {i} differs from position {at}: replay {got[at : at + 4]}..., "
                f"receipt {want[at : at + 4]}..."
            )
    claimed_kernels = {k["id"] for k in ctx.doc["kernels"]}
    if kernel_ids != claimed_kernels:
        hint = f" ({kernels.ENV} picks the tier)" if kernel_ids else ""
        problems.append(
            f"the replay ran kernels {sorted(kernel_ids)}, the receipt lists "
            f"{sorted(claimed_kernels)}{hint}"
        )
    return _outcome(
        problems, f"the replay generated the same ids with kernels {sorted(kernel_ids)}"
    )


def _first_difference(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


_RULES: dict[str, Callable[[_Context], Result]] = {
    "schema": lambda ctx: (Verdict.PASS, "valid against receipt.schema.json"),
    "kernel_ids": _check_kernel_ids,
    "compute_path": _check_compute_path,
    "kernel_counters": _check_kernel_counters,
    "summaries": _check_summaries,
    "token_counts": _check_token_counts,
    "vocabulary": _check_vocabulary,
    "created_at": _check_created_at,
    "model_sha256": _check_model_sha256,
    "replay": _check_replay,
}

RULES = tuple(_RULES)  # the rules' names, in the order they run
