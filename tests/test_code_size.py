"""The package's size rule (issue 14): no module over 600 lines, no function over 80 lines.

A function's length counts from its ``def`` line to the end of its body
(``end_lineno - lineno + 1``); decorators are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "netsurgery"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def long_modules() -> list[tuple[str, int]]:
    """(module, line count) for every module over the limit."""
    found = []
    for path in _modules():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            found.append((str(path.relative_to(PACKAGE.parent)), lines))
    return found


def long_functions() -> list[tuple[str, int]]:
    """('module:qualified.name', line count) for every function or method over the limit."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = str(path.relative_to(PACKAGE.parent))

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = prefix + child.name
                    length = child.end_lineno - child.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append((f"{module}:{name}", length))
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return found


def test_measure_counts_a_known_function():
    # The measure itself must see functions: this file's long_functions is ~20 lines.
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    lengths = {
        node.name: node.end_lineno - node.lineno + 1
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }
    assert 15 <= lengths["long_functions"] <= 30


def test_no_module_over_600_lines():
    assert long_modules() == []


def test_no_function_over_80_lines():
    assert long_functions() == []
