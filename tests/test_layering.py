"""Imports go one way: service.api -> service.engine -> models -> kernels."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "kernels": ("models", "service"),
    "models": ("service",),
    "service/engine": ("service.api", "fastapi", "starlette"),
}


def imported_modules(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_imports_point_down_only(package):
    files = list((ROOT / package).rglob("*.py"))
    if not files:
        pytest.skip(f"{package}/ has no Python files yet")
    bad = [(f.relative_to(ROOT), m) for f in files for m in imported_modules(f)
           if any(m == p or m.startswith(p + ".") for p in FORBIDDEN[package])]
    assert not bad, f"{package} must not import {FORBIDDEN[package]}: {bad}"
