"""Convert checkpoints from other formats into GGUF models.

Each importer reads one source format and returns the GGUF metadata and tensor specs of an
equivalent model; ``convert`` writes them. A new source is one more entry in IMPORTERS.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pybitnet import formats
from pybitnet.convert.embedding import reencode_embedding
from pybitnet.convert.hf import import_hf
from pybitnet.convert.llama2c import import_llama2c
from pybitnet.errors import ModelError
from pybitnet.gguf import TensorSpec, write_gguf

# importer(source path, weight type for ternary matrices, tokenizer path or None[, embedding_type])
Importer = Callable[..., tuple[Mapping[str, Any], Sequence[TensorSpec]]]
IMPORTERS: dict[str, Importer] = {"llama2c": import_llama2c, "hf": import_hf}


def convert(
    source: str,
    src_path: str | Path,
    dst_path: str | Path,
    *,
    weight_type: str | None = None,
    tokenizer: str | Path | None = None,
    embedding_type: str | None = None,
    progress: Callable[[int], Callable[[str], None]] | None = None,
) -> Path:
    """Convert the ``source``-format checkpoint at ``src_path`` into a GGUF file at ``dst_path``.

    ``weight_type`` is the GGUF type of the ternary matrices (I2_S by default); ``tokenizer``
    names a tokenizer file where the checkpoint has none of its own (llama2c: its
    `tokenizer.model`, by default the one next to the checkpoint; hf: a folder with
    tokenizer.json). ``embedding_type`` is the type of the embedding and output head, for
    importers that choose it (hf: F16 by default), and for source "gguf" (an existing GGUF model)
    the one change made (convert/embedding.py).
    ``progress(n_tensors)`` returns a function told each tensor's name as it is written.
    """
    if source == "gguf":
        return _reencoded_gguf(
            Path(src_path), Path(dst_path), weight_type, tokenizer, embedding_type
        )
    importer = IMPORTERS.get(source)
    if importer is None:
        raise ModelError(
            f"unknown checkpoint source {source!r}; pybitnet converts from "
            f"{', '.join(IMPORTERS)}, gguf"
        )
    options = {}
    if embedding_type is not None:
        if "embedding_type" not in inspect.signature(importer).parameters:
            raise ModelError(
                f"--embedding-type {embedding_type}: {source} checkpoints keep their own"
            )
        options["embedding_type"] = formats.weight_type(embedding_type)
    tokenizer_path = Path(tokenizer) if tokenizer is not None else None
    wtype = formats.weight_type(weight_type or "I2_S")
    metadata, tensors = importer(Path(src_path), wtype, tokenizer_path, **options)
    if progress is not None:
        step = progress(len(tensors))
        tensors = [_announced(spec, step) for spec in tensors]
    write_gguf(dst_path, metadata, tensors)
    return Path(dst_path)


def _reencoded_gguf(
    src: Path, dst: Path, weight_type: str | None, tokenizer: Any, embedding_type: str | None
) -> Path:
    """A GGUF model with its embedding and output layer re-encoded (convert/embedding.py); the
    other tensors keep their types, so --type and --tokenizer do not apply."""
    for flag, value in (("--type", weight_type), ("--tokenizer", tokenizer)):
        if value is not None:
            raise ModelError(f"{flag} {value}: a gguf model keeps its own; give --embedding-type")
    if embedding_type is None:
        raise ModelError(f"{src}: --from gguf re-encodes the embedding: give --embedding-type")
    for line in reencode_embedding(src, dst, embedding_type):
        print(f"pybitnet: {line}", file=sys.stderr)
    return dst


def _announced(spec: TensorSpec, step: Callable[[str], None]) -> TensorSpec:
    """``spec`` whose data, when the writer asks for it, first tells ``step`` its name."""

    def data() -> Any:
        step(spec.name)
        return spec.data() if callable(spec.data) else spec.data

    return dataclasses.replace(spec, data=data)
