"""BitLinear on the base-3 layout (1.6 bits a weight, csrc/tiers.h) against the 2-bit layout,
per shape, scale kind, batch and thread count, beside the read bandwidth that bounds both:

    .venv/bin/python benchmarks/ternary_layout.py [--shapes 2560x2560,6912x2560,2560x6912]
        [--batches 1,2,4,8] [--threads 1,2] [--pairs 150] [--json layout.json]

The same random weights are prepared twice, base3=False and base3=True, as enough copies to
cycle through a working set well past the last-level cache, so that every call reads its
weights from memory as a decoding step does. The two run alternately, call by call (the order
flipping each pair), so a busy machine slows both alike; figures are medians. Scales: "row"
(one a row, as I2_S and HF checkpoints) or "block" (one a 256-block, as TQ1_0 and TQ2_0).
Columns: ms of each layout, its GB/s of weights read and their share of the probed bandwidth
(benchmarks/kernels.py's read_bandwidth, a floor), and base3 / 2-bit: the median of the pairs'
time ratios (below 1: base-3 is faster). ternary.cpp's base3_pays() records the decision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from kernels import read_bandwidth  # benchmarks/kernels.py
from pybitnet import kernels
from pybitnet.kernels.layout import TILE_ROWS, TRIT_RUN


def layout_bytes(rows: int, cols: int, groups: int, base3: bool) -> int:
    """Bytes one call reads: the layout's codes (tiers.h) and the scales."""
    padded = math.ceil(rows / TILE_ROWS) * TILE_ROWS
    codes = math.ceil(cols / TRIT_RUN) * 64 if base3 else math.ceil(cols / 256) * 64
    return padded * codes + padded * groups * 4


def time_pairs(bitlinear, pair, x: np.ndarray, pairs: int) -> tuple[list[float], list[float]]:
    """Seconds per call of the 2-bit and the base-3 copies, alternating (one warm-up pass)."""
    for copies in pair:
        for w in copies:
            bitlinear(x, w)
    seconds: tuple[list[float], list[float]] = ([], [])
    for i in range(pairs):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            copies = pair[side]
            start = time.perf_counter()
            bitlinear(x, copies[i % len(copies)])
            seconds[side].append(time.perf_counter() - start)
    return seconds


def measure(shapes, batches, thread_counts, pairs, working_set, rng):
    bandwidth = {t: read_bandwidth(t) for t in thread_counts}
    bitlinear = kernels.get("bitlinear")
    for rows, cols in shapes:
        codes = rng.integers(-1, 2, (rows, cols)).astype(np.int8)
        for kind, groups in (("row", 1), ("block", cols // 256)):
            scales = rng.uniform(0.5, 1.5, (rows, groups)).astype(np.float32)
            nbytes = [layout_bytes(rows, cols, groups, b) for b in (False, True)]
            copies = max(1, math.ceil(working_set / nbytes[0]))
            pair = [
                [bitlinear.prepare(codes, scales, base3=b) for _ in range(copies)]
                for b in (False, True)
            ]
            for threads in thread_counts:
                kernels.set_threads(threads)
                for n in batches:
                    x = rng.standard_normal((n, cols)).astype(np.float32)
                    two, three = time_pairs(bitlinear, pair, x, max(20, pairs // n))
                    ms = [1e3 * statistics.median(s) for s in (two, three)]
                    yield {
                        "shape": [rows, cols],
                        "scales": kind,
                        "batch": n,
                        "threads": threads,
                        "pairs": len(two),
                        "ms_2bit": ms[0],
                        "ms_base3": ms[1],
                        "gb_per_s_2bit": nbytes[0] / ms[0] / 1e6,
                        "gb_per_s_base3": nbytes[1] / ms[1] / 1e6,
                        "ratio_base3_to_2bit": statistics.median(
                            b / a for a, b in zip(two, three, strict=True)
                        ),
                        "read_bandwidth_gb_per_s": bandwidth[threads],
                    }
            del pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default="2560x2560,6912x2560,2560x6912")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pairs", type=int, default=150, help="pairs of calls at batch 1")
    p.add_argument("--working-set", type=float, default=600e6, help="bytes of 2-bit weights")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    info = kernels.describe()
    load_before = os.getloadavg()
    print(f"{info['cpu']}, tier {info['selected_tier']}, load average {load_before[0]:.2f}")
    header = "{:>10} {:>5} {:>3} {:>3} {:>8} {:>8} {:>14} {:>14} {:>7}".format(
        "shape", "scale", "n", "thr", "ms 2bit", "ms b3", "GB/s 2bit", "GB/s b3", "b3/2bit"
    )
    print(header)
    print("-" * len(header))
    results = []
    rng = np.random.default_rng(0)
    for r in measure(shapes, batches, thread_counts, args.pairs, args.working_set, rng):
        results.append(r)
        bw = r["read_bandwidth_gb_per_s"]
        shares = [f"{r[k]:.1f} ({r[k] / bw:.0%})" for k in ("gb_per_s_2bit", "gb_per_s_base3")]
        print(
            f"{'x'.join(map(str, r['shape'])):>10} {r['scales']:>5} {r['batch']:>3} "
            f"{r['threads']:>3} {r['ms_2bit']:>8.3f} {r['ms_base3']:>8.3f} {shares[0]:>14} "
            f"{shares[1]:>14} {r['ratio_base3_to_2bit']:>7.3f}"
        )
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if args.json:
        doc = {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": info,
            "load_average_before_after": [load_before, load_after],
            "working_set_bytes": args.working_set,
            "results": results,
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
