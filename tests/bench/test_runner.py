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
from pybitnet.bench import runner
from pybitnet.bench.receipt import ITL_PERCENTILES, load_receipt, percentiles, rebuild_run
from pybitnet.bench.verify import Verdict, check_receipt
from pybitnet.cli import app
from pybitnet.errors import BenchError
from pybitnet.model.reference import ReferenceModel

ROOT = Path(__file__).resolve().parents[2]
WORKLOAD = runner.Workload(prompt_lengths=(16,), generate=8, repetitions=2, warmup=1, threads=(1,))


class RegistryReference(ReferenceModel):
    """The reference forward pass with its ternary layers on the registry's BitLinear: what the
    bench needs (kernels counted by the registry) while the engine is not there."""

    def linear(self, x: np.ndarray, w) -> np.ndarray:
        if not w.wtype.ternary:
            return super().linear(x, w)
        kernel = kernels.get("bitlinear")
        prepared = kernel.prepare(*w.unpack_ternary())
        return kernel(x.astype(np.float32), prepared).astype(np.float64)


def load_counted(path=None) -> generate.Model:
    """The model, with a forward pass whose kernels the registry counts."""
    model = generate.load(path)
    with kernels.profile() as prof:
        model.logits([1])
    if not prof.stats():
        model.forward_model = RegistryReference(model.weights)
    return model


@pytest.fixture(scope="module")
def model() -> generate.Model:
    return load_counted()


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
    prompt = runner.bench_prompt(model, 16, 0)
    assert workload["prompt_ids"] == [prompt]
    assert prompt[0] == model.tokenizer.bos_id
    assert not set(prompt) & model.tokenizer.eog_ids
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
    native = any(not i.endswith("_numpy") for i in ids)
    assert doc["compute_path"] == ("native" if native else "reference")


def test_reference_kernels_make_a_reference_receipt(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "reference")
    doc = runner.run_bench(load_counted(), WORKLOAD)
    assert doc["compute_path"] == "reference"
    assert all(k["id"].endswith("_numpy") for k in doc["kernels"])
    assert doc["host"]["cpu_features_used"] == []


def test_a_forward_pass_outside_the_registry_is_refused(model):
    plain = generate.load()
    plain.forward_model = ReferenceModel(plain.weights)
    with pytest.raises(BenchError, match="no kernel of the registry ran"):
        runner.run_bench(plain, WORKLOAD)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 2}, "batch"),
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
    with runner.PeakRss() as before:
        pass
    with runner.PeakRss() as during:
        block = np.ones(200_000_000 // 8)
        del block
    with runner.PeakRss() as after:
        pass
    assert during.mb - before.mb > 190
    assert after.mb < during.mb - 190  # the peak was reset


def test_peak_rss_by_polling(monkeypatch):
    monkeypatch.setattr(runner, "_reset_peak_rss", lambda: False)
    with runner.PeakRss() as rss:
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
    shapes=((256, 512),), batches=(1, 4), threads=(1,), samples=5, warmup=1
)


def test_kernels_receipt_passes_every_verify_rule():
    doc = kb.run_kernel_bench(KERNEL_WORKLOAD)
    report = check_receipt(json.loads(json.dumps(doc)))
    failed = [c for c in report.checks if c.verdict == Verdict.FAIL]
    assert not failed, failed
    assert len(doc["runs"]) == kb.case_count(KERNEL_WORKLOAD) == 3 * 2 + 1
    names = {run["name"] for run in doc["runs"]}
    assert {"gemv I2_S 256x512", "gemm4 TQ1_0 256x512", "dequant I2_S 256x512"} <= names
    listed = {k["id"]: k["calls"] for k in doc["kernels"]}
    for run in doc["runs"]:
        assert run["kernel_id"] in listed
        assert rebuild_run(run) == run
        assert run["elements"] == np.prod(run["shape"])
    bitlinear = kernels.get("bitlinear").id
    assert listed[bitlinear] == 6 * KERNEL_WORKLOAD.samples  # the timed calls only


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"formats": ("F16",)}, "not ternary"),
        ({"shapes": ((256, 100),)}, "shape 256x100"),
        ({"samples": 0}, "samples"),
        ({"batches": ()}, "batches"),
    ],
)
def test_bad_kernel_workloads_are_refused(options, message):
    with pytest.raises(BenchError, match=message):
        kb.KernelWorkload(**options)


def test_cli_bench_kernels_writes_a_receipt(tmp_path):
    out = tmp_path / "k.json"
    args = ["bench", "kernels", "--shapes", "256x256", "--formats", "I2_S", "--batches", "1"]
    args += ["--samples", "3", "--warmup", "0", "-t", "1", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "gemv I2_S" in result.output
    assert load_receipt(out)["kind"] == "kernels"


def test_cli_bench_refuses_a_model_and_a_preset():
    result = CliRunner().invoke(app, ["bench", "--model", "x.gguf", "--preset", "tiny"])
    assert result.exit_code == 2
    assert "not both" in result.output


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the CI script is a bash script")
def test_ci_script_benches_verifies_and_gates(tmp_path):
    env = {**os.environ, "PYBITNET": str(Path(sys.executable).with_name("pybitnet"))}
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
        assert json.loads((tmp_path / f"verify-{name}.json").read_text())["passed"]
