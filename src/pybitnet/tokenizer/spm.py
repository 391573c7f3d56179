"""SentencePiece-style BPE (`tokenizer.ggml.model = llama`), as llama.cpp's llm_tokenizer_spm.

It merges the adjacent pair whose token has the highest score first (leftmost on ties), and
characters left without a token fall back to `<0xNN>` byte tokens. HF `tokenizers` has no
score-ordered BPE, so this one is written here.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np

from pybitnet.errors import TokenizerError


class ScoredBPE:
    """Encodes text whose spaces are already written as `▁` (the caller adds the space prefix)."""

    def __init__(self, ids: Mapping[str, int], scores: np.ndarray, source: str) -> None:
        self._ids = ids
        self._scores = scores
        self._source = source
        self._byte_ids = [self._byte_token(b) for b in range(256)]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`: each merged symbol's token, or its bytes' tokens."""
        ids: list[int] = []
        for symbol in self._merged(text):
            token_id = self._ids.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            for b in symbol.encode():
                if self._byte_ids[b] is None:
                    raise TokenizerError(
                        f"{self._source}: cannot encode {symbol!r}: no token <0x{b:02X}>"
                    )
                ids.append(self._byte_ids[b])
        return ids

    def _merged(self, text: str) -> list[str]:
        """llama.cpp's llm_tokenizer_spm_session: merge the best-scoring adjacent pair first."""
        symbols = list(text)
        nxt = [*range(1, len(symbols)), -1]
        prev = list(range(-1, len(symbols) - 1))
        queue: list[tuple[float, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left != -1 and right != -1:
                merged = symbols[left] + symbols[right]
                token_id = self._ids.get(merged)
                if token_id is not None:
                    heapq.heappush(queue, (-float(self._scores[token_id]), left, right, merged))

        for i in range(1, len(symbols)):
            push(i - 1, i)
        while queue:
            _, left, right, merged = heapq.heappop(queue)
            if not symbols[right] or symbols[left] + symbols[right] != merged:
                continue  # one side was merged since this pair was queued
            symbols[left], symbols[right] = merged, ""
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])
        return [s for s in symbols if s]

    def _byte_token(self, b: int) -> int | None:
        """The token byte fallback uses for byte `b` (llama.cpp's byte_to_token)."""
        found = self._ids.get(f"<0x{b:02X}>")
        return self._ids.get(chr(b)) if found is None and b < 0x80 else found
