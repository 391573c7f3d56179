"""The one token loop (decode.py): every entry point that generates (Model, the server's
scheduler, `pybitnet bench`, benchmarks/decode.py) gives the same token ids for the same prompt
and seed, greedy and sampled, alone and inside a batch of 8."""

import asyncio
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import pybitnet
from pybitnet import decode
from pybitnet.bench import runner
from pybitnet.bench.verify import Verdict, check_receipt
from pybitnet.sampling import SamplerConfig
from pybitnet.server.scheduler import Failed, Finished, Generation, Scheduler

PROMPT = "Once upon a time, there was a little"
OTHERS = (  # the prompt's neighbours in a batch of 8, of other lengths
    "The dog",
    "Lily and Ben went to the park to play with their ball.",
    "One day",
    "Tom had a red car. He liked to",
    "The sun was",
    "A big fish swam in the blue sea, and a small bird sat on a rock",
    "Mom said",
)
N = 24
SAMPLERS = {
    "greedy": SamplerConfig(temperature=0.0, seed=0),
    "sampled": SamplerConfig(temperature=0.9, top_k=40, top_p=0.95, seed=7),
}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return pybitnet.load()


def batch_of_8(model, ids: list[int]) -> list[list[int]]:
    """The prompt in fourth place among seven others."""
    others = [model.tokenize(text) for text in OTHERS]
    return [*others[:3], ids, *others[3:]]


def until_end_of_generation(model, ids: list[int]) -> list[int]:
    """What a generation that stops at end-of-generation ids keeps of ids that do not stop."""
    ends = [i for i, token in enumerate(ids) if token in model.tokenizer.eog_ids]
    return ids[: ends[0]] if ends else ids


def scheduler_ids(model, prompts: list[list[int]], sampling: SamplerConfig) -> list[list[int]]:
    """The ids the server's scheduler generates for prompts submitted together."""
    scheduler = Scheduler(model, max_batch=8, max_queue=8, kv_budget_tokens=8 * model.n_ctx)
    scheduler.start()

    async def main():
        loop = asyncio.get_running_loop()
        gens = [
            Generation(p, tokenizer=model.tokenizer, max_tokens=N, sampling=sampling, loop=loop)
            for p in prompts
        ]
        for gen in gens:
            scheduler.submit(gen)
        for gen in gens:
            while not isinstance(event := await gen.events.get(), Finished | Failed):
                pass
            assert isinstance(event, Finished), event
        return [gen.token_ids for gen in gens]

    try:
        return asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        scheduler.stop(timeout=10)


def decode_benchmark():
    """benchmarks/decode.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("decode_benchmark", ROOT / "benchmarks/decode.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports its neighbour kernels.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_entry_point_generates_the_same_ids(model, name):
    sampling = SAMPLERS[name]
    ids = model.tokenize(PROMPT)
    batch = batch_of_8(model, ids)
    bench = runner.decode_once(model.engine, [ids], N, sampling)[0][0]
    assert len(bench) == N
    if name == "sampled":  # the draw is really taken, not the argmax
        assert bench != runner.decode_once(model.engine, [ids], N, SAMPLERS["greedy"])[0][0]
    assert runner.decode_once(model.engine, batch, N, sampling)[0][3] == bench
    benchmark = decode_benchmark()
    assert benchmark.timed_decode(model.engine, [ids], N, sampling)[2][0] == bench
    assert benchmark.timed_decode(model.engine, batch, N, sampling)[2][3] == bench

    # Model and the server stop at an end-of-generation id; the bench generates on.
    expected = until_end_of_generation(model, bench)
    completion = model.complete(ids, max_tokens=N, **dataclasses.asdict(sampling))
    assert completion.token_ids == expected
    assert scheduler_ids(model, [ids], sampling) == [expected]
    assert scheduler_ids(model, batch, sampling)[3] == expected


def test_a_stop_string_across_pieces_ends_every_entry_point_alike(model):
    ids = model.tokenize(PROMPT)
    full = model.complete(ids, max_tokens=N, temperature=0)
    words = full.text.split()
    stop = " ".join(words[2:4])  # spans several tokens, so several pieces
    cut = model.complete(ids, max_tokens=N, temperature=0, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    gen = decode.Generation(
        ids,
        model.engine.new_cache(len(ids) + N),
        tokenizer=model.tokenizer,
        sampling=SAMPLERS["greedy"],
        max_tokens=N,
        stop=[stop],
    )
    assert "".join(decode.run(model.engine, gen)) == cut.text
    assert (gen.token_ids, gen.finish_reason) == (cut.token_ids, "stop")


def test_the_context_end_is_finish_reason_length(model):
    ids = model.tokenize(PROMPT)
    room = 5
    small = pybitnet.load(n_ctx=len(ids) + room)
    completion = small.complete(ids, max_tokens=100, temperature=0)
    assert (len(completion.token_ids), completion.finish_reason) == (room, "length")


def test_a_prompt_longer_than_a_chunk_prefills_in_chunks_and_its_receipt_verifies(model):
    length = 2 * decode.PREFILL_CHUNK + 9
    workload = runner.Workload(prompt_lengths=(length,), generate=4, repetitions=1, warmup=0)
    doc = runner.run_bench(model, workload)
    report = check_receipt(json.loads(json.dumps(doc)))
    assert report.verdict("kernel_counters") is Verdict.PASS, report
    ids = runner.bench_prompts(model, length, seed=0)[0]
    gen = decode.Generation(
        ids,
        model.engine.new_cache(length + 1),
        tokenizer=None,
        sampling=SAMPLERS["greedy"],
        max_tokens=1,
    )
    steps = 0
    while gen.pending:
        decode.step(model.engine, [gen])
        steps += 1
    assert steps == 3  # 128 + 128 + 9


def test_the_decode_benchmark_runs_its_workloads_on_the_loop(model):
    result = decode_benchmark().bench_engine(model.path, threads=1, output_head=None, reps=1)
    for workload in ("pp128", "pp512", "tg128", "batch"):
        assert result[f"{workload}_tok_s"] > 0
    assert 0 <= result["python_overhead_share"] < 1


def test_ids_past_the_tokenizer_are_never_sampled(model):
    """A file may have more embedding rows than its tokenizer has tokens (issue: one such id
    once stopped the server): the loop samples only ids that have text."""
    vocab = model.tokenizer.vocab_size
    logits = np.zeros(vocab + 100, np.float32)
    logits[vocab + 50] = 100.0  # the best logit, on an id without text
    logits[7] = 10.0
    gen = decode.Generation(
        [1], None, tokenizer=model.tokenizer, sampling=SAMPLERS["greedy"], max_tokens=2
    )
    gen.advance(logits[None])
    assert gen.token_ids == [7]
    ids_only = decode.Generation(
        [1], None, tokenizer=None, sampling=SAMPLERS["greedy"], max_tokens=2
    )
    ids_only.advance(logits[None])
    assert ids_only.token_ids == [vocab + 50]  # without a tokenizer every row is an id


@pytest.mark.parametrize("forward", ["engine", "reference"])
def test_forward_batch_computes_the_logits_of_the_rows_asked_for(model, forward):
    """Per sequence, the logits of its last `rows` positions: those of the whole pass (the
    output layer then skips the rest: a neighbour's prefill chunk beside a drafting sequence)."""
    from pybitnet.model.reference import ReferenceModel

    fwd = model.engine if forward == "engine" else ReferenceModel(model.weights)
    prompts = [model.tokenizer.encode(p) for p in (PROMPT, *OTHERS[:2])]
    wanted = [1, 3, len(prompts[2])]

    def logits(rows):
        items = [(p, fwd.new_cache(len(p))) for p in prompts]
        return fwd.forward_batch(items, rows=rows)

    every = logits(None)
    for row, all_rows, n in zip(logits(wanted), every, wanted, strict=True):
        assert row.shape == (n, all_rows.shape[1])
        np.testing.assert_allclose(row, all_rows[-n:], rtol=1e-5, atol=1e-5)


def test_forward_batch_refuses_rows_a_sequence_does_not_have(model):
    items = [([1, 2, 3], model.engine.new_cache(8))]
    with pytest.raises(pybitnet.errors.ModelError, match=r"rows \[4\] must be 1 to"):
        model.engine.forward_batch(items, rows=[4])
    assert items[0][1].length == 0  # refused before the cache changed
