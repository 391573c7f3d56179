"""The independent engines the benchmarks run beside pybitnet, on the same file and threads
(how to build each: benchmarks/README.md):
- llama.cpp: llama-cpp-python in an interpreter of its own (--peer PYTHON), which runs
  peer_llama_cpp.py; it reads TQ2_0 (not I2_S) files of an arch it knows (`bitnet`);
- bitnet.cpp: its llama-bench (--bitnet-cpp BUILD_DIR, the folder holding bin/llama-bench); it
  reads I2_S files of arch `bitnet` (the build here predates `bitnet-b1.58`).
Each returns the figures under decode.py's names (pp<P>_tok_s, tg<N>_tok_s and their
*_samples), or None after printing why the run failed, so one failed peer does not end a run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from pybitnet.gguf import open_gguf

LLAMA_CPP_SCRIPT = Path(__file__).with_name("peer_llama_cpp.py")
PEER_TIMEOUT_S = 1800  # no peer run outlives this, however starved of CPU


def bench_llama_cpp(
    python: str,
    path: Path,
    threads: int,
    reps: int,
    prompts: tuple[int, ...] = (128, 512),
    decode: int = 128,
    max_seconds: float | None = None,
    env: dict[str, str] | None = None,
) -> dict | None:
    """llama.cpp's pp<P> for each prompt length and tg<decode> (each decode run stopped after
    max_seconds, if given) on `path`, in a process of its own (`env` added to its environment)."""
    command = [python, str(LLAMA_CPP_SCRIPT), str(path), "--threads", str(threads)]
    command += ["--reps", str(reps), "--prompts", ",".join(map(str, prompts))]
    command += ["--decode", str(decode)]
    if max_seconds is not None:
        command += ["--max-seconds", str(max_seconds)]
    return _json_of(command, f"llama.cpp on {path.name}", json.loads, env)


def bench_bitnet_cpp(
    build: Path,
    path: Path,
    threads: int,
    reps: int,
    prompts: tuple[int, ...] = (128, 512),
    decode: int = 128,
) -> dict | None:
    """bitnet.cpp's llama-bench (after its own warm-up run) on `path`: pp<P> and tg<decode>."""
    command = [str(build / "bin" / "llama-bench"), "-m", str(path), "-t", str(threads)]
    command += ["-r", str(reps), "-p", ",".join(map(str, prompts)), "-n", str(decode)]
    command += ["-o", "json"]

    def figures(out: str) -> dict:
        result = {}
        for test in json.loads(out):
            name = f"pp{test['n_prompt']}" if test["n_gen"] == 0 else f"tg{test['n_gen']}"
            result[f"{name}_tok_s"] = statistics.median(test["samples_ts"])
            result[f"{name}_samples"] = test["samples_ts"]
        return result | {"threads": threads, "llama_bench": command[0]}

    return _json_of(command, f"bitnet.cpp on {path.name}", figures)


def _json_of(command: list[str], what: str, parse, env: dict[str, str] | None = None):
    """`parse` of the command's output (all of it when it is a JSON array, else its last line),
    or None after printing why the command failed."""
    environ = os.environ | (env or {})
    try:
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, env=environ
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"{what} failed: {exc}", file=sys.stderr, flush=True)
        return None
    if run.returncode != 0:
        print(f"{what} failed: {run.stderr.strip()[-300:]}", file=sys.stderr, flush=True)
        return None
    whole = run.stdout.strip()
    return parse(whole if whole.startswith("[") else whole.splitlines()[-1])


def describe(path: Path) -> tuple[str, str]:
    """(arch, type of the first block's attn_q weights: I2_S, TQ2_0, ...) of a GGUF file."""
    f = open_gguf(path)
    return f.architecture or "", f.tensors["blk.0.attn_q.weight"].wtype.name


def file_bytes_per_token(path: Path) -> int:
    """Bytes of the file a decode step reads, as a ggml engine holds them: every block's tensors
    and the output head (token_embd when the head is tied), the embedding's one row aside."""
    tensors = open_gguf(path).tensors
    head = tensors.get("output.weight") or tensors["token_embd.weight"]
    return head.nbytes + sum(t.nbytes for name, t in tensors.items() if name.startswith("blk."))


def runs_on(peer: str, path: Path) -> bool:
    """Whether the peer reads this file: llama.cpp TQ2_0 and bitnet.cpp I2_S, of arch bitnet."""
    arch, wtype = describe(path)
    return arch == "bitnet" and wtype == {"llama.cpp": "TQ2_0", "bitnet.cpp": "I2_S"}[peer]


def add_arguments(parser) -> None:
    """--peer and --bitnet-cpp, as every benchmark that runs the peers takes them."""
    parser.add_argument("--peer", metavar="PYTHON", help="a Python with llama-cpp-python")
    parser.add_argument(
        "--bitnet-cpp", metavar="BUILD_DIR", type=Path, help="a bitnet.cpp build (bin/llama-bench)"
    )


def bench_peers(
    args, path: Path, threads: int, prompts: tuple[int, ...] = (128, 512), decode: int = 128
) -> dict[str, dict]:
    """The figures of each peer given in `args` (add_arguments) that reads `path`, by name;
    a peer whose run failed is left out (its error printed)."""
    runs = {}
    if args.peer and runs_on("llama.cpp", path):
        runs["llama.cpp"] = bench_llama_cpp(args.peer, path, threads, args.reps, prompts, decode)
    if args.bitnet_cpp and runs_on("bitnet.cpp", path):
        build = args.bitnet_cpp
        runs["bitnet.cpp"] = bench_bitnet_cpp(build, path, threads, args.reps, prompts, decode)
    return {name: run for name, run in runs.items() if run}
