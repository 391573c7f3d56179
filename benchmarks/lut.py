"""Lookup-table BitLinear (bitlinear_tl_avx512) against the multiply-add one (bitlinear_avx512),
side by side on the same weights and activations.

    .venv/bin/python benchmarks/lut.py [--shapes 2560x2560,13824x2560,2560x6912]
        [--batch 1,8,32,128] [--threads 1,2] [--repeats 9] [--json lut.json]

Shapes are out x in (13824x2560: the 2B model's ffn gate and up stacked). Weights with one scale
per row (I2_S, the 2B model), cycled through copies that together exceed the last-level cache,
so batch 1 reads them from memory as decoding does. Each repeat times one call of each kernel
back to back, so both see the same load from the machine's other users. Figures: median GMAC/s
(weights x activation rows per second) with the min..max over repeats, and the median of the
per-repeat ratio lut / multiply-add (above 1: the lookup table is faster).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import numpy as np

from pybitnet import _native, kernels

WORKING_SET = 128e6  # bytes of each kernel's weights to cycle through: 4x a 32 MB L3


def measure(shape: tuple[int, int], n: int, threads: int, repeats: int, rng) -> dict:
    rows, cols = shape
    kernels.set_threads(threads)
    codes = rng.integers(-1, 2, shape).astype(np.int8)
    scales = np.full((rows, 1), 0.5, np.float32)
    madd, lut = kernels.get("bitlinear", "avx512"), kernels.get("bitlinear_tl", "avx512")
    first = madd.prepare(codes, scales)
    copies = max(1, round(WORKING_SET / first.nbytes))
    weights = [(first, _native.LutMatrix(first))]
    for _ in range(copies - 1):
        w = madd.prepare(codes, scales)
        weights.append((w, _native.LutMatrix(w)))
    x = rng.standard_normal((n, cols)).astype(np.float32)
    np.testing.assert_array_equal(madd(x, weights[0][0]), lut(x, weights[0][1]))
    seconds: dict[str, list[float]] = {"madd": [], "lut": []}
    for i in range(repeats + 1):
        w_madd, w_lut = weights[i % copies]
        for name, kernel, w in (("madd", madd, w_madd), ("lut", lut, w_lut)):
            start = time.perf_counter()
            kernel(x, w)
            if i > 0:  # the first round warms up
                seconds[name].append(time.perf_counter() - start)
    macs = rows * cols * n / 1e9
    result = {"shape": list(shape), "n": n, "threads": threads, "copies": copies}
    for name, s in seconds.items():
        result[name] = {
            "seconds": s,
            "gmacs_median": macs / statistics.median(s),
            "gmacs_min": macs / max(s),
            "gmacs_max": macs / min(s),
        }
    ratios = [a / b for a, b in zip(seconds["madd"], seconds["lut"], strict=True)]
    result["ratio_median"] = statistics.median(ratios)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2560x2560,13824x2560,2560x6912")
    parser.add_argument("--batch", default="1,8,32,128")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rng = np.random.default_rng(0)
    results = []
    print(
        f"{'shape':>11} {'n':>4} {'thr':>3}  {'madd GMAC/s (min..max)':>24}  "
        f"{'lut GMAC/s (min..max)':>24}  lut/madd"
    )
    for threads in (int(t) for t in args.threads.split(",")):
        for shape in shapes:
            for n in (int(b) for b in args.batch.split(",")):
                r = measure(shape, n, threads, args.repeats, rng)
                results.append(r)
                cells = [
                    f"{r[k]['gmacs_median']:6.0f} "
                    f"({r[k]['gmacs_min']:4.0f}..{r[k]['gmacs_max']:4.0f})"
                    for k in ("madd", "lut")
                ]
                print(
                    f"{shape[0]:>5}x{shape[1]:<5} {n:>4} {threads:>3}  {cells[0]:>24}  "
                    f"{cells[1]:>24}  {r['ratio_median']:8.2f}"
                )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": kernels.describe(),
                    "results": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
