"""Prompt-lookup drafting for speculative decoding (docs/SPEC.md §5): no second model.

Text that copies or edits a passage of its prompt repeats long runs of ids already in the
sequence. The draft for the next step is what followed the latest earlier occurrence of the
sequence's last few ids; decode.py has the target verify it in one forward pass, so a correct
guess yields several tokens for one read of the weights, and a wrong one costs only the extra
rows of that pass (the output is the target's, token for token, either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

NGRAM_MAX = 3  # the longest suffix looked up; longer ones rarely change the match
# Drafted tokens a step at most: a pass of up to 16 rows (csrc/float_tiles.h's kStreamRows) sums
# each row of a dense matmul in the order a pass of one row does; more rows take other tiles.
MAX_DRAFT_TOKENS = 15


class PromptLookup:
    """Drafts by prompt lookup, as many tokens as the last verification suggests will hold:
    after a miss one more than were accepted, after a full hit twice as many, at most `limit`.
    A pass costs more with each row (about 2x for 8 drafts on a small model), so a sequence
    whose drafts keep missing drafts one token a step, and one that copies drafts many."""

    def __init__(self, limit: int) -> None:
        self.limit = self.length = limit

    def draft(self, ids: Sequence[int], room: int) -> list[int]:
        """The next draft for the sequence ids, of `room` tokens at most."""
        return prompt_lookup(ids, min(self.length, room))

    def verified(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.length = min(self.limit, 2 * drafted if accepted == drafted else accepted + 1)


def prompt_lookup(ids: Sequence[int], max_tokens: int) -> list[int]:
    """Up to max_tokens ids that followed the latest earlier occurrence of the longest suffix
    of ids (NGRAM_MAX ids down to 1) found earlier in ids; [] when none is."""
    if max_tokens <= 0 or len(ids) < 2:
        return []
    seq = np.asarray(ids, np.int64)
    for n in range(min(NGRAM_MAX, seq.size - 1), 0, -1):
        # Windows of seq[:-1]: each one ends before the last id, so an id follows it.
        hits = np.flatnonzero((sliding_window_view(seq[:-1], n) == seq[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return seq[start : start + max_tokens].tolist()
    return []
