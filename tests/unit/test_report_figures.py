"""Report figures: files written, "no predictions" figures, only "ok" rows drawn, gallery, same bytes twice."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from agegender.data.schema import validate_predictions, validate_samples
from agegender.errors import InputError
from agegender.evaluate import evaluate_tables
from agegender.report.figures import (
    AGE_GROUP_COLUMNS,
    FIGURE_NAMES,
    GALLERY_WRAP,
    PRED_VS_TRUE_COLUMNS,
    _save,
    _wrapped,
    age_group_figure,
    confusion_counts,
    gallery_figure,
    gender_confusion_figure,
    learning_curve_figure,
    pick_dataset,
    pred_vs_true_figure,
    pred_vs_true_points,
    write_figures,
)

AGES = [3.0, 12.0, 27.0, 33.0, 48.0, 61.0]
GENDERS = ["male", "female", "female", "male", "female", "male"]


def _all_text(fig) -> str:
    texts = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:  # the suptitle is not in fig.texts
        texts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        texts += [t.get_text() for t in ax.texts]
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return "\n".join(texts)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for k in range(3):
        pixels = np.zeros((40, 30, 3), dtype=np.uint8)
        pixels[..., k] = 200
        pixels[5:15, 8:22] = 255  # a "face"
        Image.fromarray(pixels).save(root / f"im{k}.png")
    return root


@pytest.fixture
def samples() -> pd.DataFrame:
    rows = []
    for i, (age, gender) in enumerate(zip(AGES, GENDERS, strict=True)):
        rows.append(
            {
                "sample_id": f"s{i}",
                "dataset": "nanodemo",
                "split": "test",
                "image_path": f"im{i % 3}.png",
                "image_width": 30,
                "image_height": 40,
                "face_x0": 8.0,
                "face_y0": 5.0,
                "face_x1": 22.0,
                "face_y1": 15.0,
                "person_x0": 1.0,
                "person_y0": 1.0,
                "person_x1": 29.0,
                "person_y1": 39.0,
                "age": age,
                "gender": gender,
            }
        )
    return validate_samples(pd.DataFrame(rows))


@pytest.fixture
def predictions() -> pd.DataFrame:
    rows = []
    for i, (age, gender) in enumerate(zip(AGES, GENDERS, strict=True)):
        # MiVOLO: all ok, one gender error (s1: female -> male)
        rows.append(
            {
                "sample_id": f"s{i}",
                "model": "mivolo_d1_384",
                "input": "face_body",
                "age_pred": age + 2.0,
                "gender_pred": "male" if i == 1 else gender,
                "status": "ok",
            }
        )
        # an MLLM that refuses s0 and s5
        refused = i in (0, 5)
        rows.append(
            {
                "sample_id": f"s{i}",
                "model": "tiny_llava",
                "input": "body",
                "age_pred": None if refused else age - 4.0,
                "gender_pred": None if refused else gender,
                "status": "refused" if refused else "ok",
            }
        )
    return validate_predictions(pd.DataFrame(rows))


@pytest.fixture
def age_groups() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": ["nanodemo"] * 4,
            "input": ["face_body", "face_body", "body", "body"],
            "model": ["mivolo_d1_384", "mivolo_d1_384", "tiny_llava", "tiny_llava"],
            "age_lo": [0.0, 25.0, 10.0, 25.0],
            "age_hi": [5.0, 30.0, 15.0, 30.0],
            "group": ["0-5", "25-30", "10-15", "25-30"],
            "n": [1, 1, 1, 1],
            "mae": [2.0, 2.0, 4.0, 4.0],
        }
    )


def _joined(samples, predictions):
    return predictions.merge(samples[["sample_id", "dataset", "age", "gender"]], on="sample_id")


def test_confusion_counts_by_hand():
    counts = confusion_counts(
        ["male", "male", "female", "female", "female"], ["male", "female", "female", "female", "male"]
    )
    assert counts.tolist() == [[1, 1], [1, 2]]


def test_pick_dataset():
    assert pick_dataset(["demo", "nanodemo", "demo"]) == "nanodemo"
    assert pick_dataset(["b", "a"]) == "a"
    assert pick_dataset([]) is None
    assert pick_dataset(["nanodemo"], "other") == "other"


def test_write_figures_files(tmp_path, images, samples, predictions, age_groups):
    kwargs = {"image_roots": {"nanodemo": images}, "caption_note": "demo data", "gallery_n": 3}
    paths = write_figures(samples, predictions, None, age_groups, tmp_path, **kwargs)
    assert [p.name for p in paths] == [f"{n}.{ext}" for n in FIGURE_NAMES for ext in ("png", "pdf")]
    for path in paths:
        head = path.read_bytes()[:8]
        assert head == (b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else b"%PDF-1.4")
    png = Image.open(tmp_path / "gallery.png")
    assert png.size[0] > 300 and png.size[1] > 200
    assert "Software" not in png.info
    assert b"CreationDate" not in (tmp_path / "gallery.pdf").read_bytes()


def test_pred_vs_true_data_file_holds_the_figure_points(tmp_path, images, samples, predictions, age_groups):
    data = tmp_path / "plots" / "pred_vs_true.csv"
    kwargs = {"image_roots": {"nanodemo": images}, "gallery_n": 1, "pred_vs_true_file": data}
    paths = write_figures(samples, predictions, None, age_groups, tmp_path, **kwargs)
    assert data not in paths  # the figures only
    points = pd.read_csv(data)
    assert tuple(points.columns) == PRED_VS_TRUE_COLUMNS
    drawn = _joined(samples, predictions)
    drawn = drawn[(drawn["dataset"] == "nanodemo") & (drawn["status"] == "ok") & drawn["age_pred"].notna()]
    assert len(points) == len(drawn[drawn["age"].notna()]) > 0
    assert set(points["model"]) == set(drawn["model"]) and (points["dataset"] == "nanodemo").all()
    pd.testing.assert_frame_equal(pred_vs_true_points(drawn, "nanodemo"), points, check_dtype=False)


def test_same_input_same_bytes(tmp_path, images, samples, predictions):
    # the gallery holds images, text and several axes: the richest of the four figures
    written = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        fig = gallery_figure(samples, predictions, "nanodemo", {"nanodemo": images}, n=2, caption_note="demo data")
        written.append(_save(fig, tmp_path / run, "gallery"))
    assert [p.read_bytes() for p in written[0]] == [p.read_bytes() for p in written[1]]


def test_empty_predictions_give_no_predictions_figures(tmp_path, images, samples, predictions):
    empty = predictions.iloc[0:0]
    paths = write_figures(samples, empty, None, None, tmp_path, image_roots={}, caption_note="demo data")
    assert len(paths) == 2 * len(FIGURE_NAMES)
    assert all(p.stat().st_size > 0 for p in paths)
    joined = _joined(samples, empty)
    for fig in (
        age_group_figure(pd.DataFrame(columns=list(AGE_GROUP_COLUMNS)), "nanodemo", caption_note="demo data"),
        pred_vs_true_figure(joined, "nanodemo", caption_note="demo data"),
        gender_confusion_figure(joined, "nanodemo", caption_note="demo data"),
        gallery_figure(samples, empty, "nanodemo", {}, caption_note="demo data"),
    ):
        text = _all_text(fig)
        assert "no predictions yet" in text
        assert "(demo data)" in text


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _nan_list(line) -> list[list[float | None]]:
    return [[x, None if np.isnan(y) else y] for x, y in line.get_xydata().tolist()]


def test_age_group_figure_lines(age_groups):
    rows = pd.DataFrame(
        [{"dataset": "nanodemo", "input": "body", "model": "tiny_llava", "view": "answered", "age_mae": 4.0}]
    )
    fig = age_group_figure(age_groups, "nanodemo", rows, caption_note="demo data", model_names={"tiny_llava": "Tiny"})
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2
    # three distinct groups on the x axis, ordered by age
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0-5", "10-15", "25-30"]
    # a group without answers is a gap (NaN breaks the line), not a 0 and not bridged
    assert _nan_list(lines[0]) == [[0.0, 2.0], [1.0, None], [2.0, 2.0]]
    assert _nan_list(lines[1]) == [[0.0, None], [1.0, 4.0], [2.0, 4.0]]
    # the input is named and styled: face + body solid circles, body dashed squares
    assert _legend_texts(fig) == ["MiVOLO-384 [Body & face]", "Tiny [Entire body] (MAE 4.00)"]
    assert (lines[0].get_linestyle(), lines[0].get_marker()) == ("-", "o")
    assert (lines[1].get_linestyle(), lines[1].get_marker()) == ("--", "s")
    assert "MAE by age group on nanodemo (demo data)" in _all_text(fig)
    assert "no predictions yet" in _all_text(age_group_figure(age_groups, "other"))


def test_age_group_figure_from_partial_predictions(samples, predictions):
    # the refusing MLLM has no answer in the youngest and the oldest group; a third model answered nothing
    silent = predictions[predictions["model"] == "tiny_llava"].assign(
        model="tiny_llava_next", status="refused", age_pred=None, gender_pred=None
    )
    preds = validate_predictions(pd.concat([predictions, silent], ignore_index=True))
    result = evaluate_tables(samples, preds, split="test")
    fig = age_group_figure(result.age_groups, "nanodemo", result.rows)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0-5", "10-15", "25-30", "30-35", "45-50", "60-65"]
    mivolo, llava = ax.get_lines()[:2]
    assert _nan_list(mivolo) == [[float(k), 2.0] for k in range(6)]
    assert _nan_list(llava) == [[0.0, None], [1.0, 4.0], [2.0, 4.0], [3.0, 4.0], [4.0, 4.0], [5.0, None]]
    assert _legend_texts(fig) == [
        "MiVOLO-384 [Body & face] (MAE 2.00)",
        "tiny_llava [Entire body] (MAE 4.00)",
        "tiny_llava_next [Entire body]: no answered age",
    ]
    # one model only
    only = result.age_groups[result.age_groups["model"] == "tiny_llava"]
    (single,) = age_group_figure(only, "nanodemo").axes[0].get_lines()
    assert np.isnan(single.get_xydata()[:, 1]).sum() == 0 and len(single.get_xydata()) == 4


def test_age_group_figure_without_answers(samples, predictions):
    refused = predictions.assign(status="refused", age_pred=None, gender_pred=None)
    result = evaluate_tables(samples, validate_predictions(refused), split="test")
    assert result.age_groups.empty
    text = _all_text(age_group_figure(result.age_groups, "nanodemo", result.rows))
    assert "no predictions yet" in text
    assert "no answered age from MiVOLO-384 [Body & face], tiny_llava [Entire body]" in text
    nothing = evaluate_tables(samples, predictions.iloc[0:0], split="test")
    assert "no predictions yet" in _all_text(age_group_figure(nothing.age_groups, None, nothing.rows))


def test_age_group_figure_with_the_paper_models_keeps_the_legend_off_the_lines():
    pairs = [("mivolo_d1_384", "face_body")] + [
        (m, "body")
        for m in ("llava15-7b", "llava-next-34b", "sharegpt4v-7b", "gpt-4v", "gpt-4o", "sharegpt4v-7b-ft",
                  "sharegpt4v-13b-ft", "sharegpt4v-7b-ft-1ep")
    ]  # fmt: skip
    groups = pd.DataFrame(
        [
            {"dataset": "nanolagenda", "input": i, "model": m, "age_lo": lo, "age_hi": lo + 5.0,
             "group": f"{lo:g}-{lo + 5:g}", "n": 10, "mae": 3.0 + k + lo / 10}
            for k, (m, i) in enumerate(pairs)
            for lo in np.arange(0.0, 90.0, 5.0)
        ]
    )  # fmt: skip
    fig = age_group_figure(groups, "nanolagenda")
    texts = _legend_texts(fig)
    assert "MiVOLO-384 [Body & face]" in texts
    assert "ShareGPT4V 7B FT 1 epoch [Entire body]" in texts and len(texts) == len(pairs)
    canvas = FigureCanvasAgg(fig)  # a bare Figure has no drawing canvas; drawing lays the legend out
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    axes = fig.axes[0].get_tightbbox(renderer)
    assert not legend.overlaps(axes)
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1 and fig.bbox.y0 <= legend.y0


def test_pred_vs_true_draws_only_ok_rows(samples, predictions):
    fig = pred_vs_true_figure(_joined(samples, predictions), "nanodemo")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["MiVOLO-384 [Body & face]\nMAE 2.00, n=6", "tiny_llava [Entire body]\nMAE 4.00, n=4"]
    offsets = fig.axes[1].collections[0].get_offsets()
    assert sorted(np.asarray(offsets)[:, 1].tolist()) == [8.0, 23.0, 29.0, 44.0]


@pytest.mark.parametrize("figure", [pred_vs_true_figure, gender_confusion_figure])
def test_long_model_names_wrap_inside_their_panel(samples, predictions, figure):
    """A panel title with a long display name stays inside the figure and clear of its neighbours (unwrapped, the
    demo's "tiny LLaVA-1.5 (fine-tuned on bodies; last checkpoint) [Entire body]" ran off the left edge)."""
    names = {"mivolo_d1_384": "a model with a long display name (fine-tuned on bodies; last checkpoint)"}
    many = pd.concat([predictions.assign(model=m) for m in ("mivolo_d1_384", "x", "y", "z")], ignore_index=True)
    fig = figure(_joined(samples, validate_predictions(many)), "nanodemo", model_names=names)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(titles) >= 4
    for i, box in enumerate(titles):
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, f"title {i} {box} leaves the figure {fig.bbox}"
        assert not any(box.overlaps(other) for j, other in enumerate(titles) if j != i), f"title {i}"


def test_gender_confusion_counts_in_cells(samples, predictions):
    fig = gender_confusion_figure(_joined(samples, predictions), "nanodemo")
    first = fig.axes[0]
    cells = [t.get_text() for t in first.texts]
    # true male: 3 right; true female: 1 called male, 2 right
    assert cells == ["3\n100.0%", "0\n0.0%", "1\n33.3%", "2\n66.7%"]
    assert "acc 83.33%, n=6" in first.get_title()


def test_gallery_texts_and_skips(tmp_path, images, samples, predictions):
    (images / "im2.png").unlink()  # s2 and s5 lose their image
    fig = gallery_figure(samples, predictions, "nanodemo", {"nanodemo": images}, n=6, seed=0)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
    assert len(labels) == 4  # s0, s1, s3, s4 (sorted by true age)
    assert labels[0].splitlines() == [
        "true: male, 3",
        "MiVOLO-384 [Body & face]: male, 5",
        "tiny_llava [Entire body]: (refused)",
    ]
    assert labels[1].splitlines()[1] == "MiVOLO-384 [Body & face]: male, 14"
    assert "2 skipped" in fig._suptitle.get_text()
    with pytest.raises(InputError) as info:
        gallery_figure(samples, predictions, "nanodemo", {}, n=2)
    assert info.value.field == "nanodemo"


def test_gallery_crop_is_the_person_box(images, samples, predictions):
    fig = gallery_figure(samples, predictions, "nanodemo", {"nanodemo": images}, n=1, seed=3)
    (image,) = fig.axes[0].get_images()
    assert image.get_array().shape == (38, 28, 3)
    face = gallery_figure(samples, predictions, "nanodemo", {"nanodemo": images}, n=1, seed=3, input_kind="face")
    assert face.axes[0].get_images()[0].get_array().shape == (10, 14, 3)


def test_learning_curve_draws_the_history_and_says_when_there_is_none(tmp_path):
    history = pd.DataFrame(
        {
            "stage": [1, 1, 2, 2],
            "epoch": [1, 2, 1, 2],
            "val_age_mae": [12.0, 10.0, 9.0, 8.5],
            "val_gender_acc": [0.7, 0.8, 0.82, 0.85],
        }
    )
    fig = learning_curve_figure(history, caption_note="demo data")
    mae_axis, acc_axis = fig.axes
    assert mae_axis.lines[0].get_ydata().tolist() == [12.0, 10.0, 9.0, 8.5]
    assert acc_axis.lines[0].get_ydata().tolist() == [0.7, 0.8, 0.82, 0.85]
    assert [line.get_xdata()[0] for line in mae_axis.lines[1:]] == [2.5]  # stage 2 starts at the third epoch
    assert "demo data" in fig.texts[0].get_text()
    for empty in (None, pd.DataFrame()):
        text = " ".join(t.get_text() for ax in learning_curve_figure(empty).axes for t in ax.texts)
        assert "no MiVOLO trained" in text


@pytest.mark.parametrize("input_kind", ["body", "face"])
def test_gallery_captions_neither_overlap_nor_leave_the_figure(images, samples, predictions, input_kind):
    """Long model names under narrow crops: every caption stays inside the figure and clear of the other
    captions and crops (the old layout, a fixed 2.6 inch column, cut the last column's captions off)."""
    long_names = [
        row | {"model": model, "input": "body_wo_face"}
        for row in predictions[predictions["model"] == "mivolo_d1_384"].to_dict("records")
        for model in ("llava-next-34b", "sharegpt4v-13b-ft", "sharegpt4v-7b-ft-1ep", "gpt-4o")
    ]
    wider = validate_predictions(pd.concat([predictions, pd.DataFrame(long_names)], ignore_index=True))
    narrow = samples.assign(person_x0=12.0, person_x1=18.0)  # 6 x 38 px crops: panels far narrower than captions
    fig = gallery_figure(narrow, wider, "nanodemo", {"nanodemo": images}, n=6, input_kind=input_kind)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    captions = [ax.xaxis.label.get_window_extent(renderer) for ax in fig.axes]
    crops = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert len(captions) == 6
    for i, caption in enumerate(captions):
        inside = fig.bbox.x0 <= caption.x0 and caption.x1 <= fig.bbox.x1 and fig.bbox.y0 <= caption.y0
        assert inside, f"caption {i} {caption} leaves the figure {fig.bbox}"
        assert not any(caption.overlaps(other) for j, other in enumerate(captions) if j != i), f"caption {i}"
        assert not any(caption.overlaps(crop) for crop in crops), f"caption {i} overlaps a crop"
    assert max(len(line) for ax in fig.axes for line in ax.get_xlabel().splitlines()) <= GALLERY_WRAP


def test_gallery_caption_lines_wrap_with_an_indent():
    long = "ShareGPT4V 13B FT 1 epoch, a name longer than any line of the gallery [W/o face]: female, 49"
    assert _wrapped(["true: male, 3", long]) == [
        "true: male, 3",
        *textwrap.wrap(long, GALLERY_WRAP, subsequent_indent="  "),
    ]
    assert all(len(line) <= GALLERY_WRAP for line in _wrapped([long]))
