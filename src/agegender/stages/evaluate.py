"""Stage `evaluate`: every prediction table against the labels -> metric rows with CIs, age groups, metrics.

It reads only the pipeline's own outputs, so it has nothing to check or fingerprint before the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agegender.assurance import assurance_metrics
from agegender.data.prepare import load_prepared
from agegender.evaluate import (
    EvaluationResult,
    describe_selection,
    evaluate_tables,
    load_predictions,
    select_samples,
    write_age_groups,
    write_result_csv,
    write_rows_json,
)
from agegender.exclusion import flat_exclusion_metrics, write_exclusions
from agegender.metrics import VIEWS, flat_metrics
from agegender.params import Params
from agegender.paths import ProjectPaths
from agegender.stages.common import (
    AGE_GROUPS_FILE,
    EVALUATION_FILE,
    EXCLUSIONS_FILE,
    FAIRNESS_FILE,
    prediction_dirs,
    write_metrics,
)

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "evaluate"


def run(params: Params, paths: ProjectPaths) -> EvaluationResult:
    """Metric rows with CIs -> reports/evaluation.json, age groups, the refusal exclusion, the fairness view
    (reports/fairness.csv), metrics/evaluate.json."""
    data = load_prepared(params, paths)
    study = params.study
    targets = select_samples(data.samples, study.split, study.datasets)
    predictions = load_predictions(
        prediction_dirs(params, paths),
        data.samples["sample_id"],
        targets["sample_id"],
        describe_selection(study.split, study.datasets),
    )
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
        exclude_refused=cfg.exclude_refused,
        extra_metrics=assurance_metrics(cfg.assurance),
    )
    write_rows_json(result.rows, paths(EVALUATION_FILE), result.exclusion_counts)
    write_age_groups(result.age_groups, paths(AGE_GROUPS_FILE))
    write_exclusions(result.exclusions, paths(EXCLUSIONS_FILE))
    write_result_csv(result.fairness, paths(FAIRNESS_FILE))
    write_metrics(paths, NAME, flat_metrics(result.rows, views=VIEWS) | flat_exclusion_metrics(result.exclusion_counts))
    return result


def check(checker: Checker) -> None:
    """Nothing: the stage reads only earlier stages' outputs and its own params (validated when loaded)."""


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """None: the stage reads nothing from outside the project."""
    return {}
