"""Run logs: how a run went is written beside its outputs, and DVC leaves it out of their hashes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agegender.files import RUN_LOG_FILE, write_run_log

REPO = Path(__file__).resolve().parents[2]


def _dvc_ignores(*paths: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "dvc", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True, check=False
    )
    return run.stdout.split()


def test_dvc_leaves_run_logs_out_of_every_stage_output_but_not_the_results() -> None:
    logs = [f"predictions/query_mllms/m/{RUN_LOG_FILE}", f"models/finetune_mllm/ft/run/{RUN_LOG_FILE}"]
    results = ["predictions/query_mllms/m/manifest.json", "models/finetune_mllm/ft/run/finetune_summary.json"]
    assert _dvc_ignores(*logs, *results) == logs


def test_write_run_log_writes_sorted_json_beside_the_outputs(tmp_path: Path) -> None:
    path = write_run_log(tmp_path, {"b": 1, "a": {"duration_s": 0.5}})
    assert path == tmp_path / RUN_LOG_FILE
    assert json.loads(path.read_text()) == {"a": {"duration_s": 0.5}, "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')
