"""`pybitnet inspect`: what a GGUF file holds, from its header alone (no tensor data is read,
so it is instant on a 1.2 GB model; only --sha256 reads the whole file)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pybitnet.gguf.reader import open_gguf


def inspect_gguf(path: str | Path, *, sha256: bool = False) -> dict[str, Any]:
    """A JSON-ready description of a GGUF file: architecture, hyperparameters (the
    ``<arch>.*`` keys, prefix removed), tokenizer summary, tensor table (shapes in numpy order:
    rows, then row length), a histogram of tensor types, and sizes. ``sha256`` hashes the file."""
    with open_gguf(path) as f:
        md, arch = f.metadata, f.architecture
        tensors = [
            {"name": t.name, "shape": list(t.shape), "type": t.wtype.name, "bytes": t.nbytes}
            for t in f.tensors.values()
        ]
        types: dict[str, dict[str, int]] = {}
        for t in tensors:
            entry = types.setdefault(t["type"], {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += t["bytes"]
        prefix = f"{arch}."
        report: dict[str, Any] = {
            "path": str(f.path),
            "file_bytes": f.size,
            "gguf_version": f.version,
            "architecture": arch,
            "name": md.get("general.name"),
            "file_type": md.get("general.file_type"),
            "hyperparameters": {
                key.removeprefix(prefix): _plain(value)
                for key, value in md.items()
                if arch is not None and key.startswith(prefix)
            },
            "tokenizer": _tokenizer(md),
            "parameters": sum(t.n_elements for t in f.tensors.values()),
            "tensor_bytes": sum(t["bytes"] for t in tensors),
            "metadata_keys": len(md),
            "types": types,
            "tensors": tensors,
        }
    if sha256:
        with open(path, "rb") as fh:
            report["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
    return report


def _tokenizer(md: dict[str, Any]) -> dict[str, Any]:
    tokens = md.get("tokenizer.ggml.tokens")
    return {
        "model": md.get("tokenizer.ggml.model"),
        "pre": md.get("tokenizer.ggml.pre"),
        "vocab_size": len(tokens) if isinstance(tokens, list | np.ndarray) else None,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "has_chat_template": "tokenizer.chat_template" in md,
    }


def _plain(value: Any) -> Any:
    """A metadata value as JSON-ready Python (numpy arrays become lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def render(report: dict[str, Any], console: Console | None = None) -> None:
    """Print an inspect_gguf report as tables."""
    console = console or Console()
    summary = Table(title="GGUF file", show_header=False)
    summary.add_column()
    summary.add_column(overflow="fold")  # long paths and hashes wrap instead of being cut
    rows = [
        ("path", report["path"]),
        ("architecture", report["architecture"]),
        ("name", report["name"]),
        ("file type", report["file_type"]),
        ("GGUF version", report["gguf_version"]),
        ("file size", f"{report['file_bytes']:,} bytes"),
        ("parameters", f"{report['parameters']:,}"),
        ("metadata keys", report["metadata_keys"]),
    ]
    if "sha256" in report:
        rows.append(("sha256", report["sha256"]))
    for label, value in rows:
        summary.add_row(label, str(value))
    console.print(summary)

    console.print(_key_value_table("hyperparameters", report["hyperparameters"]))
    console.print(_key_value_table("tokenizer", report["tokenizer"]))

    histogram = Table(title="tensor types")
    for column in ("type", "tensors", "bytes", "share"):
        histogram.add_column(column, justify="left" if column == "type" else "right")
    total = max(report["tensor_bytes"], 1)
    for name, entry in report["types"].items():
        share = f"{100 * entry['bytes'] / total:.1f}%"
        histogram.add_row(name, str(entry["count"]), f"{entry['bytes']:,}", share)
    console.print(histogram)

    table = Table(title=f"{len(report['tensors'])} tensors")
    for column in ("name", "shape", "type", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for t in report["tensors"]:
        shape = " x ".join(map(str, t["shape"]))
        table.add_row(t["name"], shape, t["type"], f"{t['bytes']:,}")
    console.print(table)


def _key_value_table(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in values.items():
        # float32 values (eps 1e-5 is 9.99999974e-06) shown at float32 precision
        text = repr(value) if isinstance(value, str) else str(value)
        if isinstance(value, float):
            text = f"{value:.7g}"
        table.add_row(key, text if len(text) <= 80 else text[:77] + "...")
    return table
