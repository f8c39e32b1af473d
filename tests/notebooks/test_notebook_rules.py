"""The house rules for notebooks (DESIGN.md), checked on the committed files.

Every notebook is thin (the pipeline's stages and `explore.ipynb`, which is no stage: it reads what they produced);
the stage notebooks also map one to one onto dvc.yaml's stages.
"""

import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: notebooks that are no pipeline stage: thin like the others, run by their own tests
NOT_STAGES = ("explore.ipynb",)
STAGE_NOTEBOOKS = [p for p in NOTEBOOKS if p.name not in NOT_STAGES]
FORBIDDEN = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.With)


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert len(STAGE_NOTEBOOKS) >= 4
    assert {p.name for p in NOTEBOOKS} >= set(NOT_STAGES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_thin_and_parameterised(path):
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "Outputs" in "".join(cells[0]["source"])
    code = code_cells(path)
    assert ["parameters" in c["metadata"].get("tags", []) for c in code].count(True) == 1
    for cell in code:
        assert not cell["outputs"] and cell["execution_count"] is None, "commit notebooks with outputs stripped"
        source = "".join(cell["source"])
        assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), "no shell escapes"
        assert "os.chdir" not in source and "open(" not in source and ".to_parquet" not in source
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, FORBIDDEN), f"{path.name}: {type(node).__name__} belongs in the package"


def test_every_stage_runs_its_own_notebook():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        notebook = next(p for p in STAGE_NOTEBOOKS if p.stem.split("_", 1)[1] == name)
        body = stage.get("do", stage)  # a foreach stage (one per model) writes metrics/<stage>/<key>.json
        metrics = f"metrics/{name}/${{key}}.json" if "foreach" in stage else f"metrics/{name}.json"
        assert f"notebooks/{notebook.name}" in body["cmd"]
        assert f"notebooks/{notebook.name}" in body["deps"]
        assert any(metrics in m for m in body["metrics"])
    assert {p.stem.split("_", 1)[1] for p in STAGE_NOTEBOOKS} == set(stages), "one notebook per stage and vice versa"
    commands = [stage.get("do", stage)["cmd"] for stage in stages.values()]
    assert not any(nb in cmd for cmd in commands for nb in NOT_STAGES), "explore.ipynb is no stage"


def test_every_stage_command_sets_its_environment():
    # `dvc repro` in a shell where only the venv is activated (no make exporting these) runs as `make repro` does
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert "HF_HUB_OFFLINE=1 MPLBACKEND=Agg papermill " in stage.get("do", stage)["cmd"], name
