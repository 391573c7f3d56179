"""Benchmark reports: one self-contained HTML page with plots, and a Markdown summary.

    write_report(["old.json", "new.json"], "report.html", "report.md")

The page needs no network and runs no script: the plots are inline SVG drawn here and the style
is inline. It shows, across receipts, the median throughput of every run and thread count over
time (created_at), and for each receipt (newest first, the newest unfolded) its throughput per
run and thread count as bars (median of the samples, whiskers from the smallest to the largest
sample), its runs, its kernel counters, and its host, model and workload. Every figure is
computed from the receipts' raw samples by receipt.summarize.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pybitnet.bench.gate import markdown_table
from pybitnet.bench.receipt import load_receipt, summarize
from pybitnet.errors import BenchError

UNITS = {"tokens_per_second": "tok/s", "elements_per_second": "elements/s"}
NUMBER = re.compile(r"[-+]?[\d,.]+(e[-+]?\d+)?[kMGT%]?")  # a cell aligned to the right
# Tableau 10: distinct for the common forms of colour blindness
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")


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
            f"{self.run}, {_threads(self.threads)}: median {_fmt(s['median'])} {self.unit} "
            f"(min {_fmt(s['min'])}, max {_fmt(s['max'])}, n={s['n']})"
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
        cells = [t.run, t.kind, str(t.threads), str(s["n"]), _fmt(s["median"]), _fmt(s["min"])]
        cells += [_fmt(s["max"]), t.unit]
        for metric in ("ttft_ms", "itl_p50_ms", "peak_rss_mb"):
            samples = run["samples"].get(metric)
            cells.append(_fmt(summarize(samples)["median"]) if samples else "-")
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
            _fmt(1e6 * k["seconds"] / k["calls"]) if k["calls"] else "-",
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
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
svg.chart { background: #fff; border: 1px solid #e3e3e3; }
svg text { font: 12px system-ui, sans-serif; fill: #333; }
svg .title { font-size: 14px; font-weight: 600; }
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
        f'<p class="note">{len(receipts)} receipts, the newest from {_e(newest.doc["created_at"])}.'
        " Bars: the median of a run's samples; whiskers: the smallest and largest sample.</p>",
        "<h2>Receipts</h2>",
        _html_table(*_receipts_table(receipts)),
        f'<section id="history"><h2>History</h2>{_history(receipts)}</section>',
    ]
    for r in reversed(receipts):
        parts.append(_receipt_section(r, open_=r is newest))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _history(receipts: Sequence[Receipt]) -> str:
    """One line chart per run kind: the median throughput of each run and thread count."""
    charts = []
    for kind in dict.fromkeys(t.kind for r in receipts for t in throughputs(r.doc)):
        series: dict[str, list[tuple[dt.datetime, Throughput]]] = {}
        for r in receipts:
            for t in throughputs(r.doc):
                if t.kind == kind:
                    label = f"{t.run}, {_threads(t.threads)}"
                    series.setdefault(label, []).append((r.created_at, t))
        unit = next(iter(series.values()))[0][1].unit
        charts.append(_line_chart(f"{kind}: median throughput over time", unit, series))
    note = "" if len(receipts) > 1 else '<p class="note">One receipt: no history yet.</p>'
    return note + f'<div class="charts">{"".join(charts)}</div>'


def _receipt_section(r: Receipt, open_: bool) -> str:
    doc = r.doc
    figures = throughputs(doc)
    charts = []
    for kind in dict.fromkeys(t.kind for t in figures):
        of_kind = [t for t in figures if t.kind == kind]
        charts.append(_bar_chart(f"{kind}: throughput per run and threads", of_kind))
    return "".join(
        [
            f"<details{' open' if open_ else ''}><summary>{_e(doc['created_at'])} "
            f"({_e(r.name)}, {_e(doc['kind'])})</summary>",
            f'<div class="charts">{"".join(charts)}</div>',
            "<h3>Runs</h3>",
            _html_table(*_runs_table(doc)),
            "<h3>Kernels</h3>",
            _html_table(*_kernels_table(doc)),
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
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_plain(v))}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "-" if value is None else str(value)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{_num_class(c)}>{_e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num_class(cell: str) -> str:
    return ' class="num"' if NUMBER.fullmatch(cell) else ""


# --- SVG charts ---------------------------------------------------------------------------------

WIDTH, LEFT, RIGHT, PLOT_W = 560, 64, 16, 480  # LEFT + PLOT_W + RIGHT = WIDTH
TOP, PLOT_H = 34, 220  # under the plot: x labels, then the legend, LEGEND_PER_ROW keys a row
LEGEND_PER_ROW = 4


@dataclass(frozen=True)
class _Frame:
    """A chart's plot area: values from 0 to `top` upwards, and the legend under it."""

    title: str
    unit: str
    largest: float
    legend: list[tuple[str, str]]  # (label, colour)

    @property
    def top(self) -> float:
        return _axis(self.largest)[0]

    def y(self, value: float) -> float:
        return TOP + PLOT_H * (1 - value / self.top)

    def open(self) -> str:
        rows = math.ceil(len(self.legend) / LEGEND_PER_ROW)
        height = TOP + PLOT_H + 44 + 16 * rows
        parts = [
            f'<svg class="chart" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(self.title)}">'
            f'<text class="title" x="{LEFT}" y="20">{_e(self.title)}</text><g class="grid">'
        ]
        for v in _axis(self.largest)[1]:
            y = self.y(v)
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}"/>'
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>'
            )
        mid = TOP + PLOT_H / 2
        parts.append(
            f'<text x="16" y="{mid}" transform="rotate(-90 16 {mid})" text-anchor="middle">'
            f"{_e(self.unit)}</text></g>"
        )
        for i, (label, color) in enumerate(self.legend):
            x = LEFT + (i % LEGEND_PER_ROW) * (PLOT_W // LEGEND_PER_ROW)
            y = TOP + PLOT_H + 58 + 16 * (i // LEGEND_PER_ROW)
            parts.append(
                f'<rect class="key" x="{x}" y="{y - 10}" width="11" height="11" fill="{color}"/>'
                f'<text x="{x + 16}" y="{y}">{_e(label)}</text>'
            )
        return "".join(parts)


def _bar_chart(title: str, figures: Sequence[Throughput]) -> str:
    """Groups of bars, one group per run name and one bar per thread count."""
    groups = list(dict.fromkeys(t.run for t in figures))
    threads = sorted({t.threads for t in figures})
    color = {n: COLORS[i % len(COLORS)] for i, n in enumerate(threads)}
    largest = max(t.summary["max"] for t in figures)
    frame = _Frame(title, figures[0].unit, largest, [(_threads(n), color[n]) for n in threads])
    y = frame.y
    group_w = PLOT_W / len(groups)
    slot = min(group_w * 0.8 / len(threads), 90.0)  # a bar and the gap after it
    parts = [frame.open()]
    for t in figures:
        s = t.summary
        start = LEFT + (groups.index(t.run) + 0.5) * group_w - slot * len(threads) / 2
        x = start + threads.index(t.threads) * slot
        cx = x + slot * 0.45
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y(s["median"]):.1f}" width="{slot * 0.9:.1f}" '
            f'height="{y(0) - y(s["median"]):.1f}" fill="{color[t.threads]}" '
            f'data-run="{_e(t.run)}" data-threads="{t.threads}" data-median="{s["median"]!r}">'
            f"<title>{_e(t.describe())}</title></rect>"
            f'<g class="whisker" stroke="#222" data-min="{s["min"]!r}" data-max="{s["max"]!r}">'
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(s["min"]):.1f}" y2="{y(s["max"]):.1f}"/>'
            f'<line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" y1="{y(s["min"]):.1f}" '
            f'y2="{y(s["min"]):.1f}"/><line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" '
            f'y1="{y(s["max"]):.1f}" y2="{y(s["max"]):.1f}"/></g>'
            f'<text class="value" x="{cx:.1f}" y="{y(s["max"]) - 5:.1f}" text-anchor="middle">'
            f"{_fmt(s['median'])}</text>"
        )
    for g, name in enumerate(groups):
        parts.append(
            f'<text x="{LEFT + (g + 0.5) * group_w:.1f}" y="{TOP + PLOT_H + 18}" '
            f'text-anchor="middle">{_e(name)}</text>'
        )
    return "".join(parts) + "</svg>"


def _line_chart(
    title: str, unit: str, series: dict[str, list[tuple[dt.datetime, Throughput]]]
) -> str:
    """One line per series through its medians, over created_at."""
    times = sorted({when for points in series.values() for when, _ in points})
    start, span = times[0].timestamp(), (times[-1] - times[0]).total_seconds()
    colors = {label: COLORS[i % len(COLORS)] for i, label in enumerate(series)}
    largest = max(t.summary["median"] for points in series.values() for _, t in points)
    frame = _Frame(title, unit, largest, list(colors.items()))
    y = frame.y

    def x(when: dt.datetime) -> float:
        share = (when.timestamp() - start) / span if span else 0.5
        return LEFT + 44 + (PLOT_W - 88) * share  # room for the date labels at both ends

    parts = [frame.open()]
    shown = times if len(times) <= 5 else [times[round(i * (len(times) - 1) / 4)] for i in range(5)]
    for when in shown:
        parts.append(
            f'<text x="{x(when):.1f}" y="{TOP + PLOT_H + 16}" text-anchor="middle">'
            f"{when:%Y-%m-%d}</text>"
            f'<text x="{x(when):.1f}" y="{TOP + PLOT_H + 30}" text-anchor="middle">'
            f"{when:%H:%M}</text>"
        )
    for label, points in series.items():
        xy = " ".join(f"{x(when):.1f},{y(t.summary['median']):.1f}" for when, t in points)
        parts.append(
            f'<polyline class="series" data-series="{_e(label)}" points="{xy}" fill="none" '
            f'stroke="{colors[label]}" stroke-width="2"/>'
        )
        parts += [
            f'<circle class="point" cx="{x(when):.1f}" cy="{y(t.summary["median"]):.1f}" r="4" '
            f'fill="{colors[label]}" data-median="{t.summary["median"]!r}">'
            f"<title>{_e(f'{when:%Y-%m-%d %H:%M:%S}: {t.describe()}')}</title></circle>"
            for when, t in points
        ]
    return "".join(parts) + "</svg>"


def _axis(largest: float) -> tuple[float, list[float]]:
    """A round top above `largest`, and the ticks from 0 to it (steps of 1, 2 or 5 x 10^k)."""
    raw = max(largest, 1e-12) / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    top = step * math.ceil(largest / step * 1.0001)
    return top, [i * step for i in range(round(top / step) + 1)]


def _fmt(value: float) -> str:
    """Four significant digits, with k, M, G, T past ten thousand."""
    for power, suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10**power and abs(value) >= 1e4:
            return f"{value / 10**power:.4g}{suffix}"
    return f"{value:.4g}"


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
