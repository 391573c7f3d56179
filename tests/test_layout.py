"""Sizes a newcomer can read: no source file over MAX_FILE_LINES lines and no Python function
over MAX_FUNCTION_LINES, unless it says why.

Walks the Python files of src/pybitnet and benchmarks/ and the C++ files of src/pybitnet/csrc.
A file may be longer when a comment in its first TOP_LINES lines says `long because ...`; a
function, when the line above its def (or above its first decorator) does.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
TOP_LINES = 30
REASON = "long because"
CPP_SUFFIXES = {".cpp", ".cc", ".h", ".hpp"}


def source_files() -> list[Path]:
    python = [*(ROOT / "src" / "pybitnet").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    cpp = [p for p in (ROOT / "src" / "pybitnet" / "csrc").rglob("*") if p.suffix in CPP_SUFFIXES]
    return sorted(p for p in python + cpp if "build" not in p.relative_to(ROOT).parts)


def long_files(path: Path, lines: list[str]) -> list[str]:
    if len(lines) <= MAX_FILE_LINES or any(REASON in line for line in lines[:TOP_LINES]):
        return []
    return [f"{_name(path)}: {len(lines)} lines (more than {MAX_FILE_LINES})"]


def long_functions(path: Path, lines: list[str]) -> list[str]:
    """Functions and methods, nested ones too, from their first decorator to their last line."""
    offenders = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                length = child.end_lineno - first + 1
                above = {lines[n - 2] for n in (first, child.lineno) if n >= 2}
                if length > MAX_FUNCTION_LINES and not any(REASON in line for line in above):
                    offenders.append(
                        f"{_name(path)}::{name}: {length} lines (more than {MAX_FUNCTION_LINES})"
                    )
            visit(child, name)

    visit(ast.parse("\n".join(lines), str(path)), "")
    return offenders


def offenders() -> list[str]:
    found = []
    for path in source_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        found += long_files(path, lines)
        if path.suffix == ".py":
            found += long_functions(path, lines)
    return found


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_file_or_function_is_longer_than_its_limit_without_saying_why():
    found = offenders()
    assert not found, "\n".join(found)


def test_a_long_file_or_function_passes_when_it_says_why():
    body = [f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES)]
    function = ["def f():", *body]
    path = ROOT / "example.py"  # named under the root; never written
    assert long_functions(path, function) == [
        f"example.py::f: {MAX_FUNCTION_LINES + 1} lines (more than {MAX_FUNCTION_LINES})"
    ]
    assert long_functions(path, ["# long because it is a test", *function]) == []
    method = ["class C:", "    @staticmethod", *(f"    {line}" for line in function)]
    expected = f"example.py::C.f: {MAX_FUNCTION_LINES + 2} lines"  # from the decorator
    assert long_functions(path, method)[0].startswith(expected)
    filler = ["x = 0"] * (MAX_FILE_LINES + 1)
    too_long = f"example.py: {MAX_FILE_LINES + 1} lines (more than {MAX_FILE_LINES})"
    assert long_files(path, filler) == [too_long]
    assert long_files(path, ['"""A table, long because ..."""', *filler]) == []


def readme_layout() -> str:
    """The code block under the README's `## Layout` heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_block_matches_the_tree():
    block = readme_layout()
    package = ROOT / "src" / "pybitnet"
    named = {m.group(1) for m in re.finditer(r"(?<![\w./-])([\w]+(?:/|\.py))(?=\s)", block)}
    under_package = {name for name in named if (package / name).exists()}
    elsewhere = {name for name in named - under_package if (ROOT / name).exists()}
    assert not named - under_package - elsewhere, "named in the README, not in the tree"
    entries = {
        p.name + ("/" if p.is_dir() else "")
        for p in package.iterdir()
        if p.name not in {"__init__.py", "__pycache__"} and p.suffix in {"", ".py"}
    }
    assert not entries - named, "in src/pybitnet, not in the README's layout"
