"""A conversation long enough to need fitting to the embedded model's context."""

from __future__ import annotations

STORY = "Once upon a time there was a little cat named Tom who liked to play. " * 4


def story_history(n_turns: int) -> list[dict[str, str]]:
    """A system prompt, n_turns of a request and a story, and one more request."""
    messages = [{"role": "system", "content": "You tell stories."}]
    for i in range(n_turns):
        messages += [
            {"role": "user", "content": f"Tell me story {i}."},
            {"role": "assistant", "content": STORY},
        ]
    return [*messages, {"role": "user", "content": "One more, please."}]
