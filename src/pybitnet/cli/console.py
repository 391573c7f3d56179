"""What the commands show besides their results: spinners and progress bars on stderr, text
streamed to stdout, the kernel profile."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pybitnet.cli.options import use_threads


def status(text: str) -> Any:
    """A spinner on stderr while a `with` block runs (its `update` changes the text); where
    stderr is no terminal (a log, CI), a line per stage instead, so a long step is never silent."""
    from rich.console import Console

    console = Console(stderr=True)
    return console.status(text, spinner="dots") if console.is_terminal else _StageLines(text)


class _StageLines:
    """`status` for a stderr that is no terminal: each stage's text on a line of its own."""

    def __init__(self, text: str) -> None:
        self.update(text)

    def update(self, text: str) -> None:
        print(f"pybitnet: {text}", file=sys.stderr, flush=True)

    def __enter__(self) -> _StageLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def load_model(
    model: Path | None, threads: int | None, output_head: str | None = None, **options: Any
) -> Any:
    """Loads a model (``options`` as in pybitnet.load), with a spinner on stderr while it
    loads."""
    from pybitnet.generate import load

    use_threads(threads)
    model = resolve_model(model)
    with status("loading model"):
        m = load(model, output_head=output_head, **options)
    if m.engine.output_note:
        print(f"pybitnet: {m.engine.output_note}", file=sys.stderr, flush=True)
    return m


def resolve_model(model: Path | None) -> Path | None:
    """``model``, or for a Hugging Face checkpoint folder its cached GGUF, converted first (with
    a progress bar) when the cache has none."""
    from pybitnet.convert.cache import model_path

    if model is None:
        return None
    bars: list[Any] = []

    def start(total: int) -> Callable[[str], None]:
        bar, step = progress(total)
        bar.start()
        bars.append(bar)
        return lambda name: step(f"converting {model.name}: {name}")

    try:
        return model_path(model, progress=start)
    finally:
        for bar in bars:
            bar.stop()


def progress(total: int) -> tuple[Any, Callable[[str], None]]:
    """A rich progress bar on stderr, and the step callback that advances it."""
    import itertools

    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task("starting", total=total)
    done = itertools.count()

    def step(description: str) -> None:
        bar.update(task, description=description, completed=next(done))

    return bar, step


def write_streamed(pieces: Iterable[str]) -> None:
    """Each piece to stdout as it comes, then a newline."""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def print_written(path: Path) -> None:
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def print_profile(prof: Any, seconds: float) -> None:
    """The kernel registry's calls and time for a run, and the time spent outside kernels."""
    from rich.console import Console
    from rich.table import Table

    table = Table("kernel", "calls", "ms", "share", title="kernel profile", title_justify="left")
    stats = prof.stats()
    for s in sorted(stats, key=lambda s: -s["seconds"]):
        share = s["seconds"] / seconds
        table.add_row(s["id"], str(s["calls"]), f"{s['seconds'] * 1e3:.1f}", f"{share:.1%}")
    outside = seconds - sum(s["seconds"] for s in stats)
    table.add_row("(outside kernels)", "", f"{outside * 1e3:.1f}", f"{outside / seconds:.1%}")
    Console(stderr=True).print(table)
