"""`pybitnet accuracy`: every figure of the report can be checked. The comparison is checked on
logits whose answers are known; the reference rows (identical weights) must show no difference
at all; the engine rows must be the engine's (its kernels, its perplexity through Model) and
close to the float64 reference; the JSON is the report. Short texts keep it fast."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest

from pybitnet import generate, kernels
from pybitnet.cli import main
from pybitnet.convert.synthetic import make_model
from pybitnet.data import default_model_path
from pybitnet.errors import ModelError
from pybitnet.eval import accuracy as acc
from pybitnet.eval.perplexity import perplexity

TEXT = acc.BUILTIN_TEXT.split("\n\n")[0]  # the first paragraph: 117 tokens, 3 chunks of 32
N_CTX = 32


@pytest.fixture(scope="module")
def report() -> acc.AccuracyReport:
    return acc.measure_accuracy(text=TEXT, n_ctx=N_CTX)


def rows(report: acc.AccuracyReport, compute: str) -> list[acc.PathAccuracy]:
    return [r for r in report.paths if r.compute.startswith(compute)]


def test_compare_gives_the_known_answers():
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((5, 50)), rng.standard_normal((3, 50))]
    same = acc.compare(ref, ref)
    assert same == {"cosine_mean": 1.0, "cosine_min": 1.0, "rel_error": 0.0, "top1": 1.0}
    doubled = acc.compare([2 * r for r in ref], ref)  # same direction, error |2x - x| / |x|
    assert doubled["cosine_min"] == pytest.approx(1.0)
    assert doubled["rel_error"] == pytest.approx(1.0) and doubled["top1"] == 1.0
    negated = acc.compare([-r for r in ref], ref)
    assert negated["cosine_mean"] == pytest.approx(-1.0)
    assert negated["rel_error"] == pytest.approx(2.0) and negated["top1"] == 0.0
    one_row_off = [r.copy() for r in ref]
    one_row_off[1][2] = -one_row_off[1][2]
    assert acc.compare(one_row_off, ref)["top1"] == 7 / 8
    with pytest.raises(ModelError, match="cannot compare logits"):
        acc.compare(ref[:1], ref)


def test_the_report_covers_every_ternary_path_and_head(report):
    model = generate.load()
    head = model.weights.output.wtype.name
    rows = [(r.path, r.compute.split(" ")[0], r.output_head, r.kv_cache) for r in report.paths]
    assert rows == [
        (path, compute, h, kv)
        for path in acc.TERNARY_PATHS
        for compute, h, kv in (
            ("reference", head, "float64"),
            *(("engine", h, "f16") for h in (head, "q8", "q6_k", "q4_k")),
            ("engine", head, "f32"),
            ("engine", head, "q8_0"),
        )
    ]
    tokens = model.tokenize(TEXT)
    assert report.text_tokens == len(tokens)
    assert report.n_chunks == len(tokens) // N_CTX == 3
    assert report.positions == report.n_chunks * N_CTX
    assert report.kernel_tier == kernels.selected_tier()
    assert report.skipped == []


def test_reference_rows_show_no_difference_on_identical_weights(report):
    for r in rows(report, "reference"):
        assert r.weights_identical, r.path
        assert (r.cosine_mean, r.cosine_min, r.rel_error, r.top1) == (1.0, 1.0, 0.0, 1.0), r
        assert (r.ppl, r.ppl_change) == (report.reference_ppl, 0.0)
        assert r.kernels == []


# (cosine_min, rel_error, top1, |ppl_change|) bounds of the engine rows by output head: a few
# times what the embedded model shows (the K-quant heads: about 0.9975 / 0.015 for q6_k, 0.93 /
# 0.07 for q4_k, whose 4 bits move the logits of a 256-wide model visibly); the head as stored
# and q8, over any KV cache type: the default bounds (cosine_min about 0.9999 with an f32 cache,
# 0.9986 f16, 0.9998 q8_0: on this model, int8 rounding flips of the activations, which any
# change of the attention's output sets off, outweigh the cache's own rounding)
HEAD_BOUNDS = {"q6_k": (0.99, 0.04, 0.95, 0.02), "q4_k": (0.85, 0.15, 0.9, 0.05)}
DEFAULT_BOUNDS = (0.995, 0.05, 0.95, 0.02)


def test_engine_rows_are_the_engines_and_close_to_the_reference(report):
    tier = kernels.selected_tier()
    for r in rows(report, "engine"):
        assert r.compute == f"engine ({tier})"
        dense = "linear_int8" if r.output_head == "q8" else f"linear_{r.output_head.lower()}"
        assert {f"bitlinear_{tier}", f"{dense}_{tier}"} <= set(r.kernels), r.kernels
        cos_min, rel_error, top1, ppl_change = HEAD_BOUNDS.get(r.output_head, DEFAULT_BOUNDS)
        assert r.cosine_min > cos_min and r.top1 >= top1, r
        assert 0 < r.rel_error < rel_error, r
        assert abs(r.ppl_change) < ppl_change
    # the head as stored is the closest to the reference; 6 bits are closer than 4; a float32
    # cache closer than the smaller ones
    for path in acc.TERNARY_PATHS:
        stored, q8, q6_k, q4_k, f32, q8_0 = (r for r in rows(report, "engine") if r.path == path)
        assert stored.rel_error < min(q8.rel_error, q6_k.rel_error)
        assert q6_k.rel_error < q4_k.rel_error
        assert f32.rel_error < min(stored.rel_error, q8_0.rel_error)


def test_engine_perplexity_is_what_the_model_api_computes(report):
    """The identical weights in another format give the engine's perplexity on the model file,
    computed here through generate.Model instead of the accuracy module's own loop."""
    model = generate.load(n_ctx=N_CTX)
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    ppl = perplexity(model.logits, model.tokenize(TEXT), N_CTX, bos).ppl
    for r in rows(report, "engine"):
        if r.output_head not in ("q8", "q6_k", "q4_k") and r.kv_cache == "f16":  # the defaults
            assert r.ppl == pytest.approx(ppl, rel=1e-4), r.path


def test_the_json_is_the_report(report, tmp_path):
    path = tmp_path / "accuracy.json"
    acc.write_json(report, path)
    doc = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert doc == json.loads(json.dumps(dataclasses.asdict(report)))
    # per path: the reference, the engine with 4 heads, and with 2 more KV cache types
    assert len(doc["paths"]) == 3 * 7
    assert all(math.isfinite(row[k]) for row in doc["paths"] for k in ("ppl", "rel_error"))


def run_cli(monkeypatch, *args: object) -> int:
    monkeypatch.setattr(sys, "argv", ["pybitnet", *map(str, args)])
    try:
        main()
    except SystemExit as exit_info:
        return exit_info.code or 0
    return 0


def test_cli_preset_tiny_writes_valid_json(monkeypatch, capsys, tmp_path):
    text, out = tmp_path / "text.txt", tmp_path / "tiny.json"
    text.write_text("Once upon a time, there was a little girl named Lily.", encoding="utf-8")
    args = ["accuracy", "--preset", "tiny", "-c", "16", "--text", text, "--json-file", out]
    assert run_cli(monkeypatch, *args) == 0
    assert "synthetic preset tiny" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["model"] == "synthetic preset tiny" and doc["n_ctx"] == 16
    assert {(r["path"], r["output_head"]) for r in doc["paths"]} >= {("I2_S", "q8")}
    assert all(r["weights_identical"] for r in doc["paths"])


def test_a_model_without_ternary_tensors_has_the_heads_on_the_file(tmp_path):
    """SmolLM2's kind: one path, the file as it is; its reference row is the baseline itself."""
    path = make_model(tmp_path / "f16.gguf", "tiny", weight_type="F16", dim=256)
    report = acc.measure_accuracy(path, text=TEXT, n_ctx=16)
    assert {r.path for r in report.paths} == {"file"}
    rows = [(r.output_head, r.kv_cache) for r in report.paths]
    heads = [("F16", "f16"), ("q8", "f16"), ("q6_k", "f16"), ("q4_k", "f16")]
    assert rows == [("F16", "float64"), *heads, ("F16", "f32"), ("F16", "q8_0")]
    reference = report.paths[0]
    assert reference.rel_error == 0 and reference.ppl == report.reference_ppl
    stored, smaller, stored_f32 = report.paths[1], report.paths[2:5], report.paths[5]
    assert stored_f32.rel_error < 1e-5 and stored_f32.top1 == 1  # F16 head as stored, f32 cache
    assert stored.rel_error < 2e-3 and stored.top1 == 1  # the f16 cache: 4e-4 here
    # relative errors here: q8 0.010, q6_k 0.019, q4_k 0.071 (a random model: near-ties)
    assert all(stored.rel_error < r.rel_error < 0.15 for r in smaller)


def test_a_model_and_a_preset_are_refused():
    with pytest.raises(ModelError, match="not both"):
        acc.measure_accuracy(default_model_path(), preset="tiny")
