"""Readers that turn a data set's annotation files into the sample table of DESIGN.md.

Two formats:

- `read_mivolo`: the MiVOLO authors' annotation CSVs (LAGENDA, IMDB-clean, UTKFace, FairFace, Adience,
  CACD, AgeDB): `img_name, age, gender, face_x0..face_y1[, person_x0..person_y1]`, -1 = missing.
- `read_folder`: a folder a user collects (Wild104-style): `image, age, gender[, boxes]`.

The native formats of UTKFace, FG-NET and FairFace (`utkface`, `fgnet`, `fairface`) live in `native`, built on
`read_labels` / `read_label_tables`.

Both check every row and either raise `InputError` (file, 1-based data row, column) or, with
`on_bad_row="skip"`, drop the row and count it per reason in the report. Image sizes come from the
image headers, and each distinct image is opened once and cheaply decoded (`crops.image_sizes(decode=True)`, in
threads; not again while the file is unchanged), so that a truncated or empty file is a bad row
(`unreadable_image`) here rather than a failure later.

Readers are registered by name in `agegender.data.registry`, which params.yaml's `reader` looks up. A reader
may carry a `check(root, **options) -> list[str]` that `registry.check_dataset` runs before any work starts
(`agegender check`): files, headers and every named image (present and decoding: `image_problems`), every problem
at once (`check_mivolo`, `check_folder`).
"""

from __future__ import annotations

import csv as csv_module
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from agegender.data.crops import image_sizes
from agegender.data.schema import AGE_RANGE, FACE_BOX, OPTIONAL_SAMPLE_COLUMNS, PERSON_BOX, validate_samples
from agegender.errors import InputError

#: Reasons a row can be skipped for; each has a `skipped_<reason>` counter in the report.
SKIP_REASONS: tuple[str, ...] = (
    "missing_image_name",
    "bad_age",
    "bad_gender",
    "bad_box",
    "missing_image",
    "unreadable_image",
    "no_box",
    "degenerate_box",
    "no_label",
    "duplicate_id",
)

#: Columns of the side table of persons that exist only to be masked out.
MASKED_COLUMNS: dict[str, str] = {
    "dataset": "string",
    "split": "string",
    "image_path": "string",
    **{c: "Float64" for c in FACE_BOX},
    **{c: "Float64" for c in PERSON_BOX},
}

MIVOLO_REQUIRED: tuple[str, ...] = ("img_name", "age", "gender", *FACE_BOX)
FOLDER_REQUIRED: tuple[str, ...] = ("image", "age", "gender")

_MISSING_TOKENS = frozenset({"", "-1", "-1.0", "nan", "none", "null", "na", "n/a"})
_GENDER_TOKENS: dict[str, str] = {
    "m": "male",
    "male": "male",
    "man": "male",
    "0": "male",
    "0.0": "male",
    "f": "female",
    "female": "female",
    "woman": "female",
    "1": "female",
    "1.0": "female",
}
# "25;32" (MiVOLO), also "(25, 32)" (Adience's own files) and "30-39" (FairFace's own files).
_AGE_CLASS = re.compile(r"^\(?\s*([0-9]+(?:\.[0-9]+)?)\s*[;,-]\s*([0-9]+(?:\.[0-9]+)?)\s*\)?$")
_ON_BAD_ROW = ("raise", "skip")
#: a check lists at most this many offending files one by one, then counts the rest
_MAX_NAMED = 10

_SAMPLE_ORDER = (
    "sample_id",
    "dataset",
    "split",
    "image_path",
    "image_width",
    "image_height",
    *FACE_BOX,
    *PERSON_BOX,
    "age",
    "age_class",
    "gender",
)


@dataclass
class ReadResult:
    """What a reader returns.

    Attributes:
        samples: the sample table (validated, `schema.SAMPLE_COLUMNS`).
        masked: persons that exist only to be masked out (`MASKED_COLUMNS`).
        report: counts: `rows` read, `samples`, `masked`, `boxes_clamped`, `skipped` and
            `skipped_<reason>` for each of `SKIP_REASONS` (a reader may add counters of its own, such as
            `skipped_bad_name` of the file-name readers in `native`).
        notes: one line per skipped item the counts alone would not name (e.g. a malformed file name).
    """

    samples: pd.DataFrame
    masked: pd.DataFrame
    report: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def empty_report() -> dict[str, int]:
    """Return a report with every counter at zero, in a fixed key order."""
    return {
        "rows": 0,
        "samples": 0,
        "masked": 0,
        "boxes_clamped": 0,
        "skipped": 0,
        **{f"skipped_{r}": 0 for r in SKIP_REASONS},
    }


def empty_masked() -> pd.DataFrame:
    """Return an empty masked-persons side table with the canonical dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in MASKED_COLUMNS.items()})


# ----------------------------------------------------------------------------------------------
# Value parsing (one string in, a value or an error message out)


def _is_missing(text: str) -> bool:
    return text.strip().lower() in _MISSING_TOKENS


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_age(text: Any) -> tuple[float | None, str | None]:
    """Parse an age cell: a number of years, a class `"a;b"`, or missing (-1 / empty).

    Args:
        text: the cell as read.

    Returns:
        (age, age_class): at most one is set; both None when the age is missing.

    Raises:
        ValueError: with a readable message for a non-numeric age, a malformed class or a value
            outside `schema.AGE_RANGE`.
    """
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).strip()
    if _is_missing(s):
        return None, None
    lo, hi = AGE_RANGE
    match = _AGE_CLASS.match(s)
    if match:
        a, b = float(match.group(1)), float(match.group(2))
        if not (lo <= a <= b <= hi):
            raise ValueError(f"age class {s!r} must be 'a;b' with {lo:g} <= a <= b <= {hi:g}")
        return None, f"{_fmt_number(a)};{_fmt_number(b)}"
    try:
        age = float(s)
    except ValueError:
        raise ValueError(f"age {s!r} is not a number or an 'a;b' class") from None
    if not math.isfinite(age) or not (lo <= age <= hi):
        raise ValueError(f"age {s!r} is outside [{lo:g}, {hi:g}]")
    return age, None


def parse_gender(text: Any) -> str | None:
    """Parse a gender cell: M/F, male/female, 0/1 (0 = male, 1 = female), any case; -1 / empty = missing.

    Args:
        text: the cell as read.

    Returns:
        `male`, `female` or None.

    Raises:
        ValueError: for any other value.
    """
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).strip().lower()
    if _is_missing(s):
        return None
    if s not in _GENDER_TOKENS:
        raise ValueError(f"gender {str(text).strip()!r} is not one of M/F, male/female, 0/1")
    return _GENDER_TOKENS[s]


# ----------------------------------------------------------------------------------------------
# The shared row checker


class _Rows:
    """Bad rows of one CSV: raised at once (`raise`) or counted per reason (`skip`); a row's first problem wins."""

    def __init__(self, n: int, *, csv: Path, on_bad_row: str, report: dict[str, int]) -> None:
        self.reason: list[str | None] = [None] * n
        self.csv, self.on_bad_row, self.report = csv, on_bad_row, report

    def flag(self, i: int, reason: str, column: str, message: str) -> None:
        if self.reason[i] is not None:
            return
        if self.on_bad_row == "raise":
            raise InputError(message, file=self.csv, row=i + 1, field=column)
        self.reason[i] = reason
        self.report["skipped"] += 1
        self.report[f"skipped_{reason}"] += 1

    def ok(self, i: int) -> bool:
        return self.reason[i] is None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # Everything as text: this module decides what -1, empty and "25;32" mean.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as exc:
        raise InputError("the CSV file is empty (no header)", file=path) from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot be read as a CSV ({type(exc).__name__}: {exc})", file=path) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _parse_box(row: Mapping[str, str], cols: tuple[str, ...]) -> tuple[list[float] | None, str | None]:
    """Return (box, bad column): box None when missing (any -1 or empty coordinate)."""
    values = []
    for col in cols:
        s = row.get(col, "")
        s = "" if s is None else str(s).strip()
        if _is_missing(s):
            return None, None
        try:
            v = float(s)
        except ValueError:
            return None, col
        if not math.isfinite(v):
            return None, col
        values.append(v)
    return values, None


def _clamp(box: list[float], width: int, height: int) -> tuple[list[float], bool]:
    x0, y0, x1, y1 = box
    out = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
    return out, out != box


def _degenerate(box: list[float], cols: tuple[str, ...]) -> str | None:
    if box[0] >= box[2]:
        return cols[0]
    if box[1] >= box[3]:
        return cols[1]
    return None


def _box_key(box: list[float]) -> str:
    return ",".join(str(int(math.floor(v + 0.5))) for v in box)


@dataclass
class _Table:
    """Rows of one CSV that passed the checks, before they are joined with other CSVs."""

    csv: Path
    samples: list[dict[str, Any]]
    rows: list[int]
    masked: list[dict[str, Any]]


def _check_rows(
    frame: pd.DataFrame,
    *,
    csv: Path,
    root: Path,
    dataset: str,
    split: str,
    image_col: str,
    allow_masked: bool,
    whole_image: str | None,
    on_bad_row: str,
    report: dict[str, int],
    sizes: dict[Path, tuple[int, int] | InputError],
    split_col: str | None = None,
    extra_cols: tuple[str, ...] = (),
) -> _Table:
    """Check and convert every row of one CSV; raise or count the bad ones.

    `whole_image` says which box the whole image stands in for: None (nothing), `"person"` / `"face"` (a row
    with neither box: a photo of one person / an aligned face crop), `"missing_person"` (a labelled row without
    a person box, such as MiVOLO's Adience CSVs, whose person boxes are all -1). `split_col` names a column that
    gives each row its split (empty = `split`); `extra_cols` are copied into the samples as text (empty = null).
    """
    n = len(frame)
    report["rows"] += n
    state = _Rows(n, csv=csv, on_bad_row=on_bad_row, report=report)
    records = frame.to_dict(orient="records")
    has_person = all(c in frame.columns for c in PERSON_BOX)
    has_face = all(c in frame.columns for c in FACE_BOX)
    table = _Table(csv=csv, samples=[], rows=[], masked=[])
    # Every image the table names is opened and cheaply decoded first, in threads: a truncated or empty file is a bad
    # row here (`unreadable_image`), not a crash in a long run later. Each distinct image is looked at once.
    named = (str(rec.get(image_col, "")).strip() for rec in records)
    todo = [p for p in dict.fromkeys(root / n for n in named if n) if p not in sizes]
    sizes.update(image_sizes(todo, decode=True, progress=True))  # a bar once it takes over a second
    for i, rec in enumerate(records):
        image_name = str(rec.get(image_col, "")).strip()
        if not image_name:
            state.flag(i, "missing_image_name", image_col, "image name is empty")
            continue
        try:
            age, age_class = parse_age(rec.get("age"))
        except ValueError as exc:
            state.flag(i, "bad_age", "age", str(exc))
            continue
        try:
            gender = parse_gender(rec.get("gender"))
        except ValueError as exc:
            state.flag(i, "bad_gender", "gender", str(exc))
            continue
        face, bad_col = _parse_box(rec, FACE_BOX) if has_face else (None, None)
        if bad_col is None and has_person:
            person, bad_col = _parse_box(rec, PERSON_BOX)
        else:
            person = None
        if bad_col is not None:
            state.flag(i, "bad_box", bad_col, f"box coordinate {str(rec.get(bad_col)).strip()!r} is not a number")
            continue
        path = root / image_name
        size = sizes[path]
        if isinstance(size, InputError):
            missing = not path.is_file()
            state.flag(i, "missing_image" if missing else "unreadable_image", image_col, f"{size.message}: {path}")
            continue
        width, height = size
        whole = [0.0, 0.0, float(width), float(height)]
        labelled = age is not None or age_class is not None or gender is not None
        if whole_image == "missing_person" and person is None and labelled:
            person = whole
        if face is None and person is None:
            if whole_image == "person":
                person = whole
            elif whole_image == "face":
                face = whole
            else:
                state.flag(i, "no_box", FACE_BOX[0], "row has neither a face box nor a person box")
                continue
        boxes: dict[str, list[float] | None] = {"face": face, "person": person}
        clamped = 0
        for name, cols in (("face", FACE_BOX), ("person", PERSON_BOX)):
            box = boxes[name]
            if box is None:
                continue
            bad = _degenerate(box, cols)
            if bad is None:
                box, changed = _clamp(box, width, height)
                bad = _degenerate(box, cols)
                clamped += changed
                boxes[name] = box
            if bad is not None:
                message = f"{name} box is empty (needs x0 < x1 and y0 < y1 inside the {width}x{height} image)"
                state.flag(i, "degenerate_box", bad, message)
                break
        if not state.ok(i):
            continue
        masked = age is None and age_class is None and gender is None
        if masked and not allow_masked:
            state.flag(i, "no_label", "age", "row has neither an age nor a gender")
            continue
        report["boxes_clamped"] += clamped
        row_split = str(rec.get(split_col) or "").strip() if split_col else ""
        out: dict[str, Any] = {"dataset": dataset, "split": row_split or split, "image_path": image_name}
        for name, cols in (("face", FACE_BOX), ("person", PERSON_BOX)):
            box = boxes[name]
            out.update(dict(zip(cols, box if box is not None else [None] * 4, strict=True)))
        if masked:
            table.masked.append(out)
            continue
        id_box = boxes["face"] if boxes["face"] is not None else boxes["person"]
        assert id_box is not None  # a row without any box was flagged above
        out.update(
            sample_id=f"{dataset}/{image_name}@{_box_key(id_box)}",
            image_width=width,
            image_height=height,
            age=age,
            age_class=age_class,
            gender=gender,
        )
        for col in extra_cols:
            value = str(rec.get(col) or "").strip()
            out[col] = value or None
        table.samples.append(out)
        table.rows.append(i + 1)
    return table


def _assemble(
    tables: list[_Table], *, source: Path, on_bad_row: str, report: dict[str, int], extra_cols: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join the tables of several CSVs, resolve duplicate ids, validate."""
    seen: dict[str, tuple[Path, int]] = {}
    rows: list[dict[str, Any]] = []
    for table in tables:
        for rec, row in zip(table.samples, table.rows, strict=True):
            sid = rec["sample_id"]
            if sid in seen:
                first_csv, first_row = seen[sid]
                if on_bad_row == "raise":
                    raise InputError(
                        f"duplicate sample_id {sid!r} (same image and box as {first_csv}, row {first_row})",
                        file=table.csv,
                        row=row,
                        field="sample_id",
                    )
                report["skipped"] += 1
                report["skipped_duplicate_id"] += 1
                continue
            seen[sid] = (table.csv, row)
            rows.append(rec)
    samples = validate_samples(pd.DataFrame(rows, columns=[*_SAMPLE_ORDER, *extra_cols]), source=source)
    masked_rows = [m for t in tables for m in t.masked]
    masked = pd.DataFrame(masked_rows, columns=list(MASKED_COLUMNS)) if masked_rows else empty_masked()
    masked = masked.astype(MASKED_COLUMNS).reset_index(drop=True)
    report["samples"] = len(samples)
    report["masked"] = len(masked)
    return samples, masked


def _check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in _ON_BAD_ROW:
        raise InputError(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}", field="on_bad_row")


_PERSON_BOX_OPTIONS = (None, "image")


def _check_person_box(person_box: str | None) -> None:
    if person_box not in _PERSON_BOX_OPTIONS:
        raise InputError(f"person_box must be null (as given) or 'image', got {person_box!r}", field="person_box")


def _column_errors(columns: list[str], required: tuple[str, ...], csv: Path) -> list[InputError]:
    """Every problem of a CSV header: required columns missing, a box given by only some of its columns."""
    errors = [
        InputError(f"required column is missing (columns found: {columns})", file=csv, field=col)
        for col in required
        if col not in columns
    ]
    # A box given by only some of its columns would otherwise be ignored without a word.
    for cols in (FACE_BOX, PERSON_BOX):
        present = [c for c in cols if c in columns]
        missing = next((c for c in cols if c not in columns), None)
        if present and missing is not None and missing not in required:  # a required one is reported above
            errors.append(
                InputError(f"box columns {list(cols)} must all be present or all absent", file=csv, field=missing)
            )
    return errors


def _require(frame: pd.DataFrame, columns: tuple[str, ...], csv: Path) -> None:
    errors = _column_errors(list(frame.columns), columns, csv)
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------------------------
# Public readers


def _assign_splits(folder: Path, splits: Mapping[str, str] | None) -> tuple[list[tuple[Path, str]], list[InputError]]:
    """Assign every CSV of the folder to a split by the tokens in its file name; collect every problem."""
    if not folder.is_dir():
        return [], [InputError("annotation folder not found", file=folder)]
    csvs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not csvs:
        return [], [InputError("annotation folder holds no .csv file", file=folder)]
    if splits is None:
        return [(p, "test") for p in csvs], []
    if not splits:
        return [], [InputError("splits is empty: give at least one split name -> file-name token", field="splits")]
    out: list[tuple[Path, str]] = []
    errors: list[InputError] = []
    for csv in csvs:
        hits = [name for name, token in splits.items() if str(token) in csv.name]
        if len(hits) > 1:
            message = f"file name matches the tokens of several splits {hits}"
            errors.append(InputError(message, file=csv, field="splits"))
        elif hits:
            out.append((csv, hits[0]))
    for name, token in splits.items():
        if not any(str(token) in csv.name for csv in csvs):
            message = f"no CSV file name contains {token!r} (split {name!r})"
            errors.append(InputError(message, file=folder, field="splits"))
    return out, errors


def _split_files(folder: Path, splits: Mapping[str, str] | None) -> list[tuple[Path, str]]:
    """Assign every CSV of the folder to a split by the tokens in its file name (raising the first problem)."""
    out, errors = _assign_splits(folder, splits)
    if errors:
        raise errors[0]
    return out


def read_mivolo(
    root: str | Path,
    dataset: str,
    *,
    annotations: str | Path = "annotations",
    splits: Mapping[str, str] | None = None,
    person_box: str | None = None,
    on_bad_row: str = "raise",
) -> ReadResult:
    """Read a data set annotated in the MiVOLO authors' CSV format.

    Columns `img_name, age, gender, face_x0, face_y0, face_x1, face_y1` and optionally
    `person_x0..person_y1` (other columns are ignored). Boxes are absolute xyxy pixels; a box with
    any -1 coordinate is missing. Age -1 / gender -1 are missing labels; a row with both missing is
    a person who exists only to be masked and goes to `ReadResult.masked`. Class data sets give the
    age as `"a;b"`, stored in `age_class`. Boxes are clamped to the image (counted in
    `report["boxes_clamped"]`).

    Args:
        root: the data set's folder; `img_name` is relative to it.
        dataset: the data set name, written into every row and sample id.
        annotations: folder of the CSVs, relative to `root` or absolute.
        splits: split name -> token; a split is every CSV whose file name contains the token
            (CSVs matching no token are ignored). None: every CSV, all in split `test`.
        person_box: None (boxes as given) or `image`: a labelled row without a person box gets the whole
            image as its person box (MiVOLO's Adience CSVs set every person box to -1, so body inputs would
            otherwise have nothing to show). Masked rows are left as given.
        on_bad_row: `raise` an InputError at the first bad row, or `skip` bad rows and count them.

    Returns:
        The sample table, the masked side table and the report.

    Raises:
        InputError: naming the file, 1-based data row and column of a bad row (with `raise`), a missing
            column or folder, a CSV matched by two split tokens, or a duplicate sample id.
    """
    _check_on_bad_row(on_bad_row)
    _check_person_box(person_box)
    root = Path(root)
    folder = Path(annotations) if Path(annotations).is_absolute() else root / annotations
    report = empty_report()
    sizes: dict[Path, tuple[int, int] | InputError] = {}
    tables = []
    for csv, split in _split_files(folder, splits):
        frame = _read_csv(csv)
        _require(frame, MIVOLO_REQUIRED, csv)
        tables.append(
            _check_rows(
                frame,
                csv=csv,
                root=root,
                dataset=dataset,
                split=split,
                image_col="img_name",
                allow_masked=True,
                whole_image="missing_person" if person_box == "image" else None,
                on_bad_row=on_bad_row,
                report=report,
                sizes=sizes,
            )
        )
    samples, masked = _assemble(tables, source=folder, on_bad_row=on_bad_row, report=report)
    return ReadResult(samples=samples, masked=masked, report=report)


def read_folder(
    root: str | Path,
    dataset: str,
    *,
    csv: str | Path = "labels.csv",
    split: str = "test",
    on_bad_row: str = "raise",
) -> ReadResult:
    """Read a folder of photos a user collected (Wild104-style) with one labels CSV.

    Columns `image, age, gender` and optionally `face_x0..face_y1` / `person_x0..person_y1` (empty or
    -1 = missing). A row without any box is a photo of one person: its person box is the whole image.
    Gender accepts male/female, M/F, 0/1 (0 = male); age a number of years or an `"a;b"` class.
    Every row needs an age or a gender.

    Args:
        root: the folder; `image` is relative to it.
        dataset: the data set name.
        csv: the labels file, relative to `root` or absolute.
        split: the split written into every row.
        on_bad_row: `raise` or `skip` (see `read_mivolo`).

    Returns:
        The sample table, an empty masked table, and the report.

    Raises:
        InputError: naming the file, row and column of a bad row (with `raise`), a missing file or
            column, or a duplicate sample id.
    """
    _check_on_bad_row(on_bad_row)
    root = Path(root)
    path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not path.is_file():
        raise InputError("labels file not found", file=path)
    return read_labels(_read_csv(path), root, dataset, split=split, source=path, on_bad_row=on_bad_row)


def read_labels(
    labels: pd.DataFrame,
    root: str | Path,
    dataset: str,
    *,
    split: str = "test",
    source: str | Path | None = None,
    on_bad_row: str = "raise",
    whole_image: str = "person",
    split_column: str | None = None,
) -> ReadResult:
    """The folder reader's checks on a labels table built in memory: the core of a new data set's reader.

    A reader for another format (labels in file names, a JSON file, a database) builds a table with the
    folder reader's columns, `image, age, gender` and optionally `face_x0..face_y1` / `person_x0..person_y1`,
    and hands it here; every row is checked and the sample table is built exactly as for `read_folder`.
    Optional sample columns (`schema.OPTIONAL_SAMPLE_COLUMNS`: `subject`, `race`) present in the table are kept.

    Args:
        labels: the table (any dtype; values are read as text, like a CSV).
        root: the folder `image` is relative to.
        dataset: the data set name.
        split: the split written into every row (the rows `split_column` leaves empty).
        source: what errors name as the file (default: `root`).
        on_bad_row: `raise` or `skip` (see `read_mivolo`).
        whole_image: the box a row without any box gets: `person` (a photo of one person) or `face`
            (an aligned face crop, such as UTKFace's).
        split_column: a column of `labels` giving each row its split, or None.

    Returns:
        The sample table, an empty masked table, and the report.
    """
    return read_label_tables(
        [(labels, source, split)],
        root,
        dataset,
        on_bad_row=on_bad_row,
        whole_image=whole_image,
        split_column=split_column,
    )


def read_label_tables(
    tables: Sequence[tuple[pd.DataFrame, str | Path | None, str]],
    root: str | Path,
    dataset: str,
    *,
    on_bad_row: str = "raise",
    whole_image: str = "person",
    split_column: str | None = None,
) -> ReadResult:
    """`read_labels` on several tables at once (e.g. one labels file per split): rows and files named per table.

    Args:
        tables: (labels, source, split) per table, as `read_labels` takes them; a duplicate sample id across
            tables is an error (or a counted skip) naming both places.
        root, dataset, on_bad_row, whole_image, split_column: as for `read_labels`.

    Returns:
        The sample table, an empty masked table, and the report (counts over all tables).
    """
    _check_on_bad_row(on_bad_row)
    if whole_image not in ("person", "face"):
        raise InputError(f"whole_image must be 'person' or 'face', got {whole_image!r}", field="whole_image")
    if not tables:
        raise InputError("no labels table given", file=root)
    root = Path(root)
    report = empty_report()
    sizes: dict[Path, tuple[int, int] | InputError] = {}
    checked: list[_Table] = []
    extra: dict[str, None] = {}
    for labels, source, split in tables:
        path = Path(source) if source is not None else root
        frame = labels.astype("string").fillna("").astype(object)
        frame.columns = [str(c).strip() for c in frame.columns]
        _require(frame, FOLDER_REQUIRED, path)
        extra_cols = tuple(c for c in OPTIONAL_SAMPLE_COLUMNS if c in frame.columns)
        extra.update(dict.fromkeys(extra_cols))
        checked.append(
            _check_rows(
                frame,
                csv=path,
                root=root,
                dataset=dataset,
                split=split,
                image_col="image",
                allow_masked=False,
                whole_image=whole_image,
                on_bad_row=on_bad_row,
                report=report,
                sizes=sizes,
                split_col=split_column if split_column in frame.columns else None,
                extra_cols=extra_cols,
            )
        )
    source = checked[0].csv if len(checked) == 1 else root
    # Columns in the schema's order, whichever table brought them.
    extra_cols = tuple(c for c in OPTIONAL_SAMPLE_COLUMNS if c in extra)
    samples, masked = _assemble(checked, source=source, on_bad_row=on_bad_row, report=report, extra_cols=extra_cols)
    return ReadResult(samples=samples, masked=masked, report=report)


# ----------------------------------------------------------------------------------------------
# Checks: files, headers and images, every problem at once (the reader itself raises at the first bad row)


def _read_header(path: Path) -> list[str]:
    """The stripped column names of a CSV, reading its first line only."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv_module.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv_module.Error) as exc:
        raise InputError(f"cannot be read as a CSV ({type(exc).__name__}: {exc})", file=path) from exc
    if first is None:
        raise InputError("the CSV file is empty (no header)", file=path)
    return [c.strip() for c in first]


def image_problems(names: Mapping[str, int | None], root: Path, *, source: Path, field: str | None = None) -> list[str]:
    """Every image a labels file names that is missing or cannot be loaded, reported at once.

    Missing images (one `stat` each) make one line: how many, and the first five. The others are opened and
    cheaply decoded in threads (`agegender.data.crops.image_sizes(decode=True)`: a truncated, empty or corrupt
    file fails there as it would in a run); each that fails gets a line naming it, its first row and why, up to
    `_MAX_NAMED`, and one more line counts the rest.

    Args:
        names: image path (relative to `root`) -> the 1-based row of `source` that first names it (None where the
            images are not named by rows, e.g. a folder's listing).
        root: the folder the names are relative to.
        source: the labels file (or folder) that names them, named by every line.
        field: the column of the image names, where there is one.

    Returns:
        One line per problem, empty when every image is there and decodes.
    """
    base = str(root)  # plain strings: a Path per image costs more than the stat itself
    missing = [n for n in names if not os.path.isfile(os.path.join(base, n))]
    problems = []
    if missing:
        message = (
            f"{len(missing)} of {len(names)} images named in column {field!r} are missing under {root} "
            if field
            else f"{len(missing)} of {len(names)} images it names are missing under {root} "
        )
        problems.append(str(InputError(f"{message}(first: {', '.join(missing[:5])})", file=source, field=field)))
    gone = set(missing)
    present = [n for n in names if n not in gone]
    results = image_sizes((root / n for n in present), decode=True, progress=True)
    bad = [(n, result) for n, result in zip(present, results.values(), strict=True) if isinstance(result, InputError)]
    for name, error in bad[:_MAX_NAMED]:
        problems.append(str(InputError(f"{name}: {error.message}", file=source, row=names[name], field=field)))
    if len(bad) > _MAX_NAMED:
        more = (
            f"and {len(bad) - _MAX_NAMED} more images that cannot be decoded ({len(bad)} of the {len(present)} "
            f"under {root}; the first {_MAX_NAMED} are listed above)"
        )
        problems.append(str(InputError(more, file=source, field=field)))
    return problems


def _image_names(path: Path, image_col: str) -> dict[str, int] | str:
    """Image name -> the 1-based data row first naming it, of a CSV's image column; or the line saying why not."""
    try:
        names = pd.read_csv(
            path,
            usecols=lambda c: str(c).strip() == image_col,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
        ).iloc[:, 0]
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return str(InputError(f"cannot be read as a CSV ({type(exc).__name__}: {exc})", file=path))
    # Empty names are bad rows the reader reports itself; a data set names each image many times (one row per person).
    first: dict[str, int] = {}
    for row, name in enumerate(names, start=1):
        first.setdefault(name.strip(), row)
    first.pop("", None)
    return first


def _check_csv(path: Path, root: Path, required: tuple[str, ...], image_col: str) -> list[str]:
    try:
        columns = _read_header(path)
    except InputError as exc:
        return [str(exc)]
    problems = [str(e) for e in _column_errors(columns, required, path)]
    if image_col in columns:
        names = _image_names(path, image_col)
        problems += [names] if isinstance(names, str) else image_problems(names, root, source=path, field=image_col)
    return problems


def check_mivolo(
    root: str | Path,
    *,
    annotations: str | Path = "annotations",
    splits: Mapping[str, str] | None = None,
    person_box: str | None = None,
    on_bad_row: str = "raise",
) -> list[str]:
    """Check a MiVOLO-format data set's files without reading its rows (the options of `read_mivolo`).

    Checks: the annotation folder exists, each split token matches at least one CSV (and no CSV matches two),
    each CSV's header has `MIVOLO_REQUIRED`, and every image the CSVs name exists and decodes (`image_problems`).

    Args:
        root: the data set's folder.
        annotations, splits, person_box, on_bad_row: as for `read_mivolo`.

    Returns:
        One line per problem (naming the file), empty when all is well.
    """
    root = Path(root)
    problems = []
    if on_bad_row not in _ON_BAD_ROW:
        problems.append(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}")
    if person_box not in _PERSON_BOX_OPTIONS:
        problems.append(f"person_box must be null (as given) or 'image', got {person_box!r}")
    folder = Path(annotations) if Path(annotations).is_absolute() else root / annotations
    files, errors = _assign_splits(folder, splits)
    problems += [str(e) for e in errors]
    for path, _ in files:
        problems += _check_csv(path, root, MIVOLO_REQUIRED, "img_name")
    return problems


def check_folder(
    root: str | Path, *, csv: str | Path = "labels.csv", split: str = "test", on_bad_row: str = "raise"
) -> list[str]:
    """Check a labelled folder's files without reading its rows (the options of `read_folder`).

    Checks: the labels CSV exists, its header has `FOLDER_REQUIRED`, and every image it names exists and decodes.

    Args:
        root: the folder.
        csv, split, on_bad_row: as for `read_folder`.

    Returns:
        One line per problem (naming the file), empty when all is well.
    """
    root = Path(root)
    problems = []
    if on_bad_row not in _ON_BAD_ROW:
        problems.append(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}")
    path = Path(csv) if Path(csv).is_absolute() else root / csv
    if not path.is_file():
        return [*problems, str(InputError("labels file not found", file=path))]
    return problems + _check_csv(path, root, FOLDER_REQUIRED, "image")


read_mivolo.check = check_mivolo  # type: ignore[attr-defined]
read_folder.check = check_folder  # type: ignore[attr-defined]


__all__ = [
    "FOLDER_REQUIRED",
    "MASKED_COLUMNS",
    "MIVOLO_REQUIRED",
    "SKIP_REASONS",
    "ReadResult",
    "check_folder",
    "check_mivolo",
    "read_labels",
    "read_label_tables",
    "empty_masked",
    "empty_report",
    "image_problems",
    "parse_age",
    "parse_gender",
    "read_folder",
    "read_mivolo",
]
