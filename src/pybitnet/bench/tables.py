"""Tables as Markdown and as HTML, for the gate's and the report's outputs, and HTML escaping."""

from __future__ import annotations

import html
import re

NUMBER = re.compile(r"[-+]?[\d,.]+(e[-+]?\d+)?[kMGT%]?")  # a cell aligned to the right


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table; a `|` inside a cell is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table, cells escaped; cells that read as numbers are aligned to the right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{_num_class(c)}>{esc(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num_class(cell: str) -> str:
    return ' class="num"' if NUMBER.fullmatch(cell) else ""


def esc(text: object) -> str:
    """Text escaped for HTML, quotes included (attributes take it too)."""
    return html.escape(str(text), quote=True)
