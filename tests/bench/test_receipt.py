"""Receipts: summaries against the statistics module, the schema on good and broken receipts."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from pybitnet.bench import receipt as rc
from pybitnet.errors import BenchError
from pybitnet.sampling import SamplerConfig


def test_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(rc.schema())
    assert rc.schema()["$defs"]["schema_version"]["enum"][-1] == rc.SCHEMA_VERSION


@pytest.mark.parametrize(
    "values", [[3.0], [2.0, 1.0], [5.0, 1.0, 4.0, 4.0, 9.5], list(range(1, 12))]
)
def test_summarize_agrees_with_the_statistics_module(values):
    s = rc.summarize(values)
    assert s["n"] == len(values)
    assert s["median"] == pytest.approx(statistics.median(values))
    assert s["mean"] == pytest.approx(statistics.fmean(values))
    assert s["min"] == min(values) and s["max"] == max(values)
    if len(values) == 1:
        assert s["sd"] is None
    else:
        assert s["sd"] == pytest.approx(statistics.stdev(values))


def test_percentiles_interpolate_linearly_between_order_statistics():
    values = np.random.default_rng(1).exponential(10.0, 37)
    x = np.sort(values)
    for q in (0, 50, 90, 99, 100):
        h = (x.size - 1) * q / 100
        lo = math.floor(h)
        want = x[lo] + (h - lo) * (x[min(lo + 1, x.size - 1)] - x[lo])
        assert rc.percentiles(values.tolist(), [q])[0] == pytest.approx(want)


def test_decode_run_derives_throughput_and_latency_percentiles_from_raw_samples():
    gaps = [[10.0, 12.0, 11.0, 30.0], [9.0, 9.5, 10.0, 50.0]]
    run = rc.decode_run("tg5", 2, 5, [100.0, 80.0], [40.0, 35.0], gaps, [700.0, 701.0])
    assert run["samples"]["tokens_per_second"] == pytest.approx([50.0, 62.5])
    for q in rc.ITL_PERCENTILES:
        assert run["samples"][f"itl_p{q}_ms"] == pytest.approx(
            [statistics.quantiles(g, n=100, method="inclusive")[q - 1] for g in gaps]
        )
    for metric, values in run["samples"].items():
        assert run["summary"][metric] == rc.summarize(values)
    assert run["inter_token_ms"] == gaps


def test_kernel_run_counts_elements_per_second():
    run = rc.kernel_run("gemv", 1, "i2s_gemv", [4, 256], 1024, [0.5, 0.25])
    assert run["samples"]["elements_per_second"] == pytest.approx([2.048e6, 4.096e6])


@pytest.mark.parametrize(
    ("ms", "rss", "message"),
    [
        ([1.0, 2.0], [700.0], "one sample per repetition"),
        ([], [], "non-empty"),
        ([1.0, float("nan")], [1.0, 2.0], "finite"),
        ([[1.0], [2.0, 3.0]], [1.0, 2.0], "finite"),
    ],
)
def test_run_builders_refuse_bad_samples(ms, rss, message):
    with pytest.raises(BenchError, match=message):
        rc.prefill_run("pp", 1, 8, ms, rss)


def test_generation_workload_needs_a_fixed_seed():
    assert rc.generation_workload(8, 8, 1, 3, 1, SamplerConfig(seed=5), kv_cache="f16")["seed"] == 5
    with pytest.raises(BenchError, match="seed=None"):
        rc.generation_workload(8, 8, 1, 3, 1, SamplerConfig(), kv_cache="f16")


def test_outputs_hash_is_sha256_of_compact_json():
    ids = [[1, 22, 333], [4]]
    want = hashlib.sha256(b"[[1,22,333],[4]]").hexdigest()
    assert rc.outputs(ids) == {"token_ids": ids, "sha256": want}


def test_well_formed_receipts_validate_and_survive_a_round_trip(
    tmp_path, make_receipt, make_kernel_receipt
):
    for doc in (make_receipt(), make_kernel_receipt()):
        rc.validate_receipt(doc)
        rc.write_receipt(doc, tmp_path / "r.json")
        assert rc.load_receipt(tmp_path / "r.json") == doc


def _set(doc, path, value):
    *parents, last = path
    for p in parents:
        doc = doc[p]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("schema_version",), "2.0.0", r"\$\.schema_version"),
        (("model", "sha256"), _DELETE, r"\$\.model: 'sha256' is a required"),
        (("model", "sha256"), "ABC", r"\$\.model\.sha256"),
        (("compute_path",), "gpu", r"\$\.compute_path: 'gpu'"),
        (("created_at",), "2026-01-02T03:04:05+01:00", r"\$\.created_at"),
        (("created_at",), "2026-13-02T03:04:05Z", r"\$\.created_at: '2026-13-02T03:04:05Z'"),
        (("kernels",), [], r"\$\.kernels"),
        (("kernels", 0, "calls"), -1, r"\$\.kernels\[0\]\.calls"),
        (("runs", 0, "samples", "ms", 1), -3.0, r"\$\.runs\[0\]\.samples\.ms\[1\]"),
        (("runs", 0, "samples", "flops"), [1.0], r"\$\.runs\[0\]\.samples"),
        (("runs", 1, "inter_token_ms"), _DELETE, r"\$\.runs\[1\]: 'inter_token_ms'"),
        (("runs", 0, "kernel_id"), "i2s_gemv", r"\$\.runs\[0\]: .*'kernel_id' was unexpected"),
        (("runs", 1, "samples", "itl_p99_ms"), _DELETE, r"\$\.runs\[1\]\.samples"),
        (("runs", 0, "kind"), "kernel", r"\$\.runs\[0\]"),
        (("workload", "sampler", "top_p"), 0, r"\$\.workload\.sampler\.top_p"),
        (("host", "threads"), 2, r"\$\.host\.threads"),
        (("outputs",), _DELETE, r"'outputs' is a required"),
        (("measured_by",), "hand", r"'measured_by' was unexpected"),
    ],
)
def test_malformed_receipts_are_refused_naming_the_field(make_receipt, path, value, message):
    doc = copy.deepcopy(make_receipt())
    _set(doc, path, value)
    with pytest.raises(BenchError, match=message):
        rc.validate_receipt(doc)


@pytest.mark.parametrize(
    ("version", "numpy_tier", "other"),
    [(rc.SCHEMA_VERSION, "numpy", "reference"), ("1.0.0", "reference", "numpy")],
)
def test_compute_path_names_the_numpy_tier_as_its_schema_version_does(
    make_receipt, make_kernel_receipt, version, numpy_tier, other
):
    """1.1.0 says "numpy" when only the numpy kernel tier ran ("reference" is the float64
    forward pass); 1.0.0 receipts, which called it "reference", still validate."""
    for doc in (make_receipt(), make_kernel_receipt()):
        doc |= {"schema_version": version, "compute_path": numpy_tier}
        rc.validate_receipt(doc)
        doc["compute_path"] = other
        with pytest.raises(BenchError, match=rf"\$\.compute_path: '{other}' is not one of"):
            rc.validate_receipt(doc)


def test_a_kernels_receipt_may_not_carry_a_model(make_receipt, make_kernel_receipt):
    doc = make_kernel_receipt()
    doc["model"] = make_receipt()["model"]
    with pytest.raises(BenchError, match=r"\$: .*'model' was unexpected"):
        rc.validate_receipt(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ('{"schema_version": NaN}', "NaN is not a number"),
        ("[]", r"\$: \[\] is not of type 'object'"),
    ],
)
def test_load_receipt_refuses_bad_files_naming_them(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BenchError, match=f"{path}.*{message}"):
        rc.load_receipt(path)


def test_load_receipt_names_a_missing_file(tmp_path):
    with pytest.raises(BenchError, match="nope.json: cannot read"):
        rc.load_receipt(tmp_path / "nope.json")


def test_write_receipt_refuses_an_invalid_receipt(tmp_path, make_receipt):
    doc = make_receipt()
    doc["runs"] = []
    with pytest.raises(BenchError, match=r"\$\.runs"):
        rc.write_receipt(doc, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_written_receipt_is_plain_json(tmp_path, make_receipt):
    rc.write_receipt(make_receipt(), tmp_path / "r.json")
    json.loads((tmp_path / "r.json").read_text(), parse_constant=pytest.fail)


def test_rebuild_run_reproduces_every_run_and_exposes_a_doctored_one(
    make_receipt, make_kernel_receipt
):
    runs = make_receipt()["runs"] + make_kernel_receipt()["runs"]
    for run in runs:
        assert rc.rebuild_run(run) == run
    doctored = copy.deepcopy(runs[1])
    doctored["samples"]["tokens_per_second"][0] *= 1.05
    assert rc.rebuild_run(doctored) != doctored
    with_ttft = rc.prefill_run("pp", 1, 8, [10.0, 11.0], [5.0, 5.0], ttft_ms=[12.0, 13.0])
    assert rc.rebuild_run(with_ttft) == with_ttft
