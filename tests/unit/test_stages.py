"""The stage registry (`agegender.stages`): one module per stage, in pipeline order, each with the same interface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agegender.check import Checker, fingerprints, inside, source_fingerprint
from agegender.params import params_from_dict
from agegender.paths import ProjectPaths
from agegender.stages import STAGES, registered, stage
from agegender.stages import check as check_stage

REPO = Path(__file__).resolve().parents[2]


def test_registry_lists_dvc_yaml_stages_in_pipeline_order() -> None:
    dvc_order = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert dvc_order == [check_stage.NAME, *STAGES]  # the check stage runs the others' checks


def test_every_registered_stage_has_the_interface() -> None:
    for name, module in zip(STAGES, registered(), strict=True):
        assert name == module.NAME
        assert all(callable(getattr(module, f)) for f in ("run", "check", "fingerprint")), name


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        stage("nope")


def test_importing_one_stage_imports_no_other() -> None:
    code = "import sys, agegender.stages.evaluate as e; print(sorted(m for m in sys.modules if 'stages.' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['agegender.stages.common', 'agegender.stages.evaluate']"


def _demo_params():
    return params_from_dict(yaml.safe_load((REPO / "profiles" / "demo.yaml").read_text()))


def test_fingerprints_are_the_stages_own_in_pipeline_order() -> None:
    paths, params = ProjectPaths(REPO), _demo_params()
    own = {k: v for module in registered() for k, v in module.fingerprint(params, paths).items()}
    prints = fingerprints(params, paths)
    assert prints == own and list(prints) == list(own)
    per_stage = {"prepare_data", "train_mivolo", "predict"}
    per_part = {"query_mllms/tiny_llava", "finetune_mllm/tiny_llava_ft", "finetune_mllm/tiny_llava_ft_body"}
    assert per_stage <= set(prints) and per_part <= set(prints)
    assert all(k.startswith(("query_mllms/", "finetune_mllm/")) for k in set(prints) - per_stage)


def test_checker_collects_problems_and_counts_checks(tmp_path: Path) -> None:
    checker = Checker(_demo_params(), ProjectPaths(tmp_path), env={})
    checker.prepared_ref("x.dataset", "nowhere")
    checker.dataset_ref("x.other", None, ["a"], "y")  # nothing named: nothing checked
    assert checker.found.n_checks == 1 and [p.where for p in checker.found] == ["x.dataset"]
    assert "is not one of prepare_data.datasets" in checker.found[0].message


def test_inside_and_source_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert inside(tmp_path / "a" / "b", tmp_path / "a") and inside(tmp_path / "a", tmp_path / "a")
    assert not inside(tmp_path / "a", tmp_path / "a" / "b")
    assert inside(tmp_path / "a" / "b" / ".." / "b", tmp_path / "a")
    (tmp_path / "w.json").write_text("{}")
    entry = source_fingerprint(ProjectPaths(tmp_path), "w.json")
    assert entry["path"] == "w.json" and entry["size"] == 2 and len(entry["sha256"]) == 64
    assert source_fingerprint(ProjectPaths(tmp_path), "gone.txt") == {"path": "gone.txt", "missing": True}


def test_cli_stage_runs_the_check_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agegender import cli

    (tmp_path / "params.yaml").write_text((REPO / "profiles" / "demo.yaml").read_text())
    assert cli.main(["stage", "check", "--root", str(tmp_path)]) == 0
    assert "stage check done" in capsys.readouterr().out
    assert (tmp_path / "metrics" / "check.json").is_file()
    assert sorted(p.name for p in (tmp_path / check_stage.SOURCES_DIR).glob("*.json")) == [
        "predict.json", "prepare_data.json", "train_mivolo.json",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / check_stage.SOURCES_DIR / "finetune_mllm").glob("*.json")) == [
        "tiny_llava_ft.json", "tiny_llava_ft_body.json",
    ]  # fmt: skip
