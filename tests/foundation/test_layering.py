"""The one-way flow ccmb -> models -> ccmb_bench: library modules import only earlier packages."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["ccmb", "models", "ccmb_bench"]


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno


def test_library_modules_respect_the_flow():
    problems = []
    for rank, package in enumerate(ORDER):
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            is_cli = "cli" in rel.parts or rel.name == "cli.py"
            if is_cli:
                continue  # CLI modules are composition roots
            for top, line in _imports(path):
                if top in ORDER and ORDER.index(top) > rank:
                    problems.append(f"{rel}:{line} imports {top}")
    assert not problems, "layering violations:\n" + "\n".join(problems)
