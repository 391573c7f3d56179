"""Linear layers prepared once at load: ternary weights repacked for BitLinear (several matrices
that read the same input stacked into one), float and Q-format weights read in place."""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np

from pybitnet import formats, kernels
from pybitnet.errors import ModelError, PyBitnetError
from pybitnet.model.weights import Tensor


class Linear:
    """``Linear(x)`` -> one output (n, out_i) per tensor, for tensors that share an input
    (stacked: column views of one array).

    Ternary tensors of one type become a single BitLinear matrix (one activation quantization,
    one kernel call; every output row is computed as it would be alone). Other tensors each get
    a dense kernel for their format, or the int8 kernel when ``int8`` is set.
    """

    def __init__(self, tensors: Sequence[Tensor], tier: str, *, int8: bool = False) -> None:
        self.names = [t.name for t in tensors]
        self.rows = [t.shape[0] for t in tensors]
        cols = {t.shape[1] for t in tensors}
        types = {t.wtype.name for t in tensors}
        if len(cols) != 1:
            raise ModelError(f"{self.names}: stacked tensors need one input size, got {cols}")
        self.cols = cols.pop()
        if all(t.wtype.ternary for t in tensors) and len(types) == 1 and not int8:
            self.kernel = kernels.get("bitlinear", tier)
            try:
                self.prepared = [self.kernel.prepare_packed(*_packed(tensors, self.cols))]
            except PyBitnetError as exc:  # e.g. an invalid code: say which tensors it is in
                raise ModelError(f"{', '.join(self.names)}: {exc}") from None
            self.scales = [1.0]  # folded into the ternary scales
            bounds = np.cumsum([0, *self.rows]).tolist()
            self._parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            for t in tensors:
                release_pages(t.data)  # repacked: the file's pages are no longer needed
            return
        op = "linear_int8" if int8 else None
        self.kernels, self.prepared, self.scales = [], [], []
        for t in tensors:
            if t.wtype.ternary:
                raise ModelError(f"tensor {t.name}: mixed ternary types in one stacked layer")
            kernel = kernels.get(op or _dense_op(t), tier)
            self.kernels.append(kernel)
            if int8:
                self.prepared.append(kernel.prepare(t.wtype.name, t.data, t.shape))
            else:
                self.prepared.append(kernel.prepare(t.data, t.shape))
            self.scales.append(t.scale)
        self.kernel = None

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.kernel is not None:  # one stacked BitLinear
            y = self.kernel(x, self.prepared[0])
            if len(self.rows) == 1:
                return [y]
            # views, not copies (a prompt's gate and up halves were ~7 MB a layer to copy):
            # gated reads strided rows, rope and attention copy what they rotate or cache
            return [y[:, part] for part in self._parts]
        outs = []
        for kernel, w, scale in zip(self.kernels, self.prepared, self.scales, strict=True):
            y = kernel(x, w)
            outs.append(y if scale == 1.0 else y * np.float32(scale))
        return outs


def requantize_problem(t: Tensor, wtype: str) -> str | None:
    """Why ``t`` cannot be requantized to ``wtype`` (or its fallback: its rows must be whole
    blocks of it; a ternary tensor is smaller already), or None."""
    if t.wtype.ternary:
        return f"{t.name} is ternary ({t.wtype.name}), smaller than {wtype.upper()} already"
    name = formats.type_for_rows(wtype, t.shape[1])
    if name not in formats.DENSE:
        return (
            f"{t.name} has rows of {t.shape[1]} elements, not whole 256-element blocks of "
            f"{wtype.upper()}, and llama.cpp's fallback, {name}, is not a format pybitnet reads"
        )
    if t.shape[1] % formats.weight_type(name).block_size:
        return (
            f"{t.name} has rows of {t.shape[1]} elements, not whole "
            f"{formats.weight_type(name).block_size}-element blocks of {name}"
        )
    return None


def requantized(t: Tensor, wtype: str, tier: str | None = None) -> Tensor:
    """``t``'s values (its ``.scale`` applied) stored in ``wtype`` (or llama.cpp's fallback,
    formats.type_for_rows): a smaller output head, made at load a few MB of rows at a time (by
    ``tier``'s quantizer: kernels.quantize). Raises ModelError when requantize_problem says why
    not."""
    problem = requantize_problem(t, wtype)
    if problem:
        raise ModelError(f"output head {wtype}: {problem}")
    name = formats.type_for_rows(wtype, t.shape[1])
    rows, cols = t.shape
    row_bytes = formats.tensor_nbytes(t.wtype, cols, cols)
    step = max(1, (1 << 20) // cols)
    parts = []
    for r in range(0, rows, step):
        n = min(step, rows - r)
        chunk = t.data[r * row_bytes : (r + n) * row_bytes]
        values = formats.dequantize(t.wtype, chunk, (n, cols)) * np.float32(t.scale)
        parts.append(kernels.quantize(name, values, tier))
    return Tensor(t.name, formats.weight_type(name), t.shape, np.concatenate(parts))


def _dense_op(t: Tensor) -> str:
    if t.wtype.name not in kernels.registry.DENSE_FORMATS:
        raise ModelError(f"tensor {t.name}: no linear kernel reads {t.wtype.name}")
    return f"linear_{t.wtype.name.lower()}"


def _packed(tensors: Sequence[Tensor], cols: int) -> tuple[list, int, np.ndarray]:
    """(parts, cols, scales) for a stacked BitLinear matrix; scales include each `.scale`.

    The scales are the file's (I2_S: the tensor's float32; TQ: each block's float16 d), read
    without unpacking the codes, which the kernel decodes itself. TQ rows whose blocks all have
    one d (a ternary model's per-tensor scale, as converted files hold) get a single scale per
    row: sum_b d * (W_b . x_q) = d * (W . x_q), and the kernels' per-row path is faster (its
    prefill GEMM ~1.5x: no float work per block)."""
    parts = [(t.wtype.name, t.data, t.shape[0]) for t in tensors]
    scales = [
        formats.ternary_scales(t.wtype, t.data, t.shape) * np.float32(t.scale) for t in tensors
    ]
    scales = np.concatenate(scales)
    if (scales == scales[:, :1]).all():
        scales = scales[:, :1]
    return parts, cols, scales


def release_pages(data: np.ndarray) -> None:
    """Drops a memory-mapped array's pages from this process (they stay in the page cache and
    fault back in if read again): ternary weights live on as their repacked copy, and keeping
    the file's pages too would count them twice in the resident set."""
    base = data
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer(mmap) keeps a memoryview of the map
        base = base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise"):
        return
    root = np.frombuffer(base, np.uint8)
    offset = data.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the array only
    end = (offset + data.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        base.madvise(mmap.MADV_DONTNEED, start, end - start)
