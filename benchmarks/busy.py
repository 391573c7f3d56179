"""Decode on a busy machine: pybitnet and llama.cpp on the same TQ2_0 file, taking turns, with
and without competing CPU hogs, in one run; prints each engine's tok/s, with hogs / without, and
pybitnet / llama.cpp in each condition.

    .venv/bin/pybitnet make-model --preset 2b --arch bitnet --type TQ2_0 -o /tmp/2b-tq2.gguf
    .venv/bin/python benchmarks/busy.py /tmp/2b-tq2.gguf --peer /work/peer-venv/bin/python
        [--threads 2] [--hogs 2 (default: the core count)] [--rounds 3] [--decode 64]
        [--max-seconds 30] [--omp-passive] [--json busy.json]

A round is a phase without hogs, then one with them, each running the engines one after the
other (the order rotates every round, so each runs first in turn): decode is --decode greedy
steps of one token after a 16-token prompt (decode.py's tg workload, its function for pybitnet),
on --threads threads. The second phase runs --hogs Python busy loops (gate_power.py's CPU hog,
one process each), started before the phase and stopped after it; each also stops itself after
gate_power's HOG_SECONDS, even if this script is killed. A llama.cpp decode stops after
--max-seconds (its figure: the steps done over their time), since a starved one can take
minutes. The load average printed is the 1-minute one at the end of each run (it lags: it rises
through the phase with hogs). "Without hogs" is not idle on a shared machine: others' work stays.

Why the engines differ: ggml (llama.cpp, bitnet.cpp) makes every thread meet at a barrier after
each op of the graph (hundreds a token), so no op starts before every thread, a descheduled one
too, has finished the last, and the threads that wait spin (ggml's own barrier, or OpenMP's,
which spins before it sleeps), holding a core the late one could use. pybitnet's pool
(csrc/threadpool.h) hands out tasks as threads come for them, its caller runs every task a
descheduled worker has not claimed instead of waiting for it, and idle workers sleep after a
short spin. --omp-passive adds a third engine, llama.cpp with OMP_WAIT_POLICY=passive (its
OpenMP threads then sleep at barriers instead of spinning; the llama-cpp-python built as
benchmarks/README.md says uses OpenMP): how much of its loss the spinning is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import peers  # benchmarks/peers.py
from decode import DECODE_PROMPT, GREEDY, load_engine, timed_decode, write_report
from gate_power import CPU_HOG, start_hog

from pybitnet import kernels
from pybitnet.engine import Engine

# the llama.cpp runs: as built, and (--omp-passive) told to sleep at OpenMP barriers, not spin
PEER_ENVIRONMENTS = {"llama.cpp": {}, "llama.cpp, OMP passive": {"OMP_WAIT_POLICY": "passive"}}
PHASES = {False: "without hogs", True: "with hogs"}
SETTLE_S = 2.0  # lets the hogs start spinning before the phase's first run


def decode_pybitnet(engine: Engine, rng: np.random.Generator, steps: int) -> float:
    prompt = rng.integers(0, engine.config.vocab_size, (1, DECODE_PROMPT)).tolist()
    return timed_decode(engine, prompt, steps, GREEDY)[0]


def decode_llama_cpp(args: argparse.Namespace, env: dict[str, str]) -> tuple[float, int]:
    """(tok/s, steps done before --max-seconds) of one llama.cpp decode run."""
    peer = peers.bench_llama_cpp(
        args.peer, args.model, args.threads, 1, (), args.decode, args.max_seconds, env
    )
    if not peer:
        return float("nan"), 0
    return peer[f"tg{args.decode}_tok_s"], peer[f"tg{args.decode}_steps"][0]


def run_phase(args, engine: Engine, rng, hogs: bool, order: list[str]) -> list[dict]:
    """One run of each engine in `order`, beside --hogs CPU hogs if `hogs`."""
    loaders = [start_hog(CPU_HOG) for _ in range(args.hogs)] if hogs else []
    try:
        time.sleep(SETTLE_S if hogs else 0)
        runs = []
        for name in order:
            if name == "pybitnet":
                tok_s, steps = decode_pybitnet(engine, rng, args.decode), args.decode
            else:
                tok_s, steps = decode_llama_cpp(args, PEER_ENVIRONMENTS[name])
            load = os.getloadavg()[0]
            runs.append(
                {"engine": name, "hogs": hogs, "tok_s": tok_s, "steps": steps}
                | {"load_average": load}
            )
            print(
                f"  {PHASES[hogs]:<13} {name:<22} {tok_s:7.2f} tok/s, {steps:3d} steps "
                f"(load {load:.2f})",
                flush=True,
            )
        return runs
    finally:
        for hog in loaders:
            hog.kill()
            hog.wait()


def summarize(runs: list[dict], engines: list[str]) -> dict[str, float]:
    """Median tok/s of each engine in each phase, with hogs / without, and pybitnet / each peer."""
    median = {
        (name, hogs): statistics.median(
            r["tok_s"] for r in runs if r["engine"] == name and r["hogs"] == hogs
        )
        for name in engines
        for hogs in (False, True)
    }
    summary = {}
    for name in engines:
        for hogs in (False, True):
            summary[f"{name} tok/s, {PHASES[hogs]}"] = median[name, hogs]
        summary[f"{name} with hogs / without"] = median[name, True] / median[name, False]
    for name in engines[1:]:
        for hogs in (False, True):
            summary[f"pybitnet / {name}, {PHASES[hogs]}"] = (
                median["pybitnet", hogs] / median[name, hogs]
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path, help="a TQ2_0 file of arch bitnet")
    parser.add_argument("--peer", metavar="PYTHON", required=True, help="has llama-cpp-python")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode", type=int, default=64, help="decode steps a run")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="of a llama.cpp decode")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="also run llama.cpp with OMP_WAIT_POLICY=passive (its threads sleep at barriers)",
    )
    parser.add_argument("--json", type=Path, default=Path("busy.json"))
    args = parser.parse_args()
    engines = ["pybitnet", *list(PEER_ENVIRONMENTS)[: 2 if args.omp_passive else 1]]
    if not peers.runs_on("llama.cpp", args.model):
        parser.error(f"{args.model}: llama.cpp reads TQ2_0 files of arch bitnet only")
    kernels.set_threads(args.threads)
    engine = load_engine(args.model)
    rng = np.random.default_rng(0)
    decode_pybitnet(engine, rng, 8)  # warm-up: the first pass pages the weights in
    runs = []
    for index in range(args.rounds):
        turn = index % len(engines)
        order = engines[turn:] + engines[:turn]  # each engine first in turn
        print(f"round {index + 1}/{args.rounds}", flush=True)
        for hogs in (False, True):
            runs += run_phase(args, engine, rng, hogs, order)
    summary = summarize(runs, engines)
    print()
    for key, value in summary.items():
        print(f"{key:<48} {value:8.2f}")
    settings = {k: v for k, v in vars(args).items() if k not in ("model", "json", "peer")}
    write_report(
        args.json,
        host=kernels.describe(),
        model=str(args.model),
        settings=settings,
        summary=summary,
        runs=runs,
    )


if __name__ == "__main__":
    main()
