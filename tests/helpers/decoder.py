"""Teacher forcing and greedy decoding over a one-token-at-a-time test decoder."""

from __future__ import annotations

import numpy as np


class Decoder:
    """Subclasses provide ``reset()`` (empty the KV cache) and ``forward(token) -> logits``."""

    def reset(self) -> None:
        raise NotImplementedError

    def forward(self, token: int) -> np.ndarray:
        raise NotImplementedError

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Teacher-forced float64 logits [len(tokens), vocab] from a fresh cache."""
        self.reset()
        return np.stack([self.forward(t) for t in tokens])

    def greedy(self, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
        """n greedy tokens after ``prompt`` and the top1 - top2 logit margin of each choice."""
        self.reset()
        for t in prompt:
            logits = self.forward(t)
        tokens, margins = [], []
        for _ in range(n):
            top2 = np.sort(logits)[-2:]
            tokens.append(int(np.argmax(logits)))
            margins.append(float(top2[1] - top2[0]))
            if len(tokens) < n:
                logits = self.forward(tokens[-1])
        return tokens, margins
