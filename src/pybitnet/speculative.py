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
MAX_DRAFT_TOKENS = 32  # drafted tokens a step at most: a verifying pass stays far below a chunk


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
