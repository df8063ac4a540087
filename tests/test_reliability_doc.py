"""docs/reliability.md names, for every probe, the test that holds the toolkit to its promise:
every test it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_table_names_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    named, current = [], None
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", doc):  # `::name` continues the last file
        current = path or current
        named.append((current, name))
    assert len(named) >= 30
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, f"{path}::{name}"
