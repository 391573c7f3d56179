"""The kernel registry: stable ids, the choice of tier, the call counters, and the one door to
the native module: the shapes and sizes callers pass are checked here, once, for every tier.

Every kernel has an id ``<op>_<tier>`` (``bitlinear_avx512``, ``linear_f16_numpy``). Tiers, best
first (docs/SPEC.md §1): ``amx`` (``avx512`` with AMX tiles for BitLinear over 16+ rows),
``avx512``, ``avx2``, ``neondot``, ``neon``, ``scalar`` (C++), ``numpy`` (numpy_tier.py).
``get(op)`` picks the best tier this CPU runs; PYBITNET_KERNELS forces one by name. Receipts
take their kernel list from ``profile()``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError, PyBitnetError
from pybitnet.kernels import numpy_tier

try:
    from pybitnet import _native
except ImportError as exc:  # a source tree without a build: numpy only
    _native = None
    _NATIVE_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _NATIVE_ERROR = None

TIERS = ("amx", "avx512", "avx2", "neondot", "neon", "scalar", "numpy")
NATIVE_TIERS = TIERS[:-1]
ENV = "PYBITNET_KERNELS"

# The CPU features each native tier is compiled for and needs (csrc/cpu.cpp, supported_tiers()),
# named as pybitnet._native.cpu_features() names them ("avx2": AVX2 with FMA; aarch64's as Linux's).
TIER_FEATURES = {
    "amx": ("amx_int8", "avx2", "avx512bw", "avx512f", "avx512vl", "avx512vnni", "f16c"),
    "avx512": ("avx2", "avx512bw", "avx512f", "avx512vl", "avx512vnni", "f16c"),
    "avx2": ("avx2", "f16c"),
    "neondot": ("asimd", "asimddp"),
    "neon": ("asimd",),
    "scalar": (),
    "numpy": (),
}


class Profile:
    """Calls and seconds per kernel id while a ``profile()`` block is open."""

    def __init__(self) -> None:
        self._totals: dict[str, list] = {}  # id -> [calls, seconds]

    def _add(self, kernel_id: str, seconds: float) -> None:
        # on every kernel call while profiling: kept to one dict lookup
        totals = self._totals.get(kernel_id)
        if totals is None:
            self._totals[kernel_id] = [1, seconds]
        else:
            totals[0] += 1
            totals[1] += seconds

    def stats(self) -> list[dict[str, Any]]:
        """[{id, calls, seconds}] for every kernel called, sorted by id."""
        return [
            {"id": k, "calls": self._totals[k][0], "seconds": self._totals[k][1]}
            for k in sorted(self._totals)
        ]


# The profiles open in this context (nested profile() blocks all count).
_active: ContextVar[tuple[Profile, ...]] = ContextVar("pybitnet_kernel_profiles", default=())


@contextmanager
def profile() -> Iterator[Profile]:
    """Count every kernel call made in this block (in this thread or asyncio task)."""
    prof = Profile()
    token = _active.set((*_active.get(), prof))
    try:
        yield prof
    finally:
        _active.reset(token)


@dataclass(frozen=True, eq=False)
class Kernel:
    """One operation on one tier. Calling it runs the operation, counted by open profiles.

    ``prepare`` (the linear kernels) turns weights into the form this kernel takes; it runs
    once, at load, and is not counted."""

    id: str
    op: str
    tier: str
    _run: Callable[..., Any] = field(repr=False)
    _prepare: Callable[..., Any] | None = field(default=None, repr=False)
    _prepare_packed: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def native(self) -> bool:
        return self.tier != "numpy"

    def __call__(self, *args: Any) -> Any:
        profiles = _active.get()
        if not profiles:
            return self._run(*args)
        start = time.perf_counter()
        try:
            return self._run(*args)
        finally:
            seconds = time.perf_counter() - start
            for p in profiles:
                p._add(self.id, seconds)

    def prepare(self, *args: Any) -> Any:
        if self._prepare is None:
            raise PyBitnetError(f"kernel {self.id} takes no prepared weights")
        return self._prepare(*args)

    def prepare_packed(self, *args: Any) -> Any:
        """BitLinear weights straight from file bytes: (parts [(type name, bytes, rows)], cols,
        scales (rows, groups)); the parts are stacked row-wise into one matrix."""
        if self._prepare_packed is None:
            raise PyBitnetError(f"kernel {self.id} takes no packed weights")
        return self._prepare_packed(*args)


def supported_tiers() -> tuple[str, ...]:
    """The tiers this CPU and build run, best first (numpy always)."""
    native = tuple(_native.supported_tiers()) if _native is not None else ()
    return (*native, "numpy")


def _forced_tier() -> str | None:
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return None
    if value not in TIERS:
        raise PyBitnetError(f"{ENV}={value!r} is not a kernel tier; use one of {', '.join(TIERS)}")
    return value


def selected_tier() -> str:
    """The tier get() uses: the one PYBITNET_KERNELS names, else the best supported."""
    forced = _forced_tier()
    if forced is not None and forced not in supported_tiers():
        why = f" ({_NATIVE_ERROR})" if _NATIVE_ERROR else ""
        raise PyBitnetError(
            f"{ENV}={forced!r}: this CPU or build runs only {', '.join(supported_tiers())}{why}"
        )
    return forced or supported_tiers()[0]


def _native_bitlinear(tier: str, x: np.ndarray, w: Any) -> np.ndarray:
    if not isinstance(w, _native.TernaryMatrix):
        raise PyBitnetError(f"bitlinear_{tier} needs weights from its own prepare(), got {w!r}")
    return _native.bitlinear(tier, w, np.ascontiguousarray(x, np.float32))


def _native_prepare(codes: np.ndarray, scales: np.ndarray) -> Any:
    return _native.TernaryMatrix(
        np.ascontiguousarray(codes, np.int8), np.ascontiguousarray(scales, np.float32)
    )


def _native_prepare_packed(
    parts: list[tuple[str, np.ndarray, int]], cols: int, scales: np.ndarray
) -> Any:
    native_parts = [
        (formats.weight_type(name).id, np.ascontiguousarray(data, np.uint8).ravel(), rows)
        for name, data, rows in parts
    ]
    return _native.TernaryMatrix(native_parts, cols, np.ascontiguousarray(scales, np.float32))


def _checked_prepare(prepare: Callable[..., Any]) -> Callable[..., Any]:
    def checked(codes: np.ndarray, scales: np.ndarray) -> Any:
        rows, cols = codes.shape
        _check_scales(scales, rows, cols, f"codes of shape {codes.shape}")
        return prepare(codes, scales)

    return checked


def _checked_prepare_packed(prepare: Callable[..., Any]) -> Callable[..., Any]:
    def checked(parts: list[tuple[str, np.ndarray, int]], cols: int, scales: np.ndarray) -> Any:
        for i, (name, data, rows) in enumerate(parts):
            _check_ternary_part(i, formats.weight_type(name), data, rows, cols)
        rows = sum(part[2] for part in parts)
        _check_scales(scales, rows, cols, f"{len(parts)} parts of {rows} rows of {cols}")
        return prepare(parts, cols, scales)

    return checked


def _check_ternary_part(i: int, t: formats.WeightType, data: np.ndarray, rows: int, cols: int):
    where = f"ternary part {i} ({t.name}, {rows} rows of {cols})"
    if not t.ternary:
        raise FormatError(f"{where}: {t.name} is not ternary; BitLinear reads {formats.TERNARY}")
    if rows < 1:
        raise FormatError(f"{where}: a part holds at least one row")
    try:
        need = formats.tensor_nbytes(t, cols, rows * cols)
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    if data.size != need:
        raise FormatError(f"{where}: needs {need} bytes, got {data.size}")


def _check_scales(scales: np.ndarray, rows: int, cols: int, what: str) -> None:
    groups = scales.shape[1] if scales.ndim == 2 else 0
    if scales.shape[0] != rows or not (groups == 1 or (cols % 256 == 0 and groups * 256 == cols)):
        raise FormatError(
            f"ternary scales of shape {scales.shape} do not fit {what}: "
            "need (rows, 1) or (rows, cols / 256)"
        )


# The float and Q formats a dense linear kernel reads in place: the table's non-ternary ones.
DENSE_FORMATS = formats.DENSE


def _native_prepare_dense(wtype: str, data: np.ndarray, shape: tuple[int, int]) -> Any:
    rows, cols = shape
    data = np.ascontiguousarray(data, np.uint8).ravel()
    return _native.DenseMatrix(data, formats.weight_type(wtype).id, rows, cols, data)


def _native_linear(tier: str, op: str, x: np.ndarray, w: Any) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    if isinstance(w, _native.Int8Matrix):
        return _native.int8_linear(tier, w, x)
    if not isinstance(w, _native.DenseMatrix):
        raise PyBitnetError(f"{op}_{tier} needs weights from its own prepare(), got {w!r}")
    return _native.dense_linear(tier, w, x)


def _checked_linear(op: str, run: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def linear(x: np.ndarray, w: Any) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != w.shape[1]:
            raise PyBitnetError(
                f"{op}: input of shape {x.shape} does not fit weights of shape {w.shape} "
                "(need (n, in_features))"
            )
        return run(x, w)

    return linear


def _checked_prepare_dense(prepare: Callable[..., Any]) -> Callable[..., Any]:
    """prepare(wtype, data, shape) after checking that data holds the matrix in wtype."""

    def checked(wtype: str, data: np.ndarray, shape: tuple[int, int]) -> Any:
        rows, cols = shape
        t = formats.weight_type(wtype)
        if rows < 1 or cols < 1 or cols % t.block_size:
            raise FormatError(f"{wtype} matrix of shape {shape}: rows must be whole blocks")
        need = formats.tensor_nbytes(t, cols, rows * cols)
        if data.size != need:
            raise FormatError(
                f"{wtype} matrix of shape {shape} needs {need} bytes, got {data.size}"
            )
        return prepare(wtype, data, shape)

    return checked


def _native_prepare_int8(tier: str, wtype: str, data: np.ndarray, shape: tuple[int, int]) -> Any:
    return _native.Int8Matrix(tier, _native_prepare_dense(wtype, data, shape))


def _native_embedding(tier: str, w: Any, ids: np.ndarray) -> np.ndarray:
    return _native.dense_rows(tier, w, np.ascontiguousarray(ids, np.int64))


def _native_rope(
    tier: str, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rope_dim: int, neox: bool
) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)  # rotated in place unless a copy was needed
    _native.rope(tier, x, cos, sin, rope_dim, neox)
    return x


def _native_attention(
    tier: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, seqs: Sequence[numpy_tier.AttentionSeq]
) -> np.ndarray:
    f32 = np.float32
    q, k, v = (
        np.ascontiguousarray(q, f32),
        np.ascontiguousarray(k, f32),
        np.ascontiguousarray(v, f32),
    )
    return _native.attention(tier, q, k, v, seqs)


def _run(tier: str, name: str) -> Callable[..., Any]:
    """The numpy function `name` of kernels/numpy_tier.py, or the native one on `tier`."""
    if tier == "numpy":
        return getattr(numpy_tier, name)
    native = {
        "rmsnorm": partial(_native.rmsnorm, tier),
        "gated": partial(_native.gated, tier),
        "rope": partial(_native_rope, tier),
        "attention": partial(_native_attention, tier),
        "embedding": partial(_native_embedding, tier),
    }
    return native[name]


@cache
def _make(op: str, tier: str) -> Kernel:
    kid = f"{op}_{tier}"
    on_numpy = tier == "numpy"
    if op == "bitlinear":
        if on_numpy:
            run, prepare = numpy_tier.bitlinear, numpy_tier.prepare_ternary
            packed = numpy_tier.prepare_ternary_packed
        else:
            run, prepare = partial(_native_bitlinear, tier), _native_prepare
            packed = _native_prepare_packed
        return Kernel(
            kid,
            op,
            tier,
            _checked_linear("bitlinear", run),
            _checked_prepare(prepare),
            _checked_prepare_packed(packed),
        )
    if op.startswith("linear_"):
        wtype = "int8" if op == "linear_int8" else op.removeprefix("linear_").upper()
        if op == "linear_int8":
            run = numpy_tier.int8_linear if on_numpy else partial(_native_linear, tier, op)
            prepare = numpy_tier.prepare_int8 if on_numpy else partial(_native_prepare_int8, tier)
            # prepare(wtype, data, shape): quantizes any dense matrix to int8 rows
            return Kernel(kid, op, tier, _checked_linear(op, run), _checked_prepare_dense(prepare))
        if wtype in DENSE_FORMATS:
            run = numpy_tier.linear if on_numpy else partial(_native_linear, tier, op)
            prepare = numpy_tier.prepare_dense if on_numpy else _native_prepare_dense
            if on_numpy and wtype in numpy_tier.INT8_ACTIVATION_KQUANTS:  # int8 activations
                prepare, run = numpy_tier.INT8_ACTIVATION_KQUANTS[wtype]
            prepare = _checked_prepare_dense(prepare)
            return Kernel(kid, op, tier, _checked_linear(op, run), partial(prepare, wtype))
    if op in PLAIN_OPS:
        return Kernel(kid, op, tier, _run(tier, op))
    raise PyBitnetError(f"unknown kernel op {op!r}; known: {', '.join(OPS)}")


# The ops that take no prepared weights, then every op.
PLAIN_OPS = ("embedding", "rmsnorm", "rope", "gated", "attention")
OPS = ("bitlinear", *(f"linear_{n.lower()}" for n in DENSE_FORMATS), "linear_int8", *PLAIN_OPS)


def known_ids() -> frozenset[str]:
    """Every kernel id this version of pybitnet defines, whether or not this CPU runs it."""
    return frozenset(f"{op}_{tier}" for op in OPS for tier in TIERS)


def get(op: str, tier: str | None = None) -> Kernel:
    """The kernel for `op` on `tier` (default: selected_tier())."""
    tier = tier or selected_tier()
    if tier not in supported_tiers():
        raise PyBitnetError(
            f"kernel tier {tier!r} does not run here; supported: {', '.join(supported_tiers())}"
        )
    return _make(op, tier)


def set_threads(n: int) -> None:
    """Threads the native kernels use (default: every hardware thread)."""
    if n < 1:
        raise PyBitnetError(f"threads must be at least 1, got {n}")
    if _native is not None:
        _native.set_threads(n)


def threads() -> int:
    return _native.threads() if _native is not None else 1


def describe() -> dict[str, Any]:
    """The CPU, what it offers, and what the registry picks: for receipts and `--verbose`."""
    return {
        "cpu": _native.cpu_model_name() if _native is not None else "unknown",
        "features": sorted(k for k, v in _native.cpu_features().items() if v) if _native else [],
        "native": _native is not None,
        "native_error": _NATIVE_ERROR,
        "supported_tiers": list(supported_tiers()),
        "selected_tier": selected_tier(),
        "threads": threads(),
    }
