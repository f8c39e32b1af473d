"""Every dvc.yaml stage declares exactly the package code it runs (`agegender.stage_deps`)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import yaml

from agegender import cli
from agegender.errors import InputError
from agegender.stage_deps import (
    HINT,
    ImportGraph,
    compact,
    dvc_stages,
    notebook_code,
    stage_code,
    stage_problems,
    write_deps,
)
from agegender.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "src/agegender"


def test_every_stage_declares_exactly_the_code_it_runs() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "query_mllms" in stages and "foreach" in stages["query_mllms"], "the foreach stage is checked too"
    problems = stage_problems(REPO)
    assert not problems, "\n".join(["dvc.yaml's code deps differ from the code the stages run:", *problems, HINT])


@functools.cache
def _repo_stages() -> dict[str, set[str]]:
    return {s.stage: set(s.runs) for s in stage_code(REPO)}


def _runs(stage: str) -> set[str]:
    return _repo_stages()[stage]


def test_derived_code_reaches_entry_points_registries_and_data_files() -> None:
    query = _runs("query_mllms")
    # the stage's module, the crops every model sees, and backends the registry imports by name only
    assert {f"{PACKAGE}/stages/query_mllms.py", f"{PACKAGE}/data/crops.py"} <= query
    assert {f"{PACKAGE}/mllm/backends/{b}_backend.py" for b in ("openai", "transformers", "vllm")} <= query
    assert f"{PACKAGE}/mllm/finetune/train.py" not in query  # finetune_mllm's import is not query_mllms'
    # one stage's module does not make another's its code: editing predict reruns neither query_mllms nor evaluate
    assert not {f"{PACKAGE}/stages/{s}.py" for s in ("predict", "finetune_mllm", "check")} & query
    assert f"{PACKAGE}/stages/predict.py" not in _runs("evaluate")
    # the check stage runs every registered stage's checks and fingerprints (the registry), but not their runs
    check = _runs("check")
    assert {f"{PACKAGE}/stages/{s}.py" for s in STAGES} <= check
    assert f"{PACKAGE}/mllm/finetune/train.py" not in check and f"{PACKAGE}/mivolo/train.py" not in check
    # the reader registry imports every built-in reader
    assert {f"{PACKAGE}/data/{m}.py" for m in ("registry", "readers", "native")} <= _runs("prepare_data")
    # the fine-tuning stage launches `python -m agegender.mllm.finetune`: the package's __main__ and its parser
    assert {f"{PACKAGE}/mllm/finetune/__main__.py", f"{PACKAGE}/cli/mllm_finetune.py"} <= _runs("finetune_mllm")
    # specialized models register themselves through the package's __init__
    assert {f"{PACKAGE}/specialized/{m}.py" for m in ("baseline", "mivolo", "age_and_gender")} <= _runs("predict")
    # the paper's numbers: a data file next to the module that opens it by name
    assert f"{PACKAGE}/report/paper_results.csv" in _runs("report")
    for stage, runs in _repo_stages().items():
        assert {f"{PACKAGE}/__init__.py", f"{PACKAGE}/stages/common.py", f"{PACKAGE}/stages/{stage}.py"} <= runs, stage


def _project_copy(tmp_path: Path, edit) -> Path:
    """A project root whose dvc.yaml is the repository's after `edit(stages)`, with the real notebooks and code."""
    (tmp_path / "src").symlink_to(REPO / "src")
    (tmp_path / "notebooks").symlink_to(REPO / "notebooks")
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    edit(document["stages"])
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return tmp_path


def test_a_removed_dep_fails_naming_stage_and_module(tmp_path: Path) -> None:
    module = f"{PACKAGE}/stages/query_mllms.py"
    root = _project_copy(tmp_path, lambda stages: stages["query_mllms"]["do"]["deps"].remove(module))
    assert stage_problems(root) == [f"stage query_mllms: runs {module}, which its deps do not cover"]


def test_an_unrun_module_or_a_too_wide_folder_fails(tmp_path: Path) -> None:
    def edit(stages: dict) -> None:
        stages["evaluate"]["deps"].append(f"{PACKAGE}/mllm/tools/cost.py")
        deps = stages["train_mivolo"]["deps"]
        deps[:] = [d for d in deps if not d.startswith(f"{PACKAGE}/mivolo/")] + [f"{PACKAGE}/mivolo"]
        stages["report"]["deps"].append(f"{PACKAGE}/no_such_module.py")

    problems = stage_problems(_project_copy(tmp_path, edit))
    assert f"stage evaluate: declares {PACKAGE}/mllm/tools/cost.py, which it does not run" in problems
    # the folder declares the export and prediction code as well, which training never runs
    assert f"stage train_mivolo: declares {PACKAGE}/mivolo/export.py, which it does not run" in problems
    assert f"stage report: declares {PACKAGE}/no_such_module.py, which does not exist" in problems
    assert not any("train_mivolo: runs" in p for p in problems)


def test_write_puts_back_a_removed_dep_and_keeps_every_other_line(tmp_path: Path) -> None:
    module = f"{PACKAGE}/stages/query_mllms.py"
    (tmp_path / "src").symlink_to(REPO / "src")
    (tmp_path / "notebooks").symlink_to(REPO / "notebooks")
    original = (REPO / "dvc.yaml").read_text()
    assert original.count(f"- {module}\n") == 1
    (tmp_path / "dvc.yaml").write_text(original.replace(f"        - {module}\n", ""))
    assert stage_problems(tmp_path) == [f"stage query_mllms: runs {module}, which its deps do not cover"]
    assert write_deps(tmp_path) == ["query_mllms"]
    assert (tmp_path / "dvc.yaml").read_text() == original  # comments, order and indentation kept
    assert stage_problems(tmp_path) == [] and write_deps(tmp_path) == []


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _notebook(path: Path, *cells: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = {"cells": [{"cell_type": "code", "source": c, "metadata": {}, "outputs": []} for c in cells]}
    path.write_text(json.dumps(nb))


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A toy package with every kind of import the derivation follows, and one it must not."""
    pkg = tmp_path / "src" / "agegender"
    _write(pkg / "__init__.py")
    _write(
        pkg / "pipeline.py",
        "from agegender.core import base_fn\n\n"
        "def stage_a(params, paths):\n    from agegender.sub import rel\n    return _helper()\n\n"
        "def _helper():\n    from agegender import reg\n    return reg\n\n"
        "def stage_b(params, paths):\n    from agegender.unused import x\n",
    )
    _write(pkg / "core.py", "def base_fn():\n    import agegender.lazy\n    from agegender.lazy import thing\n")
    _write(pkg / "sub" / "__init__.py")
    _write(pkg / "sub" / "rel.py", "from .sibling import y\nfrom . import other\n")
    _write(pkg / "sub" / "sibling.py")
    _write(pkg / "sub" / "other.py")
    _write(pkg / "reg.py", 'LAZY = {"a": "agegender.plugin_a"}\nTABLE = "table.csv"\n')
    _write(pkg / "table.csv", "x\n1\n")
    _write(pkg / "plugin_a.py")
    _write(
        pkg / "lazy" / "__init__.py",
        '_EXPORTS = {"thing": "impl"}\n\ndef __getattr__(name):\n    import importlib\n'
        '    return getattr(importlib.import_module(f"agegender.lazy.{_EXPORTS[name]}"), name)\n',
    )
    _write(pkg / "lazy" / "impl.py")
    _write(pkg / "lazy" / "never.py")
    _write(pkg / "unused.py")
    _notebook(tmp_path / "nb_a.ipynb", "root = None", "from agegender import pipeline", "pipeline.stage_a(1, 2)")
    return tmp_path


def test_toy_derivation_follows_each_import_form(toy: Path) -> None:
    graph = ImportGraph(toy / "src" / "agegender")
    runs = {p.relative_to(toy / "src" / "agegender").as_posix() for p in notebook_code(toy / "nb_a.ipynb", graph)}
    assert runs == {
        "__init__.py", "pipeline.py", "core.py",                            # entry module + its module-level import
        "sub/__init__.py", "sub/rel.py", "sub/sibling.py", "sub/other.py",  # function-level, relative, from-package
        "reg.py", "plugin_a.py", "table.csv",                               # helper's import, registry string, data
        "lazy/__init__.py", "lazy/impl.py",                                 # `import pkg`, a lazily exported name
    }  # fmt: skip
    # stage_b's import (another function of the entry module) and the lazy package's other module are not run


def test_toy_a_command_running_a_package_reaches_its_main_only_after_dash_m(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "agegender"
    _write(pkg / "__init__.py")
    _write(pkg / "__main__.py", "from agegender import app\n")  # `python -m agegender`: never named after -m below
    _write(pkg / "app.py")
    _write(pkg / "tool" / "__init__.py")
    _write(pkg / "tool" / "__main__.py", "from agegender import cli\n")
    _write(pkg / "cli.py")
    _write(pkg / "launch.py", 'NAME = "agegender"\n\ndef go():\n    return ["python", "-m", "agegender.tool", "--x"]\n')
    _notebook(tmp_path / "nb.ipynb", "from agegender import launch", "launch.go()")
    runs = {p.relative_to(pkg).as_posix() for p in notebook_code(tmp_path / "nb.ipynb", ImportGraph(pkg))}
    assert runs == {"__init__.py", "launch.py", "tool/__init__.py", "tool/__main__.py", "cli.py"}


def test_toy_notebook_without_an_entry_call_is_an_error(toy: Path) -> None:
    _notebook(toy / "nb_b.ipynb", "from agegender.core import base_fn")
    with pytest.raises(InputError, match="calls no function"):
        notebook_code(toy / "nb_b.ipynb", ImportGraph(toy / "src" / "agegender"))


def test_toy_dvc_yaml_checked_and_compacted(toy: Path) -> None:
    pkg = "src/agegender"
    deps = [f"{pkg}/{f}" for f in ("__init__.py", "pipeline.py", "core.py", "reg.py", "plugin_a.py", "table.csv")]
    deps += [f"{pkg}/sub", f"{pkg}/lazy"]  # sub/ is exact; lazy/ holds never.py as well
    stage = {"cmd": "papermill nb_a.ipynb out.ipynb", "deps": ["nb_a.ipynb", "data/x.csv", *deps]}
    (toy / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"a": {"foreach": ["k"], "do": stage}}}))
    assert list(dvc_stages(toy / "dvc.yaml")) == ["a"]
    assert stage_problems(toy) == ["stage a: declares src/agegender/lazy/never.py, which it does not run"]
    (code,) = stage_code(toy)
    assert compact(code.runs, toy, toy / pkg) == sorted([*deps[:-1], f"{pkg}/lazy/__init__.py", f"{pkg}/lazy/impl.py"])
    shutil.rmtree(toy / pkg / "lazy")
    assert f"stage a: declares {pkg}/lazy, which does not exist" in stage_problems(toy)


def test_cli_prints_and_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stage-deps", "query_mllms", "--root", str(REPO)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "query_mllms:" and f"  - {PACKAGE}/stages/query_mllms.py" in printed
    assert f"  - {PACKAGE}/mllm/backends" in printed  # a folder whose every file the stage runs
    assert cli.main(["stage-deps", "--check", "--root", str(REPO)]) == 0
    assert cli.main(["stage-deps", "nope", "--root", str(REPO)]) == 2


def test_toy_registry_reaches_each_stage_check_and_fingerprint_only(tmp_path: Path) -> None:
    """Importing `agegender.stages.registered` runs every registered stage's `check` and `fingerprint` (and what they
    name), not its `run`; `if TYPE_CHECKING:` imports never run; a stage's notebook reaches its own module only."""
    pkg = tmp_path / "src" / "agegender"
    _write(pkg / "__init__.py")
    _write(
        pkg / "stages" / "__init__.py",
        'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agegender import typed\nSTAGES = ("a", "b")\n\n'
        "def registered():\n    pass\n",
    )
    for name in ("a", "b"):
        _write(
            pkg / "stages" / f"{name}.py",
            f"def run():\n    from agegender import run_{name}\n\n"
            f"def check(checker):\n    return _helper()\n\n"
            f"def _helper():\n    from agegender import check_{name}\n\n"
            f"def fingerprint(params, paths):\n    from agegender import print_{name}\n",
        )
        for kind in ("run", "check", "print"):
            _write(pkg / f"{kind}_{name}.py")
    _write(pkg / "stages" / "unregistered.py", "def check(checker):\n    from agegender import typed\n")
    _write(pkg / "typed.py")
    _write(pkg / "machinery.py", "from agegender.stages import registered\n")
    _write(pkg / "stages" / "c.py", "def run():\n    from agegender import machinery\n")
    _notebook(tmp_path / "nb_c.ipynb", "from agegender.stages import c", "c.run()")
    _notebook(tmp_path / "nb_a.ipynb", "from agegender.stages import a", "a.run()")
    graph = ImportGraph(pkg)

    def runs(notebook: str) -> set[str]:
        return {p.relative_to(pkg).as_posix() for p in notebook_code(tmp_path / notebook, graph)}

    assert runs("nb_c.ipynb") == {
        "__init__.py", "stages/__init__.py", "stages/c.py", "machinery.py",
        "stages/a.py", "stages/b.py", "check_a.py", "check_b.py", "print_a.py", "print_b.py",
    }  # fmt: skip
    assert runs("nb_a.ipynb") == {"__init__.py", "stages/__init__.py", "stages/a.py", "run_a.py"}
