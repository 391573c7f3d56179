"""`pybitnet bench kernels`: microbenchmarks of the registry's kernels, written as receipts.

For each ternary format and weight shape (out x in, numpy order), the BitLinear kernel as a
GEMV (one activation row: decode) and as a GEMM (several rows: prefill, batching); then, on one
shape (`codec_shape`, as the numpy code is slow), the quantize and dequantize of each format of
`codecs` by pybitnet.formats (numpy; codec runs, not kernel runs: they are no kernel of the
registry). Throughput is
elements per second: weights x activation rows for BitLinear, weights for (de)quantization.
Weights are random ternary values stored in the format and read back, as a model's would be.
The weights of one case stay in the caches between calls, so these are the kernels' compute
speeds, not the memory-bound speed of a forward pass over a whole model (benchmarks/kernels.py
measures that). numpy runs the codecs in one thread whatever the thread count.

Statistics in the style of Criterion: untimed warm-up calls, then one sample per call
(perf_counter_ns around it), summarised by the median, the MAD (median absolute deviation,
scaled by 1.4826 to estimate the sd of normal data), the coefficient of variation (sd / mean),
and Tukey's outliers (mild: beyond 1.5 IQR from the quartiles; severe: beyond 3 IQR).
The receipt holds every sample; the kernel list comes from the registry's counters over the
timed calls only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from pybitnet import formats, kernels
from pybitnet.bench import receipt as rc
from pybitnet.bench.provenance import receipt_head
from pybitnet.bench.runner import KernelCounters, Step, check_at_least
from pybitnet.errors import BenchError, PyBitnetError

MAD_TO_SD = 1.4826  # MAD of normal data x 1.4826 = its sd
TERNARY_FORMATS = tuple(t.name for t in formats.TYPES.values() if t.ternary)
ALL_FORMATS = tuple(t.name for t in formats.TYPES.values())


@dataclass(frozen=True)
class KernelWorkload:
    """What `pybitnet bench kernels` runs. The default shapes are bitnet-b1.58-2B-4T's:
    attn_q / attn_output, ffn_gate / ffn_up, ffn_down."""

    shapes: tuple[tuple[int, int], ...] = ((2560, 2560), (6912, 2560), (2560, 6912))
    formats: tuple[str, ...] = TERNARY_FORMATS
    batches: tuple[int, ...] = (1, 16)  # activation rows: 1 is a GEMV
    codecs: tuple[str, ...] = ALL_FORMATS  # formats whose quantize/dequantize are timed
    codec_shape: tuple[int, int] = (2560, 2560)
    threads: tuple[int, ...] = (1,)
    samples: int = 30
    warmup: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        lists = {"shapes": self.shapes, "formats": self.formats, "batches": self.batches}
        check_at_least(
            ("samples", self.samples, 1),
            ("warmup", self.warmup, 0),
            ("seed", self.seed, 0),
            *((f"the number of {name}", len(values), 1) for name, values in lists.items()),
            *(("a batch", b, 1) for b in self.batches),
            *(("a thread count", t, 1) for t in self.threads),
            ("the number of thread counts", len(self.threads), 1),
        )
        unknown = [f for f in self.formats if f not in TERNARY_FORMATS]
        if unknown:
            raise BenchError(
                f"format {unknown[0]!r} is not ternary; BitLinear runs {', '.join(TERNARY_FORMATS)}"
            )
        unknown = [f for f in self.codecs if f not in ALL_FORMATS]
        if unknown:
            raise BenchError(
                f"codec format {unknown[0]!r} is unknown; pybitnet.formats has "
                f"{', '.join(ALL_FORMATS)}"
            )
        stored = [(shape, fmt) for shape in self.shapes for fmt in self.formats]
        stored += [(self.codec_shape, fmt) for fmt in self.codecs]
        for (rows, cols), fmt in stored:
            try:
                formats.tensor_nbytes(formats.weight_type(fmt), cols, rows * cols)
            except PyBitnetError as exc:
                raise BenchError(f"shape {rows}x{cols} cannot be stored as {fmt}: {exc}") from None


@dataclass(frozen=True)
class Case:
    """One microbenchmark: `call` runs the kernel (or codec) once on prepared data; `run` makes
    the receipt's run from the thread count and the samples (ms)."""

    name: str
    call: Callable[[], Any]
    run: Callable[[int, list[float]], dict[str, Any]]


@dataclass(frozen=True)
class Stats:
    median_ms: float
    mad_ms: float
    cv: float
    mild_outliers: int
    severe_outliers: int


def criterion_stats(ms: Sequence[float]) -> Stats:
    x = np.asarray(ms, dtype=np.float64)
    median = float(np.median(x))
    q1, q3 = np.percentile(x, [25, 75])
    iqr = q3 - q1
    beyond_mild = (x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)
    severe = (x < q1 - 3 * iqr) | (x > q3 + 3 * iqr)
    return Stats(
        median_ms=median,
        mad_ms=float(MAD_TO_SD * np.median(np.abs(x - median))),
        cv=float(x.std(ddof=1) / x.mean()) if x.size > 1 else 0.0,
        mild_outliers=int(np.sum(beyond_mild & ~severe)),
        severe_outliers=int(np.sum(severe)),
    )


def run_kernel_bench(workload: KernelWorkload, step: Step | None = None) -> dict[str, Any]:
    """Measure every case at every thread count and return the kernels receipt (validated)."""
    step = step or (lambda _: None)
    counters = KernelCounters()
    runs = []
    threads_before = kernels.threads()
    try:
        for case in _cases(workload):
            for threads in workload.threads:
                kernels.set_threads(threads)
                step(f"{case.name} t={threads}")
                runs.append(case.run(threads, _measure(case, workload, counters)))
    finally:
        kernels.set_threads(threads_before)
    doc = {
        **receipt_head("kernels", workload.threads, counters.ids()),
        "workload": {
            "repetitions": workload.samples,
            "warmup": workload.warmup,
            "seed": workload.seed,
        },
        **counters.receipt_fields(),
        "runs": runs,
    }
    rc.validate_receipt(doc, "the kernels receipt")
    return doc


def case_count(workload: KernelWorkload) -> int:
    """How many runs (and progress steps) the workload makes."""
    per_shape = len(workload.formats) * len(workload.batches)
    cases = len(workload.shapes) * per_shape + 2 * len(workload.codecs)
    return cases * len(workload.threads)


def _cases(workload: KernelWorkload) -> Iterator[Case]:
    """The cases one at a time, so that only one case's weights are in memory."""
    rng = np.random.default_rng(workload.seed)
    bitlinear = kernels.get("bitlinear")
    for rows, cols in workload.shapes:
        shape = (rows, cols)
        weights = _weights(rng, shape)
        for fmt in workload.formats:
            codes, scales = formats.unpack_ternary(fmt, formats.quantize(fmt, weights), shape)
            prepared = bitlinear.prepare(codes, scales)
            for batch in workload.batches:
                x = rng.standard_normal((batch, cols)).astype(np.float32)
                kind = "gemv" if batch == 1 else f"gemm{batch}"
                name = f"{kind} {fmt} {rows}x{cols}"
                yield Case(
                    name,
                    partial(bitlinear, x, prepared),
                    partial(_kernel_run, name, bitlinear.id, (batch, *shape)),
                )
    if workload.codecs:
        shape = workload.codec_shape
        weights = _weights(rng, shape)
        for fmt in workload.codecs:
            data = formats.quantize(fmt, weights)
            for direction, call in (
                ("quantize", partial(formats.quantize, fmt, weights)),
                ("dequantize", partial(formats.dequantize, fmt, data, shape)),
            ):
                name = f"{direction} {fmt} {shape[0]}x{shape[1]}"
                yield Case(name, call, partial(_codec_run, name, fmt, direction, shape))


def _weights(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Random ternary weights scaled as a model's (1 / sqrt(in)), float32."""
    return rng.integers(-1, 2, shape).astype(np.float32) / np.float32(np.sqrt(shape[1]))


def _kernel_run(
    name: str, kernel_id: str, shape: tuple[int, ...], threads: int, ms: list[float]
) -> dict[str, Any]:
    return rc.kernel_run(name, threads, kernel_id, shape, int(np.prod(shape)), ms)


def _codec_run(
    name: str, fmt: str, direction: str, shape: tuple[int, ...], threads: int, ms: list[float]
) -> dict[str, Any]:
    return rc.codec_run(name, threads, fmt, direction, shape, ms)


def _measure(case: Case, workload: KernelWorkload, counters: KernelCounters) -> list[float]:
    """ms of each timed call, after the untimed warm-up calls."""
    for _ in range(workload.warmup):
        case.call()
    ms = []
    with kernels.profile() as prof:
        for _ in range(workload.samples):
            start = time.perf_counter_ns()
            case.call()
            ms.append((time.perf_counter_ns() - start) / 1e6)
    counters.add(prof.stats())
    return ms


def print_kernel_summary(doc: dict[str, Any], console: Console | None = None) -> None:
    """The Criterion-style statistics of each run of a kernels receipt."""
    console = console or Console()
    kernel_ids = ", ".join(k["id"] for k in doc["kernels"])
    title = f"{doc['host']['cpu_model']}: {kernel_ids}"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("threads", justify="right", no_wrap=True)
    table.add_column("case", no_wrap=True)
    table.add_column("by", no_wrap=True)
    for column in ("median", "MAD", "CV", "mild", "severe", "Melem/s"):
        table.add_column(column, justify="right", no_wrap=True)
    for run in doc["runs"]:
        s = criterion_stats(run["samples"]["ms"])
        table.add_row(
            str(run["threads"]),
            run["name"],
            run.get("kernel_id", "pybitnet.formats"),
            _duration(s.median_ms),
            _duration(s.mad_ms),
            f"{s.cv:.1%}",
            str(s.mild_outliers),
            str(s.severe_outliers),
            f"{run['elements'] / s.median_ms / 1e3:,.0f}",
        )
    console.print(table)
    console.print(
        f"{doc['workload']['repetitions']} samples of one call each after "
        f"{doc['workload']['warmup']} warm-up calls. MAD: scaled to estimate the sd. Outliers "
        "(mild, severe): beyond 1.5 and 3 IQR of the quartiles. Melem/s: from the median. "
        "by: the registry's kernel, or pybitnet.formats (numpy, one thread) for the codecs."
    )


def _duration(ms: float) -> str:
    return f"{ms * 1e3:.1f} µs" if ms < 1 else f"{ms:.3f} ms"
