"""The report's charts (inline SVG, no script), each a <figure> with an HTML legend under it:
horizontal throughput bars with whiskers per run and thread count, and lines of median
throughput over time; and the number formats the report shares.

Charts stay readable with many series: the legend is HTML, so the browser wraps its entries
instead of them printing over each other; no colour repeats within a chart (palette); bars run
horizontally, one row per run, so their labels stack instead of smearing along an axis.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pybitnet.bench.tables import esc

if TYPE_CHECKING:
    from pybitnet.bench.report import Throughput

# Tableau 10: distinct for the common forms of colour blindness
TABLEAU = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip

WIDTH, TOP = 560, 34  # every chart's width; the plot starts under the title
# Horizontal bars: a row per run, a bar per thread count in it; the labels' column is as wide as
# the longest label, at CHAR_W a character (generous for 12px system-ui, so none runs into a bar).
BAR_H, ROW_GAP, CHAR_W, MAX_LABEL, VALUE_ROOM, AXIS_H = 18, 10, 7.2, 36, 52, 44
# Lines: the vertical axis's labels on the left, the dates under the plot.
LEFT, RIGHT, PLOT_H = 64, 16, 220
PLOT_W = WIDTH - LEFT - RIGHT


def palette(n: int) -> list[str]:
    """`n` colours, none repeated: Tableau 10 while it lasts, then hues a golden angle apart
    at three lightnesses, so that neighbours in the legend differ most."""
    if n <= len(TABLEAU):
        return list(TABLEAU[:n])
    return [f"hsl({i * 137.508 % 360:.1f}, 62%, {(38, 52, 66)[i % 3]}%)" for i in range(n)]


def legend(entries: Sequence[tuple[str, str]]) -> str:
    """The legend under a chart: (label, colour) entries the browser wraps into lines."""
    items = "".join(
        f'<li><span class="key" style="background:{color}"></span>{esc(label)}</li>'
        for label, color in entries
    )
    return f'<ul class="legend">{items}</ul>'


def _open(title: str, height: float) -> str:
    return (
        f'<svg class="chart" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{esc(title)}">'
        f'<text class="title" x="8" y="20">{esc(title)}</text>'
    )


def _figure(svg: str, entries: Sequence[tuple[str, str]]) -> str:
    return f'<figure class="chart-box">{svg}</svg>{legend(entries)}</figure>'


def bar_chart(title: str, figures: Sequence[Throughput], prefix: str = "") -> str:
    """A row per run (its name less `prefix`, which the title names), a bar per thread count:
    the median, whiskers from the smallest to the largest sample, the median's value after."""
    runs = list(dict.fromkeys(t.run for t in figures))
    threads = sorted({t.threads for t in figures})
    color = dict(zip(threads, palette(len(threads)), strict=True))
    labels = {run: _label(run.removeprefix(prefix).strip() or run) for run in runs}
    left = 16 + CHAR_W * max(len(label) for label in labels.values())
    top, ticks = _axis(max(t.summary["max"] for t in figures))
    plot_w = WIDTH - left - VALUE_ROOM
    row_h = BAR_H * len(threads) + ROW_GAP
    bottom = TOP + row_h * len(runs)

    def x(value: float) -> float:
        return left + plot_w * value / top

    parts = [_open(title, bottom + AXIS_H), '<g class="grid">']
    for v in ticks:
        parts.append(
            f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{TOP}" y2="{bottom}"/>'
            f'<text x="{x(v):.1f}" y="{bottom + 16}" text-anchor="middle">{fmt(v)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{bottom + 34}" text-anchor="middle">'
        f"{esc(figures[0].unit)}</text></g>"
    )
    for r, run in enumerate(runs):
        full = f"<title>{esc(run)}</title>" if labels[run] != run else ""
        parts.append(
            f'<text class="label" x="{left - 8:.1f}" y="{TOP + r * row_h + row_h / 2 + 4:.1f}" '
            f'text-anchor="end">{esc(labels[run])}{full}</text>'
        )
    for t in figures:
        y = TOP + runs.index(t.run) * row_h + ROW_GAP / 2 + threads.index(t.threads) * BAR_H
        parts.append(_bar(t, x, y, color[t.threads]))
    entries = [(threads_label(n), color[n]) for n in threads]
    return _figure("".join(parts), entries)


def _bar(t: Throughput, x, y: float, color: str) -> str:
    s, h = t.summary, BAR_H - 3
    cy, lo, hi = y + h / 2, x(s["min"]), x(s["max"])
    return (
        f'<rect class="bar" x="{x(0):.1f}" y="{y:.1f}" width="{x(s["median"]) - x(0):.1f}" '
        f'height="{h}" fill="{color}" data-run="{esc(t.run)}" data-threads="{t.threads}" '
        f'data-median="{s["median"]!r}"><title>{esc(t.describe())}</title></rect>'
        f'<g class="whisker" stroke="#222" data-min="{s["min"]!r}" data-max="{s["max"]!r}">'
        f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{cy:.1f}" y2="{cy:.1f}"/>'
        f'<line x1="{lo:.1f}" x2="{lo:.1f}" y1="{cy - 4:.1f}" y2="{cy + 4:.1f}"/>'
        f'<line x1="{hi:.1f}" x2="{hi:.1f}" y1="{cy - 4:.1f}" y2="{cy + 4:.1f}"/></g>'
        f'<text class="value" x="{hi + 5:.1f}" y="{cy + 4:.1f}">{fmt(s["median"])}</text>'
    )


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def line_chart(
    title: str, unit: str, series: dict[str, list[tuple[dt.datetime, Throughput]]]
) -> str:
    """One line per series through its medians, over created_at."""
    times = sorted({when for points in series.values() for when, _ in points})
    start, span = times[0].timestamp(), (times[-1] - times[0]).total_seconds()
    colors = dict(zip(series, palette(len(series)), strict=True))
    top, ticks = _axis(max(t.summary["median"] for points in series.values() for _, t in points))

    def x(when: dt.datetime) -> float:
        share = (when.timestamp() - start) / span if span else 0.5
        return LEFT + 44 + (PLOT_W - 88) * share  # room for the date labels at both ends

    def y(value: float) -> float:
        return TOP + PLOT_H * (1 - value / top)

    parts = [_open(title, TOP + PLOT_H + 40), '<g class="grid">']
    for v in ticks:
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>'
        )
    mid = TOP + PLOT_H / 2
    parts.append(
        f'<text x="16" y="{mid}" transform="rotate(-90 16 {mid})" text-anchor="middle">'
        f"{esc(unit)}</text></g>"
    )
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
            f'<polyline class="series" data-series="{esc(label)}" points="{xy}" fill="none" '
            f'stroke="{colors[label]}" stroke-width="2"/>'
        )
        parts += [
            f'<circle class="point" cx="{x(when):.1f}" cy="{y(t.summary["median"]):.1f}" r="4" '
            f'fill="{colors[label]}" data-median="{t.summary["median"]!r}">'
            f"<title>{esc(f'{when:%Y-%m-%d %H:%M:%S}: {t.describe()}')}</title></circle>"
            for when, t in points
        ]
    return _figure("".join(parts), list(colors.items()))


def _axis(largest: float) -> tuple[float, list[float]]:
    """A round top above `largest`, and the ticks from 0 to it (steps of 1, 2 or 5 x 10^k)."""
    raw = max(largest, 1e-12) / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    top = step * math.ceil(largest / step * 1.0001)
    return top, [i * step for i in range(round(top / step) + 1)]


def fmt(value: float) -> str:
    """Four significant digits, with k, M, G, T past ten thousand."""
    for power, suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10**power and abs(value) >= 1e4:
            return f"{value / 10**power:.4g}{suffix}"
    return f"{value:.4g}"


def threads_label(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"
