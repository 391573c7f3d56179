"""verify: a receipt built the way the bench runner builds one passes every rule; each hand-altered
copy is rejected by the rule it breaks, and by that rule alone.

The receipts are made here with receipt.py's builders from seeded synthetic samples (they claim
nothing about a real machine), for the shape of the peers' tiny fixture model: 4 blocks of 7
ternary matrices (I2_S), which the engine runs as 4 BitLinear calls per block (q/k/v and
gate/up stacked), vocabulary 1000. The last tests verify real receipts of the bench runner.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from pybitnet.bench import receipt as rc
from pybitnet.bench import verify as v
from pybitnet.bench import verify_files
from pybitnet.cli import main
from pybitnet.sampling import SamplerConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "peers" / "bitnet-tiny-s1-i2_s.gguf"
VOCAB = 1000
TERNARY_TENSORS = 4 * 7
CALLS_PER_PASS = 4 * 4  # BitLinear calls per forward pass
PROMPT, GENERATED, REPS, WARMUP = 8, 16, 5, 1


def receipt(seed: int = 0, model_path: Path | None = None) -> dict:
    """A generation receipt whose kernel counters are what the registry counts over its timed
    repetitions: one pass per prefill, and 1 + GENERATED per decode (the prefill, then a step
    per token), each pass CALLS_PER_PASS BitLinear calls; the kernels take 60% of the timed wall
    time."""
    rng = np.random.default_rng(seed)
    runs = []
    for threads in (1, 2):
        rss = (600 + rng.standard_normal(REPS)).tolist()
        prefill_ms = 40.0 / threads * (1 + 0.02 * rng.standard_normal(REPS))
        runs.append(rc.prefill_run(f"pp{PROMPT}", threads, PROMPT, prefill_ms.tolist(), rss))
        gaps = 10.0 / threads * (1 + 0.05 * rng.standard_normal((REPS, GENERATED - 1)))
        ttft = 41.0 / threads * (1 + 0.02 * rng.standard_normal(REPS))
        decode_ms = ttft + gaps.sum(axis=1)
        args = (decode_ms.tolist(), ttft.tolist(), gaps.tolist(), rss)
        runs.append(rc.decode_run(f"tg{GENERATED}", threads, GENERATED, *args))
    passes = sum(REPS * (1 if r["kind"] == "prefill" else 1 + GENERATED) for r in runs)
    timed_seconds = sum(sum(r["samples"]["ms"]) for r in runs) / 1000
    data = model_path.read_bytes() if model_path else b"a model that is not here"
    model = {
        "path": str(model_path or "not-here/bitnet-tiny.gguf"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    prompt = rng.integers(0, VOCAB, (1, PROMPT)).tolist()
    return {
        "schema_version": rc.SCHEMA_VERSION,
        "kind": "generation",
        "created_at": rc.utc_now(),
        "tool": {"name": "pybitnet", "version": "0.1.0", "git_commit": "0123abc"},
        "host": {
            "cpu_model": "Synthetic CPU",
            "cpu_features_used": ["avx512f", "avx512vnni"],
            "logical_cores": 2,
            "threads": [1, 2],
            "os": "Linux",
            "python": "3.11.7",
        },
        "model": model
        | {
            "architecture": "bitnet",
            "parameter_count": 3_620_000,
            "vocab_size": VOCAB,
            "tensor_types": {"F32": 17, "F16": 1, "I2_S": TERNARY_TENSORS},
        },
        "workload": rc.generation_workload(
            PROMPT,
            GENERATED,
            1,
            REPS,
            WARMUP,
            SamplerConfig(temperature=0, seed=7),
            prompt,
            kv_cache="f16",
        ),
        "backend": "cpu",
        "compute_path": "native",
        "kernels": [
            {
                "id": "bitlinear_avx512",
                "calls": passes * CALLS_PER_PASS,
                "seconds": 0.6 * timed_seconds,
            }
        ],
        "runs": runs,
        "outputs": rc.outputs(rng.integers(0, VOCAB, (1, GENERATED)).tolist()),
        "deterministic": True,
    }


def kernel_receipt() -> dict:
    """Two kernel runs; each kernel was called once per warmup and repetition, and took 90% of
    its run's timed wall time."""
    rng = np.random.default_rng(3)
    runs = [
        rc.kernel_run(f"bitlinear 2560x6912 {tier}", 1, f"bitlinear_{tier}", [2560, 6912],
                      2560 * 6912, (ms * (1 + 0.01 * rng.standard_normal(REPS))).tolist())
        for tier, ms in (("avx512", 0.4), ("numpy", 30.0))
    ]  # fmt: skip
    return {
        **{k: receipt()[k] for k in ("schema_version", "created_at", "tool", "host", "backend")},
        "kind": "kernels",
        "compute_path": "native",
        "workload": {"repetitions": REPS, "warmup": WARMUP, "seed": 0},
        "kernels": [
            {
                "id": r["kernel_id"],
                "calls": REPS + WARMUP,
                "seconds": 0.9e-3 * sum(r["samples"]["ms"]),
            }
            for r in runs
        ],
        "runs": runs,
    }


def failed(report: v.VerifyReport) -> dict[str, str]:
    return {c.rule: c.detail for c in report.checks if c.verdict == v.Verdict.FAIL}


def test_an_honest_receipt_passes_every_rule():
    report = v.check_receipt(receipt())
    assert failed(report) == {}
    assert [c.rule for c in report.checks] == [r for r in v.RULES if r != "replay"]
    assert report.verdict("model_sha256") == v.Verdict.SKIP  # the file is not here
    assert report.exit_code == 0


def test_an_honest_kernels_receipt_passes_and_skips_the_generation_rules():
    report = v.check_receipt(kernel_receipt())
    assert failed(report) == {}
    skipped = {c.rule for c in report.checks if c.verdict == v.Verdict.SKIP}
    assert skipped == {"token_counts", "vocabulary", "model_sha256"}


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ({"bitlinear_numpy": None}, "runs time kernel bitlinear_numpy, which the kernel list does"),
        ({"bitlinear_numpy": REPS - 1}, f"{REPS - 1} calls cannot give {REPS} timed repetitions"),
    ],
)
def test_a_kernels_receipt_lists_every_timed_kernel_with_enough_calls(calls, message):
    doc = kernel_receipt()
    for kernel_id, n in calls.items():
        entry = next(k for k in doc["kernels"] if k["id"] == kernel_id)
        if n is None:
            doc["kernels"].remove(entry)
        else:
            entry["calls"] = n
    assert message in failed(v.check_receipt(doc))["kernel_counters"]


def double_decode_throughput(doc):
    run = doc["runs"][1]
    run["samples"]["tokens_per_second"] = [2 * x for x in run["samples"]["tokens_per_second"]]
    run["summary"]["tokens_per_second"] = rc.summarize(run["samples"]["tokens_per_second"])


def shift_median(doc):
    doc["runs"][3]["summary"]["ms"]["median"] *= 1.02


def drop_slowest_sample(doc):
    run = doc["runs"][0]
    slowest = int(np.argmax(run["samples"]["ms"]))
    doc["runs"][0] = rc.prefill_run(
        run["name"],
        run["threads"],
        run["n_tokens"],
        [x for i, x in enumerate(run["samples"]["ms"]) if i != slowest],
        [x for i, x in enumerate(run["samples"]["peak_rss_mb"]) if i != slowest],
    )


def halve_decode_time(doc):
    run = doc["runs"][1]
    halved = [x / 2 for x in run["samples"]["ms"]]
    run.update(rc.rebuild_run(run | {"samples": run["samples"] | {"ms": halved}}))


def kernels_as(*entries):
    def alter(doc):
        doc["kernels"] = [dict(zip(("id", "calls", "seconds"), e, strict=True)) for e in entries]

    return alter


def add_kernel(kernel_id):
    def alter(doc):
        doc["kernels"].append({"id": kernel_id, "calls": 10, "seconds": 0.001})

    return alter


def set_created_at(delta):
    def alter(doc):
        when = dt.datetime.now(dt.UTC) + delta
        doc["created_at"] = when.isoformat(timespec="seconds").replace("+00:00", "Z")

    return alter


def set_output_id(position, token_id):
    def alter(doc):
        ids = doc["outputs"]["token_ids"]
        ids[0][position] = token_id
        doc["outputs"] = rc.outputs(ids)  # a careful forger keeps the hash consistent

    return alter


def drop_last_output_id(doc):
    doc["outputs"] = rc.outputs([doc["outputs"]["token_ids"][0][:-1]])


def set_prompt_id(doc):
    doc["workload"]["prompt_ids"][0][2] = VOCAB


def inflate_decode_tokens(doc):
    run = doc["runs"][1]
    run.update(rc.rebuild_run(run | {"n_tokens": 2 * GENERATED}))  # and its tok/s with it


HONEST_CALLS = receipt()["kernels"][0]["calls"]

ALTERATIONS = {
    # the seven of the issue
    "doubled tok/s": (double_decode_throughput, "summaries", r"tokens_per_second: 5 of 5 differ"),
    "hand-written kernel list": (
        kernels_as(("bitlinear_avx512", 1000, 0.5)),
        "kernel_counters",
        "1000 bitlinear calls make 62.5 passes: the runs made 180 forward passes",
    ),
    "unknown kernel id": (add_kernel("gemv_q4_avx512"), "kernel_ids", r"\['gemv_q4_avx512'\]"),
    "median off its samples": (shift_median, "summaries", r"summary\.ms\.median is"),
    "future timestamp": (set_created_at(dt.timedelta(days=1)), "created_at", "in the future"),
    "token id outside the vocabulary": (
        set_output_id(3, 5000),
        "vocabulary",
        r"outputs\.token_ids\[0\]\[3\] = 5000 is outside the vocabulary of 1000",
    ),
    # other forms of the same rules
    "hand-written list, too few passes": (
        kernels_as(("bitlinear_avx512", CALLS_PER_PASS * 10, 0.5)),
        "kernel_counters",
        r"160 bitlinear calls make 10 passes: the runs made 180 forward passes .* of 16 calls "
        r"\(the engine's over 28 ternary tensors\)",
    ),
    "hand-written list, too many passes": (
        kernels_as(("bitlinear_avx512", HONEST_CALLS * 100, 0.5)),
        "kernel_counters",
        "make 18000 passes: the runs made 180",
    ),
    "hand-written list, one call per ternary tensor": (
        kernels_as(("bitlinear_avx512", HONEST_CALLS // CALLS_PER_PASS * TERNARY_TENSORS, 1.0)),
        "kernel_counters",
        "make 315 passes: the runs made 180",
    ),
    "hand-written list, more time than the runs took": (
        kernels_as(("bitlinear_avx512", HONEST_CALLS, 1000.0)),
        "kernel_counters",
        "more than the .* s of wall time",
    ),
    "hand-written list, no BitLinear": (
        kernels_as(("rmsnorm_avx512", 4, 0.01)),
        "kernel_counters",
        "no bitlinear kernel ran",
    ),
    "hand-written list, a kernel that never ran": (
        kernels_as(("bitlinear_avx512", HONEST_CALLS, 1.0), ("rmsnorm_avx2", 0, 0.0)),
        "kernel_counters",
        "with no calls or no time",
    ),
    "hand-written list, an id twice": (
        kernels_as(("bitlinear_avx512", HONEST_CALLS, 1.0), ("bitlinear_avx512", 28, 0.1)),
        "kernel_counters",
        "listed more than once",
    ),
    "native claimed, numpy kernels ran": (
        kernels_as(("bitlinear_numpy", HONEST_CALLS, 1.0)),
        "compute_path",
        "no native kernel ran",
    ),
    "decode time halved, tok/s to match": (
        halve_decode_time,
        "summaries",
        r"samples\.ms\[0\] = .* is shorter than the .* ms of inter_token_ms\[0\]",
    ),
    "the slowest sample dropped": (drop_slowest_sample, "summaries", r"\[4\] samples per metric"),
    "fewer ids than generated": (drop_last_output_id, "token_counts", r"sequences of \[15\] ids"),
    "decode tokens inflated": (inflate_decode_tokens, "token_counts", "n_tokens 32, the workload"),
    "outputs hash of other ids": (
        lambda doc: doc["outputs"].update(sha256="0" * 64),
        "token_counts",
        "outputs.sha256 is 0000",
    ),
    "prompt id outside the vocabulary": (
        set_prompt_id,
        "vocabulary",
        r"prompt_ids\[0\]\[2\] = 1000 is outside",
    ),
    "timestamp beyond the clock skew": (
        set_created_at(dt.timedelta(minutes=6)),
        "created_at",
        "5 minutes allowed",
    ),
}


@pytest.mark.parametrize("case", ALTERATIONS)
def test_a_hand_altered_receipt_is_rejected_by_the_rule_it_breaks(case):
    alter, rule, message = ALTERATIONS[case]
    doc = receipt()
    alter(doc)
    report = v.check_receipt(doc)
    assert set(failed(report)) == {rule}
    assert report.exit_code == 1
    assert re.search(message, failed(report)[rule]), failed(report)[rule]


def test_ternary_tensors_outside_whole_blocks_bound_the_calls_per_pass():
    """30 ternary tensors (4 blocks and 2 more): 10 (stacked by 3) to 30 calls per pass."""
    assert v.bitlinear_calls_per_pass(30) == (10, 30)
    assert v.bitlinear_calls_per_pass(29) == (17, 17)  # a ternary output layer: one call more
    doc = receipt()
    doc["model"]["tensor_types"]["I2_S"] = 30
    assert v.check_receipt(doc).verdict("kernel_counters") == v.Verdict.PASS
    kernels_as(("bitlinear_avx512", HONEST_CALLS // 2, 1.0))(doc)
    detail = failed(v.check_receipt(doc))["kernel_counters"]
    assert "bitlinear calls do not fit: the runs made 180 forward passes" in detail
    assert "of 10 to 30 calls" in detail


def test_clock_skew_within_five_minutes_is_allowed():
    doc = receipt()
    set_created_at(dt.timedelta(minutes=4))(doc)
    assert v.check_receipt(doc).verdict("created_at") == v.Verdict.PASS


def test_a_foreign_model_hash_is_rejected_when_the_file_is_present(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(np.random.default_rng(0).bytes(4096))
    doc = receipt(model_path=model)
    assert v.check_receipt(doc).verdict("model_sha256") == v.Verdict.PASS
    doc["model"]["sha256"] = hashlib.sha256(b"another model").hexdigest()
    report = v.check_receipt(doc)
    assert failed(report) == {
        "model_sha256": f"{model} has sha256 {hashlib.sha256(model.read_bytes()).hexdigest()}, "
        f"the receipt's model.sha256 is {doc['model']['sha256']}"
    }
    doc["model"]["bytes"] += 1  # a different size is enough, without hashing
    assert (
        "has 4,096 bytes, the receipt's model.bytes is 4,097"
        in failed(v.check_receipt(doc))["model_sha256"]
    )


def test_the_model_option_points_at_the_file(tmp_path):
    model = tmp_path / "elsewhere.gguf"
    model.write_bytes(b"weights")
    doc = receipt(model_path=model)
    doc["model"]["path"] = "/nowhere/model.gguf"
    assert v.check_receipt(doc).verdict("model_sha256") == v.Verdict.SKIP
    assert v.check_receipt(doc, model=model).verdict("model_sha256") == v.Verdict.PASS


def test_the_vocabulary_comes_from_the_model_file_when_present():
    doc = receipt(model_path=FIXTURE)
    assert v.check_receipt(doc).verdict("vocabulary") == v.Verdict.PASS
    doc["model"]["vocab_size"] = 5000  # the receipt claims a larger vocabulary than the file's
    set_output_id(0, 1500)(doc)
    assert (
        "model.vocab_size is 5000, the model file's is 1000"
        in failed(v.check_receipt(doc))["vocabulary"]
    )


def test_a_receipt_that_fails_the_schema_is_not_checked_further():
    doc = receipt()
    doc["kernels"] = []
    report = v.check_receipt(doc)
    assert failed(report) == {"schema": "receipt: field $.kernels: [] should be non-empty"}
    assert {c.verdict for c in report.checks[1:]} == {v.Verdict.SKIP}


def test_the_rules_see_the_time_they_are_given():
    doc = receipt()
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert failed(v.check_receipt(doc, now=earlier)).keys() == {"created_at"}


# --- replay ------------------------------------------------------------------------------------


def test_replay_compares_ids_and_kernel_set(monkeypatch, tmp_path):
    """The comparison around replay_workload, with the workload's result given."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    doc = receipt(model_path=model)
    ids = doc["outputs"]["token_ids"]
    result = (copy.deepcopy(ids), {"bitlinear_avx512"})
    monkeypatch.setattr(verify_files, "replay_workload", lambda d, path: result)
    assert v.check_receipt(doc, replay=True).verdict("replay") == v.Verdict.PASS
    result[0][0][5] += 1
    result[1].add("rmsnorm_avx512")
    detail = failed(v.check_receipt(doc, replay=True))["replay"]
    assert "sequence 0 differs from position 5" in detail
    assert "the replay ran kernels ['bitlinear_avx512', 'rmsnorm_avx512']" in detail


def test_replay_needs_the_model_file_and_the_prompts(tmp_path):
    assert "is not present" in failed(v.check_receipt(receipt(), replay=True))["replay"]
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    doc = receipt(model_path=model)
    del doc["workload"]["prompt_ids"]
    assert "records no workload.prompt_ids" in failed(v.check_receipt(doc, replay=True))["replay"]


def test_replay_reruns_the_workload_through_the_model_api():
    """The expected ids come from Model.complete (greedy, the workload's seed), not from the
    bench's own decode loop that replay runs."""
    from pybitnet import generate, kernels

    doc = receipt(model_path=FIXTURE)
    model = generate.load(FIXTURE)
    with kernels.profile() as prof:
        done = model.complete(
            doc["workload"]["prompt_ids"][0], max_tokens=GENERATED, temperature=0, seed=7
        )
    assert done.finish_reason == "length"  # no end-of-generation id: the bench would go on
    doc["outputs"] = rc.outputs([done.token_ids])
    doc["kernels"] = prof.stats()  # the kernel set of the same workload
    assert v.check_receipt(doc, replay=True).verdict("replay") == v.Verdict.PASS
    doc["kernels"] = [k for k in doc["kernels"] if not k["id"].startswith("rope_")]
    assert "the replay ran kernels" in failed(v.check_receipt(doc, replay=True))["replay"]
    doc["outputs"] = rc.outputs([[(t + 1) % VOCAB for t in done.token_ids]])
    assert "differs from position 0" in failed(v.check_receipt(doc, replay=True))["replay"]


# --- output and the command line ---------------------------------------------------------------


def test_the_table_names_every_rule_and_shows_details_literally():
    doc = receipt()
    add_kernel("gemv[bold]_x")(doc)
    console = Console(record=True, width=300)
    v.print_report(v.check_receipt(doc, "r.json"), console)
    text = console.export_text()
    assert "pybitnet verify r.json: FAIL" in text
    for rule in v.RULES[:-1]:
        assert rule in text
    assert "gemv[bold]_x" in text


def run_cli(monkeypatch, *args: object) -> int:
    monkeypatch.setattr(sys, "argv", ["pybitnet", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


def test_cli_exit_codes_and_json(monkeypatch, capsys, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    rc.write_receipt(receipt(), good)
    doc = receipt()
    shift_median(doc)
    rc.write_receipt(doc, bad)
    assert run_cli(monkeypatch, "verify", good) == 0
    assert "pybitnet verify" in capsys.readouterr().out
    out = tmp_path / "verify.json"
    assert run_cli(monkeypatch, "verify", bad, "--json-file", out) == 1
    result = json.loads(out.read_text())
    assert result["passed"] is False
    verdicts = {c["rule"]: c["verdict"] for c in result["checks"]}
    assert verdicts["summaries"] == "FAIL" and verdicts["schema"] == "PASS"
    assert run_cli(monkeypatch, "verify", tmp_path / "missing.json") == 2
    assert "missing.json: cannot read" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("{}")
    assert run_cli(monkeypatch, "verify", tmp_path / "empty.json", "--json-file", out) == 1
    schema = json.loads(out.read_text())["checks"][0]
    assert schema["verdict"] == "FAIL"
    assert "'schema_version' is a required property" in schema["detail"]


def test_cli_replay_option_adds_the_replay_rule(monkeypatch, capsys, tmp_path):
    path = tmp_path / "r.json"
    rc.write_receipt(receipt(), path)
    assert run_cli(monkeypatch, "verify", path, "--replay") == 1  # the model is not here
    assert "cannot replay" in capsys.readouterr().out


# --- real receipts of the bench runner ----------------------------------------------------------


@pytest.fixture(scope="module")
def bench_receipt() -> dict:
    """The runner's own receipt of the fixture model, on the engine."""
    from pybitnet.bench.runner import Workload, run_bench
    from pybitnet.generate import load

    workload = Workload(prompt_lengths=(8, 16), generate=6, repetitions=3, warmup=1)
    return json.loads(json.dumps(run_bench(load(FIXTURE), workload)))


def test_a_receipt_from_the_bench_runner_passes_every_rule_and_its_replay(bench_receipt):
    assert bench_receipt["compute_path"] == "native"
    report = v.check_receipt(bench_receipt, replay=True)
    assert failed(report) == {}
    assert {c.verdict for c in report.checks} == {v.Verdict.PASS}  # the model file is here


def real_decode_run(doc: dict) -> dict:
    return next(r for r in doc["runs"] if r["kind"] == "decode")


def double_real_throughput(doc):
    run = real_decode_run(doc)
    run["samples"]["tokens_per_second"] = [2 * x for x in run["samples"]["tokens_per_second"]]
    run["summary"]["tokens_per_second"] = rc.summarize(run["samples"]["tokens_per_second"])


def shift_real_median(doc):
    real_decode_run(doc)["summary"]["ms"]["median"] *= 1.02


def one_call_per_tensor(doc):
    """What a list written on the old belief (one BitLinear call per ternary tensor) claims."""
    entry = next(k for k in doc["kernels"] if k["id"].startswith("bitlinear_"))
    entry["calls"] = entry["calls"] // CALLS_PER_PASS * TERNARY_TENSORS


def foreign_hash(doc):
    doc["model"]["sha256"] = hashlib.sha256(b"another model").hexdigest()


REAL_ALTERATIONS = {
    "doubled tok/s": (double_real_throughput, "summaries", "tokens_per_second: 3 of 3 differ"),
    "hand-written kernel list": (
        one_call_per_tensor,
        "kernel_counters",
        "bitlinear calls make 47.25 passes: the runs made 27 forward passes",
    ),
    "unknown kernel id": (add_kernel("gemv_q4_avx512"), "kernel_ids", r"\['gemv_q4_avx512'\]"),
    "median off its samples": (shift_real_median, "summaries", r"summary\.ms\.median is"),
    "foreign model hash": (foreign_hash, "model_sha256", "the receipt's model.sha256 is"),
    "future timestamp": (set_created_at(dt.timedelta(days=1)), "created_at", "in the future"),
    "token id outside the vocabulary": (
        set_output_id(3, VOCAB),
        "vocabulary",
        rf"outputs\.token_ids\[0\]\[3\] = {VOCAB} is outside the vocabulary of {VOCAB}",
    ),
}


@pytest.mark.parametrize("case", REAL_ALTERATIONS)
def test_a_hand_altered_bench_receipt_is_rejected_by_the_rule_it_breaks(bench_receipt, case):
    alter, rule, message = REAL_ALTERATIONS[case]
    doc = copy.deepcopy(bench_receipt)
    alter(doc)
    report = v.check_receipt(doc)
    assert set(failed(report)) == {rule}
    assert re.search(message, failed(report)[rule]), failed(report)[rule]
