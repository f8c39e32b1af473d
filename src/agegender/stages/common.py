"""What more than one stage uses: loading the project, metrics files, output folders, resumable outputs.

The stages' notebooks call `setup` first; the other helpers are the stages' own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from agegender.files import atomic_write_text, write_table
from agegender.params import Params, load_params
from agegender.paths import ProjectPaths

#: the `evaluate` stage's metric rows and age-group table, which `report` reads
EVALUATION_FILE = "reports/evaluation.json"
AGE_GROUPS_FILE = "reports/age_groups.csv"
#: the report's predicted-vs-true points (`agegender.report.figures.pred_vs_true_points`), drawn by `dvc plots show`
PRED_VS_TRUE_FILE = "reports/pred_vs_true.csv"
#: the `evaluate` stage's refusal exclusion: the answers that removed samples for every model
EXCLUSIONS_FILE = "reports/exclusions.csv"
#: the `evaluate` stage's fairness view: age MAE and gender accuracy per gender and race group, which `report` reads
FAIRNESS_FILE = "reports/fairness.csv"


def setup(root: str | Path | None = None, params_file: str | Path = "params.yaml") -> tuple[Params, ProjectPaths]:
    """Find the project root (default: above the working directory) and load its params file.

    The project root is put on `sys.path`, so that a reader or backend that params name by import path
    (`"my_readers:read_utkface"`) may live in a module of the project itself.
    """
    import sys

    paths = ProjectPaths.at(root)
    if str(paths.root) not in sys.path:
        sys.path.append(str(paths.root))
    return load_params(paths(params_file)), paths


def write_metrics(paths: ProjectPaths, stage: str, values: dict) -> Path:
    """Write `metrics/<stage>.json` (flat, sorted keys, committed to git)."""
    return atomic_write_text(paths.metrics / f"{stage}.json", json.dumps(values, indent=1, sort_keys=True) + "\n")


def fresh_dir(path: Path) -> Path:
    """`path` as an empty folder (its old contents removed): a stage fully rewrites its outputs."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def reset_if_changed(out: Path, identity: dict, *, code: Path) -> None:
    """Keep `out` (a persisted DVC output that lets an interrupted run resume) only if it was made by the same
    settings, data and code; otherwise clear it, so that a changed stage starts afresh."""
    identity = identity | {"code": digest(*sorted(code.rglob("*.py")))}
    marker = out / "run.json"
    if out.exists() and (not marker.is_file() or json.loads(marker.read_text()) != identity):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def digest(*files: Path) -> str:
    """MD5 of the files' contents, in order: the identity of the data a resumable output was made from."""
    h = hashlib.md5()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def write_predictions(table: pd.DataFrame, out: Path, name: str) -> Path:
    """Write a prediction table as `<out>/<name>.parquet`."""
    return write_table(table, out / f"{name}.parquet")


def prediction_dirs(params: Params, paths: ProjectPaths) -> list[Path]:
    """The folders of prediction tables that `evaluate` and `report` read (each a DVC output of an earlier stage)."""
    dirs = [paths(params.predict.out)]
    dirs += [paths(params.query_mllms.out) / key for key in params.query_mllms.models]
    if params.finetune_mllm is not None:
        dirs += [paths(params.finetune_mllm.predictions) / key for key in params.finetune_mllm.runs]
    return dirs


__all__ = [
    "AGE_GROUPS_FILE",
    "EVALUATION_FILE",
    "EXCLUSIONS_FILE",
    "FAIRNESS_FILE",
    "PRED_VS_TRUE_FILE",
    "digest",
    "fresh_dir",
    "prediction_dirs",
    "reset_if_changed",
    "setup",
    "write_metrics",
    "write_predictions",
]
