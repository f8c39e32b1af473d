"""The package's shape: command lines in `agegender.cli` only, no import cycles, `agegender.mllm` in layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "src" / "agegender"

#: modules outside agegender.cli that may import argparse, and why: not for a command line
ARGPARSE_ALLOWED = {
    # official MiVOLO checkpoints pickle the training run's argparse.Namespace: an allowed global of torch.load
    "agegender.mivolo.checkpoint",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not in functions, classes or `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level_imports(block)
        elif isinstance(node, ast.With):
            yield from _module_level_imports(node.body)


def _all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    yield from (node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom))


def _targets(node: ast.Import | ast.ImportFrom, current: str, modules: dict[str, Path]) -> set[str]:
    """The agegender modules an import statement loads (`from pkg import submodule` loads the submodule too)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    base = node.module or ""
    if node.level:
        package = current if modules[current].name == "__init__.py" else current.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    found = {base} if base in modules else set()
    found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return found


def _graph(level: str) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = _module_level_imports(tree.body) if level == "module" else _all_imports(tree)
        graph[name] = {t for node in nodes for t in _targets(node, name, modules)} - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import one another in a circle (strongly connected components of 2 or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(group)

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return found


def test_only_the_cli_package_imports_argparse() -> None:
    offenders = []
    for name, path in _modules().items():
        if name == "agegender.cli" or name.startswith("agegender.cli.") or name in ARGPARSE_ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(
            isinstance(node, ast.Import)
            and any(a.name == "argparse" for a in node.names)
            or isinstance(node, ast.ImportFrom)
            and node.module == "argparse"
            for node in ast.walk(tree)
        ):
            offenders.append(name)
    assert offenders == [], f"argparse outside agegender.cli: {offenders}"


def test_no_import_cycle_at_module_level() -> None:
    assert [sorted(c) for c in _cycles(_graph("module"))] == []


def test_the_annotate_modules_do_not_import_each_other() -> None:
    graph = _graph("any")  # imports inside functions too
    assert "agegender.mllm.tools.annotate" not in graph["agegender.annotate"]
    assert "agegender.annotate" not in graph["agegender.mllm.tools.annotate"]
    assert "agegender.photos" in graph["agegender.annotate"] & graph["agegender.mllm.tools.annotate"]


def test_cycle_finder_finds_every_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(sorted(c) for c in _cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_cli_exports_main_on_first_use_and_the_entry_modules_keep_no_parser() -> None:
    """`agegender.cli.main` (the console script) resolves lazily; `python -m` modules hand their command line over."""
    from agegender import cli

    assert callable(cli.main) and callable(cli.build_parser)
    with pytest.raises(AttributeError):
        _ = cli.nothing_here
    from agegender.mllm.finetune import train
    from agegender.mllm.tools import server

    assert not hasattr(train, "main") and not hasattr(server, "main")


def test_python_dash_m_agegender() -> None:
    run = subprocess.run([sys.executable, "-m", "agegender", "--version"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("agegender ")


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_mllm_query_core_imports_neither_fine_tuning_nor_tools() -> None:
    """`agegender.mllm` is three layers: the query core, and `finetune` and `tools` built on it (never the reverse)."""
    upper = ("agegender.mllm.finetune", "agegender.mllm.tools")
    graph = _graph("any")  # imports inside functions too
    core = [m for m in graph if _is_under(m, "agegender.mllm") and not any(_is_under(m, u) for u in upper)]
    assert "agegender.mllm.runner" in core and "agegender.mllm.backends.base" in core
    offenders = {m: sorted(t for t in graph[m] if any(_is_under(t, u) for u in upper)) for m in core}
    assert {m: t for m, t in offenders.items() if t} == {}
