"""`verify` and `gate` on hostile receipts (issue 15): each case ends, within a time and memory
bound, in a one-line error or a FAIL verdict that names the file, the field and the value.

The cases alter a real receipt, the committed generation baseline (benchmarks/baseline), or are
raw bytes; both commands run in-process through the `pybitnet` entry point, under tracemalloc.
The last tests check the bounds by design: every value the schema describes is bounded, each
bound before the keywords that look inside the value.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from pybitnet.bench import gate, verify  # noqa: F401  (imported before tracing, not by it)
from pybitnet.bench import receipt as rc
from pybitnet.bench.receipt_reader import MAX_BYTES
from pybitnet.cli import app

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "benchmarks" / "baseline" / "generation.json"
FIXTURE = ROOT / "tests" / "fixtures" / "peers" / "bitnet-tiny-s1-i2_s.gguf"
SECONDS = 20  # per command, on a loaded 2-core CI machine; each takes well under 2 s alone
PEAK_BYTES = 100 * 2**20  # what one command may allocate, traced (at most 33 MB here; 1 GB allowed)
X = "\x00x\x00"  # a placeholder value, replaced in the JSON text by raw JSON
PYBITNET = typer.main.get_command(app)  # the `pybitnet` command, built once (0.3 s a build)


def baseline() -> dict[str, Any]:
    return json.loads(BASELINE.read_text())


def altered(
    *changes: tuple[tuple[Any, ...], Any], doc: Callable[[], dict[str, Any]] = baseline
) -> Callable[[], bytes]:
    """doc() with the value at each path replaced; a value "raw:TEXT" is the JSON text TEXT."""

    def make() -> bytes:
        d = doc()
        spliced = []
        for path, value in changes:
            target = d
            for key in path[:-1]:
                target = target[key]
            if isinstance(value, str) and value.startswith("raw:"):
                spliced.append(value.removeprefix("raw:"))
                value = f"{X}{len(spliced) - 1}"
            target[path[-1]] = value
        text = json.dumps(d)
        for i, json_text in enumerate(spliced):
            text = text.replace(json.dumps(f"{X}{i}"), json_text)
        return text.encode()

    return make


def raw(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def replayable() -> dict[str, Any]:
    """The baseline, naming the tiny fixture model (present, so --replay runs it)."""
    doc = baseline()
    data = FIXTURE.read_bytes()
    doc["model"] |= {"path": str(FIXTURE), "sha256": hashlib.sha256(data).hexdigest()}
    doc["model"]["bytes"] = len(data)
    return doc


@dataclass(frozen=True)
class Case:
    make: Callable[[], bytes]
    message: str  # a regex the error or the FAIL detail matches
    verify_exit: int = 1  # 1: a FAIL verdict; 2: a one-line error
    gate_message: str | None = ""  # "": the same as verify's; None: gate is not run
    replay: bool = False


ATTENTION = 0  # kernels[0] of the baseline is attention_avx512
BIG_STRING = "x" * 10_000_000
CASES = {
    "100k-deep nesting": Case(
        raw(b"[" * 100_000 + b"]" * 100_000), "nests arrays and objects 100,000 deep", 2
    ),
    "nesting hidden behind a string of closing brackets": Case(
        raw(b'["' + b"]" * 100_000 + b'", ' + b"[" * 100_000),
        "nests arrays and objects 100,001 deep",
        2,
    ),
    "token id of 2**63": Case(
        altered((("outputs", "token_ids", 0, 0), 2**63)),
        r"\$\.outputs\.token_ids\[0\]\[0\]: 9223372036854775808 is greater than the maximum",
    ),
    "batch of 1e30": Case(
        altered((("workload", "batch"), 1e30)),
        r"\$\.workload\.batch: 1e\+30 is not of type 'integer'",
    ),
    "batch of 1e308": Case(
        altered((("workload", "batch"), 1e308)),
        r"\$\.workload\.batch: 1e\+308 is not of type 'integer'",
    ),
    "batch of 10**9 in a 12 KB receipt": Case(
        altered((("workload", "batch"), 10**9)),
        r"\$\.workload\.batch: 1000000000 is greater than the maximum of 1024",
    ),
    "batch of 1.0": Case(
        altered((("workload", "batch"), 1.0)), r"\$\.workload\.batch: 1\.0 is not of type"
    ),
    "a KV cache type no engine has": Case(
        altered((("workload", "kv_cache"), "q4_0")),
        r"\$\.workload\.kv_cache: 'q4_0' is not one of \['f16', 'f32', 'q8_0'\]",
    ),
    "batch of true": Case(
        altered((("workload", "batch"), True)), r"\$\.workload\.batch: True is not of type"
    ),
    "attention calls of 2**70": Case(
        altered((("kernels", ATTENTION, "calls"), 2**70)),
        r"\$\.kernels\[0\]\.calls: 1180591620717411303424 is greater than the maximum",
    ),
    "threads of 1e9": Case(
        altered((("runs", 0, "threads"), 1e9)),
        r"\$\.runs\[0\]\.threads: 1000000000\.0 is not of type 'integer'",
    ),
    "host threads of 10**9": Case(
        altered((("host", "threads"), [10**9])),
        r"\$\.host\.threads\[0\]: 1000000000 is greater than the maximum of 8192",
    ),
    "warmup of 1e308": Case(
        altered((("workload", "warmup"), 1e308)),
        r"\$\.workload\.warmup: 1e\+308 is not of type 'integer'",
    ),
    "warmup of 10**9": Case(
        altered((("workload", "warmup"), 10**9)),
        r"\$\.workload\.warmup: 1000000000 is greater than the maximum of 10000",
    ),
    "a sample of 1e400 (read as infinity)": Case(
        altered((("runs", 0, "samples", "ms", 0), "raw:1e400")),
        r"\$\.runs\[0\]\.samples\.ms\[0\]: inf is greater than the maximum",
    ),
    "a NaN sample": Case(
        altered((("runs", 0, "samples", "ms", 0), "raw:NaN")), "NaN is not a number", 2
    ),
    "20,000 samples": Case(
        altered((("runs", 0, "samples", "ms"), [1.0] * 20_000)),
        r"\$\.runs\[0\]\.samples\.ms: \[1\.0, .* is too long",
    ),
    "a 10 MB cpu model": Case(
        altered((("host", "cpu_model"), BIG_STRING)), r"\$\.host\.cpu_model: 'xxx.* is too long"
    ),
    "a 5000-digit integer": Case(
        altered((("workload", "seed"), "raw:" + "9" * 5000)),
        r"Exceeds the limit \(4300 digits\) for integer string conversion: value has 5000 digits$",
        2,
    ),
    "a file of 32 MiB and one byte": Case(
        raw(b" " * (MAX_BYTES + 1)), "the receipt is larger than 33,554,432 bytes", 2
    ),
    "3 million values": Case(
        raw(b"[" + b"0," * 3_000_000 + b"0]"), "holds about 3,000,001 values", 2
    ),
    "half a surrogate pair": Case(
        altered((("host", "cpu_model"), "\ud800")), r"a string holds '\\ud800', half of", 2
    ),
    "not UTF-8": Case(raw(b'{"kind": "\xff"}'), "not UTF-8", 2),
    "truncated": Case(lambda: BASELINE.read_bytes()[:5000], "not JSON", 2),
    "batch and generated_tokens at their maxima": Case(
        altered((("workload", "batch"), 1024), (("workload", "generated_tokens"), 2**20)),
        r"batch=1024 sequences of generated_tokens=1048576",
        gate_message=r"cannot compare these receipts: workload\.batch differs",
    ),
    "generated_tokens of 1e30 under --replay": Case(
        altered((("workload", "generated_tokens"), 1e30), doc=replayable),
        r"\$\.workload\.generated_tokens: 1e\+30 is not of type 'integer'",
        gate_message=None,
        replay=True,
    ),
    "an empty prompt under --replay": Case(
        altered((("workload", "prompt_ids"), [[]]), doc=replayable),
        r"\$\.workload\.prompt_ids\[0\]: \[\] should be non-empty",
        gate_message=None,
        replay=True,
    ),
    "generated_tokens of 2**20 under --replay": Case(
        altered((("workload", "generated_tokens"), 2**20), doc=replayable),
        r"workload\.generated_tokens = 1,048,576 make 1,048,608 token positions, more than "
        r"the 131,072 a replay runs",
        gate_message=None,
        replay=True,
    ),
}


def run_cli(capsys, *args: object) -> tuple[int, str, str, float, int]:
    """Exit code, stdout, stderr, seconds and traced peak bytes of one `pybitnet` command."""
    capsys.readouterr()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SystemExit) as exit_info:
            PYBITNET.main([str(a) for a in args], prog_name="pybitnet")
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err, seconds, peak


def assert_one_line_error(err: str, path: Path, message: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("pybitnet: error: "), err[:500]
    assert str(path) in err
    assert re.search(message, err), err[:500]


@pytest.mark.parametrize("name", CASES)
def test_verify_ends_cleanly_naming_the_field(capsys, tmp_path, name):
    case = CASES[name]
    path, report = tmp_path / "hostile.json", tmp_path / "report.json"
    path.write_bytes(case.make())
    args = ["verify", path, "--json-file", report] + (["--replay"] if case.replay else [])
    code, out, err, seconds, peak = run_cli(capsys, *args)
    assert code == case.verify_exit, (out + err)[-2000:]
    assert seconds < SECONDS and peak < PEAK_BYTES, (seconds, peak)
    if code == 2:
        assert_one_line_error(err, path, case.message)
        return
    assert "Traceback" not in out + err
    checks = json.loads(report.read_text())["checks"]
    failed = [c["detail"] for c in checks if c["verdict"] == "FAIL"]
    assert any(re.search(case.message, detail) for detail in failed), failed
    assert all("\n" not in c["detail"] for c in checks)
    if checks[0]["verdict"] == "FAIL":  # the schema's: it names the file
        assert failed[0].startswith(f"{path}: field $.")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.gate_message is not None])
def test_gate_refuses_in_one_line_naming_the_field(capsys, tmp_path, name):
    case = CASES[name]
    path = tmp_path / "hostile.json"
    path.write_bytes(case.make())
    code, out, err, seconds, peak = run_cli(capsys, "gate", BASELINE, path)
    assert code == 2, (out + err)[-2000:]
    assert seconds < SECONDS and peak < PEAK_BYTES, (seconds, peak)
    message = case.gate_message or case.message
    if "cannot compare" in message:  # both receipts are valid: the error names no file
        assert "Traceback" not in err and err.count("\n") == 1 and re.search(message, err)
    else:
        assert_one_line_error(err, path, message)


# --- the bounds, by design -------------------------------------------------------------------

# Keywords that look inside a value, which the bounds of its size must come before: the
# validator stops at the first error, so a value far too large is refused before it is walked.
INSIDE = {"items", "uniqueItems", "pattern", "properties", "additionalProperties", "propertyNames"}
BOUNDS = {"array": "maxItems", "string": "maxLength", "object": "maxProperties"}


def subschemas(node: Any, where: str = "$") -> list[tuple[str, dict]]:
    found = []
    if isinstance(node, dict):
        found.append((where, node))
        for key, child in node.items():
            found += subschemas(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += subschemas(child, f"{where}[{i}]")
    return found


def test_every_number_array_and_string_the_schema_describes_is_bounded():
    unbounded = []
    for where, s in subschemas(rc.schema()):
        types = s.get("type", [])
        types = [types] if isinstance(types, str) else types
        if ("number" in types or "integer" in types) and not (
            "maximum" in s and ("minimum" in s or "exclusiveMinimum" in s)
        ):
            unbounded.append(f"{where}: a number without both bounds")
        if "array" in types and "maxItems" not in s:
            unbounded.append(f"{where}: an array without maxItems")
        if "string" in types and "maxLength" not in s and "enum" not in s:
            unbounded.append(f"{where}: a string without maxLength")
        open_object = "object" in types and s.get("additionalProperties") is not False
        if open_object and "maxProperties" not in s and "allOf" not in s:
            unbounded.append(f"{where}: an object open to any number of properties")
    assert not unbounded, "\n".join(unbounded)


def test_each_bound_comes_before_the_keywords_that_look_inside():
    late = []
    for where, s in subschemas(rc.schema()):
        keys = list(s)
        for bound in {"maxItems", "maxLength", "maxProperties"} & s.keys():
            late += [
                f"{where}: {bound} after {k}"
                for k in keys[: keys.index(bound)]
                if k in INSIDE | {"$ref"}
            ]
    assert not late, "\n".join(late)


def test_the_schema_bounds_hold_the_largest_real_workload(make_receipt):
    """A 2B model's workload at batch 32, 2048 prompt and 2048 generated tokens, 1000
    repetitions: every figure of it is within the schema's bounds."""
    doc = make_receipt(reps=1000)
    doc["workload"] |= {"batch": 32, "prompt_tokens": 2048, "generated_tokens": 2048}
    doc["workload"]["prompt_ids"] = [[7] * 2048] * 32
    doc["outputs"] = rc.outputs([[9] * 2048] * 32)
    doc["model"] |= {
        "bytes": 1_200_000_000,
        "parameter_count": 2_400_000_000,
        "vocab_size": 128_256,
    }
    doc["kernels"][0]["calls"] = 1000 * 4 * (2048 // 64 + 2048) * 211
    rc.validate_receipt(doc)
