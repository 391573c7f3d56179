"""`pybitnet convert --from gguf --embedding-type T`: an existing GGUF model with its token
embedding and output layer stored in another type (a Q6_K one reads 0.41 of F16's bytes a
decoded token), every other tensor and all metadata copied as they are.

Types and tensor names are ggml's own, so llama.cpp and bitnet.cpp read the file. Rows that are
not whole 256-blocks of a K-quant take llama.cpp's fallback type (formats.type_for_rows), as its
quantizer does; a `.scale` tensor beside one of them is folded into its values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pybitnet import formats, kernels
from pybitnet.errors import ModelError
from pybitnet.gguf import TensorSpec, open_gguf, write_gguf

EMBEDDINGS = ("token_embd", "output")  # the embedding and (untied) output layer
CHUNK_ELEMENTS = 1 << 22  # rows re-encoded at once: a few MB of float32


def reencode_embedding(src: Path, dst: Path, embedding_type: str) -> list[str]:
    """Write ``src`` to ``dst`` with its embedding and output layer in ``embedding_type``;
    returns a line for each of them saying what it became."""
    target = formats.weight_type(embedding_type)
    if target.ternary:
        raise ModelError(f"--embedding-type {target.name} must be a float or Q type")
    with open_gguf(src) as f:
        folded = {f"{name}.scale" for name in EMBEDDINGS}
        specs, lines = [], []
        for name, info in f.tensors.items():
            base = name.removesuffix(".weight")
            if name in folded:
                continue
            if base not in EMBEDDINGS or name != f"{base}.weight":
                specs.append(TensorSpec(name, info.shape, info.wtype, f.tensor_bytes(name)))
                continue
            wtype = formats.type_for_rows(target.name, info.shape[-1])
            if wtype not in formats.DENSE or info.wtype.ternary:
                raise ModelError(
                    f"{src}: {name} ({info.wtype.name}, rows of {info.shape[-1]}): llama.cpp "
                    f"would store it in {wtype}, which pybitnet does not write"
                )
            scale = f.dequantize(f"{base}.scale")[0] if f"{base}.scale" in f.tensors else 1.0
            specs.append(TensorSpec(name, info.shape, wtype, _encoded(f, name, wtype, scale)))
            fallback = (
                "" if wtype == target.name else f" (rows of {info.shape[-1]}: llama.cpp's fallback)"
            )
            lines.append(f"{name}: {info.wtype.name} -> {wtype}{fallback}")
        write_gguf(dst, f.metadata, specs, alignment=f.alignment, types=f.metadata_types)
    return lines


def _encoded(f, name: str, wtype: str, scale: float) -> np.ndarray:
    """Tensor ``name``'s values (times ``scale``) in ``wtype``, a chunk of rows at a time."""
    info = f.tensors[name]
    rows, cols = int(np.prod(info.shape[:-1])), info.shape[-1]
    row_bytes = formats.tensor_nbytes(info.wtype, cols, cols)
    data = f.tensor_bytes(name)
    step = max(1, CHUNK_ELEMENTS // cols)
    parts = []
    for r in range(0, rows, step):
        n = min(step, rows - r)
        values = formats.dequantize(
            info.wtype, data[r * row_bytes : (r + n) * row_bytes], (n, cols)
        )
        parts.append(kernels.quantize(wtype, values * np.float32(scale)))
    return np.concatenate(parts)
