"""Fuzzing the reader: 10,000 seeded mutations of small valid files. Every case must parse or
raise GGUFError (never another exception, a hang, or an allocation out of proportion to the
file's size); files that parse must also survive tensor access, dequantize and inspect."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gguf_builders import ARRAY, BOOL, F32, STRING, U8, U32, U64, Builder, build_sample

from pybitnet import formats
from pybitnet.errors import FormatError, GGUFError
from pybitnet.gguf import open_gguf
from pybitnet.gguf.inspect import inspect_gguf

CASES = 10_000
SEED = 20261121
INTERESTING = [0, 1, 2, 3, 4, 5, 31, 32, 33, 36, 37, 38, 39, 63, 64, 127, 128, 255, 2**16,
               2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]  # fmt: skip
BAD_UTF8 = [b"\x80", b"\xc0", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8", b"\xff"]
MAX_CASE_SECONDS = 0.5
# Parsing makes Python objects (str, int, numpy headers) for what the file holds: a few dozen
# bytes per byte of file at most, plus a fixed overhead. A count or length taken on trust would
# allocate for the claimed size (gigabytes) instead.
MAX_BYTES_PER_FILE_BYTE, MAX_FIXED_BYTES = 64, 256 * 1024


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


def mutate(base: Builder, rng: np.random.Generator) -> bytes:
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


def exercise(path: Path) -> str:
    """'ok' or the refusal's message, with numbers and the path removed."""
    try:
        f = open_gguf(path)
    except GGUFError as exc:
        return re.sub(r"\d+", "N", str(exc).removeprefix(f"{path}: "))
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


@pytest.mark.slow
def test_mutated_files_parse_or_raise_gguf_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    bases = [build_sample(), second_base()]
    path = tmp_path / "fuzz.gguf"
    for base in bases:
        path.write_bytes(bytes(base.buf))
        assert exercise(path) == "ok"
    outcomes: Counter[str] = Counter()
    slowest, worst_memory = 0.0, 0
    start = time.process_time()  # CPU time: other work on the machine does not inflate it
    tracemalloc.start()
    try:
        for case in range(CASES):
            data = mutate(bases[case % len(bases)], rng)
            path.write_bytes(data)
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            t0 = time.process_time()
            try:
                outcome = exercise(path)
            except Exception as exc:
                (tmp_path / "failing.gguf").write_bytes(data)
                raise AssertionError(f"case {case}: {type(exc).__name__}: {exc}") from exc
            slowest = max(slowest, time.process_time() - t0)
            used = tracemalloc.get_traced_memory()[1] - before
            worst_memory = max(worst_memory, used)
            assert used <= MAX_FIXED_BYTES + MAX_BYTES_PER_FILE_BYTE * len(data), (case, used)
            outcomes[outcome] += 1
    finally:
        tracemalloc.stop()
    elapsed = time.process_time() - start
    assert elapsed < 30 and slowest < MAX_CASE_SECONDS, (elapsed, slowest)
    # the mutations reach deep: many files still parse, and refusals come from many checks
    assert outcomes["ok"] > CASES // 20, outcomes.most_common(5)
    assert len(outcomes) > 40, outcomes.most_common()
    print(
        f"{CASES} cases in {elapsed:.1f} s of CPU (slowest {slowest * 1000:.0f} ms, peak "
        f"{worst_memory // 1024} KiB), {outcomes['ok']} parsed, {len(outcomes) - 1} refusals"
    )
