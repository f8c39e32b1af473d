"""dvc.yaml's `plots:`: `dvc plots show` draws the committed data files that the stages write, by their columns."""

from pathlib import Path

import yaml

from agegender.report.figures import AGE_GROUP_COLUMNS, PRED_VS_TRUE_COLUMNS
from agegender.stages.common import AGE_GROUPS_FILE, PRED_VS_TRUE_FILE

ROOT = Path(__file__).resolve().parents[2]


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _outs(stage: dict) -> set[str]:
    return {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])}


def test_plots_draw_the_files_the_stages_write_by_their_columns():
    plots = {next(iter(p)): next(iter(p.values())) for p in _dvc()["plots"]}
    assert set(plots) == {AGE_GROUPS_FILE, PRED_VS_TRUE_FILE}
    columns = {AGE_GROUPS_FILE: AGE_GROUP_COLUMNS, PRED_VS_TRUE_FILE: PRED_VS_TRUE_COLUMNS}
    for path, plot in plots.items():
        assert {plot["x"], plot["y"]} <= set(columns[path]), path
    assert plots[AGE_GROUPS_FILE]["template"] == "linear" and plots[PRED_VS_TRUE_FILE]["template"] == "scatter"


def test_plot_files_are_stage_outputs_kept_in_git():
    stages = _dvc()["stages"]
    assert AGE_GROUPS_FILE in _outs(stages["evaluate"]) and PRED_VS_TRUE_FILE in _outs(stages["report"])
    for name in ("evaluate", "report"):
        for out in stages[name]["outs"]:
            if isinstance(out, dict) and next(iter(out)) in (AGE_GROUPS_FILE, PRED_VS_TRUE_FILE):
                assert next(iter(out.values()))["cache"] is False  # committed, so `dvc plots show` needs no repro
