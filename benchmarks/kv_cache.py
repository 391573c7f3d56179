"""The KV cache's element types at long contexts: f32, f16 (the default) and q8_0 on a 2B-shaped
model, each beside the bytes a decoded token reads and the bound those bytes set.

    .venv/bin/pybitnet make-model --preset 2b --arch bitnet-b1.58 --type I2_S -o /tmp/2b-i2s.gguf
    .venv/bin/python benchmarks/kv_cache.py /tmp/2b-i2s.gguf [--threads 2] [--reps 2]
        [--json benchmarks/results/kv-cache-2b.json]

Workloads, one engine per type, run in turns (a rep runs f32, f16, q8_0 one after the other,
so a change of the machine's load falls on all three alike; figures are medians over reps):
- pp2048: a prompt of 2048 random ids prefilled (Engine.forward: chunks of PREFILL_CHUNK);
- tg128: then 128 greedy steps of one token on that cache (positions 2048 .. 2175);
- x8@2048: 8 sequences decoded together for 16 steps (one forward_batch a step, as the server's
  scheduler runs them), each cache holding 2048 positions: copies of the pp2048 cache (what
  a cache holds does not change how long reading it takes), each sequence fed its own tokens.
Columns:
- KV/tok: bytes of keys and values one cached position takes (every layer);
- read/tok: bytes a decoded token reads: the weights (as the engine holds them; shared by the
  batch's 8 tokens at x8) and the keys and values of every position it attends to;
- bound: tok/s if those bytes were read once at the read bandwidth probed here with the same
  threads (benchmarks/kernels.py read_bandwidth: a floor of the bandwidth, so a figure may pass
  it); % is the measured speed over the bound.
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
from decode import bytes_per_token  # benchmarks/decode.py

from kernels import read_bandwidth  # benchmarks/kernels.py
from pybitnet import kernels
from pybitnet.engine import Engine, EngineCache
from pybitnet.gguf import open_gguf
from pybitnet.kernels.layout import KEY_BLOCK, KV_CACHE_TYPES
from pybitnet.model import ModelConfig, Weights

TYPES = ("f32", "f16", "q8_0")
CONTEXT, DECODE = 2048, 128
BATCH, BATCH_STEPS = 8, 16


def copy_prefix(source: EngineCache, target: EngineCache, length: int) -> None:
    """target holds source's first `length` positions (a multiple of KEY_BLOCK)."""
    target.k[:, :, : length // KEY_BLOCK] = source.k[:, :, : length // KEY_BLOCK]
    target.v[:, :, :length] = source.v[:, :, :length]
    target.length = length


def decode_steps(engine: Engine, caches: list[EngineCache], tokens: list[int], steps: int) -> float:
    """Seconds of `steps` greedy decode steps of the sequences together, from `tokens`."""
    start = time.perf_counter()
    for _ in range(steps):
        logits = engine.forward_batch([([t], c) for t, c in zip(tokens, caches, strict=True)])
        tokens = [int(row[-1].argmax()) for row in logits]
    return time.perf_counter() - start


def one_rep(engine: Engine, rng: np.random.Generator) -> dict[str, float]:
    vocab = engine.config.vocab_size
    cache = engine.new_cache(CONTEXT + DECODE)
    start = time.perf_counter()
    logits = engine.forward(rng.integers(0, vocab, CONTEXT).tolist(), cache, last_only=True)
    pp = CONTEXT / (time.perf_counter() - start)
    batch = [engine.new_cache(CONTEXT + BATCH_STEPS) for _ in range(BATCH)]
    for target in batch:
        copy_prefix(cache, target, CONTEXT)
    tg = DECODE / decode_steps(engine, [cache], [int(logits[-1].argmax())], DECODE)
    tokens = rng.integers(0, vocab, BATCH).tolist()
    x8 = BATCH * BATCH_STEPS / decode_steps(engine, batch, tokens, BATCH_STEPS)
    return {"pp2048": pp, "tg128": tg, "x8@2048": x8}


def measure(path: Path, threads: int, reps: int) -> dict:
    kernels.set_threads(threads)
    f = open_gguf(path)
    weights = Weights.from_gguf(f, ModelConfig.from_metadata(f.metadata, str(path)))
    engines = {kv: Engine(weights, kv_cache=kv) for kv in TYPES}
    rng = np.random.default_rng(0)
    samples: dict[str, dict[str, list[float]]] = {kv: {} for kv in TYPES}
    loads = []
    for rep in range(reps):
        for kv in TYPES:
            loads.append(os.getloadavg()[0])
            for name, value in one_rep(engines[kv], rng).items():
                samples[kv].setdefault(name, []).append(value)
            print(f"rep {rep + 1}/{reps} {kv}: {samples[kv]}", flush=True)
    gb_s = read_bandwidth(threads)
    weight_bytes = bytes_per_token(engines["f32"])
    results = {}
    for kv, runs in samples.items():
        per_position = engines[kv].kv_bytes_per_token()
        read = {  # bytes a decoded token reads: weights, and every position it attends to
            "tg128": weight_bytes + per_position * (CONTEXT + DECODE // 2),
            "x8@2048": weight_bytes / BATCH + per_position * (CONTEXT + BATCH_STEPS // 2),
        }
        results[kv] = {
            "kv_bytes_per_position": per_position,
            "read_bytes_per_token": read,
            "bound_tok_s": {name: gb_s * 1e9 / b for name, b in read.items()},
            "tok_s": {name: statistics.median(values) for name, values in runs.items()},
            "samples": runs,
        }
    return {
        "model": str(path),
        "threads": threads,
        "reps": reps,
        "read_gb_s": gb_s,
        "weight_bytes_per_token": weight_bytes,
        "load_average_at_each_run": loads,
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"{report['model']}, {report['threads']} threads, medians of {report['reps']} reps, "
        f"read bandwidth {report['read_gb_s']:.1f} GB/s, weights "
        f"{report['weight_bytes_per_token'] / 1e6:.0f} MB/token, load average "
        f"{min(report['load_average_at_each_run']):.1f}-{max(report['load_average_at_each_run']):.1f}"
    )
    header = f"{'KV':<5} {'KV/tok KB':>9} {'pp2048':>7} "
    header += " ".join(
        f"{w:>8} {'read/tok MB':>11} {'bound':>6} {'%':>4}" for w in ("tg128", "x8@2048")
    )
    print(header)
    for kv, r in report["results"].items():
        line = f"{kv:<5} {r['kv_bytes_per_position'] / 1e3:>9.1f} {r['tok_s']['pp2048']:>7.1f} "
        line += " ".join(
            f"{r['tok_s'][w]:>8.2f} {r['read_bytes_per_token'][w] / 1e6:>11.0f} "
            f"{r['bound_tok_s'][w]:>6.1f} {r['tok_s'][w] / r['bound_tok_s'][w]:>4.0%}"
            for w in ("tg128", "x8@2048")
        )
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("kv-cache.json"))
    args = parser.parse_args()
    assert set(TYPES) == set(KV_CACHE_TYPES), "every cache type is measured"
    report = measure(args.model, args.threads, args.reps)
    report["created_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["host"] = kernels.describe()
    print_table(report)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
