"""verify's rules on a receipt's figures and ids (summaries, token_counts, vocabulary,
created_at): each follows from the raw measurements, the workload and the clock (see verify.py
for each rule)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from pybitnet.bench.receipt import rebuild_run, token_ids_sha256
from pybitnet.bench.verify_common import (
    ABS_TOLERANCE,
    TOLERANCE,
    Context,
    Result,
    Verdict,
    outcome,
)
from pybitnet.errors import BenchError, PyBitnetError

CLOCK_SKEW = dt.timedelta(minutes=5)


def check_summaries(ctx: Context) -> Result:
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
    return outcome(
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


def check_token_counts(ctx: Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt generates no tokens"
    w, ids = ctx.doc["workload"], ctx.doc["outputs"]["token_ids"]
    problems = []
    lengths = [len(row) for row in ids]  # compared with the workload's, never built from it
    if not _all_equal(lengths, w["batch"], w["generated_tokens"]):
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
    if prompts is not None and not _all_equal(
        [len(p) for p in prompts], w["batch"], w["prompt_tokens"]
    ):
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
    problems += _drafting_problems(ctx.doc)
    return outcome(problems, f"{sum(lengths)} generated ids agree with the workload and runs")


def _drafting_problems(doc: dict[str, Any]) -> list[str]:
    """Whether each decode run's drafting counts are those of the workload's drafting: present
    exactly when it drafted, one per repetition, accepted <= drafted <= draft_tokens x steps,
    and every token either a step's own or an accepted draft (n_tokens = steps + accepted)."""
    w, problems = doc["workload"], []
    limit = w.get("draft_tokens", 0)
    for run in doc["runs"]:
        if run["kind"] != "decode":
            continue
        where = f"run {run['name']!r} at {run['threads']} threads"
        counts = run.get("drafting")
        if (counts is None) != (limit == 0):
            problems.append(f"{where}: drafting is {'absent' if counts is None else 'present'}, "
                            f"workload.draft_tokens is {w.get('draft_tokens')}")  # fmt: skip
            continue
        if counts is None:
            continue
        rows = list(zip(counts["drafted"], counts["accepted"], counts["steps"], strict=False))
        if not _all_equal([len(v) for v in counts.values()], 3, w["repetitions"]):
            problems.append(f"{where}: drafting holds {[len(v) for v in counts.values()]} counts, "
                            f"{w['repetitions']} repetitions")  # fmt: skip
        problems += [
            f"{where}: repetition {i}: drafted {d}, accepted {a}, steps {s} break accepted <= "
            f"drafted <= draft_tokens x steps or n_tokens {run['n_tokens']} = steps + accepted"
            for i, (d, a, s) in enumerate(rows)
            if not (a <= d <= limit * s and s + a == run["n_tokens"])
        ]
    return problems


def _all_equal(lengths: list[int], count: int, length: int) -> bool:
    """Whether there are `count` lengths, each `length`."""
    return len(lengths) == count and all(n == length for n in lengths)


def check_vocabulary(ctx: Context) -> Result:
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
    return outcome(problems, f"every token id is below the vocabulary size {vocab}, from {source}")


def check_created_at(ctx: Context) -> Result:
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
