"""End-to-end speed of the engine: load, prefill (pp128, pp512), decode (tg128) and batched
decode (x8) on 2B-shaped models at each thread count, beside their bounds, and the peers
(llama.cpp, bitnet.cpp) on the same files in the same run (ratios).

    .venv/bin/pybitnet make-model --preset 2b --arch bitnet-b1.58 --type I2_S -o /tmp/2b-i2s.gguf
    .venv/bin/pybitnet make-model --preset 2b --arch bitnet --type TQ2_0 -o /tmp/2b-tq2.gguf
    .venv/bin/python benchmarks/decode.py /tmp/2b-i2s.gguf /tmp/2b-tq2.gguf [--threads 1,2]
        [--output-head q8] [--reps 3] [--json decode.json] [--peer /work/peer-venv/bin/python]
        [--bitnet-cpp /work/peers/BitNet/build]

Workloads (llama-bench's), each run by the functions `pybitnet bench` times (bench/runner.py's
prefill_once and decode_once, on the token loop of decode.py): prefill is a prompt of random ids
in forward passes of decode.PREFILL_CHUNK tokens, then its first token sampled; decode is 128
greedy steps of one token after a 16-token prompt; batched decode is 8 sequences (16-token
prompts) decoded together for 64 steps, one forward pass for all 8 a step, as the server's
scheduler does. Figures are medians of --reps runs; each model and
thread count runs in a process of its own (for its peak RSS), its load time measured there.
Columns:
- bound: decode tok/s if every weight byte of a token (the engine's own layout) were read once
  at the read bandwidth measured here with the same threads; tg % is tg128 / bound. The probe
  (benchmarks/kernels.py's read_bandwidth: numpy maxima over slices, one a thread) is a floor
  of the bandwidth, not its peak: the weight kernels, which prefetch and read huge pages,
  stream faster (tg % over 100%: on this machine ~35 GB/s probed by the old native summing
  loop, ~41-48 GB/s reached by the 2-thread decode);
- x8: the 8 sequences' tokens per second together; x8/x1 = x8 / tg128, the most the server's
  batching can gain (one sequence's decode is bound by memory bandwidth, 8 sequences' by
  compute);
- py %: decode time outside the kernels (Python, numpy glue), from kernels.profile(); the
  profile's own bookkeeping counts in it;
- RSS / limit: peak resident set of the process against file size + the most KV cache held
  at once + an output head requantized at load (--output-head) + 15%;
- spread: (max - min) / median of the tg128 runs, and the load average: the machine's 2 cores are
  shared, so figures taken while others run are noisy; compare ratios taken side by side.
The peers (benchmarks/peers.py; how to build them: benchmarks/README.md) run right after
pybitnet on the same file and threads, with the same workloads (not x8), and the table prints
pybitnet / peer: --peer PYTHON runs llama.cpp (llama-cpp-python in that interpreter) on every
model whose linear weights are TQ2_0, --bitnet-cpp BUILD_DIR runs bitnet.cpp's llama-bench on
every I2_S one; both read only the arch `bitnet` (make the I2_S file with bitnet.cpp's
llama-quantize, as benchmarks/README.md shows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import peers  # benchmarks/peers.py

from kernels import read_bandwidth  # benchmarks/kernels.py
from pybitnet import kernels
from pybitnet.bench.runner import decode_once, prefill_once
from pybitnet.engine import Engine
from pybitnet.gguf import open_gguf
from pybitnet.model import ModelConfig, Weights
from pybitnet.sampling import SamplerConfig

PROMPTS = (128, 512)
DECODE = 128
DECODE_PROMPT = 16
BATCH, BATCH_STEPS = 8, 64  # batched decode: 8 sequences, one forward pass a step (a server's)
GREEDY = SamplerConfig(temperature=0.0, seed=0)


def bytes_per_token(engine: Engine) -> int:
    """Weights a decode step reads: every linear layer once (as the engine holds them)."""
    layers = [
        layer for blk in engine.blocks for layer in vars(blk).values() if hasattr(layer, "prepared")
    ]
    return sum(w.nbytes for layer in [*layers, engine.output] for w in layer.prepared)


def load_engine(path: Path, output_head: str | None = None) -> Engine:
    f = open_gguf(path)
    weights = Weights.from_gguf(f, ModelConfig.from_metadata(f.metadata, str(path)))
    return Engine(weights, output_head=output_head)


def bench_engine(path: Path, threads: int, output_head: str | None, reps: int) -> dict:
    """Every workload through the token loop (decode.py), as `pybitnet bench` runs it."""
    kernels.set_threads(threads)
    start = time.perf_counter()
    engine = load_engine(path, output_head)
    result = {"load_s": time.perf_counter() - start, "output_head": output_head or "stored"}
    rng = np.random.default_rng(0)
    vocab = engine.config.vocab_size

    def prompts(batch: int, n: int) -> list[list[int]]:
        return rng.integers(0, vocab, (batch, n)).tolist()

    for n in PROMPTS:
        samples = [n / prefill_once(engine, prompts(1, n), GREEDY)[0] * 1e3 for _ in range(reps)]
        result[f"pp{n}_tok_s"] = statistics.median(samples)
        result[f"pp{n}_samples"] = samples
    decoded = [timed_decode(engine, prompts(1, DECODE_PROMPT), DECODE, GREEDY) for _ in range(reps)]
    samples = [tok_s for tok_s, _, _ in decoded]
    batched = [
        timed_decode(engine, prompts(BATCH, DECODE_PROMPT), BATCH_STEPS, GREEDY)
        for _ in range(reps)
    ]
    batch_samples = [tok_s for tok_s, _, _ in batched]
    result.update(
        tg128_tok_s=statistics.median(samples),
        tg128_samples=samples,
        # shares of the run with the median speed, per kernel id
        decode_profile=decoded[samples.index(statistics.median_low(samples))][1],
        batch_tok_s=statistics.median(batch_samples),
        batch_samples=batch_samples,
        batch_profile=batched[batch_samples.index(statistics.median_low(batch_samples))][1],
        bytes_per_token=bytes_per_token(engine),
        # the most KV cache held at once: the longest prompt's, or the batch's 8
        kv_cache_bytes=max(
            engine.new_cache(max(PROMPTS)).nbytes,
            BATCH * engine.new_cache(DECODE_PROMPT + BATCH_STEPS + 1).nbytes,
        ),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # a head requantized at load is a copy beside the file's (still mapped: the embedding)
        head_copy_bytes=sum(w.nbytes for w in engine.output.prepared) if output_head else 0,
    )
    result["python_overhead_share"] = result["decode_profile"]["outside kernels"]
    return result


def timed_decode(
    engine: Engine, prompts: list[list[int]], steps: int, sampling: SamplerConfig
) -> tuple[float, dict, list[list[int]]]:
    """(tok/s of the decode steps, all sequences together; kernel time shares of the whole run;
    the ids generated) of one tg repetition of `pybitnet bench` (runner.decode_once): the prompts
    prefilled together, then `steps` decode steps of one token per sequence."""
    with kernels.profile() as prof:
        start = time.perf_counter()
        ids, _, gaps, *_ = decode_once(engine, prompts, steps, sampling)
        seconds = time.perf_counter() - start
    return len(prompts) * steps / (sum(gaps) / 1e3), time_shares(prof, seconds), ids


def time_shares(prof: kernels.Profile, seconds: float) -> dict[str, float]:
    """Each kernel id's share of `seconds`, and the share outside the kernels."""
    shares = {s["id"]: s["seconds"] / seconds for s in prof.stats()}
    return shares | {"outside kernels": 1 - sum(shares.values())}


def spread(samples: list[float]) -> float:
    return (max(samples) - min(samples)) / statistics.median(samples)


def run_one(path: Path, threads: int, args: argparse.Namespace) -> dict:
    """bench_engine in a child process of its own, so its peak RSS is this model's alone."""
    command = [sys.executable, __file__, str(path), "--one", "--threads", str(threads)]
    command += ["--reps", str(args.reps)]
    if args.output_head:
        command += ["--output-head", args.output_head]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def print_rows(rows: list[dict]) -> None:
    header = (
        f"{'model':<22} {'type':<5} {'thr':>3} {'load s':>6} {'pp128':>7} {'pp512':>7} "
        f"{'tg128':>6} {'bound':>6} {'tg %':>5} {'x8':>6} {'x8/x1':>5} {'py %':>5} "
        f"{'RSS MB':>7} {'limit':>6} {'spread':>6} {'load avg':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        limit = (r["file_bytes"] + r["kv_cache_bytes"] + r.get("head_copy_bytes", 0)) * 1.15 / 1e6
        print(
            f"{Path(r['model']).name[:22]:<22} {r['type'][:5]:<5} {r['threads']:>3} "
            f"{r['load_s']:>6.2f} {r['pp128_tok_s']:>7.1f} {r['pp512_tok_s']:>7.1f} "
            f"{r['tg128_tok_s']:>6.1f} {r['decode_bound_tok_s']:>6.1f} "
            f"{r['tg128_tok_s'] / r['decode_bound_tok_s']:>5.0%} {r['batch_tok_s']:>6.1f} "
            f"{r['batch_tok_s'] / r['tg128_tok_s']:>5.2f} {r['python_overhead_share']:>5.1%} "
            f"{r['peak_rss_bytes'] / 1e6:>7.0f} {limit:>6.0f} "
            f"{spread(r['tg128_samples']):>6.0%} {r['load_average']:>8.2f}"
        )
        for name, peer in r.get("peers", {}).items():
            print(
                f"{f'  {name}, same file':<22} {'':<5} {r['threads']:>3} {'':>6} "
                f"{peer['pp128_tok_s']:>7.1f} {peer['pp512_tok_s']:>7.1f} "
                f"{peer['tg128_tok_s']:>6.1f} {'':>6} {'':>5} {'':>6} {'':>5} {'':>5} {'':>7} "
                f"{'':>6} "
                f"{spread(peer['tg128_samples']):>6.0%}"
            )
            ratios = {w: r[f"{w}_tok_s"] / peer[f"{w}_tok_s"] for w in ("pp128", "pp512", "tg128")}
            print(
                f"{f'  pybitnet / {name}':<22} {'':<5} {r['threads']:>3} {'':>6} "
                f"{ratios['pp128']:>6.2f}x {ratios['pp512']:>6.2f}x {ratios['tg128']:>5.2f}x"
            )


def print_profiles(rows: list[dict]) -> None:
    for title, key, per_step in (
        ("decode time per token by kernel id (share of tg128 wall time, median run)", "decode", 1),
        (
            f"batched decode time per step of {BATCH} tokens by kernel id (median run)",
            "batch",
            BATCH,
        ),
    ):
        print(f"\n{title}:")
        for r in rows:
            shares = sorted(r[f"{key}_profile"].items(), key=lambda kv: -kv[1])
            ms = 1e3 * per_step / r[f"{'tg128' if key == 'decode' else key}_tok_s"]
            text = ", ".join(f"{k} {v:.1%}" for k, v in shares if v >= 0.001)
            print(f"  {Path(r['model']).name} {r['threads']} thr ({ms:.1f} ms): {text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--output-head", choices=["q8", "q6_k", "q4_k"], default=None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("decode.json"))
    peers.add_arguments(parser)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one model, one thread count, in a process of its own (for its peak RSS)
        r = bench_engine(args.models[0], int(args.threads), args.output_head, args.reps)
        print(json.dumps(r))
        return
    info = kernels.describe()
    cores = os.cpu_count()
    print(f"{info['cpu']}, tier {info['selected_tier']}, {cores} logical cores", flush=True)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        bandwidth = read_bandwidth(threads)
        for path in args.models:
            r = {"model": str(path), "type": peers.describe(path)[1], "threads": threads}
            r["load_average"] = os.getloadavg()[0]
            r |= run_one(path, threads, args)
            r.update(file_bytes=os.path.getsize(path), read_gb_s=bandwidth)
            r["decode_bound_tok_s"] = bandwidth * 1e9 / r["bytes_per_token"]
            r["peers"] = peers.bench_peers(args, path, threads, PROMPTS, DECODE)
            rows.append(r)
            print(
                f"  done: {path.name}, {threads} threads: tg128 {r['tg128_tok_s']:.1f} tok/s",
                flush=True,
            )
    print()
    print_rows(rows)
    print_profiles(rows)
    workloads = {"prompts": PROMPTS, "decode": DECODE, "decode_prompt": DECODE_PROMPT}
    workloads["batch"] = {"sequences": BATCH, "steps": BATCH_STEPS}
    write_report(args.json, host=info, workloads=workloads, reps=args.reps, results=rows)


def write_report(path: Path, **fields) -> None:
    """The run's JSON: when, then `fields` (the host, the settings, the figures)."""
    report = {"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **fields}
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
