"""Tables in the paper's layouts (tables 1-10), filled with our evaluation rows, as markdown and LaTeX.

Each paper table is rebuilt with the paper's columns and row order. Our rows come from the data set
that plays the paper data set's role (`roles`, e.g. the demo set plays LAGENDA). Where our data set
IS the paper's data set and the paper reports the same model and input, the cell shows the paper's
number and the difference beside ours; paper rows we have no predictions for are kept, marked
"no predictions yet", so a researcher sees what is missing. `summary.md` lists every evaluation row
in every view (`agegender.metrics.VIEWS`).

Each of our rows is in the view the paper used for that table (`PaperTable.view`): `kept` for table 8
(each model on its answers among the NanoLAGENDA samples left after ChatGPT4V's refusals were removed
for every model), `answered` (each model on its own answers) elsewhere, and `answered` where our data
set has no refusal exclusion, which the caption then says. Right under it, a row marked "all-answered"
gives the refusal-aware `common` view: every model of that (data set, input) on the kept samples all of
them answered, with that number of samples in its coverage cell. Since those samples are a subset of
what the model answered, equal counts mean equal sample sets and equal numbers: such a row is not
repeated but its source says "same in both views", and when that holds for every row of a table the
caption says the two views coincide instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.assurance import too_few_text
from agegender.errors import InputError
from agegender.exclusion import PAPER_NANOLAGENDA_COUNTS, describe_counts
from agegender.files import atomic_write_text
from agegender.metrics import (
    COUNT_COLUMNS,
    EVAL_COLUMNS,
    FAIRNESS_METRICS,
    METRICS_BY_NAME,
    VIEWS,
    MetricDef,
    group_spread,
    metric_def,
)
from agegender.report.paper import (
    DATASET_NAMES,
    INPUT_NAMES,
    PAPER_TABLES,
    PaperTable,
    load_paper_results,
    model_display_name,
    resolve_roles,
)

#: the name used for the evaluation table in error messages (it arrives as a DataFrame, not a file).
ROWS_SOURCE = "evaluation rows"

KEY_COLUMNS: tuple[str, ...] = ("dataset", "input", "model", "view")
SUMMARY_COLUMNS: tuple[str, ...] = EVAL_COLUMNS
#: headers of the summary's columns that are not metrics (those take `MetricDef.column_label`)
_SUMMARY_HEADERS = {"dataset": "Dataset", "input": "Input", "model": "Model", "view": "View", "n_total": "n total",
                    "n_answered": "n answered", "age_n": "Age n", "gender_n": "Gender n",
                    "class_scheme": "Class scheme", "class_n": "Class n", "challenge_n": "Challenge n",
                    "minor_n": "Minors n", "child_band_n": "Child band n", "adult_n": "Adults n"}  # fmt: skip

_KEY_HEADERS = {"model": "Model", "train_dataset": "Train Dataset", "dataset": "Test Dataset", "input": "Input"}
NO_PREDICTIONS = "paper only: no predictions yet"
#: the source of our row on the paper's own data set, model and input (cells carry paper value and Δ).
OURS_VS_PAPER = "ours vs paper"
#: marks the refusal-aware ("common" view) row under one of ours.
ALL_ANSWERED = "all-answered"
#: added to the source of a row whose two views are the same samples (so no second row is printed).
SAME_IN_BOTH_VIEWS = "same in both views"
#: what each view scores, for captions (`agegender.metrics.VIEWS`).
VIEW_WORDS = {
    "answered": "each model on the samples it answered ('answered' view)",
    "kept": "each model on the samples it answered among those kept after the refusal exclusion removed a named "
    "model's refusals for every model ('kept' view)",
    "common": "every model of a data set and input on the kept samples all of them answered ('common' view)",
}
#: the metrics whose cells carry significance marks (`agegender.metrics.versus_best`): the MAEs and gender accuracy
SIGNIFICANCE_METRICS: tuple[str, ...] = ("age_mae", "class_mae", "gender_acc")
#: marks the best value of a column among every model of the row's data set and input
BEST_MARK = "★"
#: marks a value whose paired difference to that best is not significant (its interval includes 0)
TIED_MARK = "≈★"
#: (view, our data set, input, model, metric) -> the mark of that cell
Marks = Mapping[tuple[str, str, str, str, str], str]


# --------------------------------------------------------------------------------------------- formatting


def _num(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _our_cell(row: Mapping[str, object], metric: str | MetricDef, paper: float | None = None, mark: str = "") -> str:
    definition = metric if isinstance(metric, MetricDef) else metric_def(metric)
    metric = definition.name
    value = _num(row.get(metric))
    text = definition.format(value)
    lo, hi = _num(row.get(f"{metric}_ci_low")), _num(row.get(f"{metric}_ci_high"))
    if value is not None and lo is not None and hi is not None:
        text += f" [{definition.format(lo)}, {definition.format(hi)}]"
    if mark and value is not None:
        text += f" {mark}"
    if paper is not None:
        text += f"; paper {definition.format(paper)}"
        if value is not None:
            text += f" (Δ {definition.format_delta(value, paper)})"
    return text


def _coverage_cell(row: Mapping[str, object]) -> str:
    n_total, n_answered = _num(row.get("n_total")), _num(row.get("n_answered"))
    cov = _num(row.get("coverage"))
    if cov is None and n_total and n_answered is not None:
        cov = n_answered / n_total
    coverage = metric_def("coverage").format(cov)
    if n_total is None or n_answered is None:
        return coverage + ("%" if cov is not None else "")
    return f"{int(n_answered)}/{int(n_total)} ({coverage}%)"


# --------------------------------------------------------------------------------------------- validation


def _check_rows(rows: pd.DataFrame | None) -> pd.DataFrame:
    """Validate the evaluation table and return a copy with the optional columns filled."""
    if rows is None or (len(rows) == 0 and not set(KEY_COLUMNS) <= set(rows.columns)):
        rows = pd.DataFrame({c: pd.Series(dtype="object") for c in KEY_COLUMNS})
    for col in KEY_COLUMNS:
        if col not in rows.columns:
            raise InputError("required column is missing", file=ROWS_SOURCE, field=col)
    out = rows.reset_index(drop=True).copy()
    for col in KEY_COLUMNS:
        missing = out[col].isna()
        if missing.any():
            raise InputError("value is missing", file=ROWS_SOURCE, row=int(missing.to_numpy().argmax()) + 1, field=col)
        out[col] = out[col].astype(str)
    bad = ~out["view"].isin(VIEWS)
    if bad.any():
        pos = int(bad.to_numpy().argmax())
        raise InputError(
            f"{out['view'].iloc[pos]!r} is not one of {list(VIEWS)}", file=ROWS_SOURCE, row=pos + 1, field="view"
        )
    dup = out.duplicated(list(KEY_COLUMNS))
    if dup.any():
        raise InputError(
            "duplicate row for (dataset, input, model, view)",
            file=ROWS_SOURCE,
            row=int(dup.to_numpy().argmax()) + 1,
            field="model",
        )
    numeric = [
        c for c in out.columns if c in COUNT_COLUMNS or c in METRICS_BY_NAME or c.endswith(("_ci_low", "_ci_high"))
    ]
    for col in numeric:
        converted = pd.to_numeric(out[col], errors="coerce")
        bad = converted.isna() & out[col].notna()
        if bad.any():
            raise InputError("value is not a number", file=ROWS_SOURCE, row=int(bad.to_numpy().argmax()) + 1, field=col)
        out[col] = converted.astype("float64")
    if "class_scheme" not in out.columns:
        out["class_scheme"] = pd.NA
    return out


# --------------------------------------------------------------------------------------------- table building

#: (our data set, input, model): how our evaluation rows are looked up.
RowKey = tuple[str, str, str]


@dataclass
class BuiltTable:
    """One paper table filled with our rows, before rendering.

    Attributes:
        header: column names.
        body: rows of cell texts.
        have: our data set ids that have rows in the table, sorted.
        common_n: (our data set, input) -> (samples every model of the group answered, samples in
            total), for the groups of our rows that have refusal-aware rows.
        views: how the two views relate over our rows: "differ" (at least one all-answered row is
            printed), "coincide" (every row is the same in both views), "missing" (the evaluation has
            no refusal-aware rows for them) or "none" (no rows of ours).
        view_of: our data set id -> the view its rows are in: the table's, or `answered` where the
            evaluation has no rows in the table's view for it (no refusal exclusion is set).
    """

    header: list[str]
    body: list[list[str]]
    have: list[str] = field(default_factory=list)
    common_n: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    views: str = "none"
    view_of: dict[str, str] = field(default_factory=dict)
    #: whether a cell carries a significance mark (`BEST_MARK`, `TIED_MARK`)
    marked: bool = False


def _key_cells(
    table: PaperTable,
    model: str,
    dataset_label: str,
    input_kind: str,
    train_dataset: str | None,
    model_names: Mapping[str, str] | None,
    all_answered: bool = False,
) -> list[str]:
    cells = []
    for key in table.key_columns:
        if key == "model":
            name = model_display_name(model, dict(model_names or {}))
            # tables without an input column still need it: our models may run several inputs
            tags = [] if "input" in table.key_columns else [INPUT_NAMES.get(input_kind, input_kind)]
            if all_answered:
                tags.append(ALL_ANSWERED)
            cells.append(f"{name} ({', '.join(tags)})" if tags else name)
        elif key == "train_dataset":
            cells.append(DATASET_NAMES.get(train_dataset, train_dataset) if train_dataset else "-")
        elif key == "dataset":
            cells.append(dataset_label)
        else:
            cells.append(INPUT_NAMES.get(input_kind, input_kind))
    return cells


def _rows_by_key(rows: pd.DataFrame) -> dict[RowKey, dict[str, object]]:
    return {(r["dataset"], r["input"], r["model"]): r for r in rows.to_dict("records")}


def _rows_in_view(rows: pd.DataFrame, view: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows in `view` for the data sets that have them, `answered` rows for the others (and which is which).

    A `kept` view exists only for a data set with a refusal exclusion; without one nothing was removed, so
    each model's own answers are what that view would score.
    """
    in_view = set(rows.loc[rows["view"] == view, "dataset"])
    view_of = {d: (view if d in in_view else "answered") for d in sorted(set(rows["dataset"]))}
    chosen = rows["view"] == rows["dataset"].map(view_of)
    return rows[chosen.to_numpy(dtype=bool)], view_of


def build_table(
    table: PaperTable,
    rows: pd.DataFrame,
    paper: pd.DataFrame,
    roles: Mapping[str, str | None],
    model_names: Mapping[str, str] | None = None,
    marks: Marks | None = None,
) -> BuiltTable:
    """Fill one paper table's layout with our rows (both views) and the paper's numbers.

    Args:
        table: the layout (`PAPER_TABLES[n]`).
        rows: validated evaluation rows; rows in the table's view (`PaperTable.view`; `answered` where a data
            set has none) fill the layout, "common" rows add the all-answered row under each of ours where the
            two views differ.
        paper: `load_paper_results()`.
        roles: paper data set id -> our data set id (None: nothing plays that role).
        model_names: extra display names.
        marks: `significance_marks` of the evaluation; our rows' cells (not the all-answered ones, which the
            comparison does not score) carry the mark of their view, data set, input, model and metric.

    Returns:
        The header, body and view summary, all cells as text.
    """
    header = [_KEY_HEADERS[k] for k in table.key_columns] + [metric_def(m).paper_header for m in table.metrics]
    header += ["Coverage (answered/total)", "Source"]
    role_of = {d: roles.get(d, d) for d in table.datasets}
    our_sets = [d for d in dict.fromkeys(role_of.values()) if d is not None]
    candidates = rows[rows["dataset"].isin(our_sets)]
    paper_pairs = {(r.model, r.input) for r in table.rows}
    in_paper = [(m, i) in paper_pairs for m, i in zip(candidates["model"], candidates["input"], strict=True)]
    candidates = candidates[
        candidates["input"].isin(table.inputs).to_numpy(dtype=bool) | np.asarray(in_paper, dtype=bool)
    ]
    in_view, view_of = _rows_in_view(candidates, table.view)
    ours = _rows_by_key(in_view)
    commons = _rows_by_key(candidates[candidates["view"] == "common"])
    reported: dict[tuple[str, str, str], dict[str, float]] = {}
    tpaper = paper[paper["table"] == table.number]
    for model, dataset, input_kind, metric, value in zip(
        tpaper["model"], tpaper["dataset"], tpaper["input"], tpaper["metric"], tpaper["value"], strict=True
    ):
        reported.setdefault((str(model), str(dataset), str(input_kind)), {})[str(metric)] = float(value)

    # (cells, index of our answered row in `entries` whose common view coincides) are collected first:
    # whether to mark coinciding rows depends on whether any row of the table differs.
    entries: list[list[str]] = []
    same_rows: list[int] = []
    marked: list[bool] = []
    common_n: dict[tuple[str, str], tuple[int, int]] = {}

    def add_ours(key: RowKey, keys: list[str], common_keys: list[str], source: str, pvals: Mapping[str, float]) -> None:
        """Our answered row, then its all-answered row unless the two are the same samples."""
        row = ours[key]
        cell_marks = [(marks or {}).get((view_of[key[0]], *key, m), "") for m in table.metrics]
        cells = [_our_cell(row, m, pvals.get(m), mark) for m, mark in zip(table.metrics, cell_marks, strict=True)]
        entries.append(keys + cells + [_coverage_cell(row), source])
        marked.append(any(cell_marks))
        common = commons.get(key)
        if common is None:
            return
        n_common, n_total = _num(common.get("n_answered")), _num(common.get("n_total"))
        if n_common is not None and n_total is not None:
            common_n[(key[0], key[1])] = (int(n_common), int(n_total))
        # common samples are a subset of the answered ones: the same count means the same samples
        if n_common is not None and n_common == _num(row.get("n_answered")):
            same_rows.append(len(entries) - 1)
            return
        # no paper comparison here: the paper reports only its own view
        cells = [_our_cell(common, m) for m in table.metrics]
        common_source = "ours" if source == OURS_VS_PAPER else source
        entries.append(common_keys + cells + [_coverage_cell(common), f"{common_source}, {ALL_ANSWERED}"])

    used: set[RowKey] = set()
    for prow in table.rows:
        pvals = reported.get((prow.model, prow.dataset, prow.input), {})
        paper_cells = [metric_def(m).format(pvals.get(m)) for m in table.metrics]
        paper_label = DATASET_NAMES.get(prow.dataset, prow.dataset)
        paper_keys = _key_cells(table, prow.model, paper_label, prow.input, prow.train_dataset, model_names)
        our_set = role_of.get(prow.dataset)
        key = (str(our_set), prow.input, prow.model)
        if our_set is not None and key in ours and key not in used:
            used.add(key)
            if our_set == prow.dataset:
                common_keys = _key_cells(
                    table, prow.model, paper_label, prow.input, prow.train_dataset, model_names, all_answered=True
                )
                add_ours(key, paper_keys, common_keys, OURS_VS_PAPER, pvals)
                continue
            keys = _key_cells(table, prow.model, our_set, prow.input, None, model_names)
            common_keys = _key_cells(table, prow.model, our_set, prow.input, None, model_names, all_answered=True)
            add_ours(key, keys, common_keys, f"ours ({our_set})", {})
            entries.append(paper_keys + paper_cells + ["-", f"paper ({paper_label})"])
            continue
        if our_set is not None and key in used:
            # two paper data sets mapped onto one of ours: our row is shown once, under the first
            entries.append(paper_keys + paper_cells + ["-", f"paper ({paper_label})"])
            continue
        entries.append(paper_keys + paper_cells + ["-", NO_PREDICTIONS])

    # our models the paper's table does not list, grouped by model like the paper's rows
    dataset_order = {d: i for i, d in enumerate(our_sets)}
    input_order = {k: i for i, k in enumerate(table.inputs)}
    rest = sorted(
        (k for k in ours if k not in used),
        key=lambda k: (k[2], dataset_order.get(k[0], 99), input_order.get(k[1], 99), k[1]),
    )
    for dataset, input_kind, model in rest:
        keys = _key_cells(table, model, dataset, input_kind, None, model_names)
        common_keys = _key_cells(table, model, dataset, input_kind, None, model_names, all_answered=True)
        add_ours((dataset, input_kind, model), keys, common_keys, f"ours ({dataset})", {})

    n_common_rows = sum(e[-1].endswith(f", {ALL_ANSWERED}") for e in entries)
    if not ours:
        views = "none"
    elif n_common_rows:
        views = "differ"
        for pos in same_rows:
            entries[pos][-1] += f"; {SAME_IN_BOTH_VIEWS}"
    elif same_rows:
        views = "coincide"
    else:
        views = "missing"
    ordered_n = dict(
        sorted(common_n.items(), key=lambda kv: (dataset_order.get(kv[0][0], 99), input_order.get(kv[0][1], 99), kv[0]))
    )
    have = sorted({k[0] for k in ours})
    return BuiltTable(header, entries, have, ordered_n, views, {d: view_of[d] for d in have}, any(marked))


def significance_marks(comparisons: pd.DataFrame | None) -> dict[tuple[str, str, str, str, str], str]:
    """The cells' marks from `agegender.metrics.versus_best` rows: `BEST_MARK` for each column's best model,
    `TIED_MARK` for a model whose paired difference to it is not significant, nothing for a significantly worse
    one or one that shares no sample with the best (no evidence either way is no tie).

    Returns:
        (view, dataset, input, model, metric) -> mark, for the marked cells only.
    """
    marks: dict[tuple[str, str, str, str, str], str] = {}
    if comparisons is None:
        return marks
    for r in comparisons.itertuples(index=False):  # over (model, metric) rows, not samples
        key = (str(r.view), str(r.dataset), str(r.input), str(r.model), str(r.metric))
        if r.model == r.best:
            marks[key] = BEST_MARK
        elif r.n > 0 and not r.significant:
            marks[key] = TIED_MARK
    return marks


def _significance_text(built: BuiltTable) -> str:
    """The caption's sentence on the significance marks, where the table has any."""
    if not built.marked:
        return ""
    return (
        f" {BEST_MARK} marks the best value of a column among every model evaluated on that data set and input (not "
        f"only those in this table); {TIED_MARK} marks a value whose paired bootstrap difference to that best, on "
        "the samples both were scored on, has a confidence interval that includes 0 (not significantly different); "
        "an unmarked value is significantly worse than the best (MAEs and gender accuracy only)."
    )


def _rows_view_text(table: PaperTable, built: BuiltTable) -> str:
    """The caption's sentence on which samples our rows score, and where that is not the paper's choice."""
    if not built.view_of:
        return ""
    text = ""
    for view in dict.fromkeys(built.view_of.values()):
        sets = ", ".join(d for d, v in built.view_of.items() if v == view)
        text += f" Our rows on {sets}: {VIEW_WORDS[view]}"
        if view != table.view:
            text += (
                f", as no refusal exclusion is set for them (evaluate.exclude_refused); the paper's table used the "
                f"'{table.view}' view"
            )
        text += "."
    return text


def _views_text(built: BuiltTable) -> str:
    """The caption's sentences on the refusal-aware view beside our rows."""
    groups = "; ".join(
        f"{dataset} / {INPUT_NAMES.get(input_kind, input_kind)}: {n} of {total}"
        # an empty common set is no bug: one model of the group answered nothing
        + (", as one of its models answered none" if n == 0 and total else "")
        for (dataset, input_kind), (n, total) in built.common_n.items()
    )
    if built.views == "differ":
        return (
            f" The row marked '{ALL_ANSWERED}' right under one of ours is the refusal-aware view: every "
            "model evaluated on that data set and input (not only those in this table), scored on the kept samples "
            f"all of them answered ({groups})."
            + (
                f" Rows marked '{SAME_IN_BOTH_VIEWS}' answered exactly those samples, so their refusal-aware numbers "
                "are the ones shown."
                if any(row[-1].endswith(SAME_IN_BOTH_VIEWS) for row in built.body)
                else ""
            )
        )
    if built.views == "coincide":
        return (
            " The refusal-aware view (every model of a data set and input on the kept samples all of them answered) "
            f"coincides with our rows here: every model answered the same samples ({groups})."
        )
    if built.views == "missing":
        return " The evaluation rows hold no refusal-aware ('common') view for our rows."
    return ""


def table_caption(
    table: PaperTable,
    roles: Mapping[str, str | None],
    have: Sequence[str],
    caption_note: str | None = None,
    built: BuiltTable | None = None,
    exclusion_counts: pd.DataFrame | None = None,
) -> str:
    """Caption of one table: which data play the paper's data set, the paper's caption, how to read cells.

    Args:
        table: the layout.
        roles: paper data set id -> our data set id.
        have: our data set ids that have rows in the table.
        caption_note: e.g. "demo data"; included verbatim.
        built: the filled table; when given, the caption says which view our rows are in, how it relates
            to the refusal-aware view and on how many samples that one is computed.
        exclusion_counts: `agegender.exclusion.exclusion_counts` of the evaluation; the caption states
            the drawn, excluded and kept samples of the table's data sets, and for NanoLAGENDA that the
            paper's own counts do not add up.

    Returns:
        The caption text.
    """
    mapped = [roles.get(d, d) for d in table.datasets]
    ours = ", ".join(str(d) for d in dict.fromkeys(mapped) if d is not None) or "no data set"
    identity = all(m == d for m, d in zip(mapped, table.datasets, strict=True))
    if caption_note:
        head = f"Table {table.number} layout on {caption_note} ({ours})"
    elif identity:
        head = f"Table {table.number}"
    else:
        head = f"Table {table.number} layout on {ours}"
    text = f"{head}: {table.caption}"
    text += " Our cells: value [95% CI]; rates in %; Δ = ours - paper; '-' = no value."
    if built is not None:
        text += _rows_view_text(table, built) + _views_text(built) + _significance_text(built)
    counts = exclusion_counts if exclusion_counts is not None else pd.DataFrame(columns=["dataset"])
    counts = counts[counts["dataset"].isin([m for m in mapped if m is not None])]
    if len(counts):
        text += f" Samples: {describe_counts(counts)}."
    if "nanolagenda" in table.datasets:
        text += " " + PAPER_NANOLAGENDA_COUNTS
    missing = []
    for paper_set, our_set in zip(table.datasets, mapped, strict=True):
        if our_set is None:
            missing.append(f"the {DATASET_NAMES.get(paper_set, paper_set)} role (no data set mapped)")
        elif our_set not in have:
            missing.append(our_set)
    if missing:
        text += f" No predictions exist yet for {', '.join(dict.fromkeys(missing))}."
    return text


# --------------------------------------------------------------------------------------------- writers


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(header: Sequence[str], body: Sequence[Sequence[str]], caption: str | None = None) -> str:
    """Render a table as GitHub markdown (no `tabulate` needed).

    Args:
        header: column names.
        body: rows of cell texts.
        caption: a paragraph written above the table.

    Returns:
        The markdown text, ending with a newline.
    """
    lines = []
    if caption:
        lines += [caption, ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


_LATEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
    # \ensuremath, not $...$: two marks side by side ("≈★") would otherwise open display math with "$$"
    "★": r"\ensuremath{\star}",
    "≈": r"\ensuremath{\approx}",
}


def latex_escape(text: str) -> str:
    """Escape text for LaTeX (underscores, percent signs, arrows, ...).

    Args:
        text: plain text.

    Returns:
        Text safe inside a LaTeX tabular or caption.
    """
    return "".join(_LATEX_CHARS.get(ch, ch) for ch in text)


def render_latex(header: Sequence[str], body: Sequence[Sequence[str]], caption: str, label: str) -> str:
    """Render a table as a LaTeX `table` with a booktabs `tabular`.

    Args:
        header: column names.
        body: rows of cell texts.
        caption: the caption (escaped here).
        label: the `\\label` key.

    Returns:
        The LaTeX text, ending with a newline.
    """
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\caption{" + latex_escape(caption) + "}",
        r"\label{" + label + "}",
        r"\begin{tabular}{" + "l" * len(header) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def _summary(rows: pd.DataFrame, caption_note: str | None) -> str:
    view_order = {v: i for i, v in enumerate(VIEWS)}
    ordered = sorted(
        rows.to_dict("records"), key=lambda r: (r["dataset"], r["input"], r["model"], view_order[r["view"]])
    )
    header = [METRICS_BY_NAME[c].column_label if c in METRICS_BY_NAME else _SUMMARY_HEADERS[c] for c in SUMMARY_COLUMNS]
    body = []
    for r in ordered:
        # ids, not display names: this is the full listing a script or a researcher greps
        cells = [r["dataset"], r["input"], r["model"], r["view"]]
        for col in SUMMARY_COLUMNS[4:]:
            value = r.get(col)
            if col in COUNT_COLUMNS:
                num = _num(value)
                cells.append("-" if num is None else str(int(num)))
            elif col == "class_scheme":
                cells.append(
                    "-"
                    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
                    else str(value)
                )
            else:
                cells.append(_our_cell(r, col))
        body.append(cells)
    title = "All evaluation rows" + (f" ({caption_note})" if caption_note else "")
    caption = f"{title}: " + "; ".join(VIEW_WORDS[v] for v in VIEWS) + ". Rates in %; 95% CI in brackets."
    if not body:
        caption += " No predictions exist yet."
    return render_markdown(header, body, caption)


#: file name (without suffix) of the age-assurance table
ASSURANCE_TABLE = "assurance"


def _assurance_cell(row: Mapping[str, object], definition: MetricDef) -> str:
    """The rate with its interval, or why it is not given (`too_few_text`)."""
    n = _num(row.get(definition.count_column))
    if _num(row.get(definition.name)) is None and (n or 0) < definition.min_n:
        return too_few_text(n, definition.min_n)
    return _our_cell(row, definition)


def assurance_table(
    rows: pd.DataFrame, assurance: Sequence[MetricDef], caption_note: str | None = None
) -> tuple[list[str], list[list[str]], str]:
    """The age-assurance table: per (dataset, input, model, view), each population's count and its rates.

    Args:
        rows: checked evaluation rows holding the rates' columns (`agegender.assurance.assurance_metrics`).
        assurance: the rates, in column order; rates over one population follow its count.
        caption_note: e.g. "demo data".

    Returns:
        (header, body, caption).
    """
    columns: list[str | MetricDef] = []
    for definition in assurance:
        if definition.count_column not in columns:
            columns.append(definition.count_column)
        columns.append(definition)
    header = [*(_SUMMARY_HEADERS[c] for c in KEY_COLUMNS)]
    header += [_SUMMARY_HEADERS[c] if isinstance(c, str) else c.column_label for c in columns]
    view_order = {v: i for i, v in enumerate(VIEWS)}
    ordered = sorted(
        rows.to_dict("records"), key=lambda r: (r["dataset"], r["input"], r["model"], view_order[r["view"]])
    )
    body = []
    for r in ordered:
        cells = [str(r[c]) for c in KEY_COLUMNS]
        for c in columns:
            if isinstance(c, str):
                n = _num(r.get(c))
                cells.append("-" if n is None else str(int(n)))
            else:
                cells.append(_assurance_cell(r, c))
        body.append(cells)
    min_n = max((d.min_n for d in assurance), default=1)
    title = "Age assurance (NIST IR 8525)" + (f" ({caption_note})" if caption_note else "")
    caption = (
        f"{title}: each rate is the share of the people counted beside it (true age from the labels) whose answered "
        "age estimate falls in the rate's range; rates in %, 95% bootstrap CI in brackets; a rate on fewer than "
        f"{min_n} people is not given. Views: " + "; ".join(VIEW_WORDS[v] for v in VIEWS) + "."
    )
    if not body:
        caption += " No predictions exist yet."
    return header, body, caption


def write_tables(
    rows: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    roles: Mapping[str, str | None] | None = None,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
    exclusion_counts: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
    assurance: Sequence[MetricDef] = (),
) -> list[Path]:
    """Write paper tables 1-10 (markdown and LaTeX) filled with our rows, and `summary.md`; with `assurance`, the
    age-assurance table too (`assurance.md`, `assurance.tex`).

    Args:
        rows: the evaluation table of `agegender.metrics.evaluate` (columns dataset, input, model, view,
            n_total, n_answered, coverage, age_*, gender_*, class_*, optional `<metric>_ci_low/_ci_high`);
            rates are fractions. None or empty: every table lists the paper's rows only.
        out_dir: folder to write into (created).
        roles: paper data set id -> our data set id playing its role (e.g. {"nanolagenda": "nanodemo"});
            a paper data set missing from the mapping plays itself; None means nothing plays it.
        caption_note: text every caption carries, e.g. "demo data".
        model_names: display names for model ids the paper does not have (or overrides).
        exclusion_counts: the evaluation's refusal-exclusion counts (`agegender.evaluate.read_exclusion_counts`),
            stated in the captions of the tables on those data sets.
        comparisons: `agegender.evaluate.versus_best_tables` of the evaluation: the cells of
            `SIGNIFICANCE_METRICS` are marked by it (`significance_marks`); None marks nothing.
        assurance: the age-assurance rates the rows hold (`agegender.assurance.assurance_metrics`).

    Returns:
        The files written, in order: table1.md, table1.tex, ..., table10.tex, summary.md (then assurance.md,
        assurance.tex).

    Raises:
        InputError: for a malformed evaluation table (missing column, unknown view, duplicate row,
            non-numeric metric), naming the row and field.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checked = _check_rows(rows)
    role_map = resolve_roles(roles)
    paper = load_paper_results()
    marks = significance_marks(comparisons)
    written: list[Path] = []
    for number, table in PAPER_TABLES.items():
        built = build_table(table, checked, paper, role_map, model_names, marks)
        caption = table_caption(table, role_map, built.have, caption_note, built, exclusion_counts)
        written.append(_write(out / f"table{number}.md", render_markdown(built.header, built.body, caption)))
        latex = render_latex(built.header, built.body, caption, f"tab:paper-table{number}")
        written.append(_write(out / f"table{number}.tex", latex))
    written.append(_write(out / "summary.md", _summary(checked, caption_note)))
    if assurance:
        header, body, caption = assurance_table(checked, assurance, caption_note)
        written.append(_write(out / f"{ASSURANCE_TABLE}.md", render_markdown(header, body, caption)))
        written.append(_write(out / f"{ASSURANCE_TABLE}.tex", render_latex(header, body, caption, "tab:assurance")))
    return written


# --------------------------------------------------------------------------------------------- fairness view

#: the file stem of the fairness table (`write_fairness_table`)
FAIRNESS_TABLE = "fairness"
#: what an attribute's values are, for the fairness table
_ATTRIBUTE_NAMES = {"gender": "Gender", "race": "Race"}
#: the Group cell of the row that gives the spread between an attribute's groups
SPREAD_LABEL = "spread: max - min (max / min)"


def _spread_cell(spread: pd.DataFrame, metric: str) -> str:
    """max - min in the metric's display units (percentage points for rates), then the ratio max / min."""
    hit = spread[spread["metric"] == metric]
    if hit.empty:
        return "-"
    row = hit.iloc[0]
    definition = metric_def(metric)
    ratio = _num(row["ratio"])
    return f"{definition.format(row['difference'])} ({'-' if ratio is None else f'{ratio:.2f}x'})"


def fairness_table(
    groups: pd.DataFrame, caption_note: str | None = None, model_names: Mapping[str, str] | None = None
) -> tuple[list[str], list[list[str]], str]:
    """The fairness view as a table: per model, input and attribute, its groups, then the spread between them.

    Args:
        groups: `agegender.metrics.group_metrics` rows (as `reports/fairness.csv` holds them).
        caption_note: text the caption carries, e.g. "demo data".
        model_names: extra display names.

    Returns:
        (header, body, caption), all cells as text.
    """
    header = ["Dataset", "Input", "Model", "Attribute", "Group"]
    for name in FAIRNESS_METRICS:
        header += [f"{metric_def(name).target.capitalize()} n", metric_def(name).column_label]  # type: ignore[union-attr]
    body: list[list[str]] = []
    keys = ["dataset", "input", "model", "attribute"]
    for key, block in groups.groupby(keys, sort=False):  # over (model, attribute) blocks, not samples
        dataset, input_kind, model, attribute = (str(k) for k in key)
        head = [
            dataset,
            INPUT_NAMES.get(input_kind, input_kind),
            model_display_name(model, dict(model_names or {})),
            _ATTRIBUTE_NAMES.get(attribute, attribute),
        ]
        for row in block.to_dict("records"):
            cells = [str(row["group"])]
            for name in FAIRNESS_METRICS:
                n = _num(row.get(f"{metric_def(name).target}_n"))
                cells += ["-" if n is None else str(int(n)), _our_cell(row, name)]
            body.append(head + cells)
        spread = group_spread(block)
        if len(spread):  # a single group has no spread
            body.append(head + [SPREAD_LABEL] + [c for m in FAIRNESS_METRICS for c in ("-", _spread_cell(spread, m))])
    return header, body, _fairness_caption(groups, caption_note)


def _fairness_caption(groups: pd.DataFrame, caption_note: str | None) -> str:
    datasets = sorted(set(groups["dataset"].astype(str)))
    raced = set(groups.loc[groups["attribute"] == "race", "dataset"].astype(str))
    text = "Fairness view" + (f" ({caption_note})" if caption_note else "")
    text += (
        ": age MAE and gender accuracy per ground-truth gender and, where a data set labels it, race; each model "
        "on the samples it answered (among those kept after a refusal exclusion, where one is set). Cells: value "
        "[95% CI]; rates in %; n = the samples a metric stands on; a sample without a label of an attribute is in "
        f"none of its groups. The row '{SPREAD_LABEL}' gives the difference between the largest and the smallest "
        "group value (percentage points for accuracy) and, in parentheses, their ratio (largest / smallest; '-' "
        "where the smallest is 0): the between-group comparison that NIST IR 8525 makes of age MAE by sex and "
        "region."
    )
    if not datasets:
        return text + " No predictions exist yet."
    no_race = [d for d in datasets if d not in raced]
    if no_race:
        text += f" No race labels in {', '.join(no_race)}: rows by gender only."
    return text


def write_fairness_table(
    groups: pd.DataFrame,
    out_dir: str | Path,
    *,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the fairness view (`fairness_table`) as `fairness.md` and `fairness.tex`.

    Returns:
        The two files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, body, caption = fairness_table(groups, caption_note, model_names)
    return [
        _write(out / f"{FAIRNESS_TABLE}.md", render_markdown(header, body, caption)),
        _write(out / f"{FAIRNESS_TABLE}.tex", render_latex(header, body, caption, "tab:fairness")),
    ]
