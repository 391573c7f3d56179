"""The kernel registry: stable ids, the choice of tier, and the call counters.

Every kernel has an id ``<op>_<tier>`` (``bitlinear_avx512``, ``i2s_dequant_numpy``). Tiers, best
first: ``avx512`` (AVX-512 F/BW/VL/VNNI), ``avx2`` (AVX2, FMA, F16C), ``scalar`` (portable C++),
``numpy`` (the reference in kernels/reference.py). ``get(op)`` picks the best tier this CPU
runs; the environment variable PYBITNET_KERNELS forces one (``reference`` for numpy, or a tier
name). Receipts take their kernel list from ``profile()``, never from a list written by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import numpy as np

from pybitnet import formats
from pybitnet.errors import FormatError, PyBitnetError
from pybitnet.kernels import reference

try:
    from pybitnet import _native
except ImportError as exc:  # a source tree without a build: numpy only
    _native = None
    _NATIVE_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _NATIVE_ERROR = None

TIERS = ("avx512", "avx2", "scalar", "numpy")
NATIVE_TIERS = TIERS[:-1]
ENV = "PYBITNET_KERNELS"


class Profile:
    """Calls and seconds per kernel id while a ``profile()`` block is open."""

    def __init__(self) -> None:
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}

    def _add(self, kernel_id: str, seconds: float) -> None:
        self._calls[kernel_id] = self._calls.get(kernel_id, 0) + 1
        self._seconds[kernel_id] = self._seconds.get(kernel_id, 0.0) + seconds

    def stats(self) -> list[dict[str, Any]]:
        """[{id, calls, seconds}] for every kernel called, sorted by id."""
        return [
            {"id": k, "calls": self._calls[k], "seconds": self._seconds[k]}
            for k in sorted(self._calls)
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

    ``prepare`` (BitLinear only) turns weights into the form this kernel takes; it runs once,
    at load, and is not counted."""

    id: str
    op: str
    tier: str
    _run: Callable[..., Any] = field(repr=False)
    _prepare: Callable[..., Any] | None = field(default=None, repr=False)

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


def supported_tiers() -> tuple[str, ...]:
    """The tiers this CPU and build run, best first (numpy always)."""
    native = tuple(_native.supported_tiers()) if _native is not None else ()
    return (*native, "numpy")


def _forced_tier() -> str | None:
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return None
    tier = "numpy" if value == "reference" else value
    if tier not in TIERS:
        raise PyBitnetError(
            f"{ENV}={value!r} is not a kernel tier; use reference or one of {', '.join(TIERS)}"
        )
    return tier


def selected_tier() -> str:
    """The tier get() uses: the one PYBITNET_KERNELS names, else the best supported."""
    forced = _forced_tier()
    if forced is not None and forced not in supported_tiers():
        why = f" ({_NATIVE_ERROR})" if _NATIVE_ERROR else ""
        raise PyBitnetError(
            f"{ENV}={forced!r}: this CPU or build runs only {', '.join(supported_tiers())}{why}"
        )
    return forced or supported_tiers()[0]


def _native_i2s_dequant(tier: str, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    expected = formats.tensor_nbytes(formats.weight_type("I2_S"), shape[-1] if shape else 1, n)
    if data.size != expected:
        raise FormatError(f"I2_S tensor of shape {shape} needs {expected} bytes, got {data.size}")
    return _native.i2s_dequant(tier, np.ascontiguousarray(data, np.uint8).ravel(), n).reshape(shape)


def _native_bitlinear(tier: str, x: np.ndarray, w: Any) -> np.ndarray:
    if not isinstance(w, _native.TernaryMatrix):
        raise PyBitnetError(f"bitlinear_{tier} needs weights from its own prepare(), got {w!r}")
    return _native.bitlinear(tier, w, np.ascontiguousarray(x, np.float32))


def _native_prepare(codes: np.ndarray, scales: np.ndarray) -> Any:
    return _native.TernaryMatrix(
        np.ascontiguousarray(codes, np.int8), np.ascontiguousarray(scales, np.float32)
    )


def _checked_bitlinear(run: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def bitlinear(x: np.ndarray, w: Any) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != w.shape[1]:
            raise PyBitnetError(
                f"BitLinear input of shape {x.shape} does not fit weights of shape {w.shape} "
                "(need (n, in_features))"
            )
        return run(x, w)

    return bitlinear


def _checked_prepare(prepare: Callable[..., Any]) -> Callable[..., Any]:
    def checked(codes: np.ndarray, scales: np.ndarray) -> Any:
        rows, cols = codes.shape
        groups = scales.shape[1] if scales.ndim == 2 else 0
        if scales.shape[0] != rows or not (
            groups == 1 or (cols % 256 == 0 and groups * 256 == cols)
        ):
            raise FormatError(
                f"ternary scales of shape {scales.shape} do not fit codes of shape {codes.shape}: "
                "need (rows, 1) or (rows, cols / 256)"
            )
        return prepare(codes, scales)

    return checked


@cache
def _make(op: str, tier: str) -> Kernel:
    kid = f"{op}_{tier}"
    if op == "i2s_dequant":
        run = reference.i2s_dequant if tier == "numpy" else partial(_native_i2s_dequant, tier)
        return Kernel(kid, op, tier, run)
    if op == "bitlinear":
        if tier == "numpy":
            run, prepare = reference.bitlinear, reference.prepare_ternary
        else:
            run, prepare = partial(_native_bitlinear, tier), _native_prepare
        return Kernel(kid, op, tier, _checked_bitlinear(run), _checked_prepare(prepare))
    raise PyBitnetError(f"unknown kernel op {op!r}; known: {', '.join(OPS)}")


OPS = ("i2s_dequant", "bitlinear")


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
