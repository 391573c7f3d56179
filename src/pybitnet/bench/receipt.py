"""Benchmark receipts (docs/SPEC.md §6): building runs from raw samples, loading and validating.

A receipt is plain JSON; receipt.schema.json, shipped next to this module, is the one
description of its shape. `summarize` is the one place where summary figures are computed from
raw samples: the run builders here use it, and verify recomputes with it.

A receipt holds several runs, like llama-bench rows (pp128 and tg128 at 1 and 2 threads). Each
run keeps its raw samples, one value per repetition for each metric, and their summaries.

A receipt comes from anyone, so reading one is bounded before anything depends on its contents:
receipt_reader.read_receipt_json refuses a file too large, with too many values or nested too
deep before parsing it, and `validate_receipt` checks the schema, whose every number, array,
string and object is bounded, before anything else reads it. `load_receipt` does both: it is
how verify, gate and report read a receipt.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pybitnet.bench.receipt_reader import ReceiptValidator, read_receipt_json
from pybitnet.errors import BenchError
from pybitnet.sampling import SamplerConfig

# What bench writes. 1.0.0 receipts still validate, verify and gate (the committed baselines in
# benchmarks/baseline are 1.0.0): they differ only in calling compute_path "reference" when the
# numpy kernel tier ran, which 1.1.0 calls "numpy" ("reference" is the float64 forward pass).
SCHEMA_VERSION = "1.1.0"
ITL_PERCENTILES = (50, 90, 99)  # the per-repetition inter-token latency samples itl_pNN_ms


@cache
def schema() -> dict[str, Any]:
    """The receipt's JSON Schema (draft 2020-12)."""
    text = resources.files("pybitnet.bench").joinpath("receipt.schema.json").read_text()
    return json.loads(text)


def metric_names() -> tuple[str, ...]:
    """Every metric a run may hold samples of, as the schema lists them."""
    return tuple(schema()["$defs"]["metric"]["enum"])


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, median, mean, sample standard deviation (None for one sample), min and max."""
    x = _samples("samples", values)
    return {
        "n": int(x.size),
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if x.size > 1 else None,
        "min": float(x.min()),
        "max": float(x.max()),
    }


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Percentiles with linear interpolation between order statistics (numpy's default)."""
    return [float(v) for v in np.percentile(_samples("samples", values), qs)]


def prefill_run(
    name: str,
    threads: int,
    n_tokens: int,
    ms: Sequence[float],
    peak_rss_mb: Sequence[float],
    ttft_ms: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A prefill run: per repetition, the wall time of processing n_tokens prompt tokens."""
    samples = {"ms": ms, "tokens_per_second": _per_second(n_tokens, ms), "peak_rss_mb": peak_rss_mb}
    if ttft_ms is not None:
        samples["ttft_ms"] = ttft_ms
    return _run(
        {"name": name, "kind": "prefill", "threads": threads, "n_tokens": n_tokens}, samples
    )


def decode_run(
    name: str,
    threads: int,
    n_tokens: int,
    ms: Sequence[float],
    ttft_ms: Sequence[float],
    inter_token_ms: Sequence[Sequence[float]],
    peak_rss_mb: Sequence[float],
    drafting: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """A decode run: per repetition, the wall time of generating n_tokens tokens, the time to the
    first token, and every gap between consecutive tokens (summarised per repetition as the
    p50/p90/p99 inter-token latencies); with `drafting` (speculative decoding), its counts and
    the tokens a step gave (n_tokens / steps)."""
    if len(inter_token_ms) == 0:
        raise BenchError(f"run {name!r}: inter_token_ms is empty")
    itl = np.array([percentiles(gaps, ITL_PERCENTILES) for gaps in inter_token_ms])
    samples = {
        "ms": ms,
        "tokens_per_second": _per_second(n_tokens, ms),
        "ttft_ms": ttft_ms,
        **{f"itl_p{q}_ms": itl[:, i].tolist() for i, q in enumerate(ITL_PERCENTILES)},
        "peak_rss_mb": peak_rss_mb,
    }
    fields = {"name": name, "kind": "decode", "threads": threads, "n_tokens": n_tokens}
    fields["inter_token_ms"] = [[float(v) for v in gaps] for gaps in inter_token_ms]
    if drafting is not None:
        fields["drafting"] = drafting
        samples["tokens_per_step"] = n_tokens / _samples("steps", drafting["steps"])
    return _run(fields, samples)


def drafting(drafted: Sequence[int], accepted: Sequence[int], steps: Sequence[int]) -> dict:
    """A decode run's speculative-decoding counts, one per repetition: drafts fed, drafts
    accepted and decode steps, summed over the batch's sequences."""
    return {
        "drafted": [int(n) for n in drafted],
        "accepted": [int(n) for n in accepted],
        "steps": [int(n) for n in steps],
    }


def kernel_run(
    name: str,
    threads: int,
    kernel_id: str,
    shape: Sequence[int],
    elements: int,
    ms: Sequence[float],
) -> dict[str, Any]:
    """A kernel microbenchmark: per repetition, the wall time of processing `elements` elements
    (e.g. the weights of one matrix-vector product) with kernel `kernel_id`."""
    fields = {"name": name, "kind": "kernel", "threads": threads, "kernel_id": kernel_id}
    fields |= {"shape": [int(n) for n in shape], "elements": elements}
    return _run(fields, {"ms": ms, "elements_per_second": _per_second(elements, ms)})


def codec_run(
    name: str,
    threads: int,
    fmt: str,
    direction: str,
    shape: Sequence[int],
    ms: Sequence[float],
) -> dict[str, Any]:
    """A quantize or dequantize benchmark of format `fmt` (pybitnet.formats, numpy): per
    repetition, the wall time of converting the elements of a tensor of `shape`."""
    elements = math.prod(shape)  # exact: a numpy product would wrap around
    fields = {"name": name, "kind": "codec", "threads": threads, "format": fmt}
    fields |= {"direction": direction, "shape": [int(n) for n in shape], "elements": elements}
    return _run(fields, {"ms": ms, "elements_per_second": _per_second(elements, ms)})


def rebuild_run(run: dict[str, Any]) -> dict[str, Any]:
    """The run that the builders above make from this run's raw measurements (ms, ttft_ms,
    inter_token_ms, peak_rss_mb): verify compares it with the run a receipt holds."""
    samples = run["samples"]
    if run["kind"] == "kernel":
        fields = (run["kernel_id"], run["shape"], run["elements"], samples["ms"])
        return kernel_run(run["name"], run["threads"], *fields)
    if run["kind"] == "codec":
        fields = (run["format"], run["direction"], run["shape"], samples["ms"])
        return codec_run(run["name"], run["threads"], *fields)
    if run["kind"] == "decode":
        fields = (samples["ms"], samples["ttft_ms"], run["inter_token_ms"], samples["peak_rss_mb"])
        return decode_run(
            run["name"], run["threads"], run["n_tokens"], *fields, run.get("drafting")
        )
    ttft = samples.get("ttft_ms")
    fields = (samples["ms"], samples["peak_rss_mb"], ttft)
    return prefill_run(run["name"], run["threads"], run["n_tokens"], *fields)


def generation_workload(
    prompt_tokens: int,
    generated_tokens: int,
    batch: int,
    repetitions: int,
    warmup: int,
    sampler: SamplerConfig,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    draft_tokens: int = 0,
    output_head: str | None = None,
    *,
    kv_cache: str,
) -> dict[str, Any]:
    """The workload of a generation receipt; the sampler's seed becomes workload.seed.
    `prompt_ids` (one list per sequence) make the receipt replayable by `verify --replay`;
    draft_tokens is recorded when drafting (absent: plain decoding, as in older receipts);
    output_head always (null: the file's output layer as stored; older receipts lack it), and
    kv_cache, the KV cache's element type, always (absent in older receipts: f32)."""
    if sampler.seed is None:
        raise BenchError("a benchmark workload needs a fixed sampler seed, got seed=None")
    params = {
        "temperature": sampler.temperature,
        "top_k": sampler.top_k,
        "top_p": sampler.top_p,
        "min_p": sampler.min_p,
        "repeat_penalty": sampler.repeat_penalty,
        "repeat_last_n": sampler.repeat_last_n,
    }
    workload = {
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "batch": batch,
        "repetitions": repetitions,
        "warmup": warmup,
        "seed": sampler.seed,
        "sampler": params,
        "output_head": output_head,
        "kv_cache": kv_cache,
    }
    if draft_tokens:
        workload["draft_tokens"] = draft_tokens
    if prompt_ids is not None:
        rows = [[int(t) for t in row] for row in prompt_ids]
        if len(rows) != batch or any(len(row) != prompt_tokens for row in rows):
            lengths = [len(row) for row in rows]
            raise BenchError(
                f"prompt_ids must hold batch={batch} lists of prompt_tokens={prompt_tokens} ids, "
                f"got lists of {lengths}"
            )
        workload["prompt_ids"] = rows
    return workload


def outputs(token_ids: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The outputs block: the generated ids (one list per sequence) and their sha256."""
    ids = [[int(t) for t in row] for row in token_ids]
    return {"token_ids": ids, "sha256": token_ids_sha256(ids)}


def token_ids_sha256(token_ids: Sequence[Sequence[int]]) -> str:
    """sha256 of the ids written as compact JSON, easy to recompute in any language."""
    text = json.dumps([[int(t) for t in row] for row in token_ids], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def utc_now() -> str:
    """The current time in the form created_at requires (UTC, Z suffix)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    return now.replace("+00:00", "Z")


def validate_receipt(doc: Any, source: str = "receipt") -> None:
    """Raise BenchError naming the source, the field and the problem unless `doc` is a receipt.
    The first error is reported: the schema puts each bound before the keywords that look inside
    a value, so a value far too large is refused before anything iterates over it."""
    error = next(_validator().iter_errors(doc), None)
    if error is not None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        message = error.message  # the value's repr, then what is wrong with it: keep both
        message = message if len(message) <= 300 else f"{message[:200]}...{message[-100:]}"
        raise BenchError(f"{source}: field ${field}: {message}")
    try:  # the pattern checks the form; this checks that it is a real date and time
        dt.datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise BenchError(f"{source}: field $.created_at: {doc['created_at']!r}: {exc}") from None


def load_receipt(path: str | Path) -> dict[str, Any]:
    """Read a receipt file within receipt_reader's bounds, and validate it: what verify, gate
    and report read receipts with."""
    doc = read_receipt_json(path)
    validate_receipt(doc, str(path))
    return doc


def write_receipt(doc: dict[str, Any], path: str | Path) -> None:
    """Validate a receipt and write it as JSON."""
    validate_receipt(doc, str(path))
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _run(fields: dict[str, Any], samples: dict[str, Any]) -> dict[str, Any]:
    columns = {
        metric: _samples(f"run {fields['name']!r}: {metric}", v) for metric, v in samples.items()
    }
    lengths = {metric: x.size for metric, x in columns.items()}
    if len(set(lengths.values())) != 1:
        raise BenchError(
            f"run {fields['name']!r}: every metric needs one sample per repetition, got {lengths}"
        )
    return {
        **fields,
        "samples": {metric: x.tolist() for metric, x in columns.items()},
        "summary": {metric: summarize(x) for metric, x in columns.items()},
    }


def _per_second(count: int, ms: Sequence[float]) -> np.ndarray:
    return count * 1000.0 / _samples("ms", ms)


def _samples(what: str, values: Sequence[float]) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        x = np.array([np.nan])
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise BenchError(f"{what} must be a non-empty list of finite numbers, got {values!r}")
    return x


@cache
def _validator() -> ReceiptValidator:
    return ReceiptValidator(schema())
