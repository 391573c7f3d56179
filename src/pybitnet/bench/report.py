"""Benchmark reports: one self-contained HTML page with plots, and a Markdown summary.

    write_report(["old.json", "new.json"], "report.html", "report.md")

The page needs no network and runs no script: the plots are inline SVG (charts.py) and the style
is inline. It shows, across receipts, the median throughput of every run and thread count over
time (created_at), and for each receipt (newest first, the newest unfolded) its throughput per
run and thread count as bars (median of the samples, whiskers from the smallest to the largest
sample), its runs, its kernel counters, and its host, model and workload. Every figure is
computed from the receipts' raw samples by receipt.summarize. A chart shows one run kind, and
one family of runs (a run name's first word: gemv, quantize, ...) where the kind has several, so
that a kernels receipt's 40-odd runs make several readable charts rather than one crowded one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pybitnet.bench.charts import bar_chart, fmt, line_chart, threads_label
from pybitnet.bench.receipt import load_receipt, summarize
from pybitnet.bench.tables import esc, html_table, markdown_table
from pybitnet.errors import BenchError

UNITS = {"tokens_per_second": "tok/s", "elements_per_second": "elements/s"}
T = TypeVar("T")


@dataclass(frozen=True)
class Receipt:
    name: str  # the file it came from
    doc: dict[str, Any]

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.doc["created_at"].replace("Z", "+00:00"))


@dataclass(frozen=True)
class Throughput:
    """The throughput samples of one run, summarised."""

    run: str
    kind: str
    threads: int
    metric: str  # tokens_per_second or elements_per_second
    summary: dict[str, Any]

    @property
    def unit(self) -> str:
        return UNITS[self.metric]

    def describe(self) -> str:
        s = self.summary
        return (
            f"{self.run}, {threads_label(self.threads)}: median {fmt(s['median'])} {self.unit} "
            f"(min {fmt(s['min'])}, max {fmt(s['max'])}, n={s['n']})"
        )


def load_receipts(paths: Sequence[str | Path]) -> list[Receipt]:
    """Read and validate receipts, oldest first."""
    if not paths:
        raise BenchError("a report needs at least one receipt")
    receipts = [Receipt(Path(p).name, load_receipt(p)) for p in paths]
    return sorted(receipts, key=lambda r: r.created_at)


def throughputs(doc: dict[str, Any]) -> list[Throughput]:
    """The throughput of every run of a receipt, in the receipt's order."""
    out = []
    for run in doc["runs"]:
        metric = next(m for m in UNITS if m in run["samples"])
        summary = summarize(run["samples"][metric])
        out.append(Throughput(run["name"], run["kind"], run["threads"], metric, summary))
    return out


def write_report(
    paths: Sequence[str | Path], html_path: str | Path, markdown_path: str | Path | None = None
) -> list[Path]:
    """Write the HTML page (and the Markdown summary) of the receipts; return the paths written."""
    receipts = load_receipts(paths)
    written = []
    for path, render in ((html_path, render_html), (markdown_path, render_markdown)):
        if path is None:
            continue
        try:
            Path(path).write_text(render(receipts), encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"{path}: cannot write the report: {exc}") from None
        written.append(Path(path))
    return written


# --- Markdown ---------------------------------------------------------------------------------


def render_markdown(receipts: Sequence[Receipt]) -> str:
    lines = ["# pybitnet benchmark report", "", *markdown_table(*_receipts_table(receipts))]
    for r in reversed(receipts):
        lines += ["", f"## {r.doc['created_at']} ({r.name})", ""]
        lines += markdown_table(*_runs_table(r.doc))
        lines += ["", *markdown_table(*_kernels_table(r.doc))]
    return "\n".join(lines) + "\n"


# --- the tables both forms share ----------------------------------------------------------------


def _receipts_table(receipts: Sequence[Receipt]) -> tuple[list[str], list[list[str]]]:
    header = ["created_at", "file", "kind", "model", "cpu", "tool", "compute"]
    rows = []
    for r in receipts:
        d = r.doc
        model = f"{d['model']['architecture']} {d['model']['sha256'][:12]}" if "model" in d else "-"
        tool = f"{d['tool']['name']} {d['tool']['version']} {d['tool']['git_commit'] or ''}"
        compute = f"{d['backend']} {d['compute_path']}"
        cells = [d["created_at"], r.name, d["kind"], model, d["host"]["cpu_model"], tool, compute]
        rows.append([c.strip() for c in cells])
    return header, rows


def _runs_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "kind", "threads", "n", "median", "min", "max", "unit"]
    header += ["TTFT ms", "ITL p50 ms", "peak RSS MB"]
    rows = []
    for run, t in zip(doc["runs"], throughputs(doc), strict=True):
        s = t.summary
        cells = [t.run, t.kind, str(t.threads), str(s["n"]), fmt(s["median"]), fmt(s["min"])]
        cells += [fmt(s["max"]), t.unit]
        for metric in ("ttft_ms", "itl_p50_ms", "peak_rss_mb"):
            samples = run["samples"].get(metric)
            cells.append(fmt(summarize(samples)["median"]) if samples else "-")
        rows.append(cells)
    return header, rows


def _kernels_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    total = sum(k["seconds"] for k in doc["kernels"]) or 1.0
    rows = [
        [
            k["id"],
            f"{k['calls']:,}",
            f"{k['seconds']:.4g}",
            f"{k['seconds'] / total:.1%}",
            fmt(1e6 * k["seconds"] / k["calls"]) if k["calls"] else "-",
        ]
        for k in sorted(doc["kernels"], key=lambda k: -k["seconds"])
    ]
    return ["kernel", "calls", "seconds", "share", "µs per call"], rows


# --- HTML -------------------------------------------------------------------------------------


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1180px;
       padding: 0 16px; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure.chart-box { margin: 0; width: 560px; }
svg.chart { display: block; background: #fff; border: 1px solid #e3e3e3; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
svg .title { font-size: 14px; font-weight: 600; }
svg .value { font-size: 11px; }
ul.legend { list-style: none; margin: 6px 0 0; padding: 0; display: flex; flex-wrap: wrap;
            gap: 3px 14px; font-size: 12px; }
ul.legend li { display: flex; align-items: center; gap: 5px; overflow-wrap: anywhere; }
ul.legend .key { flex: none; width: 11px; height: 11px; }
svg .grid line { stroke: #ccc; }
details { border-top: 1px solid #ccc; padding-top: 6px; margin-top: 18px; }
summary { font-size: 17px; font-weight: 600; cursor: pointer; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dt { color: #666; } dd { margin: 0; word-break: break-all; }
.note { color: #666; }
"""


def render_html(receipts: Sequence[Receipt]) -> str:
    newest = receipts[-1]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>pybitnet benchmark report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>pybitnet benchmark report</h1>",
        f'<p class="note">{len(receipts)} receipts, the newest from '
        f"{esc(newest.doc['created_at'])}. Bars: the median of a run's samples; whiskers: the "
        "smallest and largest sample.</p>",
        "<h2>Receipts</h2>",
        html_table(*_receipts_table(receipts)),
        f'<section id="history"><h2>History</h2>{_history(receipts)}</section>',
    ]
    for r in reversed(receipts):
        parts.append(_receipt_section(r, open_=r is newest))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def family(run: str) -> str:
    """The family of a run: its name's first word (gemv, quantize, pp32)."""
    return run.split(maxsplit=1)[0] if run.strip() else run


def _facets(items: Sequence[T], of: Callable[[T], Throughput]) -> dict[tuple[str, str], list[T]]:
    """The items of each chart, keyed by (kind, family); the family is "" where the kind has
    only one, so a kind of a single family keeps one chart titled by the kind alone."""
    families: dict[str, set[str]] = {}
    for item in items:
        families.setdefault(of(item).kind, set()).add(family(of(item).run))
    facets: dict[tuple[str, str], list[T]] = {}
    for item in items:
        t = of(item)
        key = family(t.run) if len(families[t.kind]) > 1 else ""
        facets.setdefault((t.kind, key), []).append(item)
    return facets


def _title(kind: str, run_family: str, what: str) -> str:
    return f"{kind} · {run_family}: {what}" if run_family else f"{kind}: {what}"


def _history(receipts: Sequence[Receipt]) -> str:
    """One line chart per kind and family: the median throughput of each run and thread count."""
    charts = []
    points = [(r.created_at, t) for r in receipts for t in throughputs(r.doc)]
    for (kind, run_family), of_facet in _facets(points, lambda point: point[1]).items():
        series: dict[str, list[tuple[dt.datetime, Throughput]]] = {}
        for when, t in of_facet:
            name = t.run.removeprefix(run_family).strip() or t.run  # the title names the family
            series.setdefault(f"{name}, {threads_label(t.threads)}", []).append((when, t))
        title = _title(kind, run_family, "median throughput over time")
        charts.append(line_chart(title, of_facet[0][1].unit, series))
    note = "" if len(receipts) > 1 else '<p class="note">One receipt: no history yet.</p>'
    return note + f'<div class="charts">{"".join(charts)}</div>'


def _receipt_section(r: Receipt, open_: bool) -> str:
    doc = r.doc
    figures = throughputs(doc)
    charts = [
        bar_chart(_title(kind, run_family, "throughput per run and threads"), of_facet, run_family)
        for (kind, run_family), of_facet in _facets(figures, lambda t: t).items()
    ]
    return "".join(
        [
            f"<details{' open' if open_ else ''}><summary>{esc(doc['created_at'])} "
            f"({esc(r.name)}, {esc(doc['kind'])})</summary>",
            f'<div class="charts">{"".join(charts)}</div>',
            "<h3>Runs</h3>",
            html_table(*_runs_table(doc)),
            "<h3>Kernels</h3>",
            html_table(*_kernels_table(doc)),
            "<h3>Host, model and workload</h3>",
            _info(doc),
            "</details>",
        ]
    )


def _info(doc: dict[str, Any]) -> str:
    items = {f"tool.{k}": v for k, v in doc["tool"].items()}
    items |= {"backend": doc["backend"], "compute_path": doc["compute_path"]}
    items |= {f"host.{k}": v for k, v in doc["host"].items()}
    items |= {f"model.{k}": v for k, v in doc.get("model", {}).items()}
    workload = dict(doc["workload"])
    if "prompt_ids" in workload:
        workload["prompt_ids"] = f"{len(workload['prompt_ids'])} prompts"
    items |= {f"workload.{k}": v for k, v in workload.items()}
    if "deterministic" in doc:
        items["deterministic"] = doc["deterministic"]
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(_plain(v))}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)
