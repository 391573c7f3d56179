"""Model files made for a test: a GGUF rewritten with other metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pybitnet.gguf import TensorSpec, open_gguf, write_gguf


def rewrite(
    src: Path,
    dst: Path,
    metadata: Callable[[dict], None] = lambda md: None,
    tensors: Callable[[list[TensorSpec]], None] = lambda ts: None,
) -> Path:
    """A copy of ``src`` after ``metadata`` and ``tensors`` edited its key/values and tensors.
    A key keeps its GGUF type unless its value was replaced (a numpy scalar or array then
    gives its own type: a hostile value may be of any type)."""
    f = open_gguf(src)
    md = dict(f.metadata)
    specs = [TensorSpec(n, i.shape, i.wtype, f.tensor_bytes(n)) for n, i in f.tensors.items()]
    metadata(md)
    tensors(specs)
    kept = {k: t for k, t in f.metadata_types.items() if k in md and md[k] is f.metadata[k]}
    write_gguf(dst, md, specs, types=kept)
    return dst
