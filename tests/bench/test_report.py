"""report: the HTML page's plots carry the receipts' numbers, the page needs nothing from outside,
and it renders in headless Chromium with its plots laid out.

The docs screenshot is this module's render of the synthetic receipts below:
    PYBITNET_UPDATE_SCREENSHOT=1 .venv/bin/pytest tests/bench/test_report.py -k chromium
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.chromium import CHROMIUM, HEADLESS_FLAGS, needs_chromium
from pybitnet.bench import receipt as rc
from pybitnet.bench import report as rp
from pybitnet.bench.receipt import write_receipt
from pybitnet.cli import main

SCREENSHOT = Path(__file__).parents[2] / "docs" / "report-screenshot.png"


@pytest.fixture
def receipt_files(tmp_path, make_receipt):
    """Four generation receipts five days apart, the third 10% slower, the last 12% faster."""
    paths = []
    for i, speed in enumerate((1.0, 1.03, 0.9, 1.12)):
        doc = make_receipt(i, speed=speed, noise=0.03)
        when = dt.datetime(2026, 11, 1 + 5 * i, 9, 30, tzinfo=dt.UTC)
        doc["created_at"] = when.isoformat().replace("+00:00", "Z")
        paths.append(tmp_path / f"receipt-{i}.json")
        write_receipt(doc, paths[-1])
    return paths


class Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def having(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.found if t == tag and cls in a.get("class", "").split()]


def test_bars_and_whiskers_carry_each_runs_median_min_and_max(receipt_files):
    receipts = rp.load_receipts(receipt_files)
    page = Elements(rp.render_html(receipts))
    bars = page.having("rect", "bar")
    whiskers = page.having("g", "whisker")
    assert len(bars) == len(whiskers) == 16
    for i, r in enumerate(reversed(receipts)):  # a section per receipt, the newest first
        section = {
            (bar["data-run"], int(bar["data-threads"])): (bar, whisker)
            for bar, whisker in zip(
                bars[4 * i : 4 * i + 4], whiskers[4 * i : 4 * i + 4], strict=True
            )
        }
        for run in r.doc["runs"]:
            bar, whisker = section[run["name"], run["threads"]]
            tps = run["samples"]["tokens_per_second"]
            assert float(bar["data-median"]) == pytest.approx(statistics.median(tps), rel=1e-12)
            assert float(whisker["data-min"]) == min(tps)
            assert float(whisker["data-max"]) == max(tps)
    # within one chart, bar lengths are proportional to the medians they show
    prefill = [b for b in bars[:4] if b["data-run"] == "pp32"]
    ratios = [float(b["width"]) / float(b["data-median"]) for b in prefill]
    assert max(ratios) == pytest.approx(min(ratios), rel=0.01)


def test_history_has_one_point_per_receipt_and_run(receipt_files):
    receipts = rp.load_receipts(receipt_files)
    page = Elements(rp.render_html(receipts))
    series = page.having("polyline", "series")
    assert sorted(s["data-series"] for s in series) == [
        "pp32, 1 thread",
        "pp32, 2 threads",
        "tg16, 1 thread",
        "tg16, 2 threads",
    ]
    points = page.having("circle", "point")
    want = sorted(
        statistics.median(run["samples"]["tokens_per_second"])
        for r in receipts
        for run in r.doc["runs"]
    )
    assert sorted(float(p["data-median"]) for p in points) == pytest.approx(want, rel=1e-12)
    first = next(s for s in series if s["data-series"] == "tg16, 2 threads")
    xs = [float(xy.split(",")[0]) for xy in first["points"].split()]
    assert xs == sorted(xs) and len(xs) == 4  # oldest to newest, left to right


def test_the_page_is_self_contained_and_escapes_what_receipts_say(tmp_path, make_receipt):
    doc = make_receipt()
    doc["runs"][0]["name"] = "<script>alert(1)</script>"
    doc["host"]["cpu_model"] = 'CPU "quoted" & <b>bold</b>'
    write_receipt(doc, tmp_path / "r.json")
    page = rp.render_html(rp.load_receipts([tmp_path / "r.json"]))
    for outside in ("<script", "src=", "href=", "url(", "@import", "http:", "https:"):
        assert outside not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "CPU &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "One receipt: no history yet." in page


def test_kernels_receipts_plot_elements_per_second(tmp_path, make_kernel_receipt):
    write_receipt(make_kernel_receipt(), tmp_path / "k.json")
    receipts = rp.load_receipts([tmp_path / "k.json"])
    page = rp.render_html(receipts)
    (bar,) = Elements(page).having("rect", "bar")
    eps = receipts[0].doc["runs"][0]["samples"]["elements_per_second"]
    assert float(bar["data-median"]) == pytest.approx(statistics.median(eps), rel=1e-12)
    assert ">elements/s<" in page


def test_markdown_summary_lists_receipts_runs_and_kernels(receipt_files):
    receipts = rp.load_receipts(receipt_files)
    text = rp.render_markdown(receipts)
    assert text.startswith("# pybitnet benchmark report\n")
    newest = receipts[-1].doc
    assert text.index(newest["created_at"] + " (receipt-3.json)") < text.index("(receipt-0.json)")
    run = newest["runs"][3]  # tg16 at 2 threads
    tps = run["samples"]["tokens_per_second"]
    row = (
        f"| tg16 | decode | 2 | 10 | {statistics.median(tps):.4g} | {min(tps):.4g} | "
        f"{max(tps):.4g} | tok/s |"
    )
    assert row in text
    assert "| i2s_gemv | 448 | 1.25 | 100.0% |" in text


def run_cli(monkeypatch, *args: object) -> int:
    monkeypatch.setattr(sys, "argv", ["pybitnet", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code


def test_cli_writes_both_forms_and_refuses_bad_receipts(
    monkeypatch, capsys, receipt_files, tmp_path
):
    html, md = tmp_path / "report.html", tmp_path / "report.md"
    args = ["report", *receipt_files, "--html", html, "--markdown", md]
    assert run_cli(monkeypatch, *args) == 0
    assert f"wrote {html}" in capsys.readouterr().out
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert md.read_text().startswith("# pybitnet benchmark report")
    (tmp_path / "bad.json").write_text('{"schema_version": "1.0.0"}')
    assert run_cli(monkeypatch, "report", tmp_path / "bad.json", "--html", html) == 2
    assert "bad.json: field $: 'kind' is a required property" in capsys.readouterr().err


# --- headless Chromium ---------------------------------------------------------------------------

MEASURE = """<script>
const box = (el) => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
  return {w: r.width, h: r.height, left: r.left, right: r.right, fill: s.fill,
          shown: s.visibility === "visible" && s.display !== "none"}; };
const out = {page: document.documentElement.scrollWidth, charts: [], bars: [], points: []};
for (const el of document.querySelectorAll("details[open] svg.chart, #history svg.chart"))
  out.charts.push(box(el));
for (const el of document.querySelectorAll("details[open] rect.bar")) out.bars.push(box(el));
for (const el of document.querySelectorAll("circle.point")) out.points.push(box(el));
document.body.insertAdjacentHTML("beforeend",
  "<pre id=render-check>" + JSON.stringify(out) + "</pre>");
</script>"""


def chromium(*args: str, size: str = "1280,1600") -> subprocess.CompletedProcess:
    flags = [*HEADLESS_FLAGS, f"--window-size={size}"]
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, *flags, f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)


@needs_chromium
def test_the_page_renders_in_chromium_with_its_plots_laid_out(receipt_files, tmp_path):
    page = rp.render_html(rp.load_receipts(receipt_files))
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", MEASURE + "</body>"))
    done = chromium("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(layout["charts"]) == 4  # prefill and decode: history, the newest receipt's bars
    assert len(layout["bars"]) == 4 and len(layout["points"]) == 16
    for item in layout["charts"] + layout["bars"] + layout["points"]:
        assert item["shown"] and item["w"] > 0 and item["h"] > 0, item
        assert 0 <= item["left"] < item["right"] <= layout["page"], item
    assert all(bar["fill"] not in ("none", "") for bar in layout["bars"])

    shot = tmp_path / "report.png"
    html = tmp_path / "report.html"
    html.write_text(page)
    chromium(f"--screenshot={shot}", html.as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1280, 1600)
    if os.environ.get("PYBITNET_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)


# --- many series: a kernels receipt's 40-odd runs ------------------------------------------------

FAMILIES = ("gemv", "gemm8", "quantize", "dequantize")
FORMATS = ("TQ1_0", "TQ2_0", "I2_S", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")
SHAPES = ("2560x2560", "640x2560", "6912x2560", "2560x6912", "256x2560")


def many_series_receipts(tmp_path: Path, count: int, make_kernel_receipt) -> list[Path]:
    """Three kernels receipts a day apart, each with `count` runs over four families, their
    throughputs spread over two orders of magnitude."""
    paths = []
    for day in range(3):
        doc = make_kernel_receipt(day)
        doc["created_at"] = f"2026-11-0{day + 1}T09:30:00Z"
        doc["runs"] = []
        for i in range(count):
            name = f"{FAMILIES[i % 4]} {FORMATS[i // 4 % 8]} {SHAPES[i // 32]}"
            ms = [0.02 * (1 + i % 7) * (1 + 0.02 * (day + k % 3)) for k in range(5)]
            doc["runs"].append(rc.kernel_run(name, 1, "k", [2560, 2560], 2560 * 2560, ms))
        paths.append(tmp_path / f"kernels-{day}.json")
        write_receipt(doc, paths[-1])
    return paths


# Per shown chart: the boxes of its legend entries and of its texts, its colours.
LAYOUT = """<script>
const rect = (el) => { const r = el.getBoundingClientRect();
  return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
const css = (el, p) => getComputedStyle(el)[p];
const out = [];
for (const fig of document.querySelectorAll("details[open] figure, #history figure")) {
  const svg = fig.querySelector("svg");
  out.push({
    title: fig.querySelector("text.title").textContent,
    figure: rect(fig), svg: rect(svg),
    legend: [...fig.querySelectorAll("ul.legend li")].map(rect),
    keys: [...fig.querySelectorAll("ul.legend .key")].map((k) => css(k, "backgroundColor")),
    lines: [...svg.querySelectorAll("polyline.series")].map((l) => css(l, "stroke")),
    bars: [...svg.querySelectorAll("rect.bar")].map((b) => css(b, "fill")),
    bar_left: Math.min(...[...svg.querySelectorAll("rect.bar")].map((b) => rect(b).left)),
    texts: [...svg.querySelectorAll("text")].map((t) => ({...rect(t), text: t.textContent,
                                                         label: t.classList.contains("label")})),
  });
}
document.body.insertAdjacentHTML("beforeend",
  "<pre id=render-check>" + JSON.stringify(out) + "</pre>");
</script>"""


def overlap(a: dict, b: dict) -> bool:
    """Whether two boxes share more than half a pixel each way."""
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > 0.5
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 0.5
    )


def within(inner: dict, outer: dict) -> bool:
    return all(
        inner[lo] >= outer[lo] - 0.5 and inner[hi] <= outer[hi] + 0.5
        for lo, hi in (("left", "right"), ("top", "bottom"))
    )


def measured_charts(page: str, tmp_path: Path) -> list[dict]:
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", LAYOUT + "</body>"))
    done = chromium("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@needs_chromium
@pytest.mark.parametrize("count", [20, 60])
def test_many_series_lay_out_without_collisions(tmp_path, make_kernel_receipt, count):
    page = rp.render_html(
        rp.load_receipts(many_series_receipts(tmp_path, count, make_kernel_receipt))
    )
    charts = measured_charts(page, tmp_path)
    # A chart per family: the history's and the newest receipt's bars.
    assert len(charts) == 2 * len(FAMILIES), [c["title"] for c in charts]
    assert sum(len(c["lines"]) for c in charts) == count
    assert sum(len(c["bars"]) for c in charts) == count
    for chart in charts:
        title, legend, keys = chart["title"], chart["legend"], chart["keys"]
        assert len(set(keys)) == len(keys), f"{title}: a colour repeats in the legend"
        assert set(chart["lines"] or chart["bars"]) == set(keys), title
        assert len(set(chart["lines"])) == len(chart["lines"]), f"{title}: two lines share a colour"
        for i, a in enumerate(legend):
            assert within(a, chart["figure"]), (title, a)
            assert not any(overlap(a, b) for b in legend[i + 1 :]), f"{title}: legend overlaps"
        texts = chart["texts"]
        for i, a in enumerate(texts):
            assert within(a, chart["svg"]), (title, a["text"])
            clash = [b["text"] for b in texts[i + 1 :] if overlap(a, b)]
            assert not clash, f"{title}: {a['text']!r} runs into {clash}"
            if a["label"]:
                assert a["right"] <= chart["bar_left"], f"{title}: {a['text']!r} runs into a bar"
    if count == 60 and os.environ.get("PYBITNET_REPORT_SHOT"):
        (tmp_path / "many.html").write_text(page)
        chromium(
            f"--screenshot={os.environ['PYBITNET_REPORT_SHOT']}",
            (tmp_path / "many.html").as_uri(),
            size="1280,3000",
        )
