"""Decode speed by output head, side by side in one process: the file's head (F16 on the 2B
shape) against the heads `--output-head` makes at load (q6_k: Q6_K with int8 activations, q8:
int8 rows, q4_k), each beside its bound.

    .venv/bin/pybitnet make-model --preset 2b --arch bitnet-b1.58 --type I2_S -o /tmp/2b-i2s.gguf
    .venv/bin/python benchmarks/output_head.py /tmp/2b-i2s.gguf [--heads stored,q6_k]
        [--threads 2] [--reps 7] [--json benchmarks/results/output-head-2b-xeon.json]

One model load; one Engine per head over the same weights. Rounds alternate the heads (A B A B
...), so a busy machine slows each alike; figures are medians over the rounds, and the load
average is printed with them. Per round and head: tg (decode.py's timed_decode: a 16-token
prompt, then --tokens greedy steps, as `pybitnet bench` runs them) and the output layer alone
(one row through the head's kernel). Columns:
- bytes/tok: weights a decode step reads as the engine holds them; bound: tok/s if those bytes
  were read once at the read bandwidth measured here (a floor of the bandwidth: see decode.py);
- head ms: one row through the output layer; x F16: tg against the first head's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from decode import GREEDY, bytes_per_token, timed_decode  # benchmarks/decode.py

from kernels import read_bandwidth  # benchmarks/kernels.py
from pybitnet import kernels
from pybitnet.engine import Engine
from pybitnet.gguf import open_gguf
from pybitnet.model import ModelConfig, Weights


def head_ms(engine: Engine, x: np.ndarray) -> float:
    start = time.perf_counter()
    engine.output(x)
    return (time.perf_counter() - start) * 1e3


def alternate(engines: dict[str, Engine], threads: int, reps: int, tokens: int) -> tuple:
    """Rounds of every head in turn: (tg tok/s, head ms per head; load averages, GB/s)."""
    config = next(iter(engines.values())).config
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, config.dim)).astype(np.float32)
    tg: dict[str, list[float]] = {h: [] for h in engines}
    head: dict[str, list[float]] = {h: [] for h in engines}
    loadavg, bandwidth = [os.getloadavg()[0]], [read_bandwidth(threads)]
    for _ in range(reps):
        for name, engine in engines.items():
            prompt = rng.integers(0, config.vocab_size, (1, 16)).tolist()
            tg[name].append(timed_decode(engine, prompt, tokens, GREEDY)[0])
            head[name].append(statistics.median(head_ms(engine, x) for _ in range(5)))
        loadavg.append(os.getloadavg()[0])
    bandwidth.append(read_bandwidth(threads))
    return tg, head, loadavg, bandwidth


def print_rows(rows: list[dict]) -> None:
    first = rows[0]["tg_tok_s"]
    print(
        f"{'head':8} {'type':6} {'bytes/tok':>10} {'bound':>7} {'tg tok/s':>9} {'% bound':>8} "
        f"{'x first':>8} {'head ms':>8} {'load s':>7}"
    )
    for r in rows:
        print(f"{r['head']:8} {r['head_type']:6} {r['bytes_per_token'] / 1e9:9.3f}G "
              f"{r['bound_tok_s']:7.1f} {r['tg_tok_s']:9.2f} "
              f"{100 * r['tg_tok_s'] / r['bound_tok_s']:7.0f}% {r['tg_tok_s'] / first:8.2f} "
              f"{r['head_ms']:8.1f} {r['load_s']:7.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--heads", default="stored,q6_k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    kernels.set_threads(args.threads)
    f = open_gguf(args.model)
    weights = Weights.from_gguf(f, ModelConfig.from_metadata(f.metadata, str(args.model)))
    engines, loads = {}, {}
    for head in args.heads.split(","):
        start = time.perf_counter()
        engines[head] = Engine(weights, output_head=None if head == "stored" else head)
        loads[head] = time.perf_counter() - start
    tg, head, loadavg, bandwidth = alternate(engines, args.threads, args.reps, args.tokens)
    gbs = statistics.median(bandwidth)
    rows = []
    for name, engine in engines.items():
        nbytes = bytes_per_token(engine)
        rows.append(
            {
                "head": name,
                "head_type": engine.output_type,
                "load_s": loads[name],
                "bytes_per_token": nbytes,
                "bound_tok_s": gbs * 1e9 / nbytes,
                "tg_tok_s": statistics.median(tg[name]),
                "tg_samples": tg[name],
                "head_ms": statistics.median(head[name]),
                "head_samples_ms": head[name],
            }
        )
    print(
        f"{args.model.name}, {args.threads} threads, {args.reps} alternating rounds, "
        f"read bandwidth {gbs:.1f} GB/s, load average {min(loadavg):.1f}-{max(loadavg):.1f}"
    )
    print_rows(rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "model": str(args.model),
                    "cpu": kernels.describe()["cpu"],
                    "tier": kernels.selected_tier(),
                    "threads": args.threads,
                    "reps": args.reps,
                    "tokens": args.tokens,
                    "read_bandwidth_gb_s": bandwidth,
                    "load_average": loadavg,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
