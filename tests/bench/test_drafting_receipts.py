"""`pybitnet bench --draft-tokens`: a real, short tg run with speculative decoding on the embedded
model. Its receipt records per repetition the drafts fed, those accepted and the decode steps,
passes verify (replay included), holds plain decoding's ids, and each altered count is caught."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from pybitnet import generate
from pybitnet.bench import runner
from pybitnet.bench.receipt import rebuild_run, validate_receipt
from pybitnet.bench.verify import Verdict, check_receipt
from pybitnet.errors import BenchError
from pybitnet.speculative import MAX_DRAFT_TOKENS

N, REPS = 24, 2
WORKLOAD = runner.Workload(prompt_lengths=(16,), generate=N, repetitions=REPS, warmup=0)


@pytest.fixture(scope="module")
def model() -> generate.Model:
    return generate.load()


@pytest.fixture(scope="module")
def docs(model) -> tuple[dict, dict]:
    """The receipts of the workload decoded plainly and with up to 8 drafts a step."""
    drafting = dataclasses.replace(WORKLOAD, draft_tokens=8)
    return runner.run_bench(model, WORKLOAD), runner.run_bench(model, drafting)


def failed(doc: dict) -> dict[str, str]:
    return {c.rule: c.detail for c in check_receipt(doc).checks if c.verdict == Verdict.FAIL}


def test_drafting_records_its_counts_and_keeps_plain_decodings_ids(docs) -> None:
    plain, drafted = docs
    assert drafted["outputs"] == plain["outputs"]
    assert drafted["workload"]["draft_tokens"] == 8 and "draft_tokens" not in plain["workload"]
    assert "drafting" not in plain["runs"][1]
    run = drafted["runs"][1]
    counts = run["drafting"]
    assert all(len(values) == REPS for values in counts.values())
    for d, a, s in zip(counts["drafted"], counts["accepted"], counts["steps"], strict=True):
        assert 0 <= a <= d <= 8 * s and s + a == N
        assert d > 0, "nothing was drafted: the test shows nothing"
    assert run["samples"]["tokens_per_step"] == [N / s for s in counts["steps"]]
    # A step's time is shared by its tokens: one gap a token, summing to the decode time.
    assert [len(gaps) for gaps in run["inter_token_ms"]] == [N] * REPS
    assert check_receipt(drafted, replay=True).passed


def _accept_more(doc: dict) -> None:
    counts = doc["runs"][1]["drafting"]
    counts["accepted"][0] = counts["drafted"][0] + 1


def _one_step_more(doc: dict) -> None:
    run = doc["runs"][1]
    run["drafting"]["steps"][0] += 1
    run.update(rebuild_run(run))  # tokens_per_step to match


ALTERATIONS = {
    "more accepted than drafted": (_accept_more, {"token_counts"}, "break accepted <= drafted"),
    "a step added": (_one_step_more, {"token_counts", "kernel_counters"}, "= steps + accepted"),
    "counts dropped": (
        lambda doc: doc["runs"][1].pop("drafting"),
        {"token_counts", "summaries"},
        "drafting is absent, workload.draft_tokens is 8",
    ),
    "a repetition's counts dropped": (
        lambda doc: [v.pop() for v in doc["runs"][1]["drafting"].values()],
        {"token_counts", "summaries", "kernel_counters"},
        "drafting holds [1, 1, 1] counts, 2 repetitions",
    ),
}


@pytest.mark.parametrize("case", ALTERATIONS)
def test_altered_drafting_counts_are_rejected(docs, case) -> None:
    alter, rules, message = ALTERATIONS[case]
    doc = copy.deepcopy(docs[1])
    alter(doc)
    problems = failed(doc)
    assert set(problems) == rules
    assert message in problems["token_counts"]


@pytest.mark.parametrize(
    ("where", "value"), [("draft_tokens", MAX_DRAFT_TOKENS + 1), ("draft_tokens", 0)]
)
def test_the_schema_bounds_draft_tokens(docs, where, value) -> None:
    doc = copy.deepcopy(docs[1])
    doc["workload"][where] = value
    with pytest.raises(BenchError, match=rf"\$\.workload\.{where}: {value} is"):
        validate_receipt(doc)


def test_the_schema_bounds_the_counts(docs) -> None:
    doc = copy.deepcopy(docs[1])
    doc["runs"][1]["drafting"]["steps"][0] = 0
    with pytest.raises(BenchError, match=r"\$\.runs\[1\]\.drafting\.steps\[0\]: 0 is less"):
        validate_receipt(doc)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"draft_tokens": MAX_DRAFT_TOKENS + 1}, "--draft-tokens must be from 0 to 15, got 16"),
        ({"draft_tokens": 2, "batch": 2}, r"--draft-tokens measures one sequence \(-b 1\)"),
    ],
)
def test_a_workload_that_cannot_draft_is_refused(changes, message) -> None:
    with pytest.raises(BenchError, match=message):
        dataclasses.replace(WORKLOAD, **changes)
