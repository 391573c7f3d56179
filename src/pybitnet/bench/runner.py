"""`pybitnet bench`: llama-bench-style generation benchmarks, written as receipts (docs/SPEC.md §6).

Runs, for each thread count, like llama-bench rows, on the one token loop (decode.py):
- ``pp<P>`` for each prompt length P: prefill P prompt tokens (ms, tok/s) in forward passes of
  decode.PREFILL_CHUNK tokens, as generation does, then sample the first token (TTFT).
- ``tg<N>``: prefill the workload's prompt (the first prompt length) and sample the first token
  (TTFT), then N decode steps, each one forward pass of one token and a greedy sample. Its ms is
  the sum of the N inter-token gaps, so tok/s = N / ms = 1000 / mean gap is llama-bench's tg<N>
  figure (N forward passes of one token), free of the prompt. The outputs are the first N
  tokens: what generating N tokens from the prompt returns, so `verify --replay` can redo them.
With --draft-tokens K (speculative decoding, one sequence) a step may give several tokens, each
an equal share of its time (the gaps still sum to ms); the run records per repetition the drafts
fed, those accepted and the decode steps (tokens = steps + accepted). The ids are plain decoding's.
With a batch of B (-b), each run has B prompts (drawn one after the other from the seeded
generator), run together: each prefill step is one pass over a chunk of every prompt, each
decode step one pass of B tokens, one per sequence. n_tokens and tok/s count the tokens of all B
sequences (aggregate throughput); TTFT and the inter-token gaps are those of the steps, which every
sequence shares. Every run records each repetition's peak RSS. The bench never stops early (as
llama-bench). workload.output_head is the model's (``load(output_head=...)``).

Prompts are random ids (never end-of-generation ids), BOS first when the model adds one, drawn
from a generator seeded with the workload's seed (recorded in workload.prompt_ids). The kernel
list comes from the registry's counters over the measured repetitions (warmups excluded), and
compute_path from the tiers those kernels ran on.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

import pybitnet
from pybitnet import decode, kernels
from pybitnet.bench import receipt as rc
from pybitnet.bench.peak_rss import PeakRss
from pybitnet.bench.provenance import kernel_tier, model_info, receipt_head
from pybitnet.errors import BenchError
from pybitnet.generate import Model
from pybitnet.kernels.registry import NATIVE_TIERS
from pybitnet.sampling import SamplerConfig
from pybitnet.speculative import MAX_DRAFT_TOKENS

# Called before each repetition with a description of it ("pp128 t=2 rep 3/5").
Step = Callable[[str], None]


@dataclass(frozen=True)
class Workload:
    """What `pybitnet bench` runs: the options of llama-bench that it shares."""

    prompt_lengths: tuple[int, ...] = (128,)  # -p; the first is the tg run's prompt
    generate: int = 128  # -n; 0: no tg run
    repetitions: int = 5  # -r
    warmup: int = 1  # untimed repetitions before each run
    threads: tuple[int, ...] = (1,)  # -t
    batch: int = 1  # -b
    seed: int = 0
    draft_tokens: int = 0  # --draft-tokens; 0: plain decoding

    def __post_init__(self) -> None:
        check_at_least(
            ("the number of prompt lengths (-p)", len(self.prompt_lengths), 1),
            *(("a prompt length (-p)", p, 1) for p in self.prompt_lengths),
            ("tokens to generate (-n)", self.generate, 0),
            ("repetitions (-r)", self.repetitions, 1),
            ("warmup", self.warmup, 0),
            ("the number of thread counts (-t)", len(self.threads), 1),
            *(("a thread count (-t)", t, 1) for t in self.threads),
            ("batch (-b)", self.batch, 1),
            ("seed", self.seed, 0),
        )
        if not 0 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise BenchError(
                f"--draft-tokens must be from 0 to {MAX_DRAFT_TOKENS}, got {self.draft_tokens}"
            )
        if self.draft_tokens and self.batch > 1:
            # A batch shares each step's time, but its sequences draw different token counts.
            raise BenchError(f"--draft-tokens measures one sequence (-b 1), got -b {self.batch}")

    @property
    def steps(self) -> int:
        """Repetitions in all, warmups included: the calls of run_bench's step callback."""
        runs = len(self.prompt_lengths) + (self.generate > 0)
        return len(self.threads) * runs * (self.warmup + self.repetitions)

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(temperature=0.0, seed=self.seed)

    def receipt_workload(self, prompts: list[list[int]], model: Model) -> dict[str, Any]:
        counts = (len(prompts[0]), self.generate, self.batch, self.repetitions, self.warmup)
        return rc.generation_workload(
            *counts,
            self.sampler,
            prompts,
            self.draft_tokens,
            model.output_head,
            kv_cache=model.engine.kv_cache,
        )


def run_bench(model: Model, workload: Workload, step: Step | None = None) -> dict[str, Any]:
    """Measure the workload on the model and return the receipt (validated)."""
    needed = max(*workload.prompt_lengths, workload.prompt_lengths[0] + workload.generate)
    if needed > model.n_ctx:
        raise BenchError(
            f"{model.path}: the workload needs a context of {needed} tokens, the model holds "
            f"{model.n_ctx}"
        )
    step = step or (lambda _: None)
    counters = KernelCounters()
    runs, token_ids = [], []
    batch, seed = workload.batch, workload.seed
    tg_prompts = bench_prompts(model, workload.prompt_lengths[0], seed, batch)
    threads_before = kernels.threads()
    try:
        for threads in workload.threads:
            kernels.set_threads(threads)
            for length in workload.prompt_lengths:
                prompts = bench_prompts(model, length, seed, batch)
                samples = _repeat(
                    f"pp{length} t={threads}",
                    workload,
                    step,
                    counters,
                    lambda prompts=prompts: prefill_once(model.engine, prompts, workload.sampler),
                )
                ms, ttft, rss = zip(*samples, strict=True)
                runs.append(rc.prefill_run(f"pp{length}", threads, batch * length, ms, rss, ttft))
            if workload.generate:
                samples = _repeat(
                    f"tg{workload.generate} t={threads}",
                    workload,
                    step,
                    counters,
                    lambda: decode_once(
                        model.engine,
                        tg_prompts,
                        workload.generate,
                        workload.sampler,
                        workload.draft_tokens,
                    ),
                )
                ids, ttft, gaps, rss, drafts = zip(*samples, strict=True)
                ms = [float(np.sum(g)) for g in gaps]
                name, n = f"tg{workload.generate}", batch * workload.generate
                drafting = (
                    rc.drafting(*zip(*drafts, strict=True)) if workload.draft_tokens else None
                )
                runs.append(rc.decode_run(name, threads, n, ms, ttft, gaps, rss, drafting))
                token_ids += ids
    finally:
        kernels.set_threads(threads_before)
    doc = {
        **receipt_head("generation", workload.threads, counters.ids()),
        "model": model_info(model),
        "workload": workload.receipt_workload(tg_prompts, model),
        **counters.receipt_fields(),
        "runs": runs,
        "outputs": rc.outputs(token_ids[0] if token_ids else [[]] * batch),
        "deterministic": all(ids == token_ids[0] for ids in token_ids),
    }
    rc.validate_receipt(doc, f"the receipt of {model.path}")
    return doc


def check_at_least(*checks: tuple[str, int, int]) -> None:
    """Raise BenchError for the first (name, value, minimum) whose value is below its minimum."""
    for name, value, minimum in checks:
        if value < minimum:
            raise BenchError(f"{name} must be >= {minimum}, got {value}")


def bench_prompts(model: Model, n_tokens: int, seed: int, batch: int = 1) -> list[list[int]]:
    """`batch` prompts of n_tokens ids: BOS when the model adds one, then uniform random ids
    from the tokenizer's vocabulary that are not end-of-generation ids (seeded)."""
    tok = model.tokenizer
    vocab = np.setdiff1d(np.arange(tok.vocab_size), list(tok.eog_ids))
    ids = np.random.default_rng(seed).choice(vocab, (batch, n_tokens))
    if tok.add_bos and tok.bos_id is not None:
        ids[:, 0] = tok.bos_id
    return ids.tolist()


def _repeat(
    label: str, workload: Workload, step: Step, counters: KernelCounters, once: Callable[[], Any]
) -> list[Any]:
    """Warm-up repetitions, then the measured ones (their kernel calls counted)."""
    total = workload.warmup + workload.repetitions
    results = []
    for i in range(total):
        warm = i < workload.warmup
        step(f"{label} " + ("warmup" if warm else f"rep {i - workload.warmup + 1}") + f"/{total}")
        if warm:
            once()
        else:
            with kernels.profile() as prof:
                results.append(once())
            counters.add(prof.stats())
    return results


def prefill_once(
    engine: decode.ForwardPass, prompts: list[list[int]], sampler: SamplerConfig
) -> tuple[float, float, float]:
    """(prefill ms, time to first token ms, peak RSS MB) of one repetition: the prompts
    prefilled together (decode.prefill), then each one's first token sampled."""
    batch = _generations(engine, prompts, 1, sampler)
    with PeakRss() as rss:
        start = time.perf_counter_ns()
        logits = decode.prefill(engine, batch)
        prefilled = time.perf_counter_ns()
        for gen, row in zip(batch, logits, strict=True):
            gen.advance(row)
        first = time.perf_counter_ns()
    return (prefilled - start) / 1e6, (first - start) / 1e6, rss.mb


def decode_once(
    engine: decode.ForwardPass,
    prompts: list[list[int]],
    n: int,
    sampler: SamplerConfig,
    draft_tokens: int = 0,
) -> tuple[list[list[int]], float, list[float], float, tuple[int, int, int]]:
    """One tg repetition, as the bench and `verify --replay` run it: (the first n ids generated
    for each prompt, time to first token ms, the n inter-token gaps ms, peak RSS MB, and the
    drafts fed, drafts accepted and decode steps of all sequences). The prompts are prefilled
    together and each one's first token sampled, then decode steps, each one pass of one token
    per sequence (and its drafts) and a sample, until n more; generation never stops early."""
    batch = _generations(engine, prompts, n + 1, sampler, draft_tokens)
    stamps, counts = [], []  # each step's end, and the tokens it gave (the same to each sequence)
    with PeakRss() as rss:
        start = time.perf_counter_ns()
        logits = decode.prefill(engine, batch)
        while True:
            before = len(batch[0].token_ids)
            for gen, row in zip(batch, logits, strict=True):
                gen.advance(row)
            stamps.append(time.perf_counter_ns())
            counts.append(len(batch[0].token_ids) - before)
            if batch[0].finished:
                break
            logits = decode.step(engine, batch)
    gaps = [
        gap / count / 1e6
        for gap, count in zip(np.diff(stamps).tolist(), counts[1:], strict=True)
        for _ in range(count)
    ]
    # steps - 1: the first sample came from the prefill's pass, no decode step.
    counted = [(g.drafted, g.accepted, g.steps - 1) for g in batch]
    drafts = tuple(map(sum, zip(*counted, strict=True)))
    return [gen.token_ids[:n] for gen in batch], (stamps[0] - start) / 1e6, gaps, rss.mb, drafts


def _generations(
    engine: decode.ForwardPass,
    prompts: list[list[int]],
    max_tokens: int,
    sampler: SamplerConfig,
    draft_tokens: int = 0,
) -> list[decode.Generation]:
    """The token loop's sequences for a batch of prompts, each with its own cache and sampler;
    ids only (no text), end-of-generation ids generated like any other (llama-bench's rule)."""
    return [
        decode.Generation(
            p,
            engine.new_cache(len(p) + max_tokens),
            tokenizer=None,
            sampling=sampler,
            max_tokens=max_tokens,
            stop_at_eog=False,
            draft_tokens=draft_tokens,
        )
        for p in prompts
    ]


class KernelCounters:
    """The registry's counters summed over several profile() blocks."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def add(self, stats: Iterable[dict[str, Any]]) -> None:
        for s in stats:
            self.calls[s["id"]] += s["calls"]
            self.seconds[s["id"]] += s["seconds"]

    def ids(self) -> list[str]:
        return sorted(self.calls)

    def receipt_fields(self) -> dict[str, Any]:
        """backend, compute_path and kernels: native when any kernel ran on a native tier."""
        if not self.calls:
            raise BenchError(
                "no kernel of the registry ran during the measured repetitions, so the receipt "
                "could not say what computed them (the forward pass bypasses pybitnet.kernels)"
            )
        native = any(kernel_tier(k) in NATIVE_TIERS for k in self.calls)
        return {
            "backend": "cpu",
            "compute_path": "native" if native else "numpy",
            "kernels": [
                {"id": k, "calls": self.calls[k], "seconds": self.seconds[k]} for k in self.ids()
            ],
        }


def print_summary(doc: dict[str, Any], console: Console | None = None) -> None:
    """A llama-bench-style table of a generation receipt: tok/s as mean ± sd, with the medians
    of time to first token, inter-token latency and peak RSS, and decode's weight bandwidth
    (file bytes per decode step x steps per second, the figure that meets the memory's read
    bandwidth; a step decodes one token of each sequence of the batch)."""
    console = console or Console()
    model, batch = doc["model"], doc["workload"]["batch"]
    title = (
        f"{Path(model['path']).name}: {model['bytes'] / 1e6:,.1f} MB, "
        f"{model['parameter_count'] / 1e6:,.1f} M params, batch {batch}, {doc['backend']} "
        f"({doc['compute_path']}: {', '.join(k['id'] for k in doc['kernels'])})"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    columns = ["threads", "test", "t/s", "TTFT ms", "ITL p50", "ITL p99", "GB/s", "RSS MB"]
    for column in columns:
        table.add_column(column, justify="left" if column == "test" else "right", no_wrap=True)
    for run in doc["runs"]:
        s = run["summary"]
        tps = s["tokens_per_second"]
        sd = f" ± {tps['sd']:.2f}" if tps["sd"] is not None else ""

        def median(metric: str, s: dict = s) -> str:
            return f"{s[metric]['median']:.2f}" if metric in s else ""

        decode = run["kind"] == "decode"
        bandwidth = model["bytes"] * tps["mean"] / batch / 1e9 if decode else None
        table.add_row(
            str(run["threads"]),
            run["name"],
            f"{tps['mean']:.2f}{sd}",
            median("ttft_ms"),
            median("itl_p50_ms"),
            median("itl_p99_ms"),
            f"{bandwidth:.2f}" if bandwidth is not None else "",
            f"{s['peak_rss_mb']['median']:.1f}",
        )
    console.print(table)
    for run in (r for r in doc["runs"] if "drafting" in r):
        accepted, drafted = (sum(run["drafting"][k]) for k in ("accepted", "drafted"))
        console.print(f"{run['name']} at {run['threads']} threads, drafting up to "
                      f"{doc['workload']['draft_tokens']} tokens a step: {accepted} of {drafted} "
                      f"drafts accepted, {run['summary']['tokens_per_step']['median']:.2f} tokens "
                      "a step (median).")  # fmt: skip
    det = "yes" if doc["deterministic"] else "NO: repetitions generated different ids"
    console.print(
        "t/s: mean ± sd over the repetitions (all sequences of the batch); TTFT, ITL "
        "(inter-token latency, ms), RSS (peak, MB): medians; GB/s: weights read per second in "
        "decode (file size x t/s / batch). "
        f"Deterministic: {det}."
    )


def preset_model(preset: str) -> Path:
    """The synthetic model of a preset ("2b": bitnet-b1.58-2B-4T's shape, I2_S weights, F16
    embedding), made once in the cache directory ($PYBITNET_CACHE, else ~/.cache/pybitnet)."""
    from pybitnet.convert.cache import cache_dir
    from pybitnet.convert.synthetic import PRESETS, make_model

    if preset not in PRESETS:
        raise BenchError(f"unknown preset {preset!r}; presets are {', '.join(PRESETS)}")
    params = {"arch": "bitnet-b1.58", "weight_type": "I2_S", "embd_type": "F16", "seed": 0}
    cache = cache_dir()
    name = (
        f"synthetic-{preset}-{params['arch']}-{params['weight_type']}-{params['embd_type']}"
        f"-s{params['seed']}-pybitnet{pybitnet.__version__}.gguf"
    ).lower()
    path = cache / name
    if not path.exists():
        partial = path.with_name(f"{name}.{os.getpid()}.partial")
        try:
            cache.mkdir(parents=True, exist_ok=True)
            make_model(partial, preset, **params)
            partial.replace(path)  # atomic: a killed run never leaves a truncated model
        except OSError as exc:
            raise BenchError(f"{path}: cannot write the {preset} preset model: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)
    return path
