"""The report's SVG charts (inline, no script): throughput bars with whiskers per run and thread
count, and lines of median throughput over time; and the number formats the report shares."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pybitnet.bench.tables import esc

if TYPE_CHECKING:
    from pybitnet.bench.report import Throughput

# Tableau 10: distinct for the common forms of colour blindness
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")

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
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{esc(self.title)}">'
            f'<text class="title" x="{LEFT}" y="20">{esc(self.title)}</text><g class="grid">'
        ]
        for v in _axis(self.largest)[1]:
            y = self.y(v)
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}"/>'
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(v)}</text>'
            )
        mid = TOP + PLOT_H / 2
        parts.append(
            f'<text x="16" y="{mid}" transform="rotate(-90 16 {mid})" text-anchor="middle">'
            f"{esc(self.unit)}</text></g>"
        )
        for i, (label, color) in enumerate(self.legend):
            x = LEFT + (i % LEGEND_PER_ROW) * (PLOT_W // LEGEND_PER_ROW)
            y = TOP + PLOT_H + 58 + 16 * (i // LEGEND_PER_ROW)
            parts.append(
                f'<rect class="key" x="{x}" y="{y - 10}" width="11" height="11" fill="{color}"/>'
                f'<text x="{x + 16}" y="{y}">{esc(label)}</text>'
            )
        return "".join(parts)


def bar_chart(title: str, figures: Sequence[Throughput]) -> str:
    """Groups of bars, one group per run name and one bar per thread count."""
    groups = list(dict.fromkeys(t.run for t in figures))
    threads = sorted({t.threads for t in figures})
    color = {n: COLORS[i % len(COLORS)] for i, n in enumerate(threads)}
    largest = max(t.summary["max"] for t in figures)
    frame = _Frame(title, figures[0].unit, largest, [(threads_label(n), color[n]) for n in threads])
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
            f'data-run="{esc(t.run)}" data-threads="{t.threads}" data-median="{s["median"]!r}">'
            f"<title>{esc(t.describe())}</title></rect>"
            f'<g class="whisker" stroke="#222" data-min="{s["min"]!r}" data-max="{s["max"]!r}">'
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(s["min"]):.1f}" y2="{y(s["max"]):.1f}"/>'
            f'<line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" y1="{y(s["min"]):.1f}" '
            f'y2="{y(s["min"]):.1f}"/><line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" '
            f'y1="{y(s["max"]):.1f}" y2="{y(s["max"]):.1f}"/></g>'
            f'<text class="value" x="{cx:.1f}" y="{y(s["max"]) - 5:.1f}" text-anchor="middle">'
            f"{fmt(s['median'])}</text>"
        )
    for g, name in enumerate(groups):
        parts.append(
            f'<text x="{LEFT + (g + 0.5) * group_w:.1f}" y="{TOP + PLOT_H + 18}" '
            f'text-anchor="middle">{esc(name)}</text>'
        )
    return "".join(parts) + "</svg>"


def line_chart(
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
            f'<polyline class="series" data-series="{esc(label)}" points="{xy}" fill="none" '
            f'stroke="{colors[label]}" stroke-width="2"/>'
        )
        parts += [
            f'<circle class="point" cx="{x(when):.1f}" cy="{y(t.summary["median"]):.1f}" r="4" '
            f'fill="{colors[label]}" data-median="{t.summary["median"]!r}">'
            f"<title>{esc(f'{when:%Y-%m-%d %H:%M:%S}: {t.describe()}')}</title></circle>"
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


def fmt(value: float) -> str:
    """Four significant digits, with k, M, G, T past ten thousand."""
    for power, suffix in ((12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(value) >= 10**power and abs(value) >= 1e4:
            return f"{value / 10**power:.4g}{suffix}"
    return f"{value:.4g}"


def threads_label(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"
