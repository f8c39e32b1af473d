"""Evaluation as a file-to-file step: sample table + prediction tables -> metric rows.

The maths lives in `agegender.metrics`; this module reads and checks the files, picks the
evaluated samples, and writes the results in the shapes the CLI, DVC and the report use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agegender import exclusion, metrics
from agegender.data.schema import _first_bad, read_table, validate_predictions, validate_samples
from agegender.errors import InputError
from agegender.files import atomic_write_text
from agegender.params import RefusalExclusion

TABLE_SUFFIXES = (".parquet", ".csv")


@dataclass
class EvaluationResult:
    """Metric rows (one per dataset, input, model and view), MAE per age group, the refusal exclusion, and the
    fairness view (`agegender.metrics.group_metrics`)."""

    rows: pd.DataFrame
    age_groups: pd.DataFrame
    #: prediction rows of samples outside the evaluated split/data sets (ignored, reported)
    n_ignored: int = 0
    #: the answers that removed samples (`agegender.exclusion.EXCLUSION_COLUMNS`)
    exclusions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({c: pd.Series(dtype="object") for c in exclusion.EXCLUSION_COLUMNS})
    )
    #: drawn, excluded and kept samples per data set with an exclusion (`agegender.exclusion.COUNT_COLUMNS`)
    exclusion_counts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(exclusion.COUNT_COLUMNS)))
    #: age MAE and gender accuracy per gender and race group (`agegender.metrics.FAIRNESS_COLUMNS`)
    fairness: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(metrics.FAIRNESS_COLUMNS)))


def prediction_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (every .parquet/.csv below a folder, sorted) into prediction files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in TABLE_SUFFIXES and f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            raise InputError("file not found", file=p)
    return files


def load_predictions(
    paths: Iterable[str | Path],
    known_ids: Iterable[str],
    target_ids: Iterable[str] | None = None,
    target: str = "the evaluated samples",
) -> pd.DataFrame:
    """Read and validate prediction tables; the same (sample_id, model, input) in two files is an error.

    Every row goes through `validate_predictions` (vocabularies, ages in `AGE_RANGE`, scores in [0, 1]). A
    file without rows is an error rather than a model that silently drops out of the results, and so are
    predictions none of which is for an evaluated sample: both mean a wrong file or a run that answered
    nothing, and evaluating them would replace earlier results with empty ones.

    Args:
        paths: prediction tables, or folders of them.
        known_ids: every sample id of the sample table.
        target_ids: the evaluated samples' ids; when given, at least one prediction must be for one of them.
        target: those samples in words, for the error (e.g. `"split 'test'"`).

    Raises:
        InputError: a missing, unreadable or header-only file, a bad row, an unknown sample id, a duplicate, or
            (with `target_ids`) no prediction for an evaluated sample.
    """
    paths = list(paths)
    known = pd.Index(known_ids)
    frames = []
    for f in prediction_files(paths):
        frame = validate_predictions(read_table(f), source=f, known_ids=known)
        if frame.empty:
            raise InputError("has no prediction rows (header only): nothing to evaluate", file=f)
        frames.append(frame.assign(_source=str(f)))
    if not frames:
        raise InputError("no prediction files found", file=", ".join(map(str, paths)))
    table = pd.concat(frames, ignore_index=True)
    if target_ids is not None and not table["sample_id"].isin(pd.Index(target_ids)).any():
        files = sorted(set(table["_source"]))
        raise InputError(
            f"none of the {len(table)} predictions is for a sample of {target}: nothing to evaluate",
            file=", ".join(files),
            field="sample_id",
        )
    dup = table.duplicated(["sample_id", "model", "input"], keep=False)
    if dup.any():
        first = table[dup].iloc[0]
        others = sorted(set(table.loc[dup & (table["sample_id"] == first["sample_id"]), "_source"]))
        raise InputError(
            f"({first['sample_id']}, {first['model']}, {first['input']}) is predicted in several files: {others}",
            file=first["_source"],
            field="sample_id",
        )
    return table.drop(columns="_source")


def read_external_predictions(
    path: Path, name: str, known_ids: pd.Series | None, target_ids: pd.Series | None = None
) -> pd.DataFrame:
    """Predictions another tool made (prediction-table format), checked and named `name`.

    Args:
        path: parquet or CSV with `sample_id, input, age_pred, gender_pred` (+ `status`, `gender_score`,
            `raw_answer`; `model` optional: when present it must be `name` on every row).
        name: the model name the rows are reported under.
        known_ids: every sample id of the sample table (an unknown id is an error: the ids must be ours); None
            skips that check.
        target_ids: keep only these samples (the study's); None keeps all.

    Raises:
        InputError: a missing file, a bad row (file, row and field named), a model column naming another model,
            no rows, or (with `target_ids`) no row for one of those samples: an empty table would only make the
            model drop out of the results unnoticed.
    """
    frame = read_table(path)
    if "model" in frame.columns:
        other = (frame["model"].astype("string") != name).fillna(True)
        if other.any():
            first = frame["model"].iloc[int(other.to_numpy().nonzero()[0][0])]
            raise InputError(
                f"model column says {first!r}, but predict.external names this file {name!r}",
                file=path,
                row=_first_bad(other, frame),
                field="model",
            )
    else:
        frame = frame.assign(model=name)
    if "status" not in frame.columns:
        frame = frame.assign(status="ok")
    table = validate_predictions(frame, source=path, known_ids=known_ids)
    if table.empty:
        raise InputError("has no prediction rows (header only)", file=path)
    if target_ids is not None:
        inside = table["sample_id"].isin(target_ids)
        if not inside.any():
            raise InputError(
                f"none of the {len(table)} predictions is for a sample the study evaluates",
                file=path,
                field="sample_id",
            )
        table = table[inside].reset_index(drop=True)
    return table


def check_predictions_file(path: Path, model: str) -> list[str]:
    """The pre-flight check of an external prediction table (`agegender check`): its problem as a line, or none.

    The same reading and checks as the predict stage's `read_external_predictions`, so that check and stage
    cannot disagree; the sample ids are checked by the stage only, against the sample table it has.

    Args:
        path: a `.parquet` or `.csv` file.
        model: the model name its `model` column must hold (when it has one).

    Returns:
        One line per problem (the first the reader finds).
    """
    try:
        read_external_predictions(path, model, None)
    except InputError as exc:
        return [str(exc)]
    return []


def select_samples(samples: pd.DataFrame, split: str | None, datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """The evaluated samples: one split (None = all) of the given data sets (None = all)."""
    keep = pd.Series(True, index=samples.index)
    if split is not None:
        keep &= samples["split"] == split
    if datasets:
        missing = sorted(set(datasets) - set(samples["dataset"].unique()))
        if missing:
            raise InputError(f"data sets {missing} are not in the sample table")
        keep &= samples["dataset"].isin(list(datasets))
    return samples[keep].reset_index(drop=True)


def evaluate_tables(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    split: str | None = "test",
    datasets: Sequence[str] | None = None,
    ci: bool = False,
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    age_group_width: float = 5.0,
    exclude_refused: Mapping[str, RefusalExclusion] | None = None,
    extra_metrics: Sequence[metrics.MetricDef] = (),
) -> EvaluationResult:
    """Evaluate validated tables: metric rows for every (dataset, input, model, view) and per-age-group MAE.

    With `exclude_refused`, the samples each named model refused leave their data set for every model (the
    ``kept`` view, `agegender.exclusion`), and the age groups are those of the ``kept`` view: the paper's
    figure 3 is drawn on NanoLAGENDA after the removal (it equals ``answered`` where nothing is excluded). The
    fairness view is in that view too, with intervals whatever `ci` says (they are what it is read for).
    `extra_metrics` add columns to the rows (the age-assurance rates, `agegender.assurance.assurance_metrics`).
    """
    study = _study(samples, predictions, split, datasets, exclude_refused)
    chosen, preds, excluded = study.samples, study.predictions, study.excluded
    rows = metrics.evaluate(
        chosen,
        preds,
        ci=ci,
        n_resamples=n_resamples,
        ci_level=ci_level,
        seed=seed,
        excluded=excluded,
        extra_metrics=extra_metrics,
    )
    groups = metrics.age_group_mae(chosen, preds, width=age_group_width, view="kept", excluded=excluded)
    fairness = metrics.group_metrics(
        chosen, preds, view="kept", excluded=excluded, n_resamples=n_resamples, ci_level=ci_level, seed=seed
    )
    return EvaluationResult(
        rows=rows,
        age_groups=groups,
        n_ignored=study.n_ignored,
        exclusions=study.removed,
        exclusion_counts=exclusion.exclusion_counts(chosen, study.removed, study.rules),
        fairness=fairness,
    )


@dataclass
class _Study:
    """The evaluated samples, their predictions and the refusal exclusion laid on them."""

    samples: pd.DataFrame
    predictions: pd.DataFrame
    rules: dict[str, RefusalExclusion]
    removed: pd.DataFrame
    excluded: dict[str, frozenset[str]]
    n_ignored: int


def _study(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    split: str | None,
    datasets: Sequence[str] | None,
    exclude_refused: Mapping[str, RefusalExclusion] | None,
) -> _Study:
    """Select the evaluated samples and their predictions and apply the refusal exclusion: what `evaluate_tables`
    scores and `versus_best_tables` compares, so that both stand on the same samples."""
    chosen = select_samples(samples, split, datasets)
    inside = predictions["sample_id"].isin(chosen["sample_id"])
    preds = predictions[inside].reset_index(drop=True)
    studied = set(chosen["dataset"])  # an exclusion of a data set outside the study has nothing to remove
    rules = {d: rule for d, rule in (exclude_refused or {}).items() if d in studied}
    removed = exclusion.refusal_exclusions(chosen, preds, rules)
    excluded = exclusion.excluded_ids(removed, rules)
    return _Study(chosen, preds, rules, removed, excluded, int((~inside).sum()))


def versus_best_tables(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    split: str | None = "test",
    datasets: Sequence[str] | None = None,
    exclude_refused: Mapping[str, RefusalExclusion] | None = None,
    metric_names: Sequence[str] = ("age_mae",),
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`agegender.metrics.versus_best` on the samples `evaluate_tables` scores, in the ``answered`` view and, where
    a data set has a refusal exclusion, the ``kept`` view: the two views the report's tables show.

    Returns:
        `agegender.metrics.VERSUS_BEST_COLUMNS` rows of both views (``kept`` rows only for the data sets with an
        exclusion, as `evaluate` gives them).
    """
    study = _study(samples, predictions, split, datasets, exclude_refused)
    settings = {"metrics": metric_names, "n_resamples": n_resamples, "ci_level": ci_level, "seed": seed}
    frames = [metrics.versus_best(study.samples, study.predictions, **settings)]  # type: ignore[arg-type]
    if study.rules:
        kept = metrics.versus_best(
            study.samples,
            study.predictions,
            view="kept",
            excluded=study.excluded,
            **settings,  # type: ignore[arg-type]
        )
        frames.append(kept[kept["dataset"].isin(list(study.rules))])
    return pd.concat(frames, ignore_index=True)


def evaluate_files(
    samples_path: str | Path, prediction_paths: Sequence[str | Path], **kwargs: object
) -> EvaluationResult:
    """`evaluate_tables` on files (CSV or parquet; folders of prediction files are expanded)."""
    samples = validate_samples(read_table(samples_path), source=samples_path)
    split = kwargs.get("split", "test")
    datasets = kwargs.get("datasets")
    chosen = select_samples(samples, split, datasets)  # type: ignore[arg-type]
    predictions = load_predictions(
        prediction_paths, samples["sample_id"], chosen["sample_id"], describe_selection(split, datasets)
    )
    return evaluate_tables(samples, predictions, **kwargs)  # type: ignore[arg-type]


def describe_selection(split: object, datasets: Sequence[str] | None) -> str:
    """The evaluated samples in words, for errors: `"split 'test' of data sets ['a']"`, `"any split"`."""
    words = "any split" if split is None else f"split {split!r}"
    return words + (f" of data sets {list(datasets)}" if datasets else "")


def _clean(value: object) -> object:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def rows_to_records(rows: pd.DataFrame) -> list[dict]:
    """JSON-ready records (NaN/NA -> null, numpy scalars -> Python)."""
    return [{k: _clean(v) for k, v in rec.items()} for rec in rows.to_dict(orient="records")]


def write_rows_json(rows: pd.DataFrame, path: str | Path, exclusion_counts: pd.DataFrame | None = None) -> Path:
    """Write `{"rows": [...]}` (the CLI's and the report's format), atomically.

    With refusal exclusions, their counts go under `"exclusions"` (`agegender.exclusion.COUNT_COLUMNS`), so the
    report states drawn, excluded and kept beside the rows they produced; without any the file is as before.
    """
    data: dict[str, list[dict]] = {"rows": rows_to_records(rows)}
    if exclusion_counts is not None and len(exclusion_counts):
        data["exclusions"] = rows_to_records(exclusion_counts)
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def write_age_groups(groups: pd.DataFrame, path: str | Path) -> Path:
    """Write the MAE-per-age-group table as CSV (`write_result_csv`)."""
    return write_result_csv(groups, path)


def write_result_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a result table as CSV, atomically; 6 significant digits, so that the same evaluation gives the same
    bytes on machines whose float rounding differs in the last digits."""
    return atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def read_rows_json(path: str | Path) -> pd.DataFrame:
    """Read the rows `write_rows_json` wrote."""
    return pd.DataFrame(_read_evaluation(path)["rows"])


def read_exclusion_counts(path: str | Path) -> pd.DataFrame:
    """Read the exclusion counts `write_rows_json` wrote (no rows when the evaluation excluded nothing)."""
    records = _read_evaluation(path).get("exclusions", [])
    return pd.DataFrame.from_records(records, columns=list(exclusion.COUNT_COLUMNS))


def _read_evaluation(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        data["rows"]  # noqa: B018 - a file without rows is not an evaluation
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not an evaluation file ({exc})", file=path) from None
    return data
