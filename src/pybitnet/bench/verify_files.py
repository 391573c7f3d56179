"""verify's rules that read the model file (model_sha256, replay): the file is the receipt's,
and re-running the workload on it gives the receipt's ids and kernels (see verify.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pybitnet import kernels
from pybitnet.bench.verify_common import Context, Result, Verdict, outcome
from pybitnet.errors import PyBitnetError
from pybitnet.sampling import SamplerConfig

# The most token positions (prompt ids and generated ids, over the batch) a replay runs: a
# receipt asks for its workload again, and the schema's bounds alone would allow 2**30. A 2B
# model at batch 32 with 2048 prompt and 2048 generated tokens is 131,072.
REPLAY_MAX_POSITIONS = 2**17


def replay_workload(
    doc: dict[str, Any], model_path: str | Path
) -> tuple[list[list[int]], set[str]]:
    """Generate from the receipt's prompts as the bench did (its decode repetition: the prompts
    decoded together as one batch, its KV cache type, the sampler and seed of the workload, its
    drafting and output head if any, generated_tokens ids, never stopping early); return the ids
    and the ids of the kernels that ran."""
    # the model stack, needed only here
    from pybitnet.bench.runner import decode_once
    from pybitnet.generate import load

    workload = doc["workload"]
    # a receipt from before the KV cache had a type was measured with float32 keys and values
    kv_cache = workload.get("kv_cache", "f32")
    model = load(model_path, output_head=workload.get("output_head"), kv_cache=kv_cache)
    sampler = SamplerConfig(**workload["sampler"], seed=workload["seed"])
    with kernels.profile() as prof:
        ids = decode_once(
            model.engine,
            workload["prompt_ids"],
            workload["generated_tokens"],
            sampler,
            workload.get("draft_tokens", 0),
        )[0]
    return ids, {k["id"] for k in prof.stats()}


def check_model_sha256(ctx: Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt names no model"
    model = ctx.model
    if not model.present:
        return Verdict.SKIP, f"{model.path} is not present: not checked (--model names the file)"
    if model.mismatch is not None:
        return Verdict.FAIL, model.mismatch
    return Verdict.PASS, f"{model.path} has the receipt's size and sha256 {model.sha256[:16]}..."


def check_replay(ctx: Context) -> Result:
    if not ctx.generation:
        return Verdict.SKIP, "a kernels receipt has no generation to replay"
    model = ctx.model
    if not model.present:
        return Verdict.FAIL, f"cannot replay: {model.path} is not present"
    if model.mismatch is not None:
        return Verdict.FAIL, f"cannot replay: {model.mismatch}"
    workload = ctx.doc["workload"]
    if "prompt_ids" not in workload:
        return Verdict.FAIL, "cannot replay: the receipt records no workload.prompt_ids"
    prompts, generated = workload["prompt_ids"], workload["generated_tokens"]
    prompt_ids = sum(len(p) for p in prompts)
    if prompt_ids + len(prompts) * generated > REPLAY_MAX_POSITIONS:
        return Verdict.FAIL, (
            f"cannot replay: workload.prompt_ids ({len(prompts)} prompts, {prompt_ids:,} ids) "
            f"and workload.generated_tokens = {generated:,} make "
            f"{prompt_ids + len(prompts) * generated:,} token positions, more than the "
            f"{REPLAY_MAX_POSITIONS:,} a replay runs"
        )
    try:
        ids, kernel_ids = replay_workload(ctx.doc, model.path)
    except (PyBitnetError, ImportError) as exc:
        return Verdict.FAIL, f"the replay could not run: {type(exc).__name__}: {exc}"
    problems = []
    claimed_ids = ctx.doc["outputs"]["token_ids"]
    if len(ids) != len(claimed_ids):
        problems.append(f"the replay made {len(ids)} sequences, the receipt {len(claimed_ids)}")
    for i, (got, want) in enumerate(zip(ids, claimed_ids, strict=False)):
        if got != want:
            at = _first_difference(got, want)
            problems.append(
                f"sequence {i} differs from position {at}: replay {got[at : at + 4]}..., "
                f"receipt {want[at : at + 4]}..."
            )
    claimed_kernels = {k["id"] for k in ctx.doc["kernels"]}
    if kernel_ids != claimed_kernels:
        hint = f" ({kernels.ENV} picks the tier)" if kernel_ids else ""
        problems.append(
            f"the replay ran kernels {sorted(kernel_ids)}, the receipt lists "
            f"{sorted(claimed_kernels)}{hint}"
        )
    return outcome(problems, f"the replay generated the same ids with kernels {sorted(kernel_ids)}")


def _first_difference(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n
