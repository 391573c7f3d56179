"""Fuzz the receipt reader: `verify` and the gate's loader on mutated real receipts (issue 15).

    python scripts/fuzz_receipts.py --cases 10000 --seed 1

The cases are tests/helpers/receipt_fuzz.py's (tests/bench/test_receipt_fuzz.py runs a short
run of this script). Prints the outcomes, the faults (any exception other than a one-line
PyBitnetError), the slowest case and this process's peak RSS; exits 1 when there is a fault.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test helpers, as pytest's pythonpath has them

from helpers.receipt_fuzz import fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--longest", type=int, default=3_000_000, help="longest hostile value")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        summary = fuzz(args.seed, args.cases, Path(workdir), args.longest)
    figures = {
        "cases": args.cases,
        "seed": args.seed,
        "longest": args.longest,
        "outcomes": {f"verify {v}, loader {lo}": n for (v, lo), n in summary.outcomes.items()},
        "faults": summary.faults,
        "slowest_seconds": round(summary.slowest[0], 3),
        "slowest_case": summary.slowest[1],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 1 if summary.faults else 0


if __name__ == "__main__":
    sys.exit(main())
