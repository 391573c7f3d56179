"""The KV cache's element types at long contexts: f32, f16 (the default) and q8_0 on a 2B-shaped
model, each beside the bytes a decoded token reads and the bound those bytes set.

    .venv/bin/pybitnet make-model --preset 2b --arch bitnet-b1.58 --type I2_S -o /tmp/2b-i2s.gguf
    .venv/bin/python benchmarks/kv_cache.py /tmp/2b-i2s.gguf [--threads 2] [--reps 2]
        [--json benchmarks/results/kv-cache-2b.json]

One engine per type, interleaved step by step: every forward pass of a workload runs for f32,
then f16, then q8_0 before the next, so a change of the machine's load falls on all three
alike (each workload's time is the sum of its passes; figures are medians over reps):
- pp2048: a prompt of 2048 random ids (the same for the three) prefilled in passes of
  PREFILL_CHUNK tokens;
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
from pybitnet.engine.forward import PREFILL_CHUNK
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


class Timed:
    """One engine per type, each pass timed and added to its type's total for the workload."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self.engines = engines
        self.seconds = dict.fromkeys(engines, 0.0)

    def forward(self, kv: str, items: list[tuple[list[int], EngineCache]]) -> list[int]:
        """The pass of type kv over items; the greedy next token of each sequence."""
        start = time.perf_counter()
        logits = self.engines[kv].forward_batch(items, rows=[1] * len(items))
        self.seconds[kv] += time.perf_counter() - start
        return [int(row[-1].argmax()) for row in logits]


def one_rep(engines: dict[str, Engine], rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """tok/s of each workload for each type, their passes interleaved."""
    vocab = next(iter(engines.values())).config.vocab_size
    caches = {kv: e.new_cache(CONTEXT + DECODE) for kv, e in engines.items()}
    prompt = rng.integers(0, vocab, CONTEXT).tolist()
    prefill, tokens = Timed(engines), {}
    for i in range(0, CONTEXT, PREFILL_CHUNK):
        for kv in engines:
            tokens[kv] = prefill.forward(kv, [(prompt[i : i + PREFILL_CHUNK], caches[kv])])
    batches = {
        kv: [e.new_cache(CONTEXT + BATCH_STEPS) for _ in range(BATCH)] for kv, e in engines.items()
    }
    for kv, batch in batches.items():
        for target in batch:
            copy_prefix(caches[kv], target, CONTEXT)
    decode = Timed(engines)
    for _ in range(DECODE):
        for kv in engines:
            tokens[kv] = decode.forward(kv, [(tokens[kv], caches[kv])])
    batched, starts = Timed(engines), rng.integers(0, vocab, BATCH).tolist()
    tokens = dict.fromkeys(engines, starts)
    for _ in range(BATCH_STEPS):
        for kv in engines:
            tokens[kv] = batched.forward(
                kv, [([t], c) for t, c in zip(tokens[kv], batches[kv], strict=True)]
            )
    return {
        kv: {
            "pp2048": CONTEXT / prefill.seconds[kv],
            "tg128": DECODE / decode.seconds[kv],
            "x8@2048": BATCH * BATCH_STEPS / batched.seconds[kv],
        }
        for kv in engines
    }


def measure(path: Path, threads: int, reps: int) -> dict:
    kernels.set_threads(threads)
    f = open_gguf(path)
    weights = Weights.from_gguf(f, ModelConfig.from_metadata(f.metadata, str(path)))
    engines = {kv: Engine(weights, kv_cache=kv) for kv in TYPES}
    rng = np.random.default_rng(0)
    samples: dict[str, dict[str, list[float]]] = {kv: {} for kv in TYPES}
    loads = []
    for rep in range(reps):
        loads.append(os.getloadavg()[0])
        for kv, figures in one_rep(engines, rng).items():
            for name, value in figures.items():
                samples[kv].setdefault(name, []).append(value)
        print(f"rep {rep + 1}/{reps}: {samples}", flush=True)
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
        "load_average_at_each_rep": loads,
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"{report['model']}, {report['threads']} threads, medians of {report['reps']} reps, "
        f"read bandwidth {report['read_gb_s']:.1f} GB/s, weights "
        f"{report['weight_bytes_per_token'] / 1e6:.0f} MB/token, load average "
        f"{min(report['load_average_at_each_rep']):.1f}-{max(report['load_average_at_each_rep']):.1f}"
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
