"""Looking into one run's results: the worst errors, disagreements, unanswered prompts, errors per group.

`notebooks/explore.ipynb` (not a pipeline stage) calls these functions on whatever the pipeline has produced so far;
they read the stages' outputs and write nothing. Every table is a plain DataFrame so that a person can sort, filter
and plot it further in Jupyter; the metric maths stays in `agegender.metrics`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from agegender import metrics
from agegender.data.crops import iter_crops
from agegender.data.prepare import load_prepared
from agegender.data.schema import STATUSES
from agegender.evaluate import load_predictions, read_rows_json, select_samples
from agegender.stages.common import EVALUATION_FILE, prediction_dirs, setup

#: the crop a prediction of each input kind is shown with (`face_body` models see both: the person crop shows more)
SHOWN_CROP: dict[str, str] = {"face": "face", "body": "body", "face_body": "body", "body_wo_face": "body_wo_face"}
#: the sample columns a scored prediction carries (`race` only where the data set labels it)
SAMPLE_FIELDS: tuple[str, ...] = ("dataset", "age", "gender", "race")


@dataclass
class RunOutputs:
    """What the pipeline produced so far, restricted to the samples the study evaluates.

    Attributes:
        samples: the evaluated samples (`study.split`, `study.datasets`).
        predictions: every prediction table found for those samples (stages not run yet are simply absent).
        rows: the evaluation rows of `reports/evaluation.json`, or None before `evaluate` ran.
        masked: the reader's side table of persons that exist only to be masked (for `body_wo_face` crops).
        image_roots: data set -> image folder.
        n_resamples: bootstrap resamples of the study (`evaluate.n_resamples`), for paired differences.
        ci_level: the study's confidence level.
        seed: the study's bootstrap seed.
    """

    samples: pd.DataFrame
    predictions: pd.DataFrame
    rows: pd.DataFrame | None = None
    masked: pd.DataFrame | None = None
    image_roots: Mapping[str, Path] = field(default_factory=dict)
    n_resamples: int = 1000
    ci_level: float = 0.95
    seed: int = 0


def load_run(root: str | Path | None = None, params_file: str | Path = "params.yaml") -> RunOutputs:
    """Load a project's samples, every prediction table that exists and the evaluation rows, if any.

    Args:
        root: the project root, or None for the folder holding dvc.yaml above the working directory.
        params_file: the params file, relative to the root.

    Raises:
        InputError: no prepared data yet, or no prediction table at all (run the pipeline first).
    """
    params, paths = setup(root, params_file)
    data = load_prepared(params, paths)
    samples = select_samples(data.samples, params.study.split, params.study.datasets)
    # a stage that has not run yet has no folder: explore what exists rather than fail
    predictions = load_predictions([d for d in prediction_dirs(params, paths) if d.is_dir()], data.samples["sample_id"])
    predictions = predictions[predictions["sample_id"].isin(samples["sample_id"])].reset_index(drop=True)
    evaluation = paths(EVALUATION_FILE)
    cfg = params.evaluate
    return RunOutputs(
        samples=samples.reset_index(drop=True),
        predictions=predictions,
        rows=read_rows_json(evaluation) if evaluation.is_file() else None,
        masked=data.masked,
        image_roots=data.image_roots(paths),
        n_resamples=cfg.n_resamples,
        ci_level=cfg.ci_level,
        seed=cfg.seed,
    )


def scored(samples: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Every prediction with its sample's labels, its absolute age error and whether its gender is right.

    Returns:
        The prediction columns, then `dataset, age, gender` (`age` renamed `age_true`, `gender` `gender_true`;
        `race` where the samples have it), `abs_error` (null without an answered age or a label) and
        `gender_correct` (null without an answered gender or a label).
    """
    fields = [c for c in SAMPLE_FIELDS if c in samples.columns]
    table = predictions.merge(samples[["sample_id", *fields]], on="sample_id", how="inner", validate="many_to_one")
    table = table.rename(columns={"age": "age_true", "gender": "gender_true"})
    answered = table["status"] == "ok"
    age_pred, age_true = table["age_pred"].astype("Float64"), table["age_true"].astype("Float64")
    table["abs_error"] = (age_pred - age_true).abs().where(answered)
    known = answered & table["gender_pred"].notna() & table["gender_true"].notna()
    table["gender_correct"] = (table["gender_pred"] == table["gender_true"]).astype("boolean").where(known)
    return table


def worst_errors(table: pd.DataFrame, n: int = 5, dataset: str | None = None) -> pd.DataFrame:
    """The `n` largest age errors of every (data set, model, input): where a model goes most wrong.

    Args:
        table: a `scored` table.
        n: rows per (data set, model, input).
        dataset: only this data set (None: all), to keep a sheet of their crops small.
    """
    rated = table[table["abs_error"].notna() & ((table["dataset"] == dataset) if dataset is not None else True)]
    ordered = rated.sort_values(["dataset", "model", "input", "abs_error", "sample_id"], ascending=[1, 1, 1, 0, 1])
    return ordered.groupby(["dataset", "model", "input"], sort=False).head(n).reset_index(drop=True)


@dataclass(frozen=True)
class Comparison:
    """Two models on one (data set, input): what the notebook's disagreement and paired-difference cells compare."""

    dataset: str
    input_kind: str
    model_a: str
    model_b: str


def choose_comparison(
    table: pd.DataFrame,
    dataset: str | None = None,
    input_kind: str | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
) -> Comparison | None:
    """Fill what the user left open: the (data set, input) most models answered on, and its first two models.

    Args:
        table: a `scored` table.
        dataset, input_kind, model_a, model_b: the user's choices; None picks (sorted order breaks ties).

    Returns:
        The comparison, or None when no (data set, input) has answers of two models.
    """
    answered = table[table["status"] == "ok"]
    if dataset is not None:
        answered = answered[answered["dataset"] == dataset]
    if input_kind is not None:
        answered = answered[answered["input"] == input_kind]
    models = answered.groupby(["dataset", "input"])["model"].agg(lambda m: sorted(set(m)))
    models = models[models.map(len) >= 2]
    if models.empty:
        return None
    ranked = sorted(models.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    (ds, inp), names = ranked[0]
    first = model_a if model_a is not None else names[0]
    second = model_b if model_b is not None else next(m for m in names if m != first)
    return Comparison(str(ds), str(inp), str(first), str(second))


def disagreements(table: pd.DataFrame, model_a: str, model_b: str, n: int = 10) -> pd.DataFrame:
    """The samples on which two models' age answers differ most (same sample, same input, both answered).

    Returns:
        `sample_id, dataset, input, age_true, age_a, age_b, gap` (|age_a - age_b|), largest gap first.
    """
    keys = ["sample_id", "dataset", "input"]
    answered = table[table["status"] == "ok"]
    of_a, of_b = answered["model"] == model_a, answered["model"] == model_b
    a = answered.loc[of_a, [*keys, "age_true", "age_pred"]].rename(columns={"age_pred": "age_a"})
    b = answered.loc[of_b, [*keys, "age_pred"]].rename(columns={"age_pred": "age_b"})
    pairs = a.merge(b, on=keys, how="inner", validate="one_to_one")
    pairs["gap"] = (pairs["age_a"] - pairs["age_b"]).abs()
    return pairs.sort_values(["gap", "sample_id"], ascending=[False, True]).head(n).reset_index(drop=True)


def unanswered(table: pd.DataFrame) -> pd.DataFrame:
    """Refusals, unparsed answers and failures with the model's raw text: what the parser could not use and why.

    Returns:
        `dataset, model, input, sample_id, status, raw_answer`, by model, input and sample.
    """
    columns = ["dataset", "model", "input", "sample_id", "status", "raw_answer"]
    rest = table.loc[table["status"] != "ok", columns]
    return rest.sort_values(["dataset", "model", "input", "sample_id"]).reset_index(drop=True)


def status_counts(table: pd.DataFrame) -> pd.DataFrame:
    """How many predictions of every (data set, model, input) have each status (one column per status)."""
    counts = table.groupby(["dataset", "model", "input", "status"]).size().unstack("status", fill_value=0)
    return counts.reindex(columns=[s for s in STATUSES if s in counts.columns]).reset_index()


def error_by(run: RunOutputs, attribute: str) -> pd.DataFrame:
    """Age MAE and gender accuracy of every (data set, input, model) per group of a sample column, with intervals.

    `metrics.group_metrics` on what each model answered (the `answered` view) with the study's bootstrap: the
    evaluate stage's `reports/fairness.csv` is the same computation in the `kept` view, after the refusal exclusion.

    Args:
        run: `load_run`'s outputs.
        attribute: `gender`, `race` (where a data set labels it) or any other sample column.

    Returns:
        `metrics.FAIRNESS_COLUMNS`; no rows for an attribute no data set labels.
    """
    return metrics.group_metrics(
        run.samples,
        run.predictions,
        attributes=(attribute,),
        n_resamples=run.n_resamples,
        ci_level=run.ci_level,
        seed=run.seed,
    )


def error_by_age_group(run: RunOutputs, width: float = 5.0) -> pd.DataFrame:
    """Age MAE per true-age group of every (data set, model, input) on what each model answered.

    `metrics.age_group_mae`'s `answered` view: the evaluate stage's `reports/age_groups.csv` (figure 3) is the
    `kept` view, after the refusal exclusion, so that the two differ exactly where a refusal removed samples.
    """
    return metrics.age_group_mae(run.samples, run.predictions, width=width)


def paired_differences(run: RunOutputs, dataset: str, input_kind: str, metric: str = "age_mae") -> pd.DataFrame:
    """Every pair of models on one (data set, input): the paired bootstrap difference of `metric` with its interval.

    Both models are scored on the samples both answered, so the difference is not a difference of sample sets;
    the interval and p-value come from `metrics.paired_bootstrap` with the study's resamples, level and seed.

    Returns:
        `model_a, model_b`, then `paired_bootstrap`'s fields (`metric, n, value_a, value_b, diff, ci_low, ci_high,
        p_value`); no rows when fewer than two models predicted this (data set, input).
    """
    preds = run.predictions.merge(run.samples[["sample_id", "dataset"]], on="sample_id")
    models = sorted(preds.loc[(preds["dataset"] == dataset) & (preds["input"] == input_kind), "model"].unique())
    results = [
        {"model_a": a, "model_b": b}
        | metrics.paired_bootstrap(
            run.samples,
            run.predictions,
            dataset=dataset,
            input=input_kind,
            model_a=a,
            model_b=b,
            metric=metric,
            n_resamples=run.n_resamples,
            ci_level=run.ci_level,
            seed=run.seed,
        )
        for a, b in itertools.combinations(models, 2)
    ]
    columns = ["model_a", "model_b", "metric", "n", "value_a", "value_b", "diff", "ci_low", "ci_high", "p_value"]
    return pd.DataFrame(results, columns=columns)


def crops_of(run: RunOutputs, table: pd.DataFrame) -> list[np.ndarray | None]:
    """The crop each row of `table` (`sample_id, input`) was predicted from, cut by the pipeline's crop code.

    Rows are grouped by the crop kind their input shows (`SHOWN_CROP`); `body_wo_face` masks every face of the
    image, as the pipeline does. A sample without the box its input needs gets None.
    """
    by_id = run.samples.set_index("sample_id", drop=False)
    out: list[np.ndarray | None] = [None] * len(table)
    kinds = [SHOWN_CROP[str(i)] for i in table["input"]]
    for kind in sorted(set(kinds)):
        positions = [p for p, k in enumerate(kinds) if k == kind]
        wanted = by_id.loc[table["sample_id"].iloc[positions].astype(str)]
        crops = iter_crops(wanted, run.masked, run.image_roots, kind, context=run.samples)
        for pos, (_, crop) in zip(positions, crops, strict=True):
            out[pos] = crop
    return out


def crop_sheet(run: RunOutputs, table: pd.DataFrame, captions: Sequence[str], columns: int = 6) -> Image.Image:
    """A contact sheet of the rows' crops, each with its caption (e.g. true age and the model's answer).

    Returns a PIL image, which Jupyter shows inline; a row without a crop shows its caption over an empty cell.
    """
    crops = crops_of(run, table)
    n = max(1, len(crops))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.0 * cols, 2.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, crop, caption in itertools.zip_longest(axes, crops, captions):
        ax.set_axis_off()
        if crop is not None:
            ax.imshow(crop)
        if caption is not None:
            ax.set_title(caption, fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return Image.open(buffer)


def worst_error_captions(table: pd.DataFrame) -> list[str]:
    """One caption per `worst_errors` row: model, input, true and predicted age."""
    return [
        f"{r.model} · {r.input}\ntrue {r.age_true:g}, said {r.age_pred:.1f}"
        for r in table[["model", "input", "age_true", "age_pred"]].itertuples()
    ]


__all__ = [
    "Comparison",
    "RunOutputs",
    "choose_comparison",
    "crop_sheet",
    "crops_of",
    "disagreements",
    "error_by",
    "error_by_age_group",
    "load_run",
    "paired_differences",
    "scored",
    "status_counts",
    "unanswered",
    "worst_error_captions",
    "worst_errors",
]
