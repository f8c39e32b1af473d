"""Evaluation as a file-to-file step: sample table + prediction tables -> metric rows.

The maths lives in `agegender.metrics`; this module reads and checks the files, picks the
evaluated samples, and writes the results in the shapes the CLI, DVC and the report use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agegender import metrics
from agegender.data.schema import read_table, validate_predictions, validate_samples
from agegender.errors import InputError

TABLE_SUFFIXES = (".parquet", ".csv")


@dataclass
class EvaluationResult:
    """Metric rows (one per dataset, input, model and view) and MAE per age group."""

    rows: pd.DataFrame
    age_groups: pd.DataFrame
    #: prediction rows of samples outside the evaluated split/data sets (ignored, reported)
    n_ignored: int = 0


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


def load_predictions(paths: Iterable[str | Path], known_ids: Iterable[str]) -> pd.DataFrame:
    """Read and validate prediction tables; the same (sample_id, model, input) in two files is an error.

    Raises:
        InputError: a missing or unreadable file, a bad row, an unknown sample id, or a duplicate.
    """
    known = pd.Index(known_ids)
    frames = []
    for f in prediction_files(paths):
        frame = validate_predictions(read_table(f), source=f, known_ids=known)
        frames.append(frame.assign(_source=str(f)))
    if not frames:
        raise InputError("no prediction files found", file=", ".join(map(str, paths)))
    table = pd.concat(frames, ignore_index=True)
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
        InputError: a missing file, a bad row (file, row and field named) or a model column naming another model.
    """
    frame = read_table(path)
    if "model" in frame.columns:
        other = frame["model"].astype("string") != name
        if other.any():
            row = int(other.to_numpy().nonzero()[0][0])
            raise InputError(
                f"model column says {frame['model'].iloc[row]!r}, but predict.external names this file {name!r}",
                file=path,
                row=row,
                field="model",
            )
    else:
        frame = frame.assign(model=name)
    if "status" not in frame.columns:
        frame = frame.assign(status="ok")
    table = validate_predictions(frame, source=path, known_ids=known_ids)
    if target_ids is not None:
        table = table[table["sample_id"].isin(target_ids)].reset_index(drop=True)
    return table


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
) -> EvaluationResult:
    """Evaluate validated tables: metric rows for every (dataset, input, model, view) and per-age-group MAE."""
    chosen = select_samples(samples, split, datasets)
    inside = predictions["sample_id"].isin(chosen["sample_id"])
    preds = predictions[inside].reset_index(drop=True)
    rows = metrics.evaluate(chosen, preds, ci=ci, n_resamples=n_resamples, ci_level=ci_level, seed=seed)
    groups = metrics.age_group_mae(chosen, preds, width=age_group_width)
    return EvaluationResult(rows=rows, age_groups=groups, n_ignored=int((~inside).sum()))


def evaluate_files(
    samples_path: str | Path, prediction_paths: Sequence[str | Path], **kwargs: object
) -> EvaluationResult:
    """`evaluate_tables` on files (CSV or parquet; folders of prediction files are expanded)."""
    samples = validate_samples(read_table(samples_path), source=samples_path)
    predictions = load_predictions(prediction_paths, samples["sample_id"])
    return evaluate_tables(samples, predictions, **kwargs)  # type: ignore[arg-type]


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


def write_rows_json(rows: pd.DataFrame, path: str | Path) -> Path:
    """Write `{"rows": [...]}` (the CLI's and the report's format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows_to_records(rows)}, indent=1, sort_keys=False) + "\n")
    return path


def read_rows_json(path: str | Path) -> pd.DataFrame:
    """Read what `write_rows_json` wrote."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return pd.DataFrame(data["rows"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"not an evaluation file ({exc})", file=path) from None
