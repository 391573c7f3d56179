"""`pybitnet bench` and `pybitnet bench kernels`: real, short benchmarks whose receipts must
validate, pass every rule of verify, and hold figures that follow from their own samples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pybitnet import generate, kernels
from pybitnet.bench import kernels_bench as kb
from pybitnet.bench import peak_rss, runner
from pybitnet.bench.gate import Verdict as GateVerdict
from pybitnet.bench.gate import compare_receipts
from pybitnet.bench.receipt import ITL_PERCENTILES, load_receipt, percentiles, rebuild_run
from pybitnet.bench.verify import Verdict, bitlinear_calls_per_pass, check_receipt
from pybitnet.cli import app
from pybitnet.errors import BenchError
from pybitnet.model.reference import ReferenceModel

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = runner.Workload(prompt_lengths=(16,), generate=8, repetitions=2, warmup=1, threads=(1,))


@pytest.fixture(scope="module")
def model() -> generate.Model:
    return generate.load()


@pytest.fixture(scope="module")
def doc(model) -> dict:
    return runner.run_bench(model, WORKLOAD)


def test_generation_receipt_passes_every_verify_rule(doc, model):
    report = check_receipt(json.loads(json.dumps(doc)), replay=False)
    failed = [c for c in report.checks if c.verdict == Verdict.FAIL]
    assert not failed, failed
    assert doc["model"]["path"] == str(model.path.resolve())
    assert doc["host"]["threads"] == [1]


def test_generation_runs_follow_from_their_samples(doc):
    names = [(run["name"], run["kind"]) for run in doc["runs"]]
    assert names == [("pp16", "prefill"), ("tg8", "decode")]
    for run in doc["runs"]:
        assert rebuild_run(run) == run
        n = run["n_tokens"]
        np.testing.assert_allclose(
            run["samples"]["tokens_per_second"], n * 1000 / np.array(run["samples"]["ms"])
        )
    prefill, decode = doc["runs"]
    assert np.all(np.array(prefill["samples"]["ttft_ms"]) >= prefill["samples"]["ms"])
    assert decode["n_tokens"] == 8
    for i, gaps in enumerate(decode["inter_token_ms"]):
        assert len(gaps) == 8  # one gap per decode step after the first token
        assert decode["samples"]["ms"][i] == pytest.approx(sum(gaps))
        want = percentiles(gaps, ITL_PERCENTILES)
        got = [decode["samples"][f"itl_p{q}_ms"][i] for q in ITL_PERCENTILES]
        assert got == pytest.approx(want)
    assert min(decode["samples"]["peak_rss_mb"]) > 10


def test_generation_outputs_are_what_generation_returns(doc, model):
    workload = doc["workload"]
    [prompt] = runner.bench_prompts(model, 16, 0)
    assert workload["prompt_ids"] == [prompt]
    assert prompt[0] == model.tokenizer.bos_id
    assert not set(prompt[1:]) & model.tokenizer.eog_ids  # the random ids after BOS (itself one)
    completion = model.complete(prompt, max_tokens=8, seed=0, **workload["sampler"])
    assert doc["outputs"]["token_ids"] == [completion.token_ids]
    assert doc["deterministic"] is True


def test_generation_kernels_come_from_the_registry(doc, model):
    ids = [k["id"] for k in doc["kernels"]]
    assert ids and set(ids) <= kernels.known_ids()
    with kernels.profile() as prof:  # the same workload's calls, warmups included
        runner.run_bench(model, WORKLOAD)
    timed = WORKLOAD.repetitions / (WORKLOAD.repetitions + WORKLOAD.warmup)
    assert {k["id"]: k["calls"] for k in doc["kernels"]} == {
        s["id"]: s["calls"] * timed for s in prof.stats()
    }
    tier = kernels.selected_tier()
    assert tier != "numpy", "the native module is not built: the bench would measure numpy"
    assert doc["compute_path"] == "native"
    output = f"linear_{model.weights.output.wtype.name.lower()}"  # the output layer's format
    engine_ops = {"bitlinear", "embedding", "rmsnorm", "rope", "attention", "gated", output}
    assert set(ids) == {f"{op}_{tier}" for op in engine_ops}


def test_bitlinear_calls_per_pass_follow_the_engine(model):
    """verify's count of BitLinear calls per forward pass (fused q/k/v and gate/up) is what the
    engine makes: one pass of one token, and one pass of a batch of three sequences."""
    engine = model.engine
    ternary = sum(t.wtype.ternary for t in model.file.tensors.values())
    fewest, most = bitlinear_calls_per_pass(ternary)
    for batch in (1, 3):
        items = [([1, 2, 3], engine.new_cache(8)) for _ in range(batch)]
        with kernels.profile() as prof:
            engine.forward_batch(items)
        calls = {s["id"].rpartition("_")[0]: s["calls"] for s in prof.stats()}
        assert calls["bitlinear"] == fewest == most == 4 * model.config.n_layers
    assert ternary == 7 * model.config.n_layers


def test_reference_kernels_make_a_reference_receipt(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "numpy")
    doc = runner.run_bench(generate.load(), WORKLOAD)
    assert doc["compute_path"] == "numpy"
    assert all(k["id"].endswith("_numpy") for k in doc["kernels"])
    assert doc["host"]["cpu_features_used"] == []
    assert not failed_rules(doc)


class Unregistered:
    """The float64 reference forward pass, which calls no kernel of the registry."""

    kv_cache = "f32"  # a name for the receipt's workload, which is refused all the same

    def __init__(self, model: generate.Model) -> None:
        self.reference = ReferenceModel(model.weights)

    def new_cache(self, n_ctx: int | None = None):
        return self.reference.new_cache(n_ctx)

    def forward_batch(self, items, *, rows=None):
        return self.reference.forward_batch(items, rows=rows)


def test_a_forward_pass_outside_the_registry_is_refused():
    plain = generate.load()
    plain.engine = Unregistered(plain)
    with pytest.raises(BenchError, match="no kernel of the registry ran"):
        runner.run_bench(plain, WORKLOAD)


@pytest.mark.parametrize("kv_cache", ["f32", "q8_0"])
def test_the_receipt_records_the_kv_cache_and_replay_uses_it(kv_cache):
    doc = runner.run_bench(generate.load(kv_cache=kv_cache), WORKLOAD)
    assert doc["workload"]["kv_cache"] == kv_cache
    assert not failed_rules(doc, replay=True)
    if kv_cache == "f32":  # a receipt from before the cache had a type replays with f32
        del doc["workload"]["kv_cache"]
        assert not failed_rules(doc, replay=True)


def failed_rules(doc: dict, **options) -> dict[str, str]:
    report = check_receipt(json.loads(json.dumps(doc)), **options)
    return {c.rule: c.detail for c in report.checks if c.verdict == Verdict.FAIL}


BATCH = runner.Workload(
    prompt_lengths=(8,), generate=6, repetitions=2, warmup=0, threads=(1,), batch=3
)


def test_a_batch_is_decoded_together_with_aggregate_throughput(model):
    doc = runner.run_bench(model, BATCH)
    assert not failed_rules(doc, replay=True)
    prompts = doc["workload"]["prompt_ids"]
    assert prompts == runner.bench_prompts(model, 8, 0, 3) and len({tuple(p) for p in prompts}) == 3
    prefill, decode = doc["runs"]
    assert (prefill["n_tokens"], decode["n_tokens"]) == (3 * 8, 3 * 6)
    assert [len(gaps) for gaps in decode["inter_token_ms"]] == [6, 6]  # one gap per step
    np.testing.assert_allclose(
        decode["samples"]["tokens_per_second"],
        3 * 6 * 1000 / np.array([sum(g) for g in decode["inter_token_ms"]]),
    )
    # each sequence gets what generating from its prompt alone gives
    for prompt, ids in zip(prompts, doc["outputs"]["token_ids"], strict=True):
        assert ids == model.complete(prompt, max_tokens=6, temperature=0, seed=0).token_ids
    # one BitLinear call per layer group per pass, whatever the batch: 1 prefill + 6 steps
    calls = {k["id"].rpartition("_")[0]: k["calls"] for k in doc["kernels"]}
    assert calls["bitlinear"] == 2 * (1 + 1 + 6) * 4 * model.config.n_layers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "batch"),
        ({"prompt_lengths": (0,)}, "prompt length"),
        ({"prompt_lengths": ()}, "prompt lengths"),
        ({"threads": (0,)}, "thread count"),
        ({"repetitions": 0}, "repetitions"),
        ({"generate": -1}, "tokens to generate"),
    ],
)
def test_bad_workloads_are_refused(options, message):
    with pytest.raises(BenchError, match=message):
        runner.Workload(**options)


def test_a_workload_longer_than_the_context_is_refused(model):
    too_long = runner.Workload(prompt_lengths=(model.n_ctx - 4,), generate=8)
    with pytest.raises(BenchError, match=f"context of {model.n_ctx + 4} tokens"):
        runner.run_bench(model, too_long)


def test_peak_rss_is_the_peak_of_the_block():
    with peak_rss.PeakRss() as before:
        pass
    with peak_rss.PeakRss() as during:
        block = np.ones(200_000_000 // 8)
        del block
    with peak_rss.PeakRss() as after:
        pass
    assert during.mb - before.mb > 190
    assert after.mb < during.mb - 190  # the peak was reset


def test_peak_rss_by_polling(monkeypatch):
    monkeypatch.setattr(peak_rss, "_reset_peak_rss", lambda: False)
    with peak_rss.PeakRss() as rss:
        block = np.ones(100_000_000 // 8)
        while rss.mb < 100:  # the poller must see it
            pass
        del block
    assert rss.mb > 100


def test_preset_model_is_made_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYBITNET_CACHE", str(tmp_path))
    path = runner.preset_model("tiny")
    assert path.parent == tmp_path and "tiny" in path.name and "0.1.0" in path.name
    stamp = path.stat().st_mtime_ns
    assert runner.preset_model("tiny") == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left
    with pytest.raises(BenchError, match="unknown preset 'huge'"):
        runner.preset_model("huge")


def test_criterion_stats():
    ms = [1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.6, 5.0]
    s = kb.criterion_stats(ms)
    assert s.median_ms == 1.0
    # |x - 1|: 0, .1, .1, 0, .2, .2, 0, .6, 4 -> median .1
    assert s.mad_ms == pytest.approx(0.14826)
    assert s.cv == pytest.approx(np.std(ms, ddof=1) / np.mean(ms))
    # sorted: .8 .9 1 1 1 1.1 1.2 1.6 5; quartiles 1 and 1.2 (linear interpolation), IQR .2:
    # mild beyond 1.5 (1.6), severe beyond 1.8 (5)
    assert (s.mild_outliers, s.severe_outliers) == (1, 1)
    assert kb.criterion_stats([1.0, 1.0, 1.0, 1.0, 1.5]).severe_outliers == 1


KERNEL_WORKLOAD = kb.KernelWorkload(
    shapes=((256, 512),),
    batches=(1, 4),
    codecs=("I2_S", "Q8_0"),
    codec_shape=(128, 256),
    threads=(1,),
    samples=5,
    warmup=1,
)


@pytest.fixture(scope="module")
def kernels_doc() -> dict:
    return kb.run_kernel_bench(KERNEL_WORKLOAD)


def test_kernels_receipt_passes_every_verify_rule(kernels_doc):
    doc = kernels_doc
    assert not failed_rules(doc)
    assert len(doc["runs"]) == kb.case_count(KERNEL_WORKLOAD) == 3 * 2 + 2 * 2
    names = {run["name"] for run in doc["runs"]}
    assert {"gemv I2_S 256x512", "gemm4 TQ1_0 256x512"} <= names
    listed = {k["id"]: k["calls"] for k in doc["kernels"]}
    for run in doc["runs"]:
        assert rebuild_run(run) == run
        assert run["elements"] == np.prod(run["shape"])
        if run["kind"] == "kernel":
            assert run["kernel_id"] in listed
    bitlinear = kernels.get("bitlinear").id
    assert listed == {bitlinear: 6 * KERNEL_WORKLOAD.samples}
    assert doc["compute_path"] == "native" and not bitlinear.endswith("_numpy")


def test_codec_runs_time_the_formats_quantize_and_dequantize(kernels_doc):
    codecs = [run for run in kernels_doc["runs"] if run["kind"] == "codec"]
    assert [(r["name"], r["format"], r["direction"]) for r in codecs] == [
        ("quantize I2_S 128x256", "I2_S", "quantize"),
        ("dequantize I2_S 128x256", "I2_S", "dequantize"),
        ("quantize Q8_0 128x256", "Q8_0", "quantize"),
        ("dequantize Q8_0 128x256", "Q8_0", "dequantize"),
    ]
    for run in codecs:
        assert run["shape"] == [128, 256] and run["elements"] == 128 * 256
        np.testing.assert_allclose(
            run["samples"]["elements_per_second"], 128 * 256 * 1000 / np.array(run["samples"]["ms"])
        )


def test_codec_runs_are_verified_and_gated(kernels_doc):
    doc = json.loads(json.dumps(kernels_doc))
    report = compare_receipts(doc, doc)
    assert report.verdict == GateVerdict.PASS
    gated = {(c.run, c.metric) for c in report.comparisons}
    assert ("dequantize Q8_0 128x256", "elements_per_second") in gated
    run = next(r for r in doc["runs"] if r["name"] == "quantize Q8_0 128x256")
    run["format"] = "Q9_0"
    assert (
        "codec runs of formats pybitnet.formats does not know: ['Q9_0']"
        in (failed_rules(doc)["kernel_ids"])
    )
    run["format"] = "Q8_0"
    run["samples"]["elements_per_second"][0] *= 2
    assert set(failed_rules(doc)) == {"summaries"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"formats": ("F16",)}, "not ternary"),
        ({"shapes": ((256, 100),)}, "shape 256x100"),
        ({"codecs": ("Q9_0",)}, "codec format 'Q9_0' is unknown"),
        ({"codec_shape": (16, 48)}, "shape 16x48 cannot be stored as Q8_0"),
        ({"samples": 0}, "samples"),
        ({"batches": ()}, "batches"),
    ],
)
def test_bad_kernel_workloads_are_refused(options, message):
    with pytest.raises(BenchError, match=message):
        kb.KernelWorkload(**{"codecs": ("F32", "Q8_0")} | options)


def test_cli_bench_kernels_writes_a_receipt(tmp_path):
    out = tmp_path / "k.json"
    args = ["bench", "kernels", "--shapes", "256x256", "--formats", "I2_S", "--batches", "1"]
    args += ["--codecs", "TQ2_0", "--codec-shape", "64x256"]
    args += ["--samples", "3", "--warmup", "0", "-t", "1", "--receipt", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "gemv I2_S" in result.output and "quantize TQ2_0 64x256" in result.output
    doc = load_receipt(out)
    assert doc["kind"] == "kernels" and [r["kind"] for r in doc["runs"]][-2:] == ["codec"] * 2
    bad = CliRunner().invoke(app, ["bench", "kernels", "--codec-shape", "64"])
    assert bad.exit_code == 2 and "--codec-shape" in bad.output


def test_cli_bench_refuses_a_model_and_a_preset():
    result = CliRunner().invoke(app, ["bench", "--model", "x.gguf", "--preset", "tiny"])
    assert result.exit_code == 2
    assert "not both" in result.output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the CI script is a bash script")
def test_ci_script_benches_verifies_and_gates(tmp_path):
    # This checkout on both sides (no base build: that needs PyPI), two pairs to keep it short:
    # too few for a claim, so every metric asks for attention, which CI does not count as fatal.
    command = f"{sys.executable} -m pybitnet.cli"
    env = {**os.environ, "PYBITNET": command, "PYBITNET_BASE": command}
    env |= {"PYTHON": sys.executable, "PYBITNET_GATE_PAIRS": "2"}
    result = subprocess.run(
        [str(ROOT / "benchmarks" / "ci_bench.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("generation", "kernels"):
        check = json.loads((tmp_path / f"gate-{name}.json").read_text())
        assert check["conclusion"] in ("success", "neutral")
        assert "measured in the order BCCB" in check["text"]
    for name in ("generation", "kernels"):
        assert json.loads((tmp_path / f"verify-{name}.json").read_text())["passed"]
