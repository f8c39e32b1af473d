"""Tables in the paper's layouts (tables 1-10), filled with our evaluation rows, as markdown and LaTeX.

Each paper table is rebuilt with the paper's columns and row order. Our rows come from the data set
that plays the paper data set's role (`roles`, e.g. the demo set plays LAGENDA). Where our data set
IS the paper's data set and the paper reports the same model and input, the cell shows the paper's
number and the difference beside ours; paper rows we have no predictions for are kept, marked
"no predictions yet", so a researcher sees what is missing. `summary.md` lists every evaluation row,
the paper's "answered" view beside the refusal-aware "common" view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.errors import InputError
from agegender.metrics import EVAL_COLUMNS, VIEWS
from agegender.report.paper import (
    DATASET_NAMES,
    INPUT_NAMES,
    METRIC_HEADERS,
    PAPER_DATASETS,
    PAPER_TABLES,
    RATE_METRICS,
    PaperRow,
    PaperTable,
    load_paper_results,
    model_display_name,
)

#: the name used for the evaluation table in error messages (it arrives as a DataFrame, not a file).
ROWS_SOURCE = "evaluation rows"

KEY_COLUMNS: tuple[str, ...] = ("dataset", "input", "model", "view")
COUNT_COLUMNS: tuple[str, ...] = ("n_total", "n_answered", "age_n", "gender_n", "class_n")
METRIC_COLUMNS: tuple[str, ...] = (
    "coverage",
    "age_mae",
    "age_cs5",
    "age_mape",
    "age_ce20",
    "gender_acc",
    "class_acc",
    "class_mae",
)
SUMMARY_COLUMNS: tuple[str, ...] = EVAL_COLUMNS

_KEY_HEADERS = {"model": "Model", "train_dataset": "Train Dataset", "dataset": "Test Dataset", "input": "Input"}
NO_PREDICTIONS = "paper only: no predictions yet"


# --------------------------------------------------------------------------------------------- formatting


def format_metric(metric: str, value: float | None) -> str:
    """Format one metric value as the paper prints it.

    Args:
        metric: metric id; rates (`RATE_METRICS`) are fractions and shown as percent with 2 decimals,
            `class_mae` with 3 decimals, other MAEs with 2.
        value: the value, or None/NaN for "not available".

    Returns:
        The text, "-" for a missing value.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    value = float(value)
    if metric in RATE_METRICS:
        return f"{100.0 * value:.2f}"
    if metric == "class_mae":
        return f"{value:.3f}"
    return f"{value:.2f}"


def format_delta(metric: str, ours: float, paper: float) -> str:
    """Format ours - paper in display units (percentage points for rates), with an explicit sign.

    Args:
        metric: metric id.
        ours: our value (fraction for rates).
        paper: the paper's value (fraction for rates).

    Returns:
        e.g. "+0.07".
    """
    scale = 100.0 if metric in RATE_METRICS else 1.0
    digits = 3 if metric == "class_mae" else 2
    delta = round(scale * (float(ours) - float(paper)), digits)
    # round() may leave -0.0, which would print as "-0.00" for a perfect match
    return f"{delta + 0.0:+.{digits}f}"


def _num(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _our_cell(row: Mapping[str, object], metric: str, paper: float | None = None) -> str:
    value = _num(row.get(metric))
    text = format_metric(metric, value)
    lo, hi = _num(row.get(f"{metric}_ci_low")), _num(row.get(f"{metric}_ci_high"))
    if value is not None and lo is not None and hi is not None:
        text += f" [{format_metric(metric, lo)}, {format_metric(metric, hi)}]"
    if paper is not None:
        text += f"; paper {format_metric(metric, paper)}"
        if value is not None:
            text += f" (Δ {format_delta(metric, value, paper)})"
    return text


def _coverage_cell(row: Mapping[str, object]) -> str:
    n_total, n_answered = _num(row.get("n_total")), _num(row.get("n_answered"))
    cov = _num(row.get("coverage"))
    if cov is None and n_total:
        cov = (n_answered or 0.0) / n_total
    if n_total is None or n_answered is None:
        return format_metric("coverage", cov) + ("%" if cov is not None else "")
    return f"{int(n_answered)}/{int(n_total)} ({format_metric('coverage', cov)}%)"


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
        c for c in out.columns if c in COUNT_COLUMNS or c in METRIC_COLUMNS or c.endswith(("_ci_low", "_ci_high"))
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


def _key_cells(
    table: PaperTable,
    model: str,
    dataset_label: str,
    input_kind: str,
    train_dataset: str | None,
    model_names: Mapping[str, str] | None,
) -> list[str]:
    cells = []
    for key in table.key_columns:
        if key == "model":
            name = model_display_name(model, dict(model_names or {}))
            # tables without an input column still need it: our models may run several inputs
            if "input" not in table.key_columns:
                name += f" ({INPUT_NAMES.get(input_kind, input_kind)})"
            cells.append(name)
        elif key == "train_dataset":
            cells.append(DATASET_NAMES.get(train_dataset, train_dataset) if train_dataset else "-")
        elif key == "dataset":
            cells.append(dataset_label)
        else:
            cells.append(INPUT_NAMES.get(input_kind, input_kind))
    return cells


def build_table(
    table: PaperTable,
    rows: pd.DataFrame,
    paper: pd.DataFrame,
    roles: Mapping[str, str | None],
    model_names: Mapping[str, str] | None = None,
) -> tuple[list[str], list[list[str]], list[str]]:
    """Fill one paper table's layout with our rows and the paper's numbers.

    Args:
        table: the layout (`PAPER_TABLES[n]`).
        rows: validated evaluation rows (any view; only "answered" is used, the paper's view).
        paper: `load_paper_results()`.
        roles: paper data set id -> our data set id (None: nothing plays that role).
        model_names: extra display names.

    Returns:
        (header, body rows, our data set ids used), all as text.
    """
    header = [_KEY_HEADERS[k] for k in table.key_columns] + [METRIC_HEADERS[m] for m in table.metrics]
    header += ["Coverage (answered/total)", "Source"]
    role_of = {d: roles.get(d, d) for d in table.datasets}
    our_sets = [d for d in dict.fromkeys(role_of.values()) if d is not None]
    answered = rows[(rows["view"] == "answered") & rows["dataset"].isin(our_sets)]
    paper_pairs = {(r.model, r.input) for r in table.rows}
    in_paper = [(m, i) in paper_pairs for m, i in zip(answered["model"], answered["input"], strict=True)]
    answered = answered[answered["input"].isin(table.inputs).to_numpy(dtype=bool) | np.asarray(in_paper, dtype=bool)]
    ours = {(r["dataset"], r["input"], r["model"]): r for r in answered.to_dict("records")}
    reported: dict[tuple[str, str, str], dict[str, float]] = {}
    tpaper = paper[paper["table"] == table.number]
    for model, dataset, input_kind, metric, value in zip(
        tpaper["model"], tpaper["dataset"], tpaper["input"], tpaper["metric"], tpaper["value"], strict=True
    ):
        reported.setdefault((str(model), str(dataset), str(input_kind)), {})[str(metric)] = float(value)

    def paper_values(prow: PaperRow) -> dict[str, float]:
        return reported.get((prow.model, prow.dataset, prow.input), {})

    body: list[list[str]] = []
    used: set[tuple[str, str, str]] = set()
    for prow in table.rows:
        pvals = paper_values(prow)
        paper_cells = [format_metric(m, pvals.get(m)) for m in table.metrics]
        paper_label = DATASET_NAMES.get(prow.dataset, prow.dataset)
        our_set = role_of.get(prow.dataset)
        key = (our_set, prow.input, prow.model)
        if key in used:
            # two paper data sets mapped onto one of ours: show our row once, under the first
            keys = _key_cells(table, prow.model, paper_label, prow.input, prow.train_dataset, model_names)
            body.append(keys + paper_cells + ["-", f"paper ({paper_label})"])
            continue
        if our_set is not None and key in ours:
            row = ours[key]
            used.add(key)
            if our_set == prow.dataset:
                cells = [_our_cell(row, m, pvals.get(m)) for m in table.metrics]
                keys = _key_cells(table, prow.model, paper_label, prow.input, prow.train_dataset, model_names)
                body.append(keys + cells + [_coverage_cell(row), "ours vs paper"])
                continue
            cells = [_our_cell(row, m) for m in table.metrics]
            keys = _key_cells(table, prow.model, our_set, prow.input, None, model_names)
            body.append(keys + cells + [_coverage_cell(row), f"ours ({our_set})"])
            keys = _key_cells(table, prow.model, paper_label, prow.input, prow.train_dataset, model_names)
            body.append(keys + paper_cells + ["-", f"paper ({paper_label})"])
            continue
        keys = _key_cells(table, prow.model, paper_label, prow.input, prow.train_dataset, model_names)
        body.append(keys + paper_cells + ["-", NO_PREDICTIONS])

    # our models the paper's table does not list, grouped by model like the paper's rows
    dataset_order = {d: i for i, d in enumerate(our_sets)}
    input_order = {k: i for i, k in enumerate(table.inputs)}
    rest = sorted(
        (k for k in ours if k not in used),
        key=lambda k: (k[2], dataset_order.get(k[0], 99), input_order.get(k[1], 99), k[1]),
    )
    for dataset, input_kind, model in rest:
        row = ours[(dataset, input_kind, model)]
        keys = _key_cells(table, model, dataset, input_kind, None, model_names)
        body.append(keys + [_our_cell(row, m) for m in table.metrics] + [_coverage_cell(row), f"ours ({dataset})"])
    have = sorted({k[0] for k in ours})
    return header, body, have


def table_caption(
    table: PaperTable,
    roles: Mapping[str, str | None],
    have: Sequence[str],
    caption_note: str | None = None,
) -> str:
    """Caption of one table: which data play the paper's data set, the paper's caption, how to read cells.

    Args:
        table: the layout.
        roles: paper data set id -> our data set id.
        have: our data set ids that have rows in the table.
        caption_note: e.g. "demo data"; included verbatim.

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
    text += " Our cells: value on the answered samples [95% CI]; rates in %; Δ = ours - paper."
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
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def _summary(rows: pd.DataFrame, caption_note: str | None) -> str:
    view_order = {v: i for i, v in enumerate(VIEWS)}
    ordered = sorted(
        rows.to_dict("records"), key=lambda r: (r["dataset"], r["input"], r["model"], view_order[r["view"]])
    )
    header = ["Dataset", "Input", "Model", "View", "n total", "n answered", "Coverage, %", "Age n", "Age MAE",
              "Age CS@5, %", "Age MAPE, %", "Age CE@20, %", "Gender n", "Gender Acc, %", "Class scheme", "Class n",
              "Class Acc, %", "Class MAE"]  # fmt: skip
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
    caption = (
        f"{title}: 'answered' is the paper's view (each model on the samples it answered); 'common' is the "
        "refusal-aware view (every model of a data set and input on the samples all of them answered). "
        "Rates in %; 95% CI in brackets."
    )
    if not body:
        caption += " No predictions exist yet."
    return render_markdown(header, body, caption)


def write_tables(
    rows: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    roles: Mapping[str, str | None] | None = None,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write paper tables 1-10 (markdown and LaTeX) filled with our rows, and `summary.md`.

    Args:
        rows: the evaluation table of `agegender.metrics.evaluate` (columns dataset, input, model, view,
            n_total, n_answered, coverage, age_*, gender_*, class_*, optional `<metric>_ci_low/_ci_high`);
            rates are fractions. None or empty: every table lists the paper's rows only.
        out_dir: folder to write into (created).
        roles: paper data set id -> our data set id playing its role (e.g. {"nanolagenda": "nanodemo"});
            a paper data set missing from the mapping plays itself; None means nothing plays it.
        caption_note: text every caption carries, e.g. "demo data".
        model_names: display names for model ids the paper does not have (or overrides).

    Returns:
        The files written, in order: table1.md, table1.tex, ..., table10.tex, summary.md.

    Raises:
        InputError: for a malformed evaluation table (missing column, unknown view, duplicate row,
            non-numeric metric), naming the row and field.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checked = _check_rows(rows)
    role_map: dict[str, str | None] = {d: d for d in PAPER_DATASETS}
    role_map.update(roles or {})
    paper = load_paper_results()
    written: list[Path] = []
    for number, table in PAPER_TABLES.items():
        header, body, have = build_table(table, checked, paper, role_map, model_names)
        caption = table_caption(table, role_map, have, caption_note)
        written.append(_write(out / f"table{number}.md", render_markdown(header, body, caption)))
        written.append(
            _write(out / f"table{number}.tex", render_latex(header, body, caption, f"tab:paper-table{number}"))
        )
    written.append(_write(out / "summary.md", _summary(checked, caption_note)))
    return written
