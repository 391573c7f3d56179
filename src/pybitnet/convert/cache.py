"""Hugging Face checkpoint folders used as models: converted once (I2_S, F16 embedding) into a
cache keyed by the checkpoint's content, so `-m DIR` costs one conversion, then a hash.

The cache is $PYBITNET_CACHE, else ~/.cache/pybitnet; a file is named by the sha256 of the
pybitnet version and of every file the conversion reads, so an edited checkpoint or a newer
converter gets a new file and never a stale one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from pybitnet import __version__
from pybitnet.errors import ModelError

HASH_CHUNK = 1 << 24
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def cache_dir() -> Path:
    return Path(os.environ.get("PYBITNET_CACHE") or Path.home() / ".cache" / "pybitnet")


def checkpoint_key(folder: Path) -> str:
    """sha256 over the converter's version and the name and bytes of each file it reads."""
    files = ["config.json", *TOKENIZER_FILES, "model.safetensors.index.json"]
    files += sorted(p.name for p in folder.glob("*.safetensors"))
    digest = hashlib.sha256(__version__.encode())
    for name in files:
        path = folder / name
        if not path.is_file():
            continue
        digest.update(f"\0{name}\0".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_path(
    path: str | Path, progress: Callable[[int], Callable[[str], None]] | None = None
) -> Path:
    """``path`` itself for a file; for a Hugging Face checkpoint folder, its GGUF in the cache,
    converted first if it is not there (``progress`` as in `pybitnet.convert.convert`)."""
    from pybitnet.convert import convert

    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: a folder without config.json is not a Hugging Face checkpoint")
    out = cache_dir() / "hf" / f"{checkpoint_key(path)}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert("hf", path, out, progress=progress)
    return out
