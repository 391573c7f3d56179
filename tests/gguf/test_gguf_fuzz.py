"""Seeded fuzzing of the GGUF reader and of the model load path (tests/gguf/fuzz_cases.py says
what each mutates and what each case must do). The suite runs a short seeded run of each;
scripts/fuzz_gguf.py runs the long ones (10,000 cases and more)."""

from __future__ import annotations

from pathlib import Path

from fuzz_cases import run

SEED = 20261121


def test_mutated_files_parse_or_raise_gguf_error(tmp_path: Path) -> None:
    summary = run("reader", 1_000, SEED, tmp_path)
    # the mutations reach deep: many files still parse, and refusals come from many checks
    assert summary.outcomes["ok"] > 50, summary.outcomes.most_common(5)
    assert len(summary.outcomes) > 40, summary.outcomes.most_common()
    print(summary.line())


def test_mutated_models_load_or_raise_a_pybitnet_error(tmp_path: Path) -> None:
    summary = run("load", 300, SEED, tmp_path)
    refusals = " ".join(summary.outcomes)
    assert summary.outcomes["ok"] > 15, summary.outcomes.most_common(5)
    assert len(summary.outcomes) > 60, summary.outcomes.most_common()
    # each kind of refusal the mutations aim at is reached: a value of the wrong type or out
    # of range, a non-finite float in a tensor, a tokenizer key of the wrong type
    for reached in ("must be an integer", "must be a finite number", "is NaN", "is +inf",
                    "tokenizer.ggml."):  # fmt: skip
        assert reached in refusals, reached
    print(summary.line())
