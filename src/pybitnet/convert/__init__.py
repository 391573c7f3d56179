"""Convert checkpoints from other formats into GGUF models.

Each importer reads one source format and returns the GGUF metadata and tensor specs of an
equivalent model; ``convert`` writes them. A new source (e.g. "hf") is one more entry in
IMPORTERS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pybitnet import formats
from pybitnet.convert.llama2c import import_llama2c
from pybitnet.errors import ModelError
from pybitnet.formats import WeightType
from pybitnet.gguf import TensorSpec, write_gguf

# importer(source path, weight type for ternary matrices, tokenizer path or None)
Importer = Callable[[Path, WeightType, Path | None], tuple[Mapping[str, Any], Sequence[TensorSpec]]]
IMPORTERS: dict[str, Importer] = {"llama2c": import_llama2c}


def convert(
    source: str,
    src_path: str | Path,
    dst_path: str | Path,
    *,
    weight_type: str = "I2_S",
    tokenizer: str | Path | None = None,
) -> Path:
    """Convert the ``source``-format checkpoint at ``src_path`` into a GGUF file at ``dst_path``.

    ``weight_type`` is the GGUF type of the ternary matrices; ``tokenizer`` names a tokenizer
    file where the checkpoint has none of its own (llama2c: its `tokenizer.model`, by default
    the one next to the checkpoint).
    """
    importer = IMPORTERS.get(source)
    if importer is None:
        raise ModelError(
            f"unknown checkpoint source {source!r}; pybitnet converts from {', '.join(IMPORTERS)}"
        )
    tokenizer_path = Path(tokenizer) if tokenizer is not None else None
    metadata, tensors = importer(Path(src_path), formats.weight_type(weight_type), tokenizer_path)
    write_gguf(dst_path, metadata, tensors)
    return Path(dst_path)
