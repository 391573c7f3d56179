"""Perplexity by llama-perplexity's procedure, so that figures compare directly with the peers'.

The text's tokens (with BOS when the model adds one) are cut into n_tokens // n_ctx chunks of
n_ctx tokens, the remainder ignored. Each chunk is one fresh forward pass; its first token is
replaced by BOS when the model adds BOS; the logits at positions n_ctx/2 .. n_ctx-2 score the
tokens that follow them. The figure after each chunk is exp(mean NLL over all chunks so far).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pybitnet.errors import PyBitnetError

if TYPE_CHECKING:
    from pybitnet.generate import Model
    from pybitnet.tokenizer import Tokenizer


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    stderr: float  # as llama-perplexity prints it: sd of the NLLs / sqrt(count - 1) * ppl
    running_ppl: list[float]  # after each chunk
    n_chunks: int
    n_scored: int


def perplexity(
    logits_fn: Callable[[Sequence[int]], np.ndarray],
    tokens: Sequence[int],
    n_ctx: int,
    bos_id: int | None,
) -> PerplexityResult:
    """logits_fn(chunk) returns the (len(chunk), vocab) logits of one fresh forward pass."""
    if n_ctx < 4:
        raise PyBitnetError(f"perplexity context must be at least 4 tokens, got {n_ctx}")
    n_chunks = len(tokens) // n_ctx
    if n_chunks == 0:
        raise PyBitnetError(
            f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}; "
            "use a longer text or a smaller context"
        )
    first = n_ctx // 2
    nll = []
    running = []
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if bos_id is not None:
            chunk[0] = bos_id
        logits = np.asarray(logits_fn(chunk), dtype=np.float64)[first : n_ctx - 1]
        targets = np.asarray(chunk[first + 1 :])
        top = logits.max(axis=1)
        logsumexp = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        nll.append(logsumexp - logits[np.arange(len(targets)), targets])
        running.append(float(np.exp(np.concatenate(nll).mean())))
    all_nll = np.concatenate(nll)
    mean = all_nll.mean()
    var = max(float(np.mean(all_nll**2) - mean**2), 0.0)
    ppl = float(np.exp(mean))
    return PerplexityResult(
        ppl=ppl,
        stderr=float(np.sqrt(var / (len(all_nll) - 1)) * ppl),
        running_ppl=running,
        n_chunks=n_chunks,
        n_scored=len(all_nll),
    )


def text_perplexity(model: Model, text: str, n_ctx: int) -> PerplexityResult:
    """The perplexity of ``text`` under ``model``, in chunks of ``n_ctx`` tokens."""
    return perplexity(model.logits, model.tokenize(text), n_ctx, chunk_bos(model.tokenizer))


def chunk_bos(tokenizer: Tokenizer) -> int | None:
    """The id each chunk starts with: BOS when the model adds one, else None (the text's own)."""
    return tokenizer.bos_id if tokenizer.add_bos else None


def print_report(result: PerplexityResult) -> None:
    """As llama-perplexity prints it: the figure after each chunk, then the final estimate."""
    print(",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(result.running_ppl)))
    print(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.stderr:.5f}")
