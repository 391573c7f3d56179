"""Long seeded fuzz runs of the GGUF reader and of the model load path (the suite runs short
ones: tests/gguf/test_gguf_fuzz.py; the cases are tests/gguf/fuzz_cases.py's).

    PYTHONPATH=src python scripts/fuzz_gguf.py --target load --cases 10000 --seed 1

Prints the cases, the outcome counts (ok, and each distinct refusal), the slowest case, the
most a case allocated and the process's peak RSS; exits 1 at the first case that raises
anything but a clean refusal (its file kept as failing.gguf in --keep, or a temporary folder).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gguf"))
from fuzz_cases import run  # noqa: E402  (a test module: found through the path above)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("reader", "load"), default="load")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=15, help="outcomes to list (most common)")
    parser.add_argument("--keep", type=Path, help="folder for the case files (kept)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="fuzz-gguf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        summary = run(args.target, args.cases, args.seed, workdir)
    except AssertionError as exc:
        print(f"FAILED (seed {args.seed}): {exc}; the case is {workdir / 'failing.gguf'}")
        return 1
    wall = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{summary.line()}; seed {args.seed}, {wall:.1f} s wall, peak RSS {peak_rss:.0f} MiB")
    for outcome, count in summary.outcomes.most_common(args.top):
        print(f"{count:7d}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
