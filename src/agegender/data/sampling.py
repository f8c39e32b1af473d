"""NanoLAGENDA-style subsets: N random samples per 5-year age bin (paper section 4.1).

The paper drew 200 random LAGENDA samples for each 5-year age group over [0, 90] and then removed
the images ChatGPT refused to answer (> 21%), leaving 3,062 samples. `nano_sample` reproduces that:
a seeded draw per bin, then the removal of an exclude list (the removed are not replaced).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.errors import InputError


def _check_bins(bin_width: float, max_age: float) -> int:
    if not bin_width > 0:
        raise InputError(f"bin_width must be positive, got {bin_width}", field="bin_width")
    if not max_age > 0:
        raise InputError(f"max_age must be positive, got {max_age}", field="max_age")
    return int(np.ceil(max_age / bin_width - 1e-9))


def bin_label(index: int, bin_width: float = 5, max_age: float = 90) -> str:
    """Return the label of age bin `index`, e.g. `0-5`, `5-10`, ... (the last one ends at `max_age`).

    Args:
        index: 0-based bin index.
        bin_width: years per bin.
        max_age: upper end (exclusive) of the last bin.

    Returns:
        `"{lo}-{hi}"` with the bin's bounds in years.
    """
    lo = index * bin_width
    hi = min((index + 1) * bin_width, max_age)
    return f"{lo:g}-{hi:g}"


def age_bins(age: pd.Series | np.ndarray, bin_width: float = 5, max_age: float = 90) -> np.ndarray:
    """Assign ages to bins [0, w), [w, 2w), ... up to `max_age` (exclusive).

    Args:
        age: ages in years; null / NaN allowed.
        bin_width: years per bin.
        max_age: ages at or above it fall in no bin.

    Returns:
        int array of bin indices, -1 for a null age, a negative age or one >= `max_age`.
    """
    _check_bins(bin_width, max_age)
    values = pd.to_numeric(pd.Series(age), errors="coerce").astype("float64").to_numpy()
    eligible = np.isfinite(values) & (values >= 0) & (values < max_age)
    out = np.full(values.shape, -1, dtype=np.int64)
    out[eligible] = np.floor(values[eligible] / bin_width).astype(np.int64)
    return out


def bin_counts(samples: pd.DataFrame, *, bin_width: float = 5, max_age: float = 90) -> pd.DataFrame:
    """Count samples per age bin (every bin listed, empty ones with 0).

    Args:
        samples: a table with an `age` column.
        bin_width: years per bin.
        max_age: upper end (exclusive) of the last bin.

    Returns:
        A frame with columns `bin` (label), `age_min`, `age_max` and `n`, one row per bin in age order.
    """
    if "age" not in samples.columns:
        raise InputError("required column is missing", field="age")
    n_bins = _check_bins(bin_width, max_age)
    idx = age_bins(samples["age"], bin_width, max_age)
    counts = np.bincount(idx[idx >= 0], minlength=n_bins)[:n_bins]
    return pd.DataFrame(
        {
            "bin": [bin_label(i, bin_width, max_age) for i in range(n_bins)],
            "age_min": [i * bin_width for i in range(n_bins)],
            "age_max": [min((i + 1) * bin_width, max_age) for i in range(n_bins)],
            "n": counts.astype(np.int64),
        }
    )


def read_id_list(path: str | Path) -> list[str]:
    """Read sample ids from a file: a CSV (`.csv`) with a `sample_id` column, or text with one id per line.

    Blank lines are ignored, and so is a first line `sample_id` in a text file.

    Args:
        path: the file.

    Returns:
        The ids, in file order.

    Raises:
        InputError: when the file is missing or a CSV lacks the `sample_id` column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("exclude list not found", file=path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        fields = [f.strip() for f in reader.fieldnames or []]
        if "sample_id" not in fields:
            raise InputError(
                f"a CSV exclude list needs a sample_id column (found {fields})", file=path, field="sample_id"
            )
        key = (reader.fieldnames or [])[fields.index("sample_id")]
        return [row[key].strip() for row in reader if row.get(key) and row[key].strip()]
    lines = [line.strip() for line in text.splitlines()]
    if lines and lines[0] == "sample_id":
        lines = lines[1:]
    return [line for line in lines if line]


def nano_sample(
    samples: pd.DataFrame,
    *,
    per_bin: int,
    seed: int,
    bin_width: float = 5,
    max_age: float = 90,
    exclude: Iterable[str] | str | Path | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Draw `per_bin` random samples from each age bin, NanoLAGENDA-style.

    Bins are [0, w), [w, 2w), ... below `max_age`; samples with a null age (class data sets) or an age
    outside the bins are not eligible. The draw is independent of the input row order (candidates are
    sorted by sample_id first) and seeded with `numpy.random.default_rng(seed)`; a bin with fewer than
    `per_bin` samples gives all of them. Excluded ids are removed after the draw, so they are not
    replaced, and ids that were not drawn are ignored.

    Args:
        samples: a sample table (at least `sample_id` and `age`).
        per_bin: samples per bin (the paper: 200).
        seed: random seed.
        bin_width: years per bin (the paper: 5).
        max_age: ages at or above this fall in no bin (the paper: 90).
        exclude: sample ids to remove (e.g. the refused ones), or a file of them (see `read_id_list`); a
            `str` is a path. Either the original ids or the ids under `name` match.
        name: when given, the result is a new data set: `dataset` = name and
            sample_id = f"{name}/{original sample_id}".

    Returns:
        The drawn rows (all columns kept), sorted by sample_id, with a fresh index. `attrs` holds
        `per_bin_available`, `per_bin_drawn` and `per_bin` (after exclusion): bin label -> count, and
        `n_excluded`.

    Raises:
        InputError: for a missing column, duplicate sample ids, a bad `per_bin`/`bin_width`/`max_age`,
            or an unreadable exclude file.
    """
    for col in ("sample_id", "age"):
        if col not in samples.columns:
            raise InputError("required column is missing", field=col)
    if isinstance(per_bin, bool) or not isinstance(per_bin, int | np.integer) or per_bin < 0:
        raise InputError(f"per_bin must be a non-negative integer, got {per_bin!r}", field="per_bin")
    n_bins = _check_bins(bin_width, max_age)
    ids = samples["sample_id"].astype(str)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise InputError(f"duplicate sample_id {dup!r}: cannot sample a table with repeated ids", field="sample_id")
    if isinstance(exclude, str | Path):
        excluded = set(read_id_list(exclude))
    else:
        excluded = {str(x).strip() for x in exclude} if exclude is not None else set()

    # Sort by id first so that the same table in another row order draws the same samples.
    order = np.argsort(ids.to_numpy(dtype=str), kind="stable")
    bins = age_bins(samples["age"], bin_width, max_age)[order]
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    available, drawn = {}, {}
    for b in range(n_bins):
        members = order[bins == b]
        label = bin_label(b, bin_width, max_age)
        available[label] = int(len(members))
        if len(members) > per_bin:
            members = members[np.sort(rng.choice(len(members), size=per_bin, replace=False))]
        drawn[label] = int(len(members))
        chosen.append(members)
    picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    out = samples.iloc[picked].copy()
    out = out.iloc[np.argsort(out["sample_id"].astype(str).to_numpy(dtype=str), kind="stable")]
    new_ids = out["sample_id"].astype(str) if name is None else name + "/" + out["sample_id"].astype(str)
    drop = out["sample_id"].astype(str).isin(excluded) | new_ids.isin(excluded)
    if name is not None:
        out["sample_id"] = new_ids.astype(out["sample_id"].dtype)
        out["dataset"] = pd.Series(
            name, index=out.index, dtype=samples["dataset"].dtype if "dataset" in samples else "string"
        )
    kept_bins = age_bins(out["age"], bin_width, max_age)[~drop.to_numpy()]
    out = out[~drop.to_numpy()].reset_index(drop=True)
    final = np.bincount(kept_bins[kept_bins >= 0], minlength=n_bins)[:n_bins]
    out.attrs = {
        "per_bin_available": available,
        "per_bin_drawn": drawn,
        "per_bin": {bin_label(b, bin_width, max_age): int(final[b]) for b in range(n_bins)},
        "n_excluded": int(drop.sum()),
    }
    return out
