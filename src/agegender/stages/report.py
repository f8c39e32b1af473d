"""Stage `report`: the paper's tables and figures from the evaluation; its checks (the data sets it names)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from agegender.data.prepare import load_prepared
from agegender.evaluate import load_predictions, read_exclusion_counts, read_rows_json, versus_best_tables
from agegender.params import Params
from agegender.paths import ProjectPaths
from agegender.stages.common import (
    AGE_GROUPS_FILE,
    EVALUATION_FILE,
    FAIRNESS_FILE,
    PRED_VS_TRUE_FILE,
    fresh_dir,
    prediction_dirs,
    write_metrics,
)

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "report"


def run(params: Params, paths: ProjectPaths) -> list[Path]:
    """The paper's tables 1-10 in their layouts (each model's MAEs and gender accuracy marked against the best of
    its data set and input, `evaluate`'s bootstrap settings), the fairness and age-assurance tables and the figures
    -> reports/tables, reports/figures (and the gallery of crops -> reports/gallery, git-ignored; the pred_vs_true
    figure's points -> PRED_VS_TRUE_FILE, for `dvc plots show`); all of them but the gallery on one page,
    reports/report.html."""
    from agegender.assurance import assurance_metrics
    from agegender.report.figures import write_figures
    from agegender.report.html import REPORT_FILE, write_report
    from agegender.report.tables import SIGNIFICANCE_METRICS, write_fairness_table, write_tables

    cfg = params.report
    rows, age_groups = read_rows_json(paths(EVALUATION_FILE)), pd.read_csv(paths(AGE_GROUPS_FILE))
    data = load_prepared(params, paths)
    predictions = load_predictions(prediction_dirs(params, paths), data.samples["sample_id"])
    roots = data.image_roots(paths)
    evaluation = params.evaluate
    assurance = assurance_metrics(evaluation.assurance)
    comparisons = versus_best_tables(
        data.samples,
        predictions,
        split=params.study.split,
        datasets=params.study.datasets,
        exclude_refused=evaluation.exclude_refused,
        metric_names=SIGNIFICANCE_METRICS,
        n_resamples=evaluation.n_resamples,
        ci_level=evaluation.ci_level,
        seed=evaluation.seed,
    )
    tables = write_tables(
        rows,
        fresh_dir(paths.tables),
        roles=cfg.roles,
        caption_note=cfg.caption_note,
        model_names=cfg.model_names,
        exclusion_counts=read_exclusion_counts(paths(EVALUATION_FILE)),
        comparisons=comparisons,
        assurance=assurance,
    )
    tables += write_fairness_table(
        pd.read_csv(paths(FAIRNESS_FILE)), paths.tables, caption_note=cfg.caption_note, model_names=cfg.model_names
    )
    figures = write_figures(
        data.samples[data.samples["split"] == params.study.split],
        predictions,
        rows,
        age_groups,
        fresh_dir(paths.figures),
        image_roots=roots,
        caption_note=cfg.caption_note,
        age_group_dataset=cfg.age_group_dataset,
        gallery_dataset=cfg.gallery.dataset,
        gallery_input=cfg.gallery.input,
        gallery_n=cfg.gallery.n,
        seed=cfg.gallery.seed,
        model_names=cfg.model_names,
        gallery_dir=fresh_dir(paths.gallery),
        history=_mivolo_history(params, paths),
        pred_vs_true_file=paths(PRED_VS_TRUE_FILE),
        assurance=assurance,
    )
    # the gallery shows crops of the photos, which are never committed: the page names it instead of embedding it
    charts = [f for f in figures if f.parent == paths.figures]
    title = f"agegender report ({cfg.caption_note})" if cfg.caption_note else "agegender report"
    note = f"The gallery of crops is not embedded (it shows photos): see {paths.gallery.name}/ beside this page."
    page = write_report([*tables, *charts], paths.reports / REPORT_FILE, title=title, note=note)
    written = [*tables, *figures, page]
    write_metrics(paths, NAME, {"tables": len(tables), "figures": len(figures)})
    return written


def _mivolo_history(params: Params, paths: ProjectPaths) -> pd.DataFrame | None:
    """The `train_mivolo` stage's per-epoch history, or None when this profile trains no MiVOLO."""
    from agegender.mivolo.train import HISTORY_FILE

    path = paths(params.train_mivolo.out) / HISTORY_FILE
    return pd.read_csv(path) if params.train_mivolo.dataset is not None and path.is_file() else None


def check(checker: Checker) -> None:
    """The data sets the report's roles, age-group figure and gallery name are evaluated (`study.datasets`)."""
    cfg = checker.params.report
    study = checker.params.study.datasets
    for role, name in cfg.roles.items():
        checker.dataset_ref(f"report.roles.{role}", name, study, "study.datasets")
    checker.dataset_ref("report.age_group_dataset", cfg.age_group_dataset, study, "study.datasets")
    checker.dataset_ref("report.gallery.dataset", cfg.gallery.dataset, study, "study.datasets")


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """None: the stage reads nothing from outside the project."""
    return {}
