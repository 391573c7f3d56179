"""The receipt reader fuzzed (issue 15): a short run of scripts/fuzz_receipts.py, in a process
of its own so that its peak RSS bounds what any one case allocated. Every mutated receipt
(tests/helpers/receipt_fuzz.py) must end in a verdict or a one-line error, in bounded time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_receipts.py"
SEED, CASES = 15, 100
LONGEST = 100_000  # the longest hostile value here (the script's default is 3 million)
SECONDS = 10  # per case, on a loaded 2-core CI machine; the slowest takes ~0.3 s alone
PEAK_RSS_MB = 500  # the whole process, imports included (~75 MB): far under the 1 GB allowed


def test_every_mutated_receipt_is_read_cleanly_quickly_and_in_bounded_memory():
    args = ["--cases", CASES, "--seed", SEED, "--longest", LONGEST, "--json"]
    done = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["faults"] == [], figures["faults"]
    assert done.returncode == 0
    assert figures["slowest_seconds"] < SECONDS, figures["slowest_case"]
    assert figures["peak_rss_mb"] < PEAK_RSS_MB
    # the mutations reach each clean outcome: refused by the reader, by the schema, by a rule
    outcomes = figures["outcomes"]
    assert outcomes["verify refused, loader refused"] and outcomes["verify FAIL, loader refused"]
    assert outcomes.get("verify FAIL, loader loaded") or outcomes.get("verify PASS, loader loaded")
