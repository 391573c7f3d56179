"""`pybitnet bench --output-head`: every generation receipt records workload.output_head (null:
the file's head as stored), `verify --replay` loads the model with that head, and a receipt
whose head was altered fails its replay. Real short runs on the embedded model."""

from __future__ import annotations

import copy

import pytest

from pybitnet import generate
from pybitnet.bench import runner
from pybitnet.bench.receipt import validate_receipt
from pybitnet.bench.verify import Verdict, check_receipt
from pybitnet.errors import BenchError

WORKLOAD = runner.Workload(prompt_lengths=(8,), generate=8, repetitions=1, warmup=0)


@pytest.fixture(scope="module")
def docs() -> dict[str | None, dict]:
    return {
        head: runner.run_bench(generate.load(output_head=head), WORKLOAD) for head in (None, "q6_k")
    }


def replay_detail(doc: dict) -> tuple[Verdict, str]:
    check = next(c for c in check_receipt(doc, replay=True).checks if c.rule == "replay")
    return check.verdict, check.detail


def test_the_receipt_records_the_head_and_replays_it(docs) -> None:
    stored, q6_k = docs[None], docs["q6_k"]
    assert stored["workload"]["output_head"] is None and q6_k["workload"]["output_head"] == "q6_k"
    assert any(k["id"].startswith("linear_q6_k_") for k in q6_k["kernels"])
    assert not any(k["id"].startswith("linear_q6_k_") for k in stored["kernels"])
    for doc in docs.values():
        assert check_receipt(doc, replay=True).passed


def test_a_receipt_whose_head_was_altered_fails_its_replay(docs) -> None:
    doc = copy.deepcopy(docs["q6_k"])
    doc["workload"]["output_head"] = None  # the replay then runs the file's head
    verdict, detail = replay_detail(doc)
    assert verdict == Verdict.FAIL and "kernels" in detail


def test_an_older_receipt_without_the_field_still_validates(docs) -> None:
    doc = copy.deepcopy(docs[None])
    del doc["workload"]["output_head"]
    validate_receipt(doc)
    assert check_receipt(doc, replay=True).passed  # replayed with the head as stored


@pytest.mark.parametrize("value", ["q5", 6, True])
def test_the_schema_names_an_unknown_head(docs, value) -> None:
    doc = copy.deepcopy(docs[None])
    doc["workload"]["output_head"] = value
    with pytest.raises(BenchError, match=r"\$\.workload\.output_head: "):
        validate_receipt(doc)
