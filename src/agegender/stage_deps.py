"""The package code each pipeline stage runs, derived from imports, and its check against `dvc.yaml`'s `deps`.

DVC reruns a stage when one of its `deps` changes, so every module a stage runs must be a dep, or an edit leaves
stale results that look current; and a module it does not run must not be, or an unrelated edit reruns it. The
code a stage runs is derived statically (`ast`, nothing is imported):

- the stage's notebook (the `.ipynb` among its deps) imports agegender modules and calls functions of the modules
  it imports as objects (`from agegender.stages import query_mllms`, then `query_mllms.run(...)`). Such an *entry
  module* (a stage's module holds its run, its checks and its fingerprints, and imports lazily inside its
  functions) is read function by function: its module-level statements, the functions the notebook names and,
  transitively, the functions of the same module those name;
- the stage registry: code that imports `agegender.stages.registered` (the `check` stage's machinery) runs the
  `check` and `fingerprint` functions (`STAGE_INTERFACE`) of every stage `agegender.stages.STAGES` names, so
  those stage modules are read function by function with those functions;
- every other agegender module reached counts whole: its imports at module level and inside functions (but not
  those under `if TYPE_CHECKING:`, which never run), absolute
  (`import agegender.x`, `from agegender.x import y`, `from agegender import x` where `x` is a submodule) and
  relative (`from .x import y`), together with the `__init__.py` of every package on the way;
- code loaded by name at run time is reached through the strings that name it: a string constant equal to an
  agegender module's dotted name (the lazy backend registry `{"openai": "agegender.mllm.backends.openai_backend"}`,
  `python -m agegender.mllm.finetune`), a name a package exports lazily through a module-level `__getattr__` and
  a `{name: submodule}` table (`from agegender.mivolo import load_checkpoint`), a package's `__main__` where a
  command list runs the package (`["-m", "agegender.mllm.finetune", ...]`), and a string constant equal to the
  name of a data file beside the module (`report/paper_results.csv`). Registries whose plugins register
  themselves on import (readers, specialized models) are reached because the registry module imports them.

Plugins kept outside agegender and named by import path in params.yaml are the user's code, not the package's:
a user who adds one lists it in `dvc.yaml` too.

`agegender stage-deps` prints each stage's derived code deps, `--write` puts them into `dvc.yaml` (every other
line kept), and `--check` compares them with `dvc.yaml` and lists every missing, unrun or absent code dep.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from agegender.errors import InputError
from agegender.files import atomic_write_text

PACKAGE = "agegender"

#: what a maintainer runs to see the deps to write into dvc.yaml (named in every problem list)
HINT = "`agegender stage-deps --write` rewrites dvc.yaml's code deps to what each stage runs"

_FILE_NAME = re.compile(r"[\w.-]{1,200}")

#: the stage registry (`agegender.stages`), the name of its tuple of stage module names, and the function whose
#: import runs every registered stage's `STAGE_INTERFACE`
REGISTRY = f"{PACKAGE}.stages"
REGISTRY_NAMES = "STAGES"
REGISTRY_FUNCTION = "registered"
STAGE_INTERFACE = ("check", "fingerprint")


@dataclass(frozen=True)
class _Module:
    name: str
    path: Path
    is_package: bool


class ImportGraph:
    """The modules of one copy of the package and the agegender imports each makes, read with `ast`.

    Args:
        package_dir: the package folder (`.../src/agegender`).
    """

    def __init__(self, package_dir: Path) -> None:
        self.package_dir = package_dir
        self.modules: dict[str, _Module] = {}
        for path in sorted(package_dir.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(package_dir.parent).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            self.modules[name] = _Module(name, path, is_package)
        self._trees: dict[str, ast.Module] = {}

    def tree(self, name: str) -> ast.Module:
        """The parsed source of module `name`."""
        if name not in self._trees:
            module = self.modules[name]
            self._trees[name] = ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))
        return self._trees[name]

    def lazy_exports(self, name: str) -> dict[str, str]:
        """Names package `name` imports on first use (`__getattr__` + a `{name: submodule}` table) -> the module."""
        module = self.modules.get(name)
        if module is None or not module.is_package:
            return {}
        body = self.tree(name).body
        if not any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in body):
            return {}
        exports: dict[str, str] = {}
        for node in body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if not isinstance(value, ast.Dict):
                continue
            for key, target in zip(value.keys, value.values, strict=True):
                if not (isinstance(key, ast.Constant) and isinstance(target, ast.Constant)):
                    continue
                if isinstance(target.value, str) and f"{name}.{target.value}" in self.modules:
                    exports[str(key.value)] = f"{name}.{target.value}"
        return exports

    def registered_stages(self) -> list[str]:
        """The module names of the stages the registry lists (`REGISTRY_NAMES`, a tuple of string constants)."""
        if REGISTRY not in self.modules:
            return []
        for node in self.tree(REGISTRY).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and target.id == REGISTRY_NAMES and isinstance(value, ast.Tuple):
                names = [e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                return [f"{REGISTRY}.{n}" for n in names if f"{REGISTRY}.{n}" in self.modules]
        return []

    def _resolve_from(self, node: ast.ImportFrom, current: str) -> str:
        if not node.level:
            return node.module or ""
        package = current if self.modules[current].is_package else current.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package

    def imports(self, nodes: Iterable[ast.AST], current: str) -> set[str]:
        """The agegender modules (and package data files, as `file:<path>`; registered stages reached through the
        registry, as `stage:<module>`) that the code of `nodes` imports.

        Args:
            nodes: statements of module `current` (all of them, or those of some of its functions).
            current: the module they belong to (for relative imports and data files beside it).
        """
        found: set[str] = set()
        folder = self.modules[current].path.parent
        for node in (sub for top in nodes for sub in _walk_run(top)):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in self.modules)
            elif isinstance(node, ast.ImportFrom):
                base = self._resolve_from(node, current)
                if base not in self.modules:
                    continue
                found.add(base)
                lazy = self.lazy_exports(base)
                if base == REGISTRY and any(alias.name == REGISTRY_FUNCTION for alias in node.names):
                    found.update(f"stage:{name}" for name in self.registered_stages())
                for alias in node.names:
                    if f"{base}.{alias.name}" in self.modules:
                        found.add(f"{base}.{alias.name}")
                    elif alias.name in lazy:
                        found.add(lazy[alias.name])
            elif isinstance(node, ast.List | ast.Tuple):
                found.update(self._run_as_main(node.elts))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
                if node.value in self.modules:
                    found.add(node.value)
                elif _FILE_NAME.fullmatch(node.value) and (folder / node.value).is_file() and node.value[-3:] != ".py":
                    found.add(f"file:{folder / node.value}")
        return found

    def _run_as_main(self, elements: Sequence[ast.expr]) -> set[str]:
        """`["-m", "agegender.pkg", ...]` in a command list: `python -m` runs the package's `__main__` module."""
        found = set()
        for flag, target in zip(elements, elements[1:], strict=False):
            if isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(target, ast.Constant):
                main = f"{target.value}.__main__"
                if main in self.modules:
                    found.add(main)
        return found

    def closure(self, seeds: Iterable[str], entries: Mapping[str, Iterable[str]] = {}) -> set[str]:
        """Every module (and data file) `seeds` run, with the packages on the way.

        Args:
            seeds: module names reached directly.
            entries: entry modules -> the functions called in them. An entry module counts only its module-level
                statements and those functions (and the functions of the module they name), also where another
                module imports it. A registered stage reached through the registry is an entry module with
                `STAGE_INTERFACE` added to its functions.
        """
        functions = {name: set(called) for name, called in entries.items()}
        read: dict[str, frozenset[str] | None] = {}  # module -> the functions read (None: the whole module)
        todo = [*seeds, *entries]
        while todo:
            name = todo.pop()
            if name.startswith("stage:"):
                name = name[len("stage:") :]
                functions.setdefault(name, set()).update(STAGE_INTERFACE)
            wanted = frozenset(functions[name]) if name in functions else None
            if name in read and read[name] == wanted:
                continue
            read[name] = wanted
            if name.startswith("file:"):
                continue
            parent = name.rpartition(".")[0]
            if parent:
                todo.append(parent)
            nodes = self.tree(name).body if wanted is None else self.entry_nodes(name, wanted)
            todo.extend(self.imports(nodes, name))
        return set(read)

    def entry_nodes(self, name: str, functions: Iterable[str]) -> list[ast.stmt]:
        """Module `name`'s module-level statements plus `functions` and the functions of `name` they name."""
        body = self.tree(name).body
        defs = {node.name: node for node in body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        nodes: list[ast.stmt] = [node for node in body if node.__class__ not in (ast.FunctionDef, ast.ClassDef)]
        todo = [f for f in functions if f in defs]
        seen: set[str] = set()
        while todo:
            fn = todo.pop()
            if fn in seen:
                continue
            seen.add(fn)
            nodes.append(defs[fn])
            for node in ast.walk(defs[fn]):
                if isinstance(node, ast.Name) and node.id in defs and node.id not in seen:
                    todo.append(node.id)
        return nodes

    def files(self, reached: Iterable[str]) -> list[Path]:
        """The files of modules and data files in `reached`, sorted."""
        return sorted(Path(n[5:]) if n.startswith("file:") else self.modules[n].path for n in reached)


def _type_checking_only(node: ast.AST) -> bool:
    """Whether `node` is an `if TYPE_CHECKING:` block (imports for annotations, never run)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_run(node: ast.AST) -> Iterator[ast.AST]:
    """`ast.walk(node)` without the `if TYPE_CHECKING:` blocks (their `else` branches are kept)."""
    todo = [node]
    while todo:
        current = todo.pop()
        if _type_checking_only(current):
            assert isinstance(current, ast.If)
            todo.extend(current.orelse)
            continue
        yield current
        todo.extend(ast.iter_child_nodes(current))


def _notebook_source(notebook: Path) -> ast.Module:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = []
    for cell in cells:
        if cell.get("cell_type") == "code":
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            # IPython magics and shell escapes are not Python; a pipeline notebook has none, but a draft may
            code.append("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return ast.parse("\n\n".join(code), filename=str(notebook))


def notebook_code(notebook: Path, graph: ImportGraph) -> list[Path]:
    """The package files a notebook runs (module docstring: how they are derived).

    Raises:
        InputError: the notebook calls no function of an agegender module it imports (nothing to derive from).
    """
    tree = _notebook_source(notebook)
    seeds: set[str] = set()
    aliases: dict[str, str] = {}  # local name -> agegender module imported as an object
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in graph.modules:
                    seeds.add(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in graph.modules:
            seeds |= graph.imports([node], node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in graph.modules:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    entries: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            entries.setdefault(aliases[node.value.id], set()).add(node.attr)
    if not entries:
        message = "calls no function of an agegender module it imports (`from agegender import x`, then `x.f(...)`)"
        raise InputError(message, file=notebook)
    return graph.files(graph.closure(seeds - set(entries), entries))


@dataclass(frozen=True)
class StageCode:
    """One stage of `dvc.yaml`: the package files it runs and the code deps it declares.

    Paths are relative to the project root, as `dvc.yaml` writes them.
    """

    stage: str
    notebook: str | None
    runs: tuple[str, ...]
    declared: tuple[str, ...]
    declared_files: tuple[str, ...]

    @property
    def missing(self) -> list[str]:
        """Files the stage runs that no dep covers (an edit would not rerun the stage)."""
        return [f for f in self.runs if f not in self.declared_files]

    @property
    def unrun(self) -> list[str]:
        """Files the deps declare that the stage does not run (an edit would rerun it for nothing)."""
        return [f for f in self.declared_files if f not in self.runs]

    def problems(self, root: Path) -> list[str]:
        """One line per missing, unrun or absent code dep (or a stage without a notebook to derive from)."""
        if self.notebook is None:
            return [f"stage {self.stage}: no notebook among its deps to derive its code from"]
        absent = [d for d in self.declared if not (root / d).exists()]
        out = [f"stage {self.stage}: declares {d}, which does not exist" for d in absent]
        out += [f"stage {self.stage}: runs {f}, which its deps do not cover" for f in self.missing]
        out += [f"stage {self.stage}: declares {f}, which it does not run" for f in self.unrun]
        return out


def _covered(declared: Iterable[str], root: Path) -> list[str]:
    """Every file a list of deps declares: the file itself, or every file below a folder (caches left out)."""
    files: set[str] = set()
    for dep in declared:
        path = root / dep
        if path.is_dir():
            files |= {
                p.relative_to(root).as_posix()
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            }
        else:
            files.add(Path(dep).as_posix())
    return sorted(files)


def dvc_stages(dvc_yaml: Path) -> dict[str, list[str]]:
    """`dvc.yaml`'s stages -> their deps as written (a `foreach` stage: the deps of its `do` template)."""
    import yaml

    stages: dict[str, Any] = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    return {name: [str(d) for d in (stage.get("do", stage).get("deps") or [])] for name, stage in stages.items()}


def stage_code(root: Path, package_dir: Path | None = None) -> list[StageCode]:
    """Each stage of `<root>/dvc.yaml` with the package files it runs and the code deps it declares.

    Args:
        root: the project root.
        package_dir: the package's source folder, inside `root` (default `<root>/src/agegender`).
    """
    package_dir = package_dir or root / "src" / PACKAGE
    graph = ImportGraph(package_dir)
    prefix = package_dir.relative_to(root).as_posix()
    result = []
    for stage, deps in dvc_stages(root / "dvc.yaml").items():
        notebooks = [d for d in deps if d.endswith(".ipynb")]
        notebook = notebooks[0] if notebooks else None
        runs = [] if notebook is None else notebook_code(root / notebook, graph)
        declared = [d.rstrip("/") for d in deps if _is_code(d, prefix)]
        result.append(
            StageCode(
                stage=stage,
                notebook=notebook,
                runs=tuple(p.relative_to(root).as_posix() for p in runs),
                declared=tuple(declared),
                declared_files=tuple(_covered(declared, root)),
            )
        )
    return result


def stage_problems(root: Path, package_dir: Path | None = None) -> list[str]:
    """Every missing, unrun or absent code dep of every stage of `<root>/dvc.yaml` (empty: all exact)."""
    return [line for stage in stage_code(root, package_dir) for line in stage.problems(root)]


def compact(files: Iterable[str], root: Path, package_dir: Path) -> list[str]:
    """`files` (relative to `root`) with each folder of `package_dir` whose files are all among them written as the
    folder: the shortest list of deps that covers exactly `files`."""
    wanted = set(files)
    top = package_dir.relative_to(root).as_posix()
    folders = {str(parent) for f in wanted for parent in PurePosixPath(f).parents}
    folders = {f for f in folders if f == top or f.startswith(f"{top}/")}
    chosen: list[str] = []
    for folder in sorted(folders, key=lambda f: (f.count("/"), f)):  # outermost first
        if any(folder.startswith(f"{c}/") for c in chosen):
            continue
        if set(_covered([folder], root)) <= wanted:
            chosen.append(folder)
    covered = set(_covered(chosen, root))
    return sorted([*chosen, *(f for f in wanted if f not in covered)])


def deps_lines(stages: Iterable[StageCode], root: Path, package_dir: Path | None = None) -> Iterator[str]:
    """`stage:` then `  - path` per code dep (folders where all their files run): lines for `deps` in dvc.yaml."""
    for stage in stages:
        yield f"{stage.stage}:"
        yield from (f"  - {f}" for f in compact(stage.runs, root, package_dir or root / "src" / PACKAGE))


def _is_code(dep: str, prefix: str) -> bool:
    return dep.rstrip("/") == prefix or dep.startswith(f"{prefix}/")


def write_deps(root: Path, stages: Iterable[str] = (), package_dir: Path | None = None) -> list[str]:
    """Rewrite the code deps of `<root>/dvc.yaml` in place to exactly what each stage runs; the rest is kept.

    Each stage's package deps (its `- src/agegender...` lines, written together) are replaced by `compact(runs)` at
    the same indentation; a stage that declares none gets them after its notebook. Comments, order and every other
    line stay as they are.

    Args:
        root: the project root.
        stages: the stages to rewrite (default: all).
        package_dir: the package's source folder, inside `root` (default `<root>/src/agegender`).

    Returns:
        The stages whose deps changed.
    """
    package_dir = package_dir or root / "src" / PACKAGE
    prefix = package_dir.relative_to(root).as_posix()
    wanted = set(stages)
    code = {s.stage: s for s in stage_code(root, package_dir) if not wanted or s.stage in wanted}
    dvc_yaml = root / "dvc.yaml"
    lines = dvc_yaml.read_text(encoding="utf-8").splitlines(keepends=True)
    stage_line = re.compile(r"^  ([\w-]+):\s*(#.*)?$")
    dep_line = re.compile(r"^(\s*)- (\S+)\s*(#.*)?$")
    out: list[str] = []
    changed: list[str] = []
    current: str | None = None
    done: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := stage_line.match(line):
            current = m.group(1)
        dep = dep_line.match(line)
        stage = code.get(current) if current is not None else None
        if stage is None or current in done or dep is None:
            out.append(line)
            i += 1
            continue
        target = dep.group(2)
        is_code = _is_code(target, prefix)
        if not is_code and target != stage.notebook:
            out.append(line)
            i += 1
            continue
        indent = dep.group(1)
        new = [f"{indent}- {f}\n" for f in compact(stage.runs, root, package_dir)]
        if is_code:
            end = i
            while end < len(lines) and (d := dep_line.match(lines[end])) and _is_code(d.group(2), prefix):
                end += 1
            old = lines[i:end]
            i = end
        else:  # the notebook line, and no code deps written yet: they go right after it
            out.append(line)
            i += 1
            if i < len(lines) and (d := dep_line.match(lines[i])) and _is_code(d.group(2), prefix):
                continue  # the code deps follow the notebook: replaced when the loop reaches them
            old = []
        out += new
        done.add(current)
        if old != new:
            changed.append(current)
    atomic_write_text(dvc_yaml, "".join(out))
    return changed
