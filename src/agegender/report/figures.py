"""Figures of the report (png and pdf): MAE by age group, predicted vs true age, gender confusion, gallery.

Figures are drawn on `matplotlib.figure.Figure` objects directly (the Agg canvas), not through
pyplot, so that the module neither changes the global backend of a notebook nor leaks open
figures. Files are written without creation dates or software versions so that the same input
gives the same bytes (DVC then sees no change on a second run).
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from agegender.assurance import too_few_text
from agegender.data.crops import crop, load_image
from agegender.data.schema import FACE_BOX, GENDERS, PERSON_BOX, validate_predictions, validate_samples
from agegender.errors import InputError
from agegender.files import write_table
from agegender.metrics import MetricDef, age_mae, metric_def
from agegender.report.paper import INPUT_NAMES, model_display_name

log = logging.getLogger(__name__)

DPI = 150
FIGURE_NAMES: tuple[str, ...] = (
    "age_group_mae",
    "pred_vs_true",
    "gender_confusion",
    "learning_curve",
    "gallery",
    "age_assurance",
)
#: above this many points a panel of pred_vs_true is a hexbin instead of a scatter (readability).
HEXBIN_MIN_POINTS = 2000
#: the longest side of a gallery crop after downscaling; keeps files small for large photos.
GALLERY_MAX_SIDE = 256
#: gallery captions: font size (points), longest line (characters) before it wraps, narrowest panel (inches).
GALLERY_FONT = 6.5
GALLERY_WRAP = 52
GALLERY_MIN_PANEL = 1.4
#: characters of a grid panel's title line (3 panels a row at 8 pt)
PANEL_WRAP = 48
#: the tallest gallery panel, as a multiple of its width (a very tall crop is shown smaller, not stretched).
GALLERY_MAX_ASPECT = 1.6
AGE_GROUP_COLUMNS: tuple[str, ...] = ("dataset", "input", "model", "age_lo", "age_hi", "group", "n", "mae")
#: the columns of the pred_vs_true figure's data file (`dvc plots show` draws it, dvc.yaml `plots:`)
PRED_VS_TRUE_COLUMNS: tuple[str, ...] = ("dataset", "model", "input", "age_true", "age_pred")
#: what a figure without data says (a figure is still written, so the stage's outputs never change).
NO_PREDICTIONS = "no predictions yet"
#: input kind -> (line style, marker) of its lines in figure 3; the colour is the model's.
INPUT_STYLES: dict[str, tuple[str, str]] = {
    "face_body": ("-", "o"),
    "body": ("--", "s"),
    "body_wo_face": (":", "^"),
    "face": ("-.", "D"),
}


# --------------------------------------------------------------------------------------------- helpers


def _title(text: str, caption_note: str | None) -> str:
    return f"{text} ({caption_note})" if caption_note else text


def _label(model: str, input_kind: str, model_names: Mapping[str, str] | None) -> str:
    return f"{model_display_name(model, dict(model_names or {}))} [{INPUT_NAMES.get(input_kind, input_kind)}]"


def _panel_title(model: str, input_kind: str, model_names: Mapping[str, str] | None, stats: str) -> str:
    """A grid panel's title: the model and input, broken at spaces to fit one panel of a 3-wide grid at 8 pt (a long
    model name would otherwise run into its neighbours or off the figure), then `stats`."""
    label = textwrap.wrap(_label(model, input_kind, model_names), width=PANEL_WRAP, break_on_hyphens=False)
    return "\n".join([*label, stats])


def _save(fig: Figure, out_dir: Path, name: str, *, tight: bool = False) -> list[Path]:
    """Write `fig` as `<name>.png` and `<name>.pdf`; `tight` crops the page to what is drawn (nothing cut off)."""
    png, pdf = out_dir / f"{name}.png", out_dir / f"{name}.pdf"
    bbox = "tight" if tight else None
    # Software / dates in the metadata would change the bytes with every matplotlib release or run
    fig.savefig(png, dpi=DPI, metadata={"Software": None}, bbox_inches=bbox)
    fig.savefig(
        pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}, bbox_inches=bbox
    )
    return [png, pdf]


def _message_figure(title: str, message: str) -> Figure:
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)
    fig.suptitle(title, fontsize=11)
    return fig


def pick_dataset(candidates: Sequence[str], preferred: str | None = None) -> str | None:
    """Choose the data set a figure is drawn for.

    Args:
        candidates: data set ids that have data.
        preferred: the caller's choice; returned as is (even when absent, so the figure can say so).

    Returns:
        `preferred`, else the first (sorted) id containing "nano" (the paper draws figure 3 on
        NanoLAGENDA), else the first sorted id, else None.
    """
    if preferred is not None:
        return preferred
    ordered = sorted(set(candidates))
    nano = [d for d in ordered if "nano" in d.lower()]
    if nano:
        return nano[0]
    return ordered[0] if ordered else None


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, input) pairs in a stable order: model id, then the schema's input order."""
    order = {k: i for i, k in enumerate(INPUT_NAMES)}
    pairs = {(str(m), str(i)) for m, i in zip(frame["model"], frame["input"], strict=True)}
    return sorted(pairs, key=lambda p: (p[0], order.get(p[1], 99), p[1]))


def _overall_mae(rows: pd.DataFrame | None, dataset: str, model: str, input_kind: str) -> float | None:
    if rows is None or len(rows) == 0 or not {"dataset", "model", "input", "view", "age_mae"} <= set(rows.columns):
        return None
    hit = rows[
        (rows["dataset"] == dataset)
        & (rows["model"] == model)
        & (rows["input"] == input_kind)
        & (rows["view"] == "answered")
    ]
    if hit.empty or pd.isna(hit["age_mae"].iloc[0]):
        return None
    return float(hit["age_mae"].iloc[0])


def _joined(samples: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions with their sample's data set and ground truth attached (all statuses)."""
    cols = ["sample_id", "dataset", "age", "gender"]
    return predictions.merge(samples[cols], on="sample_id", how="inner", validate="many_to_one")


def _answered(joined: pd.DataFrame, dataset: str | None, truth: str, pred: str) -> pd.DataFrame:
    """The answered ("ok") predictions on `dataset` that have both the ground truth and the prediction."""
    keep = (joined["dataset"] == dataset) & (joined["status"] == "ok") & joined[truth].notna() & joined[pred].notna()
    return joined[keep]


def pred_vs_true_points(joined: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    """The points the pred_vs_true figure draws, as a table (`PRED_VS_TRUE_COLUMNS`) in a stable order.

    It is the figure's data file, so that `dvc plots show` can draw it (and diff it between commits) from a small
    committed CSV: ages only, no sample ids or images.
    """
    data = _answered(joined, dataset, "age", "age_pred").rename(columns={"age": "age_true"})
    points = data[list(PRED_VS_TRUE_COLUMNS)].astype({"age_true": "float64", "age_pred": "float64"})
    return points.sort_values(list(PRED_VS_TRUE_COLUMNS[1:])).reset_index(drop=True)


# --------------------------------------------------------------------------------------------- figures


def learning_curve_figure(history: pd.DataFrame | None, *, caption_note: str | None = None) -> Figure:
    """MiVOLO's learning curve from the `train_mivolo` stage's `history.csv`: validation age MAE and gender
    accuracy after every epoch (left and right axis), stages told apart by a dashed line where stage 2 starts.

    Args:
        history: one row per epoch (`stage`, `epoch`, `val_age_mae`, `val_gender_acc`, ...); None or empty when the
            profile trains no MiVOLO, and the figure says so.
        caption_note: e.g. "demo data", put in the title.
    """
    title = _title("MiVOLO learning curve (validation)", caption_note)
    needed = {"stage", "epoch", "val_age_mae", "val_gender_acc"}
    if history is None or history.empty or not needed <= set(history.columns):
        return _message_figure(title, "no MiVOLO trained in this profile")
    frame = history.reset_index(drop=True)
    x = np.arange(1, len(frame) + 1)
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, frame["val_age_mae"], marker="o", markersize=3, color="tab:blue", label="age MAE")
    ax.set_xlabel("epoch (both stages)")
    ax.set_ylabel("age MAE, years", color="tab:blue")
    acc = ax.twinx()
    acc.plot(x, frame["val_gender_acc"], marker="s", markersize=3, color="tab:orange", label="gender accuracy")
    acc.set_ylabel("gender accuracy", color="tab:orange")
    starts = x[(frame["stage"] != frame["stage"].shift()).to_numpy()][1:]
    for start in starts:
        ax.axvline(start - 0.5, color="grey", linestyle="--", linewidth=1)
    fig.suptitle(title, fontsize=11)
    return fig


def _without_ages(rows: pd.DataFrame | None, dataset: str, drawn: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """(model, input) pairs evaluated on `dataset` that have no answered age at all (so no line)."""
    if rows is None or len(rows) == 0 or not {"dataset", "model", "input", "view", "age_n"} <= set(rows.columns):
        return []
    hit = rows[(rows["dataset"] == dataset) & (rows["view"] == "answered")]
    age_n = pd.to_numeric(hit["age_n"], errors="coerce").fillna(0)
    return [p for p in _pairs(hit[(age_n <= 0).to_numpy()]) if p not in drawn]


def age_group_figure(
    age_groups: pd.DataFrame,
    dataset: str | None,
    rows: pd.DataFrame | None = None,
    *,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> Figure:
    """Figure 3: MAE per 5-year age group, one line per (model, input), on one data set.

    Any subset of models and inputs can be drawn: a colour per model and a line style and marker per
    input kind (the paper compares MiVOLO on face + body with MLLMs on body crops), the input named in
    the legend. A group in which a model answered no sample is a gap in its line, not a 0; a model
    that answered no age at all gets a legend entry saying so (known from `rows`). Without any
    answered age the figure says "no predictions yet".

    Args:
        age_groups: long table (dataset, input, model, age_lo, age_hi, group, n, mae), e.g. from
            `agegender.metrics.age_group_mae` (the paper's view: each model on what it answered).
        dataset: the data set to draw.
        rows: evaluation rows, used to print each line's overall MAE in the legend and to name the
            models without answered ages.
        caption_note: e.g. "demo data", put in the title.
        model_names: extra display names.

    Returns:
        The figure.

    Raises:
        InputError: for an age-group table without one of `AGE_GROUP_COLUMNS`.
    """
    title = _title(f"MAE by age group on {dataset or 'no data set'}", caption_note)
    for col in AGE_GROUP_COLUMNS:
        if col not in age_groups.columns:
            raise InputError("required column is missing", file="age groups table", field=col)
    data = age_groups[age_groups["dataset"] == dataset] if dataset is not None else age_groups.iloc[0:0]
    data = data[pd.to_numeric(data["mae"], errors="coerce").notna()]
    pairs = _pairs(data)
    silent = _without_ages(rows, str(dataset), set(pairs)) if dataset is not None else []
    if data.empty:
        message = NO_PREDICTIONS
        if silent:
            message += "\nno answered age from " + ", ".join(_label(m, i, model_names) for m, i in silent)
        return _message_figure(title, message)
    groups = data[["age_lo", "group"]].drop_duplicates().sort_values("age_lo", kind="stable")
    groups = groups.drop_duplicates("age_lo")
    position = {float(lo): i for i, lo in enumerate(groups["age_lo"])}
    width = max(6.0, 0.45 * len(groups) + 3)
    fig = Figure(figsize=(width, 4.2 + 0.16 * math.ceil((len(pairs) + len(silent)) / 2)), layout="constrained")
    ax = fig.add_subplot()
    models = list(dict.fromkeys(m for m, _ in pairs))
    palette = sns.color_palette("tab10" if len(models) <= 10 else "tab20", n_colors=max(1, len(models)))
    for model, input_kind in pairs:
        part = data[(data["model"] == model) & (data["input"] == input_kind)]
        # NaN in every group the line lacks: matplotlib breaks the line there instead of bridging it
        ys = np.full(len(groups), np.nan)
        for lo, mae in zip(part["age_lo"], part["mae"], strict=True):
            ys[position[float(lo)]] = float(mae)
        label = _label(model, input_kind, model_names)
        overall = _overall_mae(rows, str(dataset), model, input_kind)
        if overall is not None:
            label += f" (MAE {metric_def('age_mae').format(overall)})"
        line_style, marker = INPUT_STYLES.get(input_kind, ("-", "o"))
        colour = palette[models.index(model) % len(palette)]
        ax.plot(range(len(groups)), ys, ls=line_style, marker=marker, ms=4, color=colour, label=label, lw=1.5)
    for model, input_kind in silent:
        # an empty handle: the legend (which the layout makes room for) names what is missing
        ax.plot([], [], ls="none", label=f"{_label(model, input_kind, model_names)}: no answered age")
    ax.set_xticks(range(len(groups)), [str(g) for g in groups["group"]], rotation=45, ha="right")
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_xlabel("true age group, years")
    ax.set_ylabel("MAE on answered samples, years")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    entries = len(pairs) + len(silent)
    # below the axes, not "best": with many models or long names a legend inside hides the lines
    fig.legend(loc="outside lower center", fontsize=7, ncols=max(1, min(entries, int(width // 3.6))), frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def pred_vs_true_figure(
    joined: pd.DataFrame,
    dataset: str | None,
    rows: pd.DataFrame | None = None,
    *,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> Figure:
    """Predicted vs true age, one panel per (model, input), with the identity line.

    Args:
        joined: predictions joined with their samples (`sample_id, model, input, age_pred, status,
            dataset, age, ...`); only status "ok" rows with both ages are drawn.
        dataset: the data set to draw.
        rows: evaluation rows, for the MAE in panel titles.
        caption_note: e.g. "demo data".
        model_names: extra display names.

    Returns:
        The figure.
    """
    title = _title(f"Predicted vs true age on {dataset or 'no data set'}", caption_note)
    data = _answered(joined, dataset, "age", "age_pred")
    if data.empty:
        return _message_figure(title, NO_PREDICTIONS)
    pairs = _pairs(data)
    nrows, ncols = _grid(len(pairs))
    fig = Figure(figsize=(3.4 * ncols, 3.3 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    top = float(max(data["age"].max(), data["age_pred"].max())) + 5.0
    for ax, (model, input_kind) in zip(axes, pairs, strict=False):
        part = data[(data["model"] == model) & (data["input"] == input_kind)]
        true, pred = part["age"].to_numpy(dtype=float), part["age_pred"].to_numpy(dtype=float)
        if len(part) >= HEXBIN_MIN_POINTS:
            ax.hexbin(true, pred, gridsize=40, extent=(0, top, 0, top), mincnt=1, cmap="viridis", bins="log")
        else:
            ax.scatter(true, pred, s=10, alpha=0.6, color="tab:blue", edgecolors="none")
        ax.plot([0, top], [0, top], color="tab:red", lw=1, ls="--")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        mae = _overall_mae(rows, str(dataset), model, input_kind)
        mae = age_mae(pred, true) if mae is None else mae
        title_mae = metric_def("age_mae").format(mae)
        ax.set_title(_panel_title(model, input_kind, model_names, f"MAE {title_mae}, n={len(part)}"), fontsize=8)
        ax.set_xlabel("true age")
        ax.set_ylabel("predicted age")
    for ax in axes[len(pairs) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return fig


def confusion_counts(true: Sequence[str], pred: Sequence[str]) -> np.ndarray:
    """2x2 gender confusion counts, rows = true (male, female), columns = predicted.

    Args:
        true: true genders (`male`/`female`).
        pred: predicted genders.

    Returns:
        int64 array of shape (2, 2).
    """
    index = {g: i for i, g in enumerate(GENDERS)}
    counts = np.zeros((2, 2), dtype=np.int64)
    for t, p in zip(true, pred, strict=True):
        counts[index[t], index[p]] += 1
    return counts


def gender_confusion_figure(
    joined: pd.DataFrame,
    dataset: str | None,
    *,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> Figure:
    """Gender confusion matrix per (model, input): colour = row-normalised share, text = count and share.

    Args:
        joined: predictions joined with their samples; status "ok" rows with both genders are used.
        dataset: the data set to draw.
        caption_note: e.g. "demo data".
        model_names: extra display names.

    Returns:
        The figure.
    """
    title = _title(f"Gender confusion on {dataset or 'no data set'}", caption_note)
    data = _answered(joined, dataset, "gender", "gender_pred")
    if data.empty:
        return _message_figure(title, NO_PREDICTIONS)
    pairs = _pairs(data)
    nrows, ncols = _grid(len(pairs))
    fig = Figure(figsize=(3.3 * ncols, 3.0 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (model, input_kind) in zip(axes, pairs, strict=False):
        part = data[(data["model"] == model) & (data["input"] == input_kind)]
        counts = confusion_counts(part["gender"].astype(str).tolist(), part["gender_pred"].astype(str).tolist())
        totals = counts.sum(axis=1, keepdims=True)
        shares = np.divide(counts, totals, out=np.zeros((2, 2)), where=totals > 0)
        text = np.array([[f"{counts[i, j]}\n{100 * shares[i, j]:.1f}%" for j in range(2)] for i in range(2)])
        sns.heatmap(
            shares,
            ax=ax,
            annot=text,
            fmt="",
            vmin=0.0,
            vmax=1.0,
            cmap="Blues",
            cbar=False,
            square=True,
            xticklabels=list(GENDERS),
            yticklabels=list(GENDERS),
            annot_kws={"fontsize": 9},
        )
        acc = metric_def("gender_acc").format(float(np.trace(counts)) / max(1, int(counts.sum())))
        ax.set_title(_panel_title(model, input_kind, model_names, f"acc {acc}%, n={int(counts.sum())}"), fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    for ax in axes[len(pairs) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return fig


def _gallery_box(sample: Mapping[str, object], input_kind: str) -> tuple[float, float, float, float] | None:
    face = tuple(sample[c] for c in FACE_BOX)
    person = tuple(sample[c] for c in PERSON_BOX)
    order = (face, person) if input_kind == "face" else (person, face)
    for box in order:
        if all(v is not None and v is not pd.NA and not (isinstance(v, float) and math.isnan(v)) for v in box):
            return tuple(float(v) for v in box)  # type: ignore[return-value]
    return None


def _shrink(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = GALLERY_MAX_SIDE / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _prediction_text(pred: Mapping[str, object], model_names: Mapping[str, str] | None) -> str:
    label = _label(str(pred["model"]), str(pred["input"]), model_names)
    if pred["status"] != "ok":
        return f"{label}: ({pred['status']})"
    gender = "?" if pd.isna(pred["gender_pred"]) else str(pred["gender_pred"])
    age = "?" if pd.isna(pred["age_pred"]) else f"{float(pred['age_pred']):.0f}"
    return f"{label}: {gender}, {age}"


def _wrapped(lines: Sequence[str]) -> list[str]:
    """Caption lines longer than `GALLERY_WRAP` characters broken at spaces, continuations indented."""
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, width=GALLERY_WRAP, subsequent_indent="  ", break_on_hyphens=False) or [""]
    return out


def _text_size(text: str, size: float = GALLERY_FONT) -> tuple[float, float]:
    """The width and height (inches) of `text` (lines included) at font `size`, as Agg draws it."""
    fig = Figure(dpi=72)
    box = fig.text(0, 0, text, fontsize=size).get_window_extent(FigureCanvasAgg(fig).get_renderer())
    return box.width / 72, box.height / 72


def gallery_figure(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    dataset: str | None,
    image_roots: Mapping[str, str | Path],
    *,
    input_kind: str = "body",
    n: int = 6,
    seed: int = 0,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> Figure:
    """Figure 1 style gallery: `n` random samples, each crop with its truth and every model's answer.

    The crop shown is the person box for body-like inputs (face box as fallback) and the face box
    for `face`. Under it: the true gender and age, then one line per (model, input) prediction of
    that sample, non-"ok" answers shown by their status. Samples are drawn (seeded) among those with
    at least one "ok" prediction; samples whose image is missing or whose boxes are empty are
    skipped, counted, logged and noted in the title.

    Args:
        samples: validated sample table.
        predictions: validated prediction table.
        dataset: the data set to draw from.
        image_roots: data set id -> folder the sample table's `image_path` is relative to.
        input_kind: which crop to show (`body`, `face`, `face_body`, `body_wo_face`).
        n: number of samples.
        seed: seed of the sample draw.
        caption_note: e.g. "demo data".
        model_names: extra display names.

    Returns:
        The figure.

    Raises:
        InputError: when `image_roots` has no folder for `dataset`.
    """
    title = _title(f"Samples from {dataset or 'no data set'} with predictions", caption_note)
    in_set = samples[samples["dataset"] == dataset]
    ok_ids = set(predictions.loc[predictions["status"] == "ok", "sample_id"].astype(str))
    candidates = sorted(sid for sid in in_set["sample_id"].astype(str) if sid in ok_ids)
    if not candidates or n <= 0:
        return _message_figure(title, NO_PREDICTIONS)
    if dataset not in image_roots:
        raise InputError(f"no image folder given for data set {dataset!r}", file="image_roots", field=str(dataset))
    root = Path(image_roots[dataset])
    by_id = in_set.set_index(in_set["sample_id"].astype(str)).to_dict("index")
    order = np.random.default_rng(seed).permutation(len(candidates))
    chosen: list[tuple[str, np.ndarray]] = []
    skipped = 0
    for idx in order:
        if len(chosen) == n:
            break
        sid = candidates[int(idx)]
        sample = by_id[sid]
        path = root / str(sample["image_path"])
        if not path.is_file():
            skipped += 1
            continue
        patch = crop(load_image(path), _gallery_box(sample, input_kind))
        if patch is None:
            skipped += 1
            continue
        chosen.append((sid, _shrink(patch)))
    if skipped:
        log.warning("gallery: %d sample(s) of %s skipped (image missing or empty box)", skipped, dataset)
        title += f"; {skipped} skipped (image missing or empty box)"
    if not chosen:
        return _message_figure(title, "no sample with an image on disk")
    chosen.sort(key=lambda item: (float(by_id[item[0]]["age"]) if pd.notna(by_id[item[0]]["age"]) else -1.0, item[0]))
    preds = predictions[predictions["sample_id"].isin([sid for sid, _ in chosen])]
    lines: dict[str, list[str]] = {}
    for sid, _ in chosen:
        sample = by_id[sid]
        gender = "?" if pd.isna(sample["gender"]) else str(sample["gender"])
        age = "?" if pd.isna(sample["age"]) else f"{float(sample['age']):.0f}"
        text = [f"true: {gender}, {age}"]
        mine = preds[preds["sample_id"] == sid]
        for model, inp in _pairs(mine):
            row = mine[(mine["model"] == model) & (mine["input"] == inp)].iloc[0]
            text.append(_prediction_text(row, model_names))
        lines[sid] = text
    captions = {sid: _wrapped(text) for sid, text in lines.items()}
    nrows, ncols = _grid(len(chosen), max_cols=min(6, len(chosen)))
    # sized from the content: each column as wide as the widest caption line, each row as tall as the tallest
    # crop at that width plus the most caption lines, so no caption reaches a neighbour or the figure's edge
    sizes = [_text_size("\n".join(c)) for c in captions.values()]
    panel = max(GALLERY_MIN_PANEL, max(w for w, _ in sizes) + 0.1)
    aspect = min(GALLERY_MAX_ASPECT, max(p.shape[0] / p.shape[1] for _, p in chosen))
    width = panel * ncols + 0.3
    title = "\n".join(textwrap.wrap(title, width=max(20, int(width * 72 / (11 * 0.6)))))
    height = (panel * aspect + max(h for _, h in sizes) + 0.2) * nrows + _text_size(title, 11)[1] + 0.3
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (sid, patch) in zip(axes, chosen, strict=False):
        ax.imshow(patch, interpolation="bilinear")
        ax.set_anchor("S")  # the crop right above its caption, where the layout measured the caption's room
        ax.set_xticks([])
        ax.set_yticks([])
        # the xlabel (not free text) so that the constrained layout reserves room for the lines; centred under
        # the crop (which is centred in its column) and at most a column wide, its lines aligned left
        ax.set_xlabel("\n".join(captions[sid]), fontsize=GALLERY_FONT, loc="center", multialignment="left")
    for ax in axes[len(chosen) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return fig


def assurance_figure(
    rows: pd.DataFrame | None,
    assurance: Sequence[MetricDef],
    *,
    caption_note: str | None = None,
    model_names: Mapping[str, str] | None = None,
) -> Figure:
    """The age-assurance rates (`agegender.assurance`), one panel per rate: a bar with its 95% CI per (data set,
    model, input) of the answered view; where a rate stands on too few people the bar's place says so. Rows with
    no person of known age in any population (class-only data sets) are left out: they would only say "no people".

    Args:
        rows: evaluation rows holding the rates' columns; None or empty: a figure that says so.
        assurance: the rates (`agegender.assurance.assurance_metrics`).
        caption_note: e.g. "demo data".
        model_names: extra display names.

    Returns:
        The figure.
    """
    title = _title("Age assurance (NIST IR 8525), answered view", caption_note)
    needed = {"dataset", "input", "model", "view", *(d.name for d in assurance)}
    if rows is None or not assurance or not needed <= set(rows.columns):
        return _message_figure(title, NO_PREDICTIONS)
    data = rows[rows["view"] == "answered"].sort_values(["dataset", "model", "input"], kind="stable")
    counts = data[list(dict.fromkeys(d.count_column for d in assurance))].fillna(0).to_numpy()
    data = data[(counts > 0).any(axis=1)]  # no labelled age in any population (a class data set): nothing to draw
    if data.empty:
        return _message_figure(title, "no answered person with a true age" if len(counts) else NO_PREDICTIONS)
    keys = zip(data["dataset"], data["model"], data["input"], strict=True)
    labels = [f"{d}: {_label(m, i, model_names)}" for d, m, i in keys]
    nrows, ncols = _grid(len(assurance), max_cols=2)
    fig = Figure(figsize=(6.0 * ncols, 0.32 * len(labels) * nrows + 1.2 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    y = np.arange(len(labels))
    for k_ax, (ax, definition) in enumerate(zip(axes, assurance, strict=False)):
        value = 100.0 * pd.to_numeric(data[definition.name], errors="coerce").to_numpy(dtype=float)
        low = 100.0 * pd.to_numeric(data.get(f"{definition.name}_ci_low"), errors="coerce").to_numpy(dtype=float)
        high = 100.0 * pd.to_numeric(data.get(f"{definition.name}_ci_high"), errors="coerce").to_numpy(dtype=float)
        shown = ~np.isnan(value)
        ax.barh(y[shown], value[shown], color="tab:blue", alpha=0.7)
        err = np.vstack([value - low, high - value])[:, shown]
        if shown.any() and not np.isnan(err).all():
            ax.errorbar(value[shown], y[shown], xerr=np.nan_to_num(err), fmt="none", ecolor="black", lw=1, capsize=2)
        counts = data[definition.count_column].to_numpy()
        for k in np.flatnonzero(~shown):
            ax.text(1.0, y[k], too_few_text(counts[k], definition.min_n), va="center", fontsize=7, color="tab:gray")
        ax.set_xlim(0, 100)
        ax.set_yticks(y, labels if k_ax % ncols == 0 else [""] * len(labels), fontsize=7)  # the left column names
        ax.set_ylim(len(labels) - 0.4, -0.6)  # top to bottom, the first bar clear of the title
        ax.set_xlabel("share of its people, %", fontsize=8)
        ax.set_title(definition.label, fontsize=8)
    for ax in axes[len(assurance) :]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return fig


# --------------------------------------------------------------------------------------------- writer


def write_figures(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    rows: pd.DataFrame | None,
    age_groups: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    image_roots: Mapping[str, str | Path],
    caption_note: str | None = None,
    age_group_dataset: str | None = None,
    gallery_dataset: str | None = None,
    gallery_input: str = "body",
    gallery_n: int = 6,
    seed: int = 0,
    model_names: Mapping[str, str] | None = None,
    gallery_dir: str | Path | None = None,
    history: pd.DataFrame | None = None,
    pred_vs_true_file: str | Path | None = None,
    assurance: Sequence[MetricDef] = (),
) -> list[Path]:
    """Write the report figures as png and pdf (and, where asked, the pred_vs_true figure's data as CSV).

    Figures: `age_group_mae` (the paper's figure 3), `pred_vs_true`, `gender_confusion` (all three
    on the data set `age_group_dataset`, default: the first data set whose id contains "nano", else
    the first one), `learning_curve` (MiVOLO's validation metrics per epoch) and `gallery` (figure 1 style,
    on `gallery_dataset`, default the same data set) and `age_assurance` (the age-assurance rates of every row).
    A figure without data says "no predictions yet" instead of failing.

    Args:
        samples: sample table (schema.SAMPLE_COLUMNS).
        predictions: prediction table (schema.PREDICTION_COLUMNS); only status "ok" rows are plotted.
        rows: evaluation rows (overall MAE in legends and titles; models without answered ages); may be None.
        age_groups: MAE per age group (dataset, input, model, age_lo, age_hi, group, n, mae); may be None.
        out_dir: folder to write into (created).
        image_roots: data set id -> folder that the sample table's `image_path` is relative to.
        caption_note: e.g. "demo data", put in every title.
        age_group_dataset: the data set of figures 3, pred_vs_true and gender_confusion.
        gallery_dataset: the data set of the gallery.
        gallery_input: which crop the gallery shows.
        gallery_n: number of gallery samples.
        seed: seed of the gallery draw.
        model_names: display names for model ids the paper does not have.
        history: MiVOLO's training history (the `train_mivolo` stage's `history.csv`) for `learning_curve`, or None.
        assurance: the age-assurance rates `rows` holds, for `age_assurance` (none: it says "no predictions yet").
        gallery_dir: where the gallery goes (default `out_dir`). It shows crops of the photos, so for real
            data it must be a folder that is never committed (the pipeline gives `reports/gallery`).
        pred_vs_true_file: where to write `pred_vs_true_points` of the figure's data set (a .csv), or None.

    Returns:
        The figure files written: `<name>.png` and `<name>.pdf` for each name of `FIGURE_NAMES`.

    Raises:
        InputError: for a malformed sample, prediction or age-group table, or a missing image root.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = validate_samples(samples, source="samples")
    predictions = validate_predictions(predictions, source="predictions", known_ids=samples["sample_id"])
    if age_groups is None:
        age_groups = pd.DataFrame({c: pd.Series(dtype="object") for c in AGE_GROUP_COLUMNS})
    joined = _joined(samples, predictions)
    ok_sets = joined.loc[joined["status"] == "ok", "dataset"].astype(str).tolist()
    main = pick_dataset(
        list(age_groups["dataset"].dropna().astype(str)) + ok_sets if age_group_dataset is None else [],
        age_group_dataset,
    )
    gallery_set = gallery_dataset if gallery_dataset is not None else main
    figures = {
        "age_group_mae": age_group_figure(age_groups, main, rows, caption_note=caption_note, model_names=model_names),
        "pred_vs_true": pred_vs_true_figure(joined, main, rows, caption_note=caption_note, model_names=model_names),
        "gender_confusion": gender_confusion_figure(joined, main, caption_note=caption_note, model_names=model_names),
        "learning_curve": learning_curve_figure(history, caption_note=caption_note),
        "gallery": gallery_figure(
            samples,
            predictions,
            gallery_set,
            image_roots,
            input_kind=gallery_input,
            n=gallery_n,
            seed=seed,
            caption_note=caption_note,
            model_names=model_names,
        ),
        "age_assurance": assurance_figure(rows, assurance, caption_note=caption_note, model_names=model_names),
    }
    if pred_vs_true_file is not None:
        write_table(pred_vs_true_points(joined, main), pred_vs_true_file)
    written: list[Path] = []
    for name in FIGURE_NAMES:
        folder = Path(gallery_dir) if name == "gallery" and gallery_dir else out
        written += _save(figures[name], folder, name, tight=name == "gallery")
    return written
