"""Accuracy of every ternary compute path against the float64 reference, on the same weights.

    report = measure_accuracy()            # the embedded model, the built-in text, 128-token chunks
    print_report(report); write_json(report, "accuracy.json")

A model without ternary weights (SmolLM2) has one path, "file": the output heads on the file as
it is. The model's ternary weights are written into each ternary format in a temporary GGUF
(eval/reencode.py says how each format holds them exactly); a format that cannot hold a tensor's
shape or scales is skipped with a note. After writing, every ternary tensor of the new file is
dequantized and compared with the model's: `weights_identical` is that check, not an assumption.

On each file the float64 reference (docs/SPEC.md numerics) and the engine (the selected tier,
with each output head: as stored, int8 rows "q8", requantized "q6_k" and "q4_k", over the
default f16 KV cache; and with the head as stored, over each other KV cache type: f32, q8_0)
run the llama-perplexity procedure over a text. Every row compares the logits at every position of
every chunk with a float64 reference: engine rows with the reference on the same file; reference
rows with the reference on the model's own file, which with identical weights must give a
cosine of 1 and an error of 0 (a check of the re-encoding and of the comparison itself).
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pybitnet import formats, kernels
from pybitnet.convert.synthetic import make_model
from pybitnet.data import default_model_path
from pybitnet.decode import ForwardPass
from pybitnet.engine import Engine
from pybitnet.engine.forward import KV_CACHE_DEFAULT, OUTPUT_HEADS, output_head_problem
from pybitnet.errors import FormatError, ModelError
from pybitnet.eval.perplexity import PerplexityResult, chunk_bos, perplexity
from pybitnet.eval.reencode import reencode, same_weights
from pybitnet.generate import Model
from pybitnet.kernels.layout import KV_CACHE_TYPES, kv_cache_problem
from pybitnet.model.reference import ReferenceModel

TERNARY_PATHS = formats.TERNARY  # every ternary format of the table

# The default text: a short story in the style the embedded TinyStories model was trained on,
# written for this file.
BUILTIN_TEXT = """\
Once upon a time, there was a little girl named Lily. She lived in a small house near the woods \
with her mom, her dad and a big brown dog called Max. Every morning, Lily and Max went outside \
to play in the garden. They liked to run after the butterflies and look for shiny stones.

One day, Lily saw a red ball under a tree. "Look, Max!" she said. "A ball!" Max barked and \
wagged his tail. Lily threw the ball, and Max ran to get it. He brought it back, and they played \
again and again until the sun was high in the sky.

Then Lily heard a small sound. It came from the bushes. She was a little scared, but she was \
brave too. She looked behind the bushes and saw a tiny bird. The bird could not fly, because its \
wing was hurt. Lily felt sad for the bird. She picked it up very gently and took it home to her \
mom.

Mom smiled and said, "You are a kind girl, Lily. We will help the bird get better." They put the \
bird in a warm box with some soft grass and gave it water and seeds. Every day, Lily sat next to \
the box and sang a happy song. After a few days, the bird could move its wing again.

One sunny morning, Lily took the box outside. The bird hopped to the edge, looked at Lily and \
flew up into the blue sky. Lily waved and laughed. Max barked at the bird, and the bird sang a \
song back to them. Lily was very happy. She learned that being kind to others makes everyone \
feel good. From that day on, the little bird came back to the garden every morning to sing for \
Lily and Max.
"""


@dataclass(frozen=True)
class PathAccuracy:
    """One compute path over one weight format, compared with a float64 reference."""

    path: str  # the ternary weight format
    compute: str  # "reference (float64)" or "engine (<tier>)"
    output_head: str  # the output layer as stored (its type), "q8" (int8 rows), "q6_k", "q4_k"
    kv_cache: str  # the KV cache's element type: f16, f32, q8_0 (the reference's: float64)
    compared_with: str  # which reference run the figures are relative to
    weights_identical: bool  # the format holds exactly the model's weights (checked)
    kernels: list[str]  # the registry's kernel ids that ran (the reference uses none)
    cosine_mean: float  # cosine similarity of the logits, per position
    cosine_min: float
    rel_error: float  # ||logits - reference|| / ||reference|| over all positions
    top1: float  # fraction of positions whose argmax agrees with the reference's
    ppl: float
    ppl_change: float  # ppl / reference ppl - 1


@dataclass(frozen=True)
class AccuracyReport:
    model: str
    architecture: str
    kernel_tier: str
    text_tokens: int
    n_ctx: int
    n_chunks: int
    positions: int  # logit rows compared per path
    reference_ppl: float  # the float64 reference on the model's own file
    paths: list[PathAccuracy]
    skipped: list[str]  # one note per path or output head that was not measured, saying why


def measure_accuracy(
    model: str | Path | None = None,
    *,
    preset: str | None = None,
    text: str | None = None,
    n_ctx: int = 128,
    step: Callable[[str], None] | None = None,
) -> AccuracyReport:
    """Measure every ternary path of ``model`` (default: the embedded one) or of a synthetic
    ``preset`` model (made in a temporary directory) over ``text`` (default: BUILTIN_TEXT) in
    chunks of ``n_ctx`` tokens. ``step`` is told what runs next (for a progress display)."""
    if model is not None and preset is not None:
        raise ModelError("give a model file or a synthetic preset, not both")
    with tempfile.TemporaryDirectory(prefix="pybitnet-accuracy-") as tmp:
        workdir = Path(tmp)
        if preset is not None:
            path = make_model(workdir / f"synthetic-{preset}.gguf", preset)
            name = f"synthetic preset {preset}"
        else:
            path = Path(model) if model is not None else default_model_path()
            name = str(path)
        return _measure(
            path, name, text if text is not None else BUILTIN_TEXT, n_ctx, workdir, step
        )


def _measure(
    path: Path,
    name: str,
    text: str,
    n_ctx: int,
    workdir: Path,
    step: Callable[[str], None] | None,
) -> AccuracyReport:
    step = step or (lambda _: None)
    source = _source_model(path, n_ctx)
    ternary = [n for n, info in source.file.tensors.items() if info.wtype.ternary]
    tokens = source.tokenize(text)
    bos = chunk_bos(source.tokenizer)

    def run(model: ForwardPass) -> tuple[PerplexityResult, list[np.ndarray]]:
        return _run(model, tokens, n_ctx, bos)

    step("float64 reference on the model file")
    baseline = run(ReferenceModel(source.weights))
    rows, skipped = [], []
    engines = []  # (output head, KV cache type) of each engine row
    for head in OUTPUT_HEADS:
        problem = output_head_problem(source.weights, head)
        engines += [] if problem else [(head, KV_CACHE_DEFAULT)]
        skipped += [problem] if problem else []
    for kv in KV_CACHE_TYPES:
        problem = kv_cache_problem(kv, source.config.head_dim)
        engines += [] if problem or kv == KV_CACHE_DEFAULT else [(None, kv)]
        skipped += [problem] if problem else []
    if not ternary:  # no ternary path: the output heads on the file as it is
        rows += _path_rows(source, "file", True, engines, run, baseline, step, reference=baseline)
    for fmt in map(formats.weight_type, TERNARY_PATHS if ternary else ()):
        target = workdir / f"{fmt.name.lower()}.gguf"
        step(f"{fmt.name}: re-encoding the weights")
        try:
            reencode(source.file, fmt, target)
        except FormatError as exc:
            skipped.append(f"{fmt.name}: {exc}")
            continue
        m = Model(target, n_ctx=n_ctx)
        identical = same_weights(source.file, m.file, ternary)
        rows += _path_rows(m, fmt.name, identical, engines, run, baseline, step)
        m.file.close()
        del m
        target.unlink()  # one re-encoded model on disk at a time
    source_ppl = baseline[0]
    return AccuracyReport(
        model=name,
        architecture=source.config.arch,
        kernel_tier=kernels.selected_tier(),
        text_tokens=len(tokens),
        n_ctx=n_ctx,
        n_chunks=source_ppl.n_chunks,
        positions=source_ppl.n_chunks * n_ctx,
        reference_ppl=source_ppl.ppl,
        paths=rows,
        skipped=skipped,
    )


def _source_model(path: Path, n_ctx: int) -> Model:
    """The model to measure, checked: the context fits it."""
    source = Model(path, n_ctx=n_ctx)
    if n_ctx > source.config.context_length:
        raise ModelError(
            f"{path}: a context of {n_ctx} tokens exceeds the model's context_length "
            f"{source.config.context_length}"
        )
    return source


def _path_rows(
    m: Model,
    path: str,
    weights_identical: bool,
    engines: Sequence[tuple[str | None, str]],
    run: Callable[[ForwardPass], tuple[PerplexityResult, list[np.ndarray]]],
    baseline: tuple[PerplexityResult, list[np.ndarray]],
    step: Callable[[str], None],
    reference: tuple[PerplexityResult, list[np.ndarray]] | None = None,
) -> list[PathAccuracy]:
    """One ternary path's rows: the float64 reference on its file ``m`` (``reference`` when
    already run) against ``baseline`` (the reference on the model file), then the engine with
    each (output head, KV cache type) of ``engines`` against it."""
    row = functools.partial(PathAccuracy, path=path, weights_identical=weights_identical)
    step(f"{path}: float64 reference")
    ppl, logits = reference or run(ReferenceModel(m.weights))
    rows = [
        row(
            compute="reference (float64)",
            output_head=m.weights.output.wtype.name,
            kv_cache="float64",
            compared_with="reference on the model file",
            kernels=[],
            **compare(logits, baseline[1]),
            ppl=ppl.ppl,
            ppl_change=ppl.ppl / baseline[0].ppl - 1,
        )
    ]
    for head, kv in engines:
        label = head or m.weights.output.wtype.name
        step(f"{path}: engine, output head {label}, KV cache {kv}")
        with kernels.profile() as prof:
            engine = Engine(m.weights, output_head=head, kv_cache=kv)
            engine_ppl, engine_logits = run(engine)
        if engine.output_note:  # llama.cpp's fallback type for rows not whole 256-blocks
            label = f"{head}:{engine.output_type}"
        rows.append(
            row(
                compute=f"engine ({engine.tier})",
                output_head=label,
                kv_cache=kv,
                compared_with="reference on this file",
                kernels=[k["id"] for k in prof.stats()],
                **compare(engine_logits, logits),
                ppl=engine_ppl.ppl,
                ppl_change=engine_ppl.ppl / ppl.ppl - 1,
            )
        )
        del engine, engine_logits
    return rows


def _run(
    model: ForwardPass, tokens: Sequence[int], n_ctx: int, bos: int | None
) -> tuple[PerplexityResult, list[np.ndarray]]:
    """Perplexity by llama-perplexity's procedure, and the logits of every chunk it ran."""
    logits: list[np.ndarray] = []

    def chunk_logits(chunk: Sequence[int]) -> np.ndarray:
        logits.append(model.forward(chunk, model.new_cache(n_ctx)))
        return logits[-1]

    return perplexity(chunk_logits, tokens, n_ctx, bos), logits


def compare(logits: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict[str, float]:
    """cosine_mean, cosine_min, rel_error and top1 of logits against reference, position by
    position (rows of the concatenated chunks), in float64."""
    a = np.concatenate(logits).astype(np.float64)
    b = np.concatenate(reference).astype(np.float64)
    if a.shape != b.shape:
        raise ModelError(f"cannot compare logits of shape {a.shape} with {b.shape}")
    # One formula for the three products, so that equal rows give a cosine of exactly 1.
    ab, aa, bb = (np.einsum("ij,ij->i", x, y) for x, y in ((a, b), (a, a), (b, b)))
    cosine = ab / np.sqrt(aa * bb)
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "rel_error": float(np.sqrt(np.square(a - b).sum() / bb.sum())),
        "top1": float(np.mean(a.argmax(axis=1) == b.argmax(axis=1))),
    }


def print_report(report: AccuracyReport, console: Console | None = None) -> None:
    """The report as a table, with what each row is compared with and the paths skipped."""
    console = console or Console()
    title = (
        f"{escape(report.model)} ({report.architecture}): {report.n_chunks} chunks of "
        f"{report.n_ctx} tokens ({report.text_tokens} in the text), float64 reference PPL "
        f"{report.reference_ppl:.6g}"
    )
    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    columns = ["path", "compute", "head", "KV", "cos mean", "cos min", "rel err", "top-1", "PPL"]
    for column in [*columns, "ΔPPL"]:
        table.add_column(column, justify="left" if column in columns[:4] else "right")
    for r in report.paths:
        table.add_row(
            r.path,
            r.compute.split(" ")[0],
            r.output_head,
            r.kv_cache,
            f"{r.cosine_mean:.7f}",
            f"{r.cosine_min:.7f}",
            f"{r.rel_error:.2e}",
            f"{r.top1:.2%}",
            f"{r.ppl:.6g}",
            f"{r.ppl_change:+.3%}",
        )
    console.print(table)
    same = {r.path: "yes" if r.weights_identical else "NO" for r in report.paths}
    linear = sorted({k for r in report.paths for k in r.kernels if "linear" in k})
    console.print(
        f"Over {report.positions} logit rows. reference: float64 numpy on the re-encoded file, "
        "against the same on the model file (cosine 1, error 0 when the weights are the same). "
        f"engine: the {report.kernel_tier} kernels ({', '.join(linear) or 'none'}), against the "
        "float64 reference on the same file. head: the output layer as stored, q8 (int8 rows), "
        "or requantized at load (q6_k, q4_k). KV: the KV cache's element type (--kv-cache). "
        "Same weights as the model file (dequantized and "
        "compared): " + ", ".join(f"{path} {verdict}" for path, verdict in same.items()) + "."
    )
    for note in report.skipped:
        console.print(f"Not measured: {escape(note)}")


def write_json(report: AccuracyReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
