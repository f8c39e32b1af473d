"""Readers for the native formats of the standard age data sets: UTKFace, FG-NET, FairFace.

Each builds a labels table from the set's own files and hands it to `readers.read_label_tables`, which checks
every row and every image (its size from the header, and a cheap decode). All three are registered on import of
`agegender.data.readers`:

- `utkface`: a folder of aligned face crops named `AGE_GENDER_RACE_DATETIME.jpg.chip.jpg` (gender 0 = male,
  1 = female; race 0..4 = White, Black, Asian, Indian, Others, kept in the optional `race` column). The face box
  is the whole image; there is no person box.
- `fgnet`: a folder of FG-NET photos named `001A02.JPG` (subject 001, age 2; a letter may follow the age,
  `001A43a.JPG`); no gender. The subject is kept in the optional `subject` column; the person box is the whole
  image (face boxes come from a detector later).
- `fairface`: FairFace's label CSV (`file,age,gender,race,service_test`) or a JSON list of
  `{"filename", "age", "gender"}` (the `fairface540` subset's `ground_truth.json`), told apart by suffix. Age
  classes go to `age_class` as `a;b` (`70+` / `more than 70` -> `70;120`); the person box is the whole image.

Splits, the same option shape for the three readers (at most one of `split` / `splits`):

- `split: test`: every sample in one split (the default, `test`, when neither is given);
- `splits: {train: 0.7, val: 0.1, test: 0.2}` with `seed: 0`: seeded random fractions (they must sum to 1;
  the counts are rounded by largest remainder), drawn with scikit-learn over the sorted images (UTKFace,
  FairFace) or over the sorted subjects (FG-NET: subject-exclusive, the fractions count subjects);
- FairFace only: `labels: {train: fairface_label_train.csv, val: fairface_label_val.csv}`, the set's own
  split, one labels file per split.

A file name that does not parse (UTKFace, FG-NET) is never guessed: with `on_bad_row: raise` it is an
`InputError` naming the file and the field; with `skip` it is counted in the report's extra counter
`skipped_bad_name` (and in `skipped` and `rows`) and named in `ReadResult.notes`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from agegender.data.readers import (
    _MAX_NAMED,
    _ON_BAD_ROW,
    ReadResult,
    _column_errors,
    _read_csv,
    _read_header,
    image_problems,
    read_label_tables,
)
from agegender.data.schema import AGE_RANGE
from agegender.errors import InputError

#: File suffixes taken as images when a reader lists a folder (any case).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
#: UTKFace's race codes, in order.
UTKFACE_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
#: Columns FairFace's own label CSV must have.
FAIRFACE_REQUIRED: tuple[str, ...] = ("file", "age", "gender")

_FGNET_NAME = re.compile(r"^(?P<subject>[0-9]+)A(?P<age>[0-9]+)(?P<suffix>[A-Z]?)$", re.IGNORECASE)
# FairFace writes its open-ended oldest class as "more than 70"; the fairface540 subset as "70+".
_OPEN_CLASS = re.compile(r"^\s*(?:more\s+than\s+([0-9]+)|([0-9]+)\s*\+)\s*$", re.IGNORECASE)
#: The upper bound given to an open-ended class (`70+` -> `70;120`), as DESIGN.md's sample table says.
OPEN_CLASS_MAX = 120
_SPLIT_COLUMN = "split"


# ----------------------------------------------------------------------------------------------
# Splits


def split_fraction_errors(split: str | None, splits: Mapping[str, Any] | None, seed: Any) -> list[InputError]:
    """Every problem of a reader's split options (`split`, or `splits` fractions with `seed`)."""
    errors: list[InputError] = []
    if split is not None and splits is not None:
        errors.append(InputError("give either split (one name) or splits (fractions), not both", field="splits"))
    if split is not None and (not isinstance(split, str) or not split.strip()):
        errors.append(InputError(f"split must be a non-empty name, got {split!r}", field="split"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        errors.append(InputError(f"seed must be an integer, got {seed!r}", field="seed"))
    if splits is None:
        return errors
    if not isinstance(splits, Mapping) or not splits:
        message = "splits must map split names to fractions, e.g. {train: 0.8, test: 0.2}"
        errors.append(InputError(message, field="splits"))
        return errors
    total = 0.0
    for name, frac in splits.items():
        number = isinstance(frac, int | float) and not isinstance(frac, bool) and math.isfinite(frac)
        if not number or not 0 < frac <= 1:
            message = f"fraction of split {name!r} must be a number in (0, 1], got {frac!r}"
            errors.append(InputError(message, field="splits"))
        else:
            total += frac
        if not str(name).strip():
            errors.append(InputError("a split name is empty", field="splits"))
    if not errors and abs(total - 1.0) > 1e-6:
        errors.append(InputError(f"split fractions must sum to 1, got {total:g}", field="splits"))
    return errors


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Counts that sum to n, each near fraction * n (largest remainder; ties to the earlier split)."""
    exact = [f * n for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-round(exact[i] - counts[i], 9), i))  # round: 0.7 * n ties 0.2 * n
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(units: Sequence[str], splits: Mapping[str, float], seed: int) -> dict[str, str]:
    """Draw seeded random splits over units (images, or subjects for subject-exclusive splits).

    The units are sorted first, so the result depends only on the set of units, the fractions and the seed,
    never on the order a folder lists its files in. Splits are drawn one after the other (in the order
    `splits` gives them) with scikit-learn's `train_test_split` from what the earlier ones left.

    Args:
        units: the things to split (duplicates are ignored).
        splits: split name -> fraction; the fractions must sum to 1.
        seed: the random state.

    Returns:
        unit -> split name, for every unit.

    Raises:
        InputError: for fractions that are not valid (see `split_fraction_errors`).
    """
    errors = split_fraction_errors(None, splits, seed)
    if errors:
        raise errors[0]
    pool = sorted(set(units))
    names = [str(name) for name in splits]
    counts = _split_counts(len(pool), [float(f) for f in splits.values()])
    out: dict[str, str] = {}
    for name, count in zip(names[:-1], counts[:-1], strict=True):
        if count == 0:
            continue
        if count >= len(pool):
            taken, pool = pool, []
        else:
            taken, pool = train_test_split(pool, train_size=count, random_state=seed, shuffle=True)
        out.update(dict.fromkeys(taken, name))
    out.update(dict.fromkeys(pool, names[-1]))
    return out


def _split_options(split: str | None, splits: Mapping[str, float] | None, seed: int) -> str:
    """Raise the first problem of the split options; return the single split (used when splits is None)."""
    errors = split_fraction_errors(split, splits, seed)
    if errors:
        raise errors[0]
    return split.strip() if split is not None else "test"


# ----------------------------------------------------------------------------------------------
# Folders of images whose names hold the labels


def _image_folder(root: Path, images: str | Path) -> Path:
    return Path(images) if Path(images).is_absolute() else root / images


def _list_images(folder: Path) -> list[str]:
    """The image files directly in folder (hidden files and other suffixes ignored), sorted by name."""
    if not folder.is_dir():
        raise InputError("image folder not found", file=folder)
    names = sorted(
        p.name for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not names:
        raise InputError(f"image folder holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))})", file=folder)
    return names


def _relative(root: Path, folder: Path, name: str) -> str:
    """The image path as the sample table stores it: relative to root where the folder is inside it."""
    try:
        return (folder / name).relative_to(root).as_posix()
    except ValueError:
        return (folder / name).as_posix()


def _age_field(text: str) -> str | None:
    """An error message for an age field of a file name, or None when it is a whole number of years in range."""
    lo, hi = AGE_RANGE
    if not text.isdigit() or not lo <= int(text) <= hi:
        return f"age {text!r} is not a whole number of years in [{lo:g}, {hi:g}]"
    return None


def parse_utkface_name(name: str) -> dict[str, str]:
    """Parse a UTKFace file name `AGE_GENDER_RACE_DATETIME.jpg.chip.jpg` (also `...DATETIME.jpg`).

    Args:
        name: the file name.

    Returns:
        `{"age", "gender", "race"}`: age in years as text, gender `male`/`female`, race one of `UTKFACE_RACES`.

    Raises:
        ValueError: with args (message, field): a name without exactly four fields (field `file name`; a missing
            field is not guessed), or an age, gender (0/1) or race (0..4) that is not valid.
    """
    stem = name.split(".", 1)[0]
    fields = stem.split("_")
    if len(fields) != 4:
        message = (
            f"file name {stem!r} has {len(fields)} fields, not the 4 of AGE_GENDER_RACE_DATETIME "
            "(a missing field is not guessed)"
        )
        raise ValueError(message, "file name")
    age, gender, race, stamp = fields
    problem = _age_field(age)
    if problem:
        raise ValueError(problem, "age")
    if gender not in ("0", "1"):
        raise ValueError(f"gender {gender!r} is not 0 (male) or 1 (female)", "gender")
    if race not in {str(i) for i in range(len(UTKFACE_RACES))}:
        raise ValueError(f"race {race!r} is not one of 0..4 ({', '.join(UTKFACE_RACES)})", "race")
    if not stamp.isdigit():
        raise ValueError(f"date-time {stamp!r} is not a number", "datetime")
    return {"age": age, "gender": "male" if gender == "0" else "female", "race": UTKFACE_RACES[int(race)]}


def parse_fgnet_name(name: str) -> dict[str, str]:
    """Parse an FG-NET file name `001A02.JPG` (subject 001, age 2; a letter may follow the age: `001A43a.JPG`).

    Args:
        name: the file name.

    Returns:
        `{"subject", "age"}`: the subject as written (`001`), the age in years as text.

    Raises:
        ValueError: with args (message, field) for a name of another shape or an age out of range.
    """
    stem = name.rsplit(".", 1)[0]
    match = _FGNET_NAME.match(stem)
    if match is None:
        raise ValueError(f"file name {stem!r} is not SUBJECT 'A' AGE [letter], e.g. 001A02", "file name")
    problem = _age_field(match.group("age"))
    if problem:
        raise ValueError(problem, "age")
    return {"subject": match.group("subject"), "age": str(int(match.group("age")))}


def _parse_names(
    folder: Path, names: list[str], parse: Any, on_bad_row: str
) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """(name, labels) of the names that parse, and one line per name that does not (raised with `raise`)."""
    good, bad = [], []
    for name in names:
        try:
            good.append((name, parse(name)))
        except ValueError as exc:
            message, column = exc.args
            error = InputError(message, file=folder / name, field=column)
            if on_bad_row == "raise":
                raise error from None
            bad.append(str(error))
    return good, bad


def _read_named(
    root: str | Path,
    dataset: str,
    *,
    images: str | Path,
    parse: Any,
    columns: tuple[str, ...],
    group: str | None,
    whole_image: str,
    split: str | None,
    splits: Mapping[str, float] | None,
    seed: int,
    on_bad_row: str,
) -> ReadResult:
    """The shared body of the file-name readers (UTKFace, FG-NET)."""
    if on_bad_row not in _ON_BAD_ROW:
        raise InputError(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}", field="on_bad_row")
    single = _split_options(split, splits, seed)
    root = Path(root)
    folder = _image_folder(root, images)
    good, bad = _parse_names(folder, _list_images(folder), parse, on_bad_row)
    rows = [{"image": _relative(root, folder, name), "gender": "", **labels} for name, labels in good]
    labels = pd.DataFrame(rows, columns=["image", "age", "gender", *columns])
    if splits is not None:
        key = group or "image"
        chosen = assign_splits(labels[key].tolist(), splits, seed)
        labels[_SPLIT_COLUMN] = labels[key].map(chosen)
    result = read_label_tables(
        [(labels, folder, single)],
        root,
        dataset,
        on_bad_row=on_bad_row,
        whole_image=whole_image,
        split_column=_SPLIT_COLUMN,
    )
    report = dict(result.report)
    report["rows"] += len(bad)
    report["skipped"] += len(bad)
    report["skipped_bad_name"] = len(bad)
    return ReadResult(samples=result.samples, masked=result.masked, report=report, notes=bad)


def _check_named(
    root: str | Path,
    *,
    images: str | Path,
    parse: Any,
    split: str | None,
    splits: Mapping[str, float] | None,
    seed: int,
    on_bad_row: str,
) -> list[str]:
    """The shared check of the file-name readers: options, folder, (with `raise`) every malformed name, and every
    well-named image decodes (`readers.image_problems`)."""
    problems = []
    if on_bad_row not in _ON_BAD_ROW:
        problems.append(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}")
    problems += [str(e) for e in split_fraction_errors(split, splits, seed)]
    folder = _image_folder(Path(root), images)
    try:
        names = _list_images(folder)
    except InputError as exc:
        return [*problems, str(exc)]
    good, bad = _parse_names(folder, names, parse, "skip")
    if bad and on_bad_row == "raise":  # with `skip` they are counted skips, not a reason to stop
        shown = "; ".join(bad[:_MAX_NAMED]) + (f"; and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else "")
        problems.append(
            f"{len(bad)} of {len(names)} file names in {folder} are malformed (on_bad_row: skip counts and skips "
            f"them): {shown}"
        )
    return problems + image_problems(dict.fromkeys(name for name, _ in good), folder, source=folder)


def read_utkface(
    root: str | Path,
    dataset: str,
    *,
    images: str | Path = ".",
    split: str | None = None,
    splits: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_row: str = "raise",
) -> ReadResult:
    """Read a folder of UTKFace face crops, labelled by file name `AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`.

    The face box is the whole image (the crops are aligned faces); there is no person box. Race goes to the
    optional `race` column (`White`, `Black`, `Asian`, `Indian`, `Others`). UTKFace has no subject ids, so
    `splits` are seeded random over images.

    Args:
        root: the data set's folder.
        dataset: the data set name.
        images: the folder of the images, relative to `root` or absolute (default: `root` itself).
        split: one split for every sample (default `test`), or
        splits: split name -> fraction (summing to 1), drawn with `seed`.
        seed: the random state of `splits`.
        on_bad_row: `raise` at the first bad name or row, or `skip` and count (`skipped_bad_name` for names).

    Returns:
        The sample table (with `race`), an empty masked table, the report, and one note per skipped name.

    Raises:
        InputError: naming the file and field of a malformed name (with `raise`), a missing or empty folder,
            or bad split options.
    """
    return _read_named(
        root,
        dataset,
        images=images,
        parse=parse_utkface_name,
        columns=("race",),
        group=None,
        whole_image="face",
        split=split,
        splits=splits,
        seed=seed,
        on_bad_row=on_bad_row,
    )


def check_utkface(
    root: str | Path,
    *,
    images: str | Path = ".",
    split: str | None = None,
    splits: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_row: str = "raise",
) -> list[str]:
    """Check a UTKFace folder: options, the folder, malformed names (with `raise`), images that do not decode.

    Returns:
        One line per problem, empty when all is well.
    """
    return _check_named(
        root, images=images, parse=parse_utkface_name, split=split, splits=splits, seed=seed, on_bad_row=on_bad_row
    )


def read_fgnet(
    root: str | Path,
    dataset: str,
    *,
    images: str | Path = ".",
    split: str | None = None,
    splits: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_row: str = "raise",
) -> ReadResult:
    """Read a folder of FG-NET photos, labelled by file name `001A02.JPG` (subject 001, age 2; `001A43a.JPG`).

    FG-NET has no gender labels. The subject goes to the optional `subject` column; `splits` are
    subject-exclusive (no subject in two splits; the fractions count subjects). The person box is the whole
    image (portraits); face boxes come from a detector later.

    Args:
        root, dataset, images, split, splits, seed, on_bad_row: as for `read_utkface`.

    Returns:
        The sample table (with `subject`), an empty masked table, the report, and one note per skipped name.

    Raises:
        InputError: as for `read_utkface`.
    """
    return _read_named(
        root,
        dataset,
        images=images,
        parse=parse_fgnet_name,
        columns=("subject",),
        group="subject",
        whole_image="person",
        split=split,
        splits=splits,
        seed=seed,
        on_bad_row=on_bad_row,
    )


def check_fgnet(
    root: str | Path,
    *,
    images: str | Path = ".",
    split: str | None = None,
    splits: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_row: str = "raise",
) -> list[str]:
    """Check an FG-NET folder: options, the folder, malformed names (with `raise`), images that do not decode.

    Returns:
        One line per problem, empty when all is well.
    """
    return _check_named(
        root, images=images, parse=parse_fgnet_name, split=split, splits=splits, seed=seed, on_bad_row=on_bad_row
    )


# ----------------------------------------------------------------------------------------------
# FairFace


def fairface_age_class(text: Any) -> str:
    """FairFace's age class as `read_labels` takes it: `0-2` stays (parsed as `0;2`), `70+` / `more than 70` ->
    `70;120`; anything else is passed on as is (and rejected there if it is not a class)."""
    s = "" if text is None else str(text).strip()
    match = _OPEN_CLASS.match(s)
    if match:
        return f"{match.group(1) or match.group(2)};{OPEN_CLASS_MAX}"
    return s


def _labels_path(root: Path, labels: str | Path) -> Path:
    return Path(labels) if Path(labels).is_absolute() else root / labels


def _load_fairface(path: Path) -> pd.DataFrame:
    """A FairFace labels file (CSV or JSON list) as a table of `image, age, gender[, race]`, rows in file order."""
    if not path.is_file():
        raise InputError("labels file not found", file=path, field="labels")
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot be read as JSON ({type(exc).__name__}: {exc})", file=path) from exc
        if not isinstance(entries, list):
            raise InputError(f"must hold a JSON list of objects, not a {type(entries).__name__}", file=path)
        rows = []
        for i, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict):
                raise InputError(f"entry is a {type(entry).__name__}, not an object", file=path, row=i)
            image = entry.get("filename", entry.get("file", ""))
            rows.append({"image": image, "age": entry.get("age", ""), "gender": entry.get("gender", "")})
        frame = pd.DataFrame(rows, columns=["image", "age", "gender"])
    elif path.suffix.lower() == ".csv":
        frame = _read_csv(path)
        errors = _column_errors(list(frame.columns), FAIRFACE_REQUIRED, path)
        if errors:
            raise errors[0]
        keep = ["file", "age", "gender", *(["race"] if "race" in frame.columns else [])]
        frame = frame[keep].rename(columns={"file": "image"})
    else:
        raise InputError("unknown labels format (expected FairFace's .csv or a .json list)", file=path, field="labels")
    frame["age"] = frame["age"].map(fairface_age_class)
    return frame


def _fairface_files(
    root: Path, labels: str | Path | Mapping[str, str | Path] | None, split: str | None, splits: Any
) -> list[tuple[Path, str | None]]:
    """(labels file, its own split or None) per labels file; raises for bad options."""
    if labels is None:
        raise InputError(
            "labels is required: a labels file (.csv or .json) or {split: file} for the set's own split",
            field="labels",
        )
    if isinstance(labels, Mapping):
        if split is not None or splits is not None:
            message = "labels {split: file} gives the splits already: leave split and splits out"
            raise InputError(message, field="labels")
        if not labels:
            raise InputError("labels is empty: give at least one split name -> file", field="labels")
        return [(_labels_path(root, file), str(name)) for name, file in labels.items()]
    return [(_labels_path(root, labels), None)]


def read_fairface(
    root: str | Path,
    dataset: str,
    *,
    labels: str | Path | Mapping[str, str | Path] | None = None,
    split: str | None = None,
    splits: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_row: str = "raise",
) -> ReadResult:
    """Read FairFace from its own label CSV or from a JSON list such as `fairface540/ground_truth.json`.

    CSV columns `file, age, gender` (and `race`, kept; `service_test` and others ignored), e.g.
    `train/1.jpg,50-59,Male,East Asian,True`. JSON: a list of `{"filename", "age", "gender"}` (other keys
    ignored). Image paths are relative to `root`. Age classes (`0-2` ... `60-69`, `70+` / `more than 70`) go
    to `age_class` as `a;b` (`70;120` for the open class); `age` stays null. The person box is the whole
    image (the photos are portraits with margin); face boxes come from a detector later.

    Args:
        root: the data set's folder.
        dataset: the data set name.
        labels: the labels file (`.csv` or `.json`, relative to `root` or absolute), or split name -> file for
            the set's own split (`{train: fairface_label_train.csv, test: fairface_label_val.csv}`).
        split: one split for every sample (default `test`), or
        splits: split name -> fraction (summing to 1), seeded random over images.
        seed: the random state of `splits`.
        on_bad_row: `raise` at the first bad row (naming the labels file, row and field), or `skip` and count.

    Returns:
        The sample table (with `race` where the labels have it), an empty masked table, and the report.

    Raises:
        InputError: a missing or unreadable labels file, a missing column, bad options, or a bad row.
    """
    if on_bad_row not in _ON_BAD_ROW:
        raise InputError(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}", field="on_bad_row")
    root = Path(root)
    files = _fairface_files(root, labels, split, splits)
    single = _split_options(split, splits, seed)
    tables = [(_load_fairface(path), path, own or single) for path, own in files]
    if splits is not None:
        frame = tables[0][0]
        chosen = assign_splits([s.strip() for s in frame["image"].astype(str)], splits, seed)
        frame[_SPLIT_COLUMN] = frame["image"].astype(str).str.strip().map(chosen)
    return read_label_tables(
        tables, root, dataset, on_bad_row=on_bad_row, whole_image="person", split_column=_SPLIT_COLUMN
    )


def check_fairface(
    root: str | Path,
    *,
    labels: str | Path | Mapping[str, str | Path] | None = None,
    split: str | None = None,
    splits: Mapping[str, float] | None = None,
    seed: int = 0,
    on_bad_row: str = "raise",
) -> list[str]:
    """Check a FairFace folder: options, each labels file (exists, parses, columns), and that every image it names
    exists and decodes (`readers.image_problems`).

    Returns:
        One line per problem, empty when all is well.
    """
    root = Path(root)
    problems = []
    if on_bad_row not in _ON_BAD_ROW:
        problems.append(f"on_bad_row must be one of {list(_ON_BAD_ROW)}, got {on_bad_row!r}")
    try:
        files = _fairface_files(root, labels, split, splits)
    except InputError as exc:
        return [*problems, str(exc)]
    problems += [str(e) for e in split_fraction_errors(split, splits, seed)]
    for path, _ in files:
        if path.suffix.lower() == ".csv" and path.is_file():
            try:  # the header first: a CSV without the columns is reported without parsing its rows
                header = _read_header(path)
            except InputError as exc:
                problems.append(str(exc))
                continue
            errors = _column_errors(header, FAIRFACE_REQUIRED, path)
            if errors:
                problems += [str(e) for e in errors]
                continue
        try:
            frame = _load_fairface(path)
        except InputError as exc:
            problems.append(str(exc))
            continue
        names: dict[str, int | None] = {}
        for row, name in enumerate(frame["image"].astype(str).str.strip(), start=1):
            if name:
                names.setdefault(name, row)
        problems += image_problems(names, root, source=path, field="image")
    return problems


read_utkface.check = check_utkface  # type: ignore[attr-defined]
read_fgnet.check = check_fgnet  # type: ignore[attr-defined]
read_fairface.check = check_fairface  # type: ignore[attr-defined]

__all__ = [
    "FAIRFACE_REQUIRED",
    "IMAGE_SUFFIXES",
    "OPEN_CLASS_MAX",
    "UTKFACE_RACES",
    "assign_splits",
    "check_fairface",
    "check_fgnet",
    "check_utkface",
    "fairface_age_class",
    "parse_fgnet_name",
    "parse_utkface_name",
    "read_fairface",
    "read_fgnet",
    "read_utkface",
    "split_fraction_errors",
]
