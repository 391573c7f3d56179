"""Measured timings of a load and a completion, for the CLI's timings line: what each figure
covers, not how fast it is (no timing asserts)."""

from __future__ import annotations

import math

import pybitnet


def test_a_completion_carries_its_prefill_and_generation_times():
    model = pybitnet.load()
    assert math.isfinite(model.load_seconds) and model.load_seconds > 0
    done = model.complete("Once upon a time", max_tokens=8, temperature=0)
    assert done.prompt_tokens == len(model.tokenize("Once upon a time"))
    assert len(done.token_ids) == 8
    assert 0 < done.prompt_ms < math.inf and 0 < done.generation_ms < math.inf
    nothing = model.complete("Once upon a time", max_tokens=0)
    assert (nothing.prompt_ms, nothing.generation_ms, nothing.token_ids) == (0.0, 0.0, [])
    chat = model.complete_chat([{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.prompt_ms > 0 and chat.generation_ms > 0
