"""Prefill and decode speed against thread count, each figure beside its bound, for pybitnet on
the given GGUF files and for the peers on the files they read (llama.cpp: TQ2_0, bitnet.cpp:
I2_S; see benchmarks/peers.py), in one run.

    .venv/bin/python benchmarks/scaling.py /tmp/2b-i2s.gguf /tmp/2b-tq2.gguf
        [--threads 1,2,3 (default: 1, 2, 4, ... and the core count)] [--reps 3] [--prompt 128]
        [--decode 64] [--peer /work/peer-venv/bin/python] [--bitnet-cpp BUILD_DIR]
        [--json scaling.json]

Workloads as decode.py's (the same functions): pp<P>, a prompt of P random ids prefilled then
its first token sampled; tg<N>, N greedy steps of one token after a 16-token prompt; medians of
--reps runs. For each thread count the read bandwidth is probed first (benchmarks/kernels.py's
read_bandwidth with that many threads), and each decode figure stands beside its bound: the
bytes a token reads (pybitnet: its own layout, decode.bytes_per_token; a peer: the file's block
tensors and output head) over that bandwidth. Columns: x1 is the speed over the same engine's
at the first thread count (perfect scaling: the thread ratio for prefill, which is bound by
compute; decode is bound by memory, so it flattens once the threads saturate the bandwidth).
On a shared machine the figures move with the others' work; each row records the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import peers  # benchmarks/peers.py
from decode import (
    DECODE_PROMPT,
    GREEDY,
    bytes_per_token,
    load_engine,
    timed_decode,
    write_report,
)

from kernels import read_bandwidth  # benchmarks/kernels.py
from pybitnet import kernels
from pybitnet.bench.runner import prefill_once
from pybitnet.engine import Engine


def bench_pybitnet(engine: Engine, threads: int, reps: int, prompt: int, steps: int) -> dict:
    """pp<prompt> and tg<steps> of one loaded engine on `threads` threads."""
    kernels.set_threads(threads)
    rng = np.random.default_rng(0)

    def ids(n: int) -> list[list[int]]:
        return rng.integers(0, engine.config.vocab_size, (1, n)).tolist()

    pp = [prompt / prefill_once(engine, ids(prompt), GREEDY)[0] * 1e3 for _ in range(reps)]
    tg = [timed_decode(engine, ids(DECODE_PROMPT), steps, GREEDY)[0] for _ in range(reps)]
    return {
        f"pp{prompt}_tok_s": statistics.median(pp),
        f"pp{prompt}_samples": pp,
        f"tg{steps}_tok_s": statistics.median(tg),
        f"tg{steps}_samples": tg,
    }


def thread_counts(text: str | None) -> list[int]:
    """The --threads list, by default 1, 2, 4, ... and the core count (e.g. 1,2,4,8,12)."""
    if text is not None:
        return [int(t) for t in text.split(",")]
    cores = os.cpu_count() or 1
    doubling = [2**k for k in range(cores.bit_length()) if 2**k < cores]
    return [*doubling, cores]


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per model, engine and thread count; each model loaded once, its peers run right
    after pybitnet at each thread count."""
    bandwidths = {t: read_bandwidth(t) for t in args.threads}
    rows = []
    for path in args.models:
        engine = load_engine(path)
        per_token = {"pybitnet": bytes_per_token(engine)}
        for threads in args.threads:
            ours = bench_pybitnet(engine, threads, args.reps, args.prompt, args.decode)
            runs = {"pybitnet": ours} | peers.bench_peers(
                args, path, threads, (args.prompt,), args.decode
            )
            for name, figures in runs.items():
                nbytes = per_token.get(name) or peers.file_bytes_per_token(path)
                rows.append(
                    {"model": str(path), "engine": name, "threads": threads, **figures}
                    | {"read_gb_s": bandwidths[threads], "bytes_per_token": nbytes}
                    | {"decode_bound_tok_s": bandwidths[threads] * 1e9 / nbytes}
                    | {"load_average": os.getloadavg()[0]}
                )
            print(f"  done: {path.name}, {threads} threads", flush=True)
        del engine  # before the next model's loads
    return rows


def print_table(rows: list[dict], prompt: int, steps: int) -> None:
    pp, tg = f"pp{prompt}", f"tg{steps}"
    header = (
        f"{'model':<22} {'engine':<10} {'thr':>3} {pp:>7} {'x1':>5} {tg:>6} {'x1':>5} "
        f"{'bound':>6} {'tg %':>5} {'GB/s':>5} {'load avg':>8}"
    )
    print(header)
    print("-" * len(header))
    first: dict[tuple[str, str], dict] = {}
    for r in rows:
        base = first.setdefault((r["model"], r["engine"]), r)
        print(
            f"{Path(r['model']).name[:22]:<22} {r['engine']:<10} {r['threads']:>3} "
            f"{r[f'{pp}_tok_s']:>7.1f} {r[f'{pp}_tok_s'] / base[f'{pp}_tok_s']:>5.2f} "
            f"{r[f'{tg}_tok_s']:>6.1f} {r[f'{tg}_tok_s'] / base[f'{tg}_tok_s']:>5.2f} "
            f"{r['decode_bound_tok_s']:>6.1f} {r[f'{tg}_tok_s'] / r['decode_bound_tok_s']:>5.0%} "
            f"{r['read_gb_s']:>5.1f} {r['load_average']:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=thread_counts, default=thread_counts(None))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=128, help="prefill length")
    parser.add_argument("--decode", type=int, default=64, help="decode steps")
    parser.add_argument("--json", type=Path, default=Path("scaling.json"))
    peers.add_arguments(parser)
    args = parser.parse_args()
    info = kernels.describe()
    print(f"{info['cpu']}, tier {info['selected_tier']}, {os.cpu_count()} logical cores")
    rows = measure(args)
    print()
    print_table(rows, args.prompt, args.decode)
    workloads = {"prompt": args.prompt, "decode": args.decode, "decode_prompt": DECODE_PROMPT}
    write_report(args.json, host=info, workloads=workloads, reps=args.reps, results=rows)


if __name__ == "__main__":
    main()
