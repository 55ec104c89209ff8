"""The one-way flow ccmb -> models -> ccmb_bench: library modules import only earlier packages, and no module
outside ``ccmb/cli/`` imports the ``ccmb`` commands (the shared CLI helpers live in ``ccmb.clikit``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["ccmb", "models", "ccmb_bench"]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT):
    """(absolute module name, line) of every import in ``path``; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # `from ccmb import cli` imports ccmb.cli
                yield f"{module}.{alias.name}", node.lineno


def _modules():
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


def _is_cli(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return "cli" in rel.parts or rel.name == "cli.py"


def test_library_modules_respect_the_flow():
    problems = []
    for package, path in _modules():
        if _is_cli(path):
            continue  # CLI modules are composition roots
        rank = ORDER.index(package)
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top in ORDER and ORDER.index(top) > rank:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_nothing_outside_ccmb_cli_imports_the_ccmb_commands():
    """`ccmb_bench/cli.py` importing `ccmb.cli.*` would load every ccmb command (pyarrow, numpy, PIL) for
    `ccmb-bench --help`: shared helpers go to `ccmb.clikit` instead."""
    problems = []
    for _, path in _modules():
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("ccmb", "cli") or rel == Path("ccmb", "__main__.py"):
            continue
        for module, line in _imports(path):
            if module == "ccmb.cli" or module.startswith("ccmb.cli."):
                problems.append(f"{rel}:{line} imports {module}")
    assert not problems, "imports of the ccmb CLI from outside it:\n" + "\n".join(problems)


def test_clikit_imports_only_click_and_the_standard_library():
    allowed = {"__future__", "functools", "logging", "os", "sys", "typing", "click"}
    imported = {module.split(".")[0] for module, _ in _imports(ROOT / "ccmb" / "clikit.py")}
    assert imported <= allowed, sorted(imported - allowed)


def test_the_checker_sees_relative_and_absolute_cli_imports(tmp_path):
    """The checker itself: a back-edge written either way is found."""
    pkg = tmp_path / "ccmb_bench"
    pkg.mkdir()
    (pkg / "cli.py").write_text("from ccmb.cli.common import setup_logging\nfrom ccmb import cli\n")
    found = list(_imports(pkg / "cli.py", tmp_path))
    assert ("ccmb.cli.common", 1) in found and ("ccmb.cli", 2) in found
    sub = tmp_path / "ccmb" / "corpus"
    sub.mkdir(parents=True)
    (sub / "x.py").write_text("from ..cli import common\nfrom . import table\n")
    found = list(_imports(sub / "x.py", tmp_path))
    assert ("ccmb.cli.common", 1) in found and ("ccmb.corpus.table", 2) in found
