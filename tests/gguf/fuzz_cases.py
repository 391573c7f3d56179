"""Seeded GGUF fuzzing, shared by the suite's short runs (test_gguf_fuzz.py) and the long ones
(scripts/fuzz_gguf.py): the case generators, what each case exercises, and the loop that runs
them while it measures each case's time and memory.

Two targets:
- "reader": byte-level mutations of small valid files (counts, lengths, types, offsets, UTF-8,
  truncation); every case must parse or raise GGUFError, and files that parse must survive
  tensor access, dequantize and inspect.
- "load": small valid models whose metadata values (strings where numbers are expected, NaN,
  inf, huge, zero, negative, arrays of the wrong length or type, keys dropped or added) or
  float tensors (NaN and inf values and scales) are replaced; every case must load and
  generate, or raise PyBitnetError.
Never another exception, and never more than a bounded time or allocation per case.
"""

from __future__ import annotations

import json
import re
import time
import tracemalloc
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf_builders import ARRAY, BOOL, F32, STRING, U8, U32, U64, Builder, build_sample

import pybitnet
from pybitnet import formats
from pybitnet.convert.synthetic import make_model
from pybitnet.errors import FormatError, GGUFError, PyBitnetError
from pybitnet.gguf import TensorSpec, open_gguf, write_gguf
from pybitnet.gguf.inspect import inspect_gguf
from pybitnet.model.config import FIELDS

INTERESTING = [0, 1, 2, 3, 4, 5, 31, 32, 33, 36, 37, 38, 39, 63, 64, 127, 128, 255, 2**16,
               2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip
BAD_UTF8 = [b"\x80", b"\xc0", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8", b"\xff"]
# Parsing makes Python objects (str, int, numpy headers) for what the file holds: a few dozen
# bytes per byte of file at most, plus a fixed overhead. A count or length taken on trust would
# allocate for the claimed size (gigabytes) instead.
MAX_BYTES_PER_FILE_BYTE, MAX_FIXED_BYTES = 64, 256 * 1024
# Loading a model allocates its tokenizer, repacked weights and one KV cache of the effective
# context (a few MB here); a size taken from an unchecked field would be gigabytes.
MAX_LOAD_BYTES = 64 << 20
MAX_CASE_SECONDS = {"reader": 0.5, "load": 2.0}


# -- reader: byte-level mutations -----------------------------------------------------------------


def second_base() -> Builder:
    """Version 2, alignment 64, deep nested and bool arrays, I2_S and TQ1_0 tensors."""
    i2s = formats.quantize("I2_S", np.tile(np.float32([1, 0, -1, 0]), 64).reshape(2, 128))
    tq1 = formats.quantize("TQ1_0", np.ones((1, 256), np.float32))
    b = Builder().header(3, 6, version=2)
    b.kv("general.alignment", U32, 64).kv("general.architecture", STRING, "bitnet")
    b.kv("bitnet.context_length", U64, 4096).kv("flags", ARRAY, (BOOL, [1, 0, 1]))
    b.kv("deep", ARRAY, (ARRAY, [(ARRAY, [(F32, [1.0, 2.0])]), (ARRAY, [(U8, [])])]))
    b.kv("tokenizer.ggml.tokens", ARRAY, (STRING, ["<unk>", "▁the", "ü"]))
    b.tensor_info("a.weight", (128, 2), 36, 0).tensor_info("b.weight", (256, 1), 34, 128)
    b.tensor_info("c.scale", (1,), 0, 192).pad(64)
    b.raw(i2s.tobytes()).pad(64).raw(tq1.tobytes()).pad(64).raw(np.float32(2).tobytes()).pad(64)
    return b


def mutate_bytes(base: Builder, rng: np.random.Generator) -> bytes:
    data = bytearray(base.buf)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.integers(8)
        n = len(data)
        if kind == 0:  # bit flips
            for _ in range(rng.integers(1, 5)):
                if n:
                    data[rng.integers(n)] ^= 1 << int(rng.integers(8))
        elif kind == 1:  # overwrite a run of bytes
            at = rng.integers(n + 1)
            data[at : at + 8] = rng.bytes(int(rng.integers(1, 9)))
        elif kind == 2:  # truncate
            del data[rng.integers(n + 1) :]
        elif kind in (3, 4):  # a count, length, type, dimension, offset or u32/u64 value
            at, size = base.numbers[rng.integers(len(base.numbers))]
            value = INTERESTING[rng.integers(len(INTERESTING))] if kind == 3 else rng.integers(64)
            data[at : at + size] = (int(value) % 2 ** (8 * size)).to_bytes(size, "little")
        elif kind == 5:  # invalid UTF-8 inside a string
            at, length = base.strings[rng.integers(len(base.strings))]
            bad = BAD_UTF8[rng.integers(len(BAD_UTF8))]
            if length:
                at += int(rng.integers(length))
                data[at : at + len(bad)] = bad
        elif kind == 6:  # insert or delete bytes (shifts everything after)
            at = rng.integers(n + 1)
            if rng.integers(2):
                data[at:at] = rng.bytes(int(rng.integers(1, 17)))
            else:
                del data[at : at + rng.integers(1, 17)]
        else:  # copy a region over another (e.g. a key over the next one)
            start, to = rng.integers(n + 1), rng.integers(n + 1)
            data[to : to + 32] = data[start : start + rng.integers(1, 33)]
    return bytes(data)


def exercise_reader(path: Path) -> str:
    """'ok' or the refusal's message, with numbers and the path removed."""
    try:
        f = open_gguf(path)
    except GGUFError as exc:
        return _outcome(exc, path)
    with f:
        for name, info in f.tensors.items():
            assert f.tensor_bytes(name).size == info.nbytes
            try:
                with np.errstate(all="ignore"):  # mutated scales can be inf or NaN
                    assert f.dequantize(name).shape == info.shape
            except FormatError:
                pass  # invalid codes in the data (I2_S code 3): a data error, found when read
    json.dumps(inspect_gguf(path))
    return "ok"


# -- load: metadata values and float tensors of small models -----------------------------------


@dataclass
class ModelBase:
    """A valid model as its parts, to be mutated and written again."""

    arch: str
    metadata: dict[str, Any]
    types: dict[str, Any]
    tensors: list[TensorSpec]


def model_bases(workdir: Path) -> list[ModelBase]:
    """Two small models: bitnet / I2_S / F16 embedding / SentencePiece vocabulary, and
    llama / TQ2_0 / Q8_0 embedding / byte-level BPE vocabulary with merges."""
    spm = make_model(workdir / "base-spm.gguf", vocab=300, dim=128, layers=1, heads=4,
                     kv_heads=2, ffn=128, ctx=32)  # fmt: skip
    bpe = make_model(workdir / "base-bpe.gguf", arch="llama", weight_type="TQ2_0",
                     embd_type="Q8_0", vocab=300, dim=256, layers=1, heads=4, kv_heads=2,
                     ffn=256, ctx=32)  # fmt: skip
    bases = [_parts(spm, "bitnet"), _parts(bpe, "llama")]
    md = bases[1].metadata
    md["tokenizer.ggml.model"], md["tokenizer.ggml.pre"] = "gpt2", "gpt-2"
    tokens = set(md["tokenizer.ggml.tokens"])
    md["tokenizer.ggml.merges"] = [
        f"▁ {c}" for c in "abcdefghijklmnopqrstuvwxyz" if f"▁{c}" in tokens
    ]
    return bases


def _parts(path: Path, arch: str) -> ModelBase:
    f = open_gguf(path)
    tensors = [
        TensorSpec(n, i.shape, i.wtype, f.tensor_bytes(n).copy()) for n, i in f.tensors.items()
    ]
    return ModelBase(arch, dict(f.metadata), dict(f.metadata_types), tensors)


def hostile_values(rng: np.random.Generator, n_tokens: int) -> list[Any]:
    """Values of every GGUF type (numpy scalars and arrays keep their type when written)."""
    ints = [0, 1, 2, 3, 7, 64, 4096, 2**24, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]
    floats = [np.nan, np.inf, -np.inf, 1e300, 1e-45, 1e38, 0.0, -0.0, -1.0, 0.5, 1e9 + 1, 1e-5]
    k = int(rng.integers(len(ints)))
    with np.errstate(over="ignore"):  # 1e300 as float32 is inf: one more hostile value
        return _values(rng, n_tokens, ints[k], floats[k % len(floats)])


def _values(rng: np.random.Generator, n_tokens: int, i: int, x: float) -> list[Any]:
    return [
        "", "10000", "nan", "yarn", "x" * 1000, True, False,
        np.uint32(i % 2**32), np.uint64(i), np.int32(-(i % 2**31)), np.int64(-(i % 2**63)),
        np.uint8(i % 256), np.int8(-1), np.float32(x), np.float64(x),
        np.float64(float(rng.standard_normal()) * 10.0 ** int(rng.integers(-50, 50))),
        np.zeros(0, np.uint32), np.arange(3, dtype=np.int32), ["a", "b"], [np.arange(2)],
        np.full(n_tokens + int(rng.integers(-1, 2)), x, np.float32),
        np.full(n_tokens, i % 2**31, np.int32), [f"t{j}" for j in range(n_tokens)],
    ]  # fmt: skip


def mutate_model(base: ModelBase, rng: np.random.Generator) -> ModelBase:
    md, types, tensors = dict(base.metadata), dict(base.types), list(base.tensors)
    n_tokens = len(md["tokenizer.ggml.tokens"])
    known = [f"{base.arch}.{k}" for k in FIELDS] + [f"{base.arch}.rope.scaling.type",
             "tokenizer.ggml.eot_token_id", "tokenizer.ggml.fim_pad_token_id",
             "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"]  # fmt: skip
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.integers(6)
        if kind <= 2:  # a key's value replaced (by any type, any value)
            keys = sorted(md) if kind < 2 else known
            key = keys[rng.integers(len(keys))]
            values = hostile_values(rng, n_tokens)
            md[key] = values[rng.integers(len(values))]
            types.pop(key, None)
        elif kind == 3:  # a key dropped
            key = sorted(md)[rng.integers(len(md))]
            md.pop(key)
            types.pop(key, None)
        else:  # a float of a tensor (value or scale) made NaN or infinite, or a byte changed
            at = int(rng.integers(len(tensors)))
            spec = tensors[at]
            data = spec.data.copy()
            _, bits, inf = spec.wtype.codec.floats(data)
            flat = bits.reshape(len(bits), -1)
            if kind == 4:
                flat[rng.integers(len(flat)), 0] = inf | int(rng.integers(2))  # +inf or NaN
            else:
                data[rng.integers(data.size)] = rng.integers(256)
            tensors[at] = TensorSpec(spec.name, spec.shape, spec.wtype, data)
    return ModelBase(base.arch, md, types, tensors)


def write_model(model: ModelBase, path: Path) -> bool:
    """False when the writer refuses the values (nothing to load then)."""
    try:
        write_gguf(path, model.metadata, model.tensors, types=model.types)
    except GGUFError:
        return False
    return True


def exercise_load(path: Path) -> str:
    """'ok' (it loaded and generated) or the refusal's message, numbers and path removed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "tokenizer.ggml.pre is missing"
            model = pybitnet.load(path)
            ids = model.tokenize("a b") or [0]
            model.complete(ids[: model.n_ctx - 2], max_tokens=2, temperature=0)
    except PyBitnetError as exc:
        return _outcome(exc, path)
    return "ok"


def _outcome(exc: Exception, path: Path) -> str:
    assert "\n" not in str(exc), f"a refusal of more than one line: {exc}"
    return re.sub(r"\d+", "N", str(exc).replace(str(path), "<file>"))[:120]


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class Summary:
    target: str
    cases: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0
    slowest: float = 0.0  # CPU seconds of the slowest case
    most_allocated: int = 0  # bytes: the largest traced peak of a case

    def line(self) -> str:
        return (
            f"{self.target}: {self.cases} cases in {self.cpu_seconds:.1f} s of CPU (slowest "
            f"{self.slowest * 1000:.0f} ms, at most {self.most_allocated / 1024:.0f} KiB "
            f"allocated by a case), {self.outcomes['ok']} ok, {len(self.outcomes) - 1} "
            "distinct refusals"
        )


def run(target: str, cases: int, seed: int, workdir: Path) -> Summary:
    """Runs ``cases`` cases of ``target`` ("reader" or "load"), cycling over its base files.
    Raises AssertionError (the case's file kept as workdir/failing.gguf) at the first case
    that raises anything but the expected refusal, or takes too long or allocates too much."""
    rng = np.random.default_rng(seed)
    path = workdir / "case.gguf"
    summary = Summary(target)
    bases: list[Any] = (
        [build_sample(), second_base()] if target == "reader" else model_bases(workdir)
    )
    tracemalloc.start()
    try:
        for case in range(cases):
            base = bases[case % len(bases)]
            if target == "reader":
                path.write_bytes(mutate_bytes(base, rng))
            elif not write_model(mutate_model(base, rng), path):
                summary.outcomes["refused by the writer"] += 1
                continue
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            t0 = time.process_time()
            try:
                outcome = exercise_reader(path) if target == "reader" else exercise_load(path)
            except Exception as exc:
                path.replace(workdir / "failing.gguf")
                raise AssertionError(f"case {case}: {type(exc).__name__}: {exc}") from exc
            seconds = time.process_time() - t0
            allocated = tracemalloc.get_traced_memory()[1] - before
            size = path.stat().st_size
            limit = MAX_FIXED_BYTES + MAX_BYTES_PER_FILE_BYTE * size
            assert allocated <= (limit if target == "reader" else MAX_LOAD_BYTES), (case, allocated)
            assert seconds < MAX_CASE_SECONDS[target], (case, seconds)
            summary.cases += 1
            summary.cpu_seconds += seconds
            summary.slowest = max(summary.slowest, seconds)
            summary.most_allocated = max(summary.most_allocated, allocated)
            summary.outcomes[outcome] += 1
    finally:
        tracemalloc.stop()
    return summary
