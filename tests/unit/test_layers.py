"""Imports only point down: contract (hcp) < job, sinks, simulators < api < tools.

A module may import its own package and any lower floor, never a higher one or a sibling
that the table below does not allow. The imports are read from the source (AST), including
the ones inside functions, so a lazy import cannot hide a wrong arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the project packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "hcp": set(),
    "generators": {"hcp"},
    "sinks": {"hcp"},
    "flows": {"hcp", "sinks"},
    "api": {"hcp", "flows", "sinks", "generators"},
    "tools": {"hcp", "flows", "sinks", "generators", "api"},
}
PROJECT = set(ALLOWED)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _modules() -> list[Path]:
    return sorted(p for pkg in ALLOWED if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for line, target in _imports(path)
        if target in PROJECT and target != package and target not in ALLOWED[package]
    ]
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_the_layer_check_sees_a_wrong_arrow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from flows.dataflow import build_flow\n    return build_flow\n")
    assert (2, "flows") in _imports(bad)
