"""BitLinear kernel microbenchmark: every tier against the numpy tier, beside the memory
read bandwidth it is bound by. Dense formats (F16, Q8_0, ...) time the float linear kernels and
INT8 the int8 output head (weights quantized from F16), e.g. the 2B model's output layer:

    .venv/bin/python benchmarks/kernels.py [--shapes 2560x6912,6912x2560] [--threads 1,2]
        [--batch 1,8,64] [--formats I2_S,TQ2_0] [--json kernels.json]
    .venv/bin/python benchmarks/kernels.py --shapes 128256x2560 --threads 2 --batch 1,8 \
        --formats F16,INT8

Shapes are out x in (numpy order: 2560x6912 is the 2B model's ffn_down). The weights cycle
through copies that together exceed the last-level cache several times, so decode (batch 1)
reads them from memory as a real forward pass does. Figures: median wall time per call,
Gelem/s (weights x activation rows per second), and GB/s of packed weights read, as a share
of the read bandwidth measured here with the same threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pybitnet import formats, kernels
from pybitnet.kernels.registry import DENSE_FORMATS

WORKING_SET = 256e6  # bytes of weights to cycle through: 8x a 32 MB L3


def read_bandwidth(threads: int) -> float:
    """Median GB/s of reading a 512 MB buffer on `threads` threads: each thread takes the
    maximum of its slice as 64-bit words (numpy's reductions release the GIL, and the maximum
    is vectorised, so the reads, not the arithmetic, set the pace)."""
    data = np.ones(512 * 2**20, np.uint8).view(np.uint64)
    slices = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:

        def read_all() -> None:
            list(pool.map(np.maximum.reduce, slices))

        read_all()
        seconds = []
        for _ in range(9):
            start = time.perf_counter()
            read_all()
            seconds.append(time.perf_counter() - start)
    return data.nbytes / statistics.median(seconds) / 1e9


def random_ternary(rng: np.random.Generator, fmt: str, rows: int, cols: int):
    """(codes, scales) of random ternary weights stored in `fmt` and read back."""
    w = rng.integers(-1, 2, (rows, cols)).astype(np.float32) * np.float32(0.02)
    wtype = formats.weight_type(fmt)
    return formats.unpack_ternary(wtype, formats.quantize(wtype, w), (rows, cols))


def random_weights(rng: np.random.Generator, fmt: str, rows: int, cols: int):
    """(op, prepare() arguments, bytes a call reads) of random weights stored in `fmt`."""
    if fmt in DENSE_FORMATS or fmt == "INT8":
        w = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(0.02)
        data = formats.quantize("F16" if fmt == "INT8" else fmt, w)
        if fmt == "INT8":  # rows of 256-column blocks, a scale and a sum per row
            row_bytes = math.ceil(cols / 256) * 256 + 8
            return "linear_int8", ("F16", data, (rows, cols)), rows * row_bytes
        return f"linear_{fmt.lower()}", (data, (rows, cols)), data.nbytes
    codes, scales = random_ternary(rng, fmt, rows, cols)
    return "bitlinear", (codes, scales), rows * math.ceil(cols / 256) * 64 + scales.nbytes


def time_kernel(kernel, weights: list, x: np.ndarray, reps: int) -> list[float]:
    """Seconds per call, cycling through the weight copies (one warm-up pass first)."""
    for w in weights:
        kernel(x, w)
    seconds = []
    for i in range(reps):
        start = time.perf_counter()
        kernel(x, weights[i % len(weights)])
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(shapes, formats_, thread_counts, batches, reps, rng):
    """One result dict per (format, shape, tier, threads, batch), as it is measured."""
    bandwidth = {t: read_bandwidth(t) for t in thread_counts}
    tiers = [t for t in kernels.supported_tiers() if t != "scalar"]  # scalar: a portability floor
    for fmt in formats_:
        for rows, cols in shapes:
            op, source, nbytes = random_weights(rng, fmt, rows, cols)
            for tier in tiers:
                kernel = kernels.get(op, tier)
                copies = 1 if tier == "numpy" else max(1, math.ceil(WORKING_SET / nbytes))
                weights = [kernel.prepare(*source) for _ in range(copies)]
                # numpy runs on its own BLAS threads: one row, beside the most threads' bandwidth
                for threads in thread_counts if tier != "numpy" else [max(thread_counts)]:
                    kernels.set_threads(threads)
                    for batch in batches:
                        x = rng.standard_normal((batch, cols)).astype(np.float32)
                        n = 5 if tier == "numpy" else max(10, reps // batch)
                        ms = 1e3 * statistics.median(time_kernel(kernel, weights, x, n))
                        yield {
                            "kernel": kernel.id,
                            "format": fmt,
                            "shape": [rows, cols],
                            "batch": batch,
                            "threads": None if tier == "numpy" else threads,
                            "reps": n,
                            "median_ms": ms,
                            "gelem_per_s": rows * cols * batch / ms / 1e6,
                            "weight_gb_per_s": nbytes / ms / 1e6,
                            "read_bandwidth_gb_per_s": bandwidth[threads],
                        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="2560x6912,6912x2560")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", default="1,8,64")
    p.add_argument("--formats", default="I2_S,TQ2_0")
    p.add_argument("--reps", type=int, default=200, help="calls per native measurement")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batch.split(",")]

    info = kernels.describe()
    print(f"{info['cpu']}, tiers {info['supported_tiers']}")
    columns = ("kernel", "format", "shape", "batch", "thr", "ms", "Gelem/s", "GB/s", "read bw")
    header = "{:<18} {:<6} {:>10} {:>5} {:>3} {:>9} {:>8} {:>6} {:>12}".format(*columns)
    print(header)
    print("-" * len(header))
    results = []
    with kernels.profile() as prof:
        for r in measure(
            shapes,
            args.formats.split(","),
            thread_counts,
            batches,
            args.reps,
            np.random.default_rng(0),
        ):
            results.append(r)
            bw, gbs = r["read_bandwidth_gb_per_s"], r["weight_gb_per_s"]
            print(
                f"{r['kernel']:<18} {r['format']:<6} {'x'.join(map(str, r['shape'])):>10} "
                f"{r['batch']:>5} {r['threads'] or '-':>3} {r['median_ms']:>9.3f} "
                f"{r['gelem_per_s']:>8.1f} {gbs:>6.1f} {f'{gbs / bw:.0%} of {bw:.0f}':>12}"
            )
    if args.json:
        doc = {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": info,
            "working_set_bytes": WORKING_SET,
            "results": results,
            "kernels": prof.stats(),
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
