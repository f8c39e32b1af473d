"""Stage entry points: what each DVC stage's notebook calls, one function per stage.

Each function reads only its declared inputs, fully rewrites its outputs, writes
`metrics/<stage>.json` and returns a small summary for the notebook to show.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from agegender.baseline import ConstantBaseline
from agegender.data.prepare import load_prepared
from agegender.data.prepare import prepare_data as _prepare_data
from agegender.evaluate import evaluate_tables, load_predictions, read_rows_json, write_rows_json
from agegender.metrics import flat_metrics
from agegender.params import Params, load_params
from agegender.paths import ProjectPaths

EVALUATION_FILE = "reports/evaluation.json"
AGE_GROUPS_FILE = "reports/age_groups.csv"


def setup(root: str | Path | None = None, params_file: str | Path = "params.yaml") -> tuple[Params, ProjectPaths]:
    """Find the project root (default: above the working directory) and load its params file."""
    paths = ProjectPaths.at(root)
    return load_params(paths(params_file)), paths


def write_metrics(paths: ProjectPaths, stage: str, values: dict) -> Path:
    """Write `metrics/<stage>.json` (flat, sorted keys, committed to git)."""
    path = paths.metrics / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    return path


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def prepare_data(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """Stage `prepare_data`: demo set, readers, subsets -> `data/prepared/`."""
    summary = _prepare_data(params, paths, progress=progress)
    flat = {"n_samples": summary["n_samples"], "n_masked": summary["n_masked"]}
    for name, info in summary["datasets"].items():
        for split, n in info["samples"].items():
            flat[f"{name}.{split}.n"] = n
    write_metrics(paths, "prepare_data", flat)
    return summary


def predict(params: Params, paths: ProjectPaths) -> pd.DataFrame:
    """Stage `predict`: every configured model predicts the study's samples -> `predictions/predict/<model>.parquet`.

    Returns:
        Counts per model, input and status.
    """
    data = load_prepared(params, paths)
    samples = data.samples
    cfg = params.predict.baseline
    train = samples[(samples["dataset"] == cfg.train_dataset) & (samples["split"] == cfg.train_split)]
    baseline = ConstantBaseline.fit(train)
    targets = samples[samples["dataset"].isin(params.study.datasets) & (samples["split"] == params.study.split)]
    out = _fresh_dir(paths(params.predict.out))
    table = baseline.predict(targets, params.study.inputs)
    table.to_parquet(out / f"{baseline.name}.parquet", index=False)
    counts = table.groupby(["model", "input", "status"]).size().rename("n").reset_index()
    write_metrics(
        paths,
        "predict",
        {
            f"{baseline.name}.age": round(baseline.age, 6),
            f"{baseline.name}.gender": baseline.gender,
            **{f"{r.model}.{r.input}.{r.status}": int(r.n) for r in counts.itertuples()},
        },
    )
    return counts


def prediction_dirs(params: Params, paths: ProjectPaths) -> list[Path]:
    """The folders of prediction tables that `evaluate` reads (each a DVC output of an earlier stage)."""
    return [paths(params.predict.out)]


def evaluate(params: Params, paths: ProjectPaths):
    """Stage `evaluate`: metric rows with CIs -> reports/evaluation.json, age groups, metrics/evaluate.json."""
    data = load_prepared(params, paths)
    predictions = load_predictions(prediction_dirs(params, paths), data.samples["sample_id"])
    cfg = params.evaluate
    result = evaluate_tables(
        data.samples,
        predictions,
        split=params.study.split,
        datasets=params.study.datasets,
        ci=cfg.ci,
        n_resamples=cfg.n_resamples,
        ci_level=cfg.ci_level,
        seed=cfg.seed,
        age_group_width=cfg.age_group_width,
    )
    write_rows_json(result.rows, paths(EVALUATION_FILE))
    result.age_groups.to_csv(paths(AGE_GROUPS_FILE), index=False, float_format="%.6g")
    write_metrics(paths, "evaluate", flat_metrics(result.rows, views=("answered", "common")))
    return result


def load_evaluation(paths: ProjectPaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluate stage's rows and age-group table."""
    return read_rows_json(paths(EVALUATION_FILE)), pd.read_csv(paths(AGE_GROUPS_FILE))


def report(params: Params, paths: ProjectPaths) -> list[Path]:
    """Stage `report`: the paper's tables 1-10 in their layouts and the figures -> reports/tables, reports/figures."""
    from agegender.report.figures import write_figures
    from agegender.report.tables import write_tables

    cfg = params.report
    rows, age_groups = load_evaluation(paths)
    data = load_prepared(params, paths)
    predictions = load_predictions(prediction_dirs(params, paths), data.samples["sample_id"])
    roots = data.image_roots(paths)
    tables = write_tables(
        rows, _fresh_dir(paths.tables), roles=cfg.roles, caption_note=cfg.caption_note, model_names=cfg.model_names
    )
    figures = write_figures(
        data.samples[data.samples["split"] == params.study.split],
        predictions,
        rows,
        age_groups,
        _fresh_dir(paths.figures),
        image_roots=roots,
        caption_note=cfg.caption_note,
        age_group_dataset=cfg.age_group_dataset,
        gallery_dataset=cfg.gallery.dataset,
        gallery_input=cfg.gallery.input,
        gallery_n=cfg.gallery.n,
        seed=cfg.gallery.seed,
        model_names=cfg.model_names,
    )
    written = [*tables, *figures]
    write_metrics(paths, "report", {"tables": len(tables), "figures": len(figures)})
    return written
