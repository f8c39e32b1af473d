"""Refusal exclusion: the samples a named model did not answer leave a data set for every model.

The paper built NanoLAGENDA this way (section 4.1): "We selected 200 random samples for each age group at
intervals of 5 years (e.g., 0-5, 5-10, etc.) for ages [0;90]. However, > 21% of these images had to be removed
because ChatGPT refused to provide answers. As a result, this dataset contains 3,062 samples." Section 4.2 says
the same of every ChatGPT4V query: "We decided to remove such samples, although it gives ChatGPT4V a slight
advantage." Those counts do not add up (`PAPER_NANOLAGENDA_COUNTS`), so the study states its own counts
(`exclusion_counts`) instead of the paper's.

The exclusion is computed from the named model's predictions (`evaluate.exclude_refused`), listed in
`reports/exclusions.csv` and applied by `agegender.metrics.evaluate` as the `kept` view.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from agegender.errors import InputError
from agegender.files import atomic_write_text
from agegender.params import RefusalExclusion

#: What the report and the run-book say of the paper's NanoLAGENDA counts (section 4.1), instead of printing them.
PAPER_NANOLAGENDA_COUNTS = (
    "The paper's own NanoLAGENDA counts do not add up: 200 per 5-year bin over [0, 90) is 3,600 drawn, and "
    "3,062 kept is 538 (14.9%) removed, not the '> 21%' it states; the counts above are this study's."
)
#: Columns of the exclusion list: one row per answer of the excluding model that removes its sample.
EXCLUSION_COLUMNS: tuple[str, ...] = ("dataset", "sample_id", "input", "model", "status")
#: Columns of the per-data-set counts.
COUNT_COLUMNS: tuple[str, ...] = ("dataset", "model", "n_drawn", "n_excluded", "n_kept")


def refusal_exclusions(
    samples: pd.DataFrame, predictions: pd.DataFrame, rules: Mapping[str, RefusalExclusion]
) -> pd.DataFrame:
    """The answers that exclude samples: every prediction of a rule's model, on its data set, with an excluding status.

    Args:
        samples: the evaluated samples (`sample_id`, `dataset`).
        predictions: validated predictions of every model.
        rules: data set -> its exclusion (`evaluate.exclude_refused`).

    Returns:
        Columns `EXCLUSION_COLUMNS`, sorted by data set, sample id and input; a sample refused on two inputs has
        two rows.

    Raises:
        InputError: a rule's data set is not evaluated, or its model has no prediction on that data set: an
            exclusion by a model that was never asked would silently exclude nothing.
    """
    frames = []
    for dataset, rule in sorted(rules.items()):
        ids = samples.loc[samples["dataset"] == dataset, "sample_id"]
        if ids.empty:
            raise InputError(f"evaluate.exclude_refused: data set {dataset!r} has no evaluated samples")
        own = predictions[(predictions["model"] == rule.model) & predictions["sample_id"].isin(ids)]
        if rule.inputs is not None:
            own = own[own["input"].isin(list(rule.inputs))]
        if own.empty:
            raise InputError(
                f"evaluate.exclude_refused.{dataset}: model {rule.model!r} has no predictions on {dataset!r}"
                + (f" for inputs {list(rule.inputs)}" if rule.inputs is not None else "")
                + ", so its refusals are unknown; run it on that data set first"
            )
        hit = own[own["status"].isin(list(rule.statuses))]
        frames.append(hit[["sample_id", "input", "model", "status"]].assign(dataset=dataset))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in EXCLUSION_COLUMNS})
    table = pd.concat(frames, ignore_index=True)[list(EXCLUSION_COLUMNS)].astype("object")
    return table.sort_values(["dataset", "sample_id", "input"], kind="stable").reset_index(drop=True)


def excluded_ids(exclusions: pd.DataFrame, rules: Mapping[str, RefusalExclusion]) -> dict[str, frozenset[str]]:
    """Data set -> the sample ids its exclusion removes; every rule's data set is present (maybe with none).

    A data set without a rule is absent: `agegender.metrics.evaluate` gives the `kept` view only to data sets
    that have one, as it would repeat the `answered` view elsewhere.
    """
    return {
        dataset: frozenset(exclusions.loc[exclusions["dataset"] == dataset, "sample_id"].astype(str))
        for dataset in sorted(rules)
    }


def exclusion_counts(
    samples: pd.DataFrame, exclusions: pd.DataFrame, rules: Mapping[str, RefusalExclusion]
) -> pd.DataFrame:
    """Per data set with a rule: the excluding model, the samples drawn, excluded and kept.

    Returns:
        Columns `COUNT_COLUMNS`, one row per rule, sorted by data set.
    """
    removed = excluded_ids(exclusions, rules)
    records = []
    for dataset, rule in sorted(rules.items()):
        n_drawn = int((samples["dataset"] == dataset).sum())
        n_excluded = len(removed[dataset])
        records.append((dataset, rule.model, n_drawn, n_excluded, n_drawn - n_excluded))
    return pd.DataFrame.from_records(records, columns=list(COUNT_COLUMNS))


def flat_exclusion_metrics(counts: pd.DataFrame) -> dict[str, int]:
    """The counts as flat metrics: ``<dataset>.exclusion.<model>.n_drawn`` / ``n_excluded`` / ``n_kept``.

    They sit in the `input` slot of DESIGN.md's ``dataset.input.model.metric`` scheme, which no input kind is
    called, so they cannot collide with a model's row.
    """
    out = {}
    for rec in counts.to_dict("records"):
        for name in ("n_drawn", "n_excluded", "n_kept"):
            out[f"{rec['dataset']}.exclusion.{rec['model']}.{name}"] = int(rec[name])
    return out


def write_exclusions(exclusions: pd.DataFrame, path: str | Path) -> Path:
    """Write the exclusion list as CSV (header only when nothing is excluded), atomically."""
    return atomic_write_text(path, exclusions[list(EXCLUSION_COLUMNS)].to_csv(index=False))


def describe_counts(counts: pd.DataFrame) -> str:
    """The counts in words for captions, e.g. ``nanolagenda: 3,600 drawn, 538 removed for every model (refused by
    gpt-4v), 3,062 kept``."""
    return "; ".join(
        f"{r['dataset']}: {r['n_drawn']:,} drawn, {r['n_excluded']:,} removed for every model (refused by "
        f"{r['model']}), {r['n_kept']:,} kept"
        for r in counts.to_dict("records")
    )
