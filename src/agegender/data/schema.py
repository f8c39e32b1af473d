"""The data contracts of DESIGN.md: sample table and prediction table, with validation.

Every reader produces a sample table and every model produces a prediction table; both are
validated here so that a bad row is reported with its file, row and field instead of
failing deep inside pandas or a metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.errors import InputError

GENDERS: tuple[str, ...] = ("male", "female")
INPUT_KINDS: tuple[str, ...] = ("face", "body", "face_body", "body_wo_face")
STATUSES: tuple[str, ...] = ("ok", "refused", "unparsed", "failed")
#: possible ages in years, for labels and predictions alike (the paper's prompt asks for 0 to 130; MiVOLO's and
#: the MLLM parser's outputs are kept inside it, so the project's own prediction tables always validate).
AGE_RANGE: tuple[float, float] = (0.0, 130.0)
#: possible values of `gender_score`, P(female).
SCORE_RANGE: tuple[float, float] = (0.0, 1.0)

FACE_BOX: tuple[str, ...] = ("face_x0", "face_y0", "face_x1", "face_y1")
PERSON_BOX: tuple[str, ...] = ("person_x0", "person_y0", "person_x1", "person_y1")

#: column -> pandas dtype of the sample table, in order.
SAMPLE_COLUMNS: dict[str, str] = {
    "sample_id": "string",
    "dataset": "string",
    "split": "string",
    "image_path": "string",
    "image_width": "Int64",
    "image_height": "Int64",
    **{c: "Float64" for c in FACE_BOX},
    **{c: "Float64" for c in PERSON_BOX},
    "age": "Float64",
    "age_class": "string",
    "gender": "string",
}

#: column -> pandas dtype of optional sample columns: kept (after `SAMPLE_COLUMNS`, in this order) when a table
#: has them, never added to one that has not. `subject`: a person's id where a data set has one (FG-NET), so
#: splits can keep each person in one split; `race`: the data set's own label (UTKFace, FairFace), for per-group
#: reports.
OPTIONAL_SAMPLE_COLUMNS: dict[str, str] = {
    "subject": "string",
    "race": "string",
}

#: column -> pandas dtype of the prediction table, in order.
PREDICTION_COLUMNS: dict[str, str] = {
    "sample_id": "string",
    "model": "string",
    "input": "string",
    "age_pred": "Float64",
    "gender_pred": "string",
    "gender_score": "Float64",
    "status": "string",
    "raw_answer": "string",
}

#: columns a prediction file must have; the others are filled with nulls when absent.
PREDICTION_REQUIRED: tuple[str, ...] = ("sample_id", "model", "input", "age_pred", "gender_pred", "status")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a parquet or CSV table, with a clear error for a missing or unreadable file.

    Args:
        path: a `.parquet` or `.csv` file.

    Returns:
        The table as read (no validation).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path)
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, keep_default_na=True, na_values=[""])
    except Exception as exc:  # pandas/pyarrow raise many types; the user needs the file name
        raise InputError(f"cannot be read as a table ({type(exc).__name__}: {exc})", file=path) from exc
    raise InputError("unknown table format (expected .parquet or .csv)", file=path)


def _first_bad(mask: np.ndarray | pd.Series, frame: pd.DataFrame) -> int | str:
    """Return a row locator for the first True in mask: the sample id if present, else the 1-based row."""
    pos = int(np.flatnonzero(np.asarray(mask, dtype=bool))[0])
    if "sample_id" in frame.columns and pd.notna(frame["sample_id"].iloc[pos]):
        return f"{pos + 1} (sample_id {frame['sample_id'].iloc[pos]})"
    return pos + 1


def _coerce(frame: pd.DataFrame, columns: dict[str, str], source: str | Path | None) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for col, dtype in columns.items():
        if col not in frame.columns:
            out[col] = pd.Series(pd.NA, index=frame.index, dtype=dtype)
            continue
        try:
            if dtype == "Float64":
                out[col] = pd.to_numeric(frame[col], errors="raise").astype("Float64")
            elif dtype == "Int64":
                out[col] = pd.to_numeric(frame[col], errors="raise").astype("Int64")
            else:
                values = frame[col].astype("object")
                out[col] = values.where(values.notna(), pd.NA).map(lambda v: v if v is pd.NA else str(v))
                out[col] = out[col].astype("string")
        except (ValueError, TypeError) as exc:
            bad = pd.to_numeric(frame[col], errors="coerce").isna() & frame[col].notna()
            row = _first_bad(bad, frame) if bad.any() else None
            raise InputError(f"cannot be read as {dtype}: {exc}", file=source, row=row, field=col) from exc
    return out.reset_index(drop=True)


def _check_boxes(df: pd.DataFrame, cols: tuple[str, ...], source: str | Path | None) -> None:
    x0, y0, x1, y1 = (df[c] for c in cols)
    present = x0.notna() | y0.notna() | x1.notna() | y1.notna()
    partial = present & (x0.isna() | y0.isna() | x1.isna() | y1.isna())
    if partial.any():
        raise InputError("box has some coordinates missing", file=source, row=_first_bad(partial, df), field=cols[0])
    full = present.fillna(False).to_numpy(dtype=bool)
    if not full.any():
        return
    for lo, hi in ((cols[0], cols[2]), (cols[1], cols[3])):
        bad = full & ~(df[lo] < df[hi]).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            raise InputError(f"box needs {lo} < {hi}", file=source, row=_first_bad(bad, df), field=lo)
    neg = full & ((x0 < 0) | (y0 < 0)).fillna(False).to_numpy(dtype=bool)
    if neg.any():
        raise InputError(
            "box lies outside the image (negative coordinate)", file=source, row=_first_bad(neg, df), field=cols[0]
        )
    for hi, size in ((cols[2], "image_width"), (cols[3], "image_height")):
        limit = df[size]
        bad = full & (df[hi] > limit).fillna(False).to_numpy(dtype=bool)
        if bad.any():
            raise InputError(
                f"box lies outside the image ({hi} > {size})", file=source, row=_first_bad(bad, df), field=hi
            )


def validate_samples(frame: pd.DataFrame, source: str | Path | None = None) -> pd.DataFrame:
    """Validate and normalise a sample table (DESIGN.md), returning it with canonical dtypes.

    Checks: required columns, unique non-null sample ids, boxes with x0 < x1 and y0 < y1 inside
    the image (when its size is known), ages in [0, 130], gender in {male, female}.

    Args:
        frame: the table to check.
        source: the file it came from, named in errors.

    Returns:
        A new frame with the columns of `SAMPLE_COLUMNS`, in order, then those of `OPTIONAL_SAMPLE_COLUMNS`
        that `frame` has; other columns are dropped.

    Raises:
        InputError: naming the file, row and field of the first problem found.
    """
    for col in ("sample_id", "dataset", "split", "image_path"):
        if col not in frame.columns:
            raise InputError("required column is missing", file=source, field=col)
    optional = {c: t for c, t in OPTIONAL_SAMPLE_COLUMNS.items() if c in frame.columns}
    df = _coerce(frame, {**SAMPLE_COLUMNS, **optional}, source)
    for col in ("sample_id", "dataset", "split", "image_path"):
        if df[col].isna().any():
            raise InputError("value is missing", file=source, row=_first_bad(df[col].isna(), df), field=col)
    dup = df["sample_id"].duplicated(keep="first")
    if dup.any():
        raise InputError("duplicate sample_id", file=source, row=_first_bad(dup, df), field="sample_id")
    _check_boxes(df, FACE_BOX, source)
    _check_boxes(df, PERSON_BOX, source)
    age = df["age"]
    bad_age = (age.notna() & ((age < AGE_RANGE[0]) | (age > AGE_RANGE[1]))).fillna(False)
    if bad_age.any():
        raise InputError(f"age outside {list(AGE_RANGE)}", file=source, row=_first_bad(bad_age, df), field="age")
    bad_gender = df["gender"].notna() & ~df["gender"].isin(GENDERS)
    if bad_gender.any():
        raise InputError(
            f"gender must be one of {list(GENDERS)}", file=source, row=_first_bad(bad_gender, df), field="gender"
        )
    return df


def validate_predictions(
    frame: pd.DataFrame, source: str | Path | None = None, known_ids: Iterable[str] | None = None
) -> pd.DataFrame:
    """Validate and normalise a prediction table (DESIGN.md).

    Checks: required columns, input kind and status from the fixed vocabularies, gender_pred in
    {male, female} or null, age_pred finite and within `AGE_RANGE`, gender_score finite and within
    [0, 1], no duplicate (sample_id, model, input), and, when `known_ids` is given, that every sample
    id exists in the sample table. Every reader of prediction tables (evaluation, external tables,
    shard merges) and every producer (the MLLM runner, the specialized models) calls this, so an
    impossible value is reported once, with file, row and field, instead of being scored.

    Args:
        frame: the table to check.
        source: the file it came from, named in errors.
        known_ids: sample ids of the sample table.

    Returns:
        A new frame with exactly the columns of `PREDICTION_COLUMNS`, in order.

    Raises:
        InputError: naming the file, row and field of the first problem found.
    """
    for col in PREDICTION_REQUIRED:
        if col not in frame.columns:
            raise InputError("required column is missing", file=source, field=col)
    df = _coerce(frame, PREDICTION_COLUMNS, source)
    for col in ("sample_id", "model", "input", "status"):
        if df[col].isna().any():
            raise InputError("value is missing", file=source, row=_first_bad(df[col].isna(), df), field=col)
    for col, vocab in (("input", INPUT_KINDS), ("status", STATUSES)):
        bad = ~df[col].isin(vocab)
        if bad.any():
            value = df[col].iloc[int(np.flatnonzero(bad.to_numpy(dtype=bool))[0])]
            raise InputError(f"{value!r} is not one of {list(vocab)}", file=source, row=_first_bad(bad, df), field=col)
    bad = df["gender_pred"].notna() & ~df["gender_pred"].isin(GENDERS)
    if bad.any():
        raise InputError(
            f"gender_pred must be one of {list(GENDERS)} or empty",
            file=source,
            row=_first_bad(bad, df),
            field="gender_pred",
        )
    for col, (lo, hi), unit in (("age_pred", AGE_RANGE, " years"), ("gender_score", SCORE_RANGE, "")):
        values = df[col].astype("float64")  # NA -> NaN: missing values are allowed and pass both checks
        present = df[col].notna().to_numpy(dtype=bool)
        bad = present & ~np.isfinite(values.to_numpy())
        if bad.any():
            raise InputError(f"{col} is not a finite number", file=source, row=_first_bad(bad, df), field=col)
        bad = present & ((values < lo) | (values > hi)).to_numpy(dtype=bool)
        if bad.any():
            value = values.iloc[int(np.flatnonzero(bad)[0])]
            raise InputError(
                f"{col} {value:g} is outside [{lo:g}, {hi:g}]{unit}", file=source, row=_first_bad(bad, df), field=col
            )
    dup = df.duplicated(["sample_id", "model", "input"], keep="first")
    if dup.any():
        raise InputError(
            "duplicate row for (sample_id, model, input)", file=source, row=_first_bad(dup, df), field="sample_id"
        )
    if known_ids is not None:
        unknown = ~df["sample_id"].isin(pd.Index(known_ids))
        if unknown.any():
            raise InputError(
                f"{int(unknown.sum())} sample ids are not in the sample table",
                file=source,
                row=_first_bad(unknown, df),
                field="sample_id",
            )
    return df


def empty_predictions() -> pd.DataFrame:
    """Return an empty prediction table with the canonical dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in PREDICTION_COLUMNS.items()})
