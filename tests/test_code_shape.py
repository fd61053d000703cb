"""The code stays readable: no function of the package, its tests or its benchmarks reaches 80 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("gen", "hw", "sim", "host", "spikesmith", "tests", "bench")
MAX_LINES = 80


def _functions():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_the_scan_finds_the_functions():
    names = [name for name, _ in _functions()]
    assert any(name.endswith(" elaborate") and name.startswith("hw/board.py") for name in names)


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_function_is_under_80_lines(folder):
    long = [f"{name} ({lines} lines)" for name, lines in _functions() if name.startswith(folder + "/")
            and lines >= MAX_LINES]
    assert not long, "split these: " + ", ".join(long)
