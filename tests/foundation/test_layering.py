"""The one-way flow ccmb -> models -> ccmb_bench: library modules import only earlier packages, and no module
outside ``ccmb/cli/`` imports the ``ccmb`` commands (the shared CLI helpers live in ``ccmb.clikit``).

Inside ``ccmb/corpus`` (the curation; the download modules aside): no import cycles, the layers
primitives -> tables -> steps | engines -> api, engines import no step, ``api`` is the only module that
imports both steps and engines, only the Spark engine imports pyspark, and no function-level import of a
ccmb module (they would only hide a cycle)."""
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


# ------------------------------------------------------------------------------------------- inside ccmb/corpus

CORPUS = ROOT / "ccmb" / "corpus"
#: The download side (its own owner and rules); everything else in ccmb/corpus is the curation.
DOWNLOAD = {"download", "dl_folder", "dl_img2dataset", "dl_retry", "http_fetch", "ingest"}
#: Which layers a layer may import (a layer always imports itself).
ALLOWED = {"primitives": {"primitives"}, "tables": {"primitives", "tables"},
           "steps": {"primitives", "tables", "steps"}, "engines": {"primitives", "tables", "engines"},
           "commands": {"primitives", "tables"}, "api": {"primitives", "tables", "steps", "engines", "api"}}


def _corpus_modules(root: Path = ROOT):
    out = {}
    for path in sorted((root / "ccmb" / "corpus").rglob("*.py")):
        name = _module_name(path, root)
        parts = name.split(".")
        if len(parts) > 2 and (parts[2] in DOWNLOAD or parts[2] == "download"):
            continue
        out[name] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 3:
        return "package"
    if parts[2] in ("primitives", "tables", "steps", "engines", "api"):
        return parts[2]
    return "commands"  # stats, verify: read tables, run no engine


def _resolve(imported: str, modules) -> str:
    """The module an imported name lives in (``a.b.Name`` -> ``a.b``), or "" outside ccmb.corpus."""
    name = imported
    while name:
        if name in modules or name == "ccmb.corpus":
            return name
        name = name.rpartition(".")[0]
    return ""


def _function_level_imports(path: Path, root: Path = ROOT):
    """(module, line) of the imports inside function bodies."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield alias.name, node.lineno
                elif isinstance(node, ast.ImportFrom):
                    base = package.split(".")
                    module = (".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                              if node.level else node.module or "")
                    yield module, node.lineno


def _corpus_graph(root: Path = ROOT):
    modules = _corpus_modules(root)
    graph = {}
    for name, path in modules.items():
        graph[name] = {(_resolve(m, modules), line) for m, line in _imports(path, root)} - {("", 0)}
        graph[name] = {(m, line) for m, line in graph[name] if m and m != name and m != "ccmb.corpus"}
    return modules, graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_corpus_has_no_import_cycles():
    _, graph = _corpus_graph()
    assert not _cycles(graph), f"import cycles inside ccmb/corpus: {_cycles(graph)}"


def test_corpus_layers():
    """primitives -> tables -> steps | engines -> api: engines import no step, steps no engine."""
    problems = []
    modules, graph = _corpus_graph()
    for name, deps in graph.items():
        layer = _layer(name)
        for dep, line in deps:
            if layer in ALLOWED and _layer(dep) not in ALLOWED[layer] and _layer(dep) != "package":
                problems.append(f"{modules[name].relative_to(ROOT)}:{line} ({layer}) imports {dep} ({_layer(dep)})")
    assert not problems, "layering violations inside ccmb/corpus:\n" + "\n".join(problems)


def test_only_api_imports_both_steps_and_engines():
    _, graph = _corpus_graph()
    both = [name for name, deps in graph.items() if {"steps", "engines"} <= {_layer(d) for d, _ in deps}]
    assert both == ["ccmb.corpus.api"], both


def test_only_the_spark_engine_imports_pyspark():
    found = sorted({name for name, path in _corpus_modules().items() for m, _ in _imports(path)
                    if m.split(".")[0] == "pyspark"})
    assert found == ["ccmb.corpus.engines.spark"], found


def test_no_function_level_imports_of_ccmb_modules_in_the_curation():
    """Heavy optional packages (pyspark, scipy, tqdm, PIL) may be imported where used; ccmb modules at the top."""
    problems = [f"{path.relative_to(ROOT)}:{line} imports {m} inside a function"
                for name, path in _corpus_modules().items() for m, line in _function_level_imports(path)
                if m.split(".")[0] == "ccmb"]
    assert not problems, "\n".join(problems)


def test_the_corpus_checks_see_cycles_and_layer_violations(tmp_path):
    """The checkers themselves, on a planted tree: a cycle and an engine importing a step are found."""
    pkg = tmp_path / "ccmb" / "corpus"
    for sub in ("engines", "steps", "tables"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "engines" / "local.py").write_text("from ..steps import dedup\n")
    (pkg / "steps" / "dedup.py").write_text("from ..tables import folder\n")
    (pkg / "tables" / "folder.py").write_text("def f():\n    from ..steps import dedup\n")
    modules, graph = _corpus_graph(tmp_path)
    assert _cycles(graph) == [["ccmb.corpus.steps.dedup", "ccmb.corpus.tables.folder"]]
    assert ("ccmb.corpus.steps.dedup", 1) in graph["ccmb.corpus.engines.local"]
    assert list(_function_level_imports(pkg / "tables" / "folder.py", tmp_path)) == [("ccmb.corpus.steps", 2)]
