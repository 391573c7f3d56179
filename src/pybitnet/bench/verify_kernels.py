"""verify's rules on the kernel list (kernel_ids, compute_path, kernel_counters): it names
kernels the installed registry knows, backs a native claim, and reads like the registry's
counters over the receipt's workload (see verify.py for each rule)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pybitnet import formats
from pybitnet.bench.verify_common import TOLERANCE, Context, Result, Verdict, known_kernels, outcome
from pybitnet.decode import PREFILL_CHUNK
from pybitnet.engine.forward import bitlinear_calls_per_pass
from pybitnet.errors import PyBitnetError
from pybitnet.kernels.registry import NATIVE_TIERS


def check_kernel_ids(ctx: Context) -> Result:
    ids = [k["id"] for k in ctx.doc["kernels"]]
    ids += [run["kernel_id"] for run in ctx.doc["runs"] if run["kind"] == "kernel"]
    unknown = sorted(set(ids) - known_kernels().keys())
    problems = []
    if unknown:
        known = ", ".join(sorted(known_kernels()))
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
    return outcome(
        problems,
        f"all {len(set(ids))} kernel ids are known to the installed registry{codec_note}",
    )


def check_compute_path(ctx: Context) -> Result:
    ids = [k["id"] for k in ctx.doc["kernels"]]
    native = [i for i in ids if i in known_kernels() and known_kernels()[i][1] in NATIVE_TIERS]
    if ctx.doc["compute_path"] != "native":
        return Verdict.PASS, f"compute_path {ctx.doc['compute_path']!r}: no native claim"
    if not native:
        return Verdict.FAIL, f"compute_path 'native', but no native kernel ran: only {ids}"
    return Verdict.PASS, f"compute_path 'native' with native kernels {native}"


def check_kernel_counters(ctx: Context) -> Result:
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
    return outcome(
        problems,
        f"{len(entries)} kernels, {kernel_seconds:.4g} s of {wall:.4g} s wall time; "
        "calls consistent with the workload",
    )


def _wall_seconds(doc: dict[str, Any]) -> float:
    """Seconds of every run's repetitions (ms, plus ttft_ms when separate), warmups counted at
    the same pace. Each metric on its own: the summaries rule, not this one, checks that they
    hold one sample per repetition."""
    warmup = doc["workload"]["warmup"]
    total = 0.0
    for run in doc["runs"]:
        for metric in ("ms", "ttft_ms"):
            values = run["samples"].get(metric, [])
            total += sum(values) * (1 + warmup / max(len(values), 1)) / 1000
    return total


def _generation_calls(doc: dict[str, Any]) -> list[str]:
    types = doc["model"]["tensor_types"]
    try:
        ternary = sum(n for name, n in types.items() if formats.weight_type(name).ternary)
    except PyBitnetError as exc:
        return [f"model.tensor_types: {exc}"]
    if ternary == 0:
        return []  # no BitLinear weights: nothing required of the bitlinear kernels
    calls = sum(
        k["calls"] for k in doc["kernels"] if known_kernels().get(k["id"], ("",))[0] == "bitlinear"
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
        f"{calls} bitlinear calls {claim}: the runs made {passes} forward passes (a prompt's "
        "chunks, then generated_tokens decode steps per decode repetition, warmups not counted) "
        f"of {per_pass} calls (the engine's over {ternary} ternary tensors)"
    ]


def _forward_passes(doc: dict[str, Any]) -> int:
    """The forward passes of the timed repetitions, as the token loop makes them (decode.py): a
    prompt of P tokens is prefilled in ceil(P / PREFILL_CHUNK) passes, every prompt of the batch
    in the same passes; a decode repetition then makes generated_tokens steps of one pass, or
    with drafting (one sequence) the steps its run records."""
    w = doc["workload"]
    batch = max(w["batch"], 1)

    def prefill(prompt_tokens: int) -> int:
        return -(-prompt_tokens // PREFILL_CHUNK)

    def decode_steps(run: dict[str, Any]) -> int:
        if "drafting" in run:
            return sum(run["drafting"]["steps"])
        return w["repetitions"] * w["generated_tokens"]

    return sum(
        w["repetitions"] * prefill(run["n_tokens"] // batch)
        if run["kind"] == "prefill"
        else w["repetitions"] * prefill(w["prompt_tokens"]) + decode_steps(run)
        for run in doc["runs"]
    )


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
