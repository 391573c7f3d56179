"""The CI gate's two rates, measured: how often it FAILs the same code under a competing load
(false alarms), and how often it FAILs each of several real regressions (detection).

    .venv/bin/python benchmarks/gate_power.py [--runs 20] [--out DIR]

Each run is benchmarks/ci_bench.sh, whole (six interleaved pairs of benches, verify, gate), with
this checkout on both sides: the baseline side runs it as it is, the current side with one of
- `same, loaded`: nothing changed, while a CPU hog (a Python busy loop) and a memory-bandwidth
  hog (numpy copying 64 MB arrays) run beside it, started before the run and stopped after it
  (each also stops itself after HOG_SECONDS);
- `avx2`, `scalar`, `numpy`: a slower kernel tier (PYBITNET_KERNELS);
- `numpy rope`: the numpy kernel of one op, rotary embeddings, in place of the native one (this
  script, run with --numpy-op rope, is the pybitnet command that does it), about 1.2x slower.
The conditions take turns, run after run, so that the machine's other work falls on all alike.
It prints a line per run, then per condition the FAIL rate and the slowdown of the metrics the
condition slows most (the median over runs of the gate's change: baseline / current for a
throughput, current / baseline for a time or size). Exit status 0, whatever the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOG_SECONDS = 300  # a hog outlives no run by more than this, even if this script is killed
CPU_HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"
MEMORY_HOG = (
    "import time, numpy as np\na = np.ones(1 << 23); b = np.empty_like(a)\n"
    "end = time.monotonic() + {s}\nwhile time.monotonic() < end: np.copyto(b, a); np.copyto(a, b)\n"
)
CONDITIONS = {  # name: (environment of the current side, extra arguments, hogs on)
    "same, loaded": ({}, [], True),
    "avx2": ({"PYBITNET_KERNELS": "avx2"}, [], False),
    "scalar": ({"PYBITNET_KERNELS": "scalar"}, [], False),
    "numpy": ({"PYBITNET_KERNELS": "numpy"}, [], False),
    "numpy rope": ({}, ["--numpy-op", "rope"], False),
}


def main() -> int:
    if sys.argv[1:2] == ["--numpy-op"]:  # the current side of `numpy rope`
        return run_pybitnet_with_numpy_op(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per condition")
    parser.add_argument("--out", type=Path, help="keep each run's receipts here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gate_power-"))
    results: dict[str, list[tuple[int, dict[str, float]]]] = defaultdict(list)
    for index in range(args.runs):
        for name, (env, extra, hogs) in CONDITIONS.items():
            run_dir = out / f"{name.replace(' ', '-').replace(',', '')}-{index + 1:02d}"
            start, load = time.monotonic(), os.getloadavg()[0]
            code = run_gate(run_dir, env, extra, hogs)
            slowdowns = gate_slowdowns(run_dir) if code in (0, 1, 3) else {}
            results[name].append((code, slowdowns))
            worst = max(slowdowns.items(), key=lambda kv: kv[1], default=("-", float("nan")))
            print(
                f"run {index + 1:2d} {name:13s} exit {code} "
                f"({time.monotonic() - start:4.0f} s, load {load:.1f}): "
                f"worst {worst[0]} {worst[1]:.2f}x",
                flush=True,
            )
    print_summary(results)
    return 0


def run_gate(run_dir: Path, env: dict[str, str], extra: list[str], hogs: bool) -> int:
    """benchmarks/ci_bench.sh once, this checkout on both sides, the current one changed."""
    python = sys.executable
    current = [python, __file__, *extra] if extra else [python, "-m", "pybitnet.cli"]
    current = ["env", *(f"{k}={v}" for k, v in env.items()), *current]
    environ = os.environ | {
        "PYTHON": python,
        "PYBITNET_BASE": f"{python} -m pybitnet.cli",
        "PYBITNET": " ".join(current),
    }
    loaders = [start_hog(CPU_HOG), start_hog(MEMORY_HOG)] if hogs else []
    try:
        done = subprocess.run(
            [ROOT / "benchmarks" / "ci_bench.sh", run_dir],
            env=environ,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        for hog in loaders:
            hog.kill()
            hog.wait()
    if done.returncode not in (0, 1, 3):
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return done.returncode


def start_hog(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code.format(s=HOG_SECONDS)])


def gate_slowdowns(run_dir: Path) -> dict[str, float]:
    """Per gated metric ('kind/run/metric'), the gate's slowdown factor over the run's pairs."""
    from pybitnet.bench.gate import run_gate as gate
    from pybitnet.bench.gate_stats import REPORTED_ONLY

    slowdowns = {}
    for kind in ("generation", "kernels"):
        pairs = sorted(run_dir.glob(f"{kind}-base-*.json"))
        receipts = [
            p for base in pairs for p in (base, Path(str(base).replace("-base-", "-current-")))
        ]
        for c in gate(receipts).comparisons:
            if c.metric not in REPORTED_ONLY:
                factor = 1 / (1 + c.change) if c.metric.endswith("_per_second") else 1 + c.change
                slowdowns[f"{kind}/{c.run}/{c.metric}"] = factor
    return slowdowns


def print_summary(results: dict[str, list[tuple[int, dict[str, float]]]]) -> None:
    print("\ncondition      FAIL rate   exit codes   slowdown (median over runs) of the 3 slowest")
    for name, runs in results.items():
        codes = [code for code, _ in runs]
        by_metric = defaultdict(list)
        for _, slowdowns in runs:
            for metric, factor in slowdowns.items():
                by_metric[metric].append(factor)
        medians = {m: statistics.median(f) for m, f in by_metric.items()}
        top = sorted(medians.items(), key=lambda kv: -kv[1])[:3]
        rate = f"{codes.count(1)}/{len(codes)}"
        print(
            f"{name:13s}  {rate:>9s}   {json.dumps(dict(sorted(_count(codes).items())))}   "
            + ", ".join(f"{m} {f:.2f}x" for m, f in top)
        )


def _count(codes: list[int]) -> dict[int, int]:
    return {code: codes.count(code) for code in set(codes)}


def run_pybitnet_with_numpy_op(op: str, argv: list[str]) -> int:
    """Run the pybitnet command with the numpy kernel of `op` in place of the native one."""
    from pybitnet import kernels
    from pybitnet.cli import main as pybitnet

    native_get = kernels.get
    kernels.get = lambda name, tier=None: native_get(name, "numpy" if name == op else tier)
    sys.argv = ["pybitnet", *argv]
    return pybitnet()


if __name__ == "__main__":
    sys.exit(main())
