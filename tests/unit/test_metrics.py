"""Tests of agegender.metrics against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from agegender import metrics
from agegender.data.schema import validate_predictions, validate_samples
from agegender.errors import InputError
from agegender.metrics import (
    CLASS_SCHEMES,
    EVAL_COLUMNS,
    age_group_mae,
    age_mae,
    age_to_class,
    bootstrap_ci,
    ce_at,
    class_accuracy,
    class_mae,
    cs_at,
    detect_class_scheme,
    evaluate,
    gender_accuracy,
    label_to_class,
    mape,
    paired_bootstrap,
)

ADIENCE = CLASS_SCHEMES["adience"]
FAIRFACE = CLASS_SCHEMES["fairface"]


# ---------------------------------------------------------------- elementwise metrics


def test_age_mae() -> None:
    assert age_mae([20.0, 35.0, 1.0], [25.0, 30.0, 1.0]) == pytest.approx(10.0 / 3.0)
    assert age_mae(pd.Series([1.0, 2.0], dtype="Float64"), np.array([3.0, 3.0])) == pytest.approx(1.5)


def test_cs_at_is_inclusive_with_float_tolerance() -> None:
    # 30.000000001 - 25 is 5.000000001 in floats: still counted as exactly 5 years
    assert cs_at([30.000000001], [25.0]) == 1.0
    assert cs_at([30.1], [25.1]) == 1.0  # 30.1 - 25.1 = 5.000000000000002
    assert cs_at([30.00001], [25.0]) == 0.0
    assert cs_at([20.0, 25.0, 31.0, 14.0], [25.0, 25.0, 25.0, 25.0]) == pytest.approx(0.5)
    assert cs_at([27.0], [25.0], k=2.0) == 1.0


def test_ce_at() -> None:
    assert ce_at([45.0], [25.0]) == 1.0
    assert ce_at([44.9999999999], [25.0]) == 1.0  # within the tolerance
    assert ce_at([44.99], [25.0]) == 0.0
    assert ce_at([5.0, 50.0, 25.0, 0.0], [25.0, 25.0, 25.0, 25.0]) == pytest.approx(0.75)


def test_mape_is_a_fraction_with_eps() -> None:
    assert mape([11.0], [10.0]) == pytest.approx(1.0 / 11.0)
    assert mape([1.0], [0.0]) == pytest.approx(1.0)  # infant: eps keeps it finite
    assert mape([1.0], [0.0], eps=0.5) == pytest.approx(2.0)
    assert mape([30.0, 10.0], [20.0, 20.0]) == pytest.approx((10 / 21 + 10 / 21) / 2)


def test_gender_accuracy() -> None:
    assert gender_accuracy(["male", "female", "female"], ["male", "male", "female"]) == pytest.approx(2 / 3)
    assert gender_accuracy(pd.Series(["male"], dtype="string"), pd.Series(["male"], dtype="string")) == 1.0
    assert math.isnan(gender_accuracy(["male", None], ["male", "male"]))


def test_empty_input_is_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (age_mae, cs_at, ce_at, mape, gender_accuracy, class_accuracy, class_mae):
            assert math.isnan(fn([], []))


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="length"):
        age_mae([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="length"):
        class_mae([1], [1, 2])


def test_class_accuracy_and_mae() -> None:
    assert class_accuracy([0, 1, 5], [0, 2, 3]) == pytest.approx(1 / 3)
    assert class_mae([0, 1, 5], [0, 2, 3]) == pytest.approx(1.0)


# ---------------------------------------------------------------- class schemes


@pytest.mark.parametrize(
    ("age", "cls"),
    [
        (-3.0, 0),  # negative clamps to 0
        (0.0, 0),
        (3.0, 0),
        (3.4, 0),
        (3.5, 1),  # rounds to 4
        (4.0, 1),
        (6.0, 1),
        (6.5, 2),  # half away from zero: 7 -> "8;12" (np.round would give 6 -> "4;6")
        (7.0, 2),
        (13.0, 2),
        (13.5, 3),
        (14.0, 3),
        (23.0, 3),
        (24.0, 4),
        (35.0, 4),
        (36.0, 5),
        (45.0, 5),
        (46.0, 6),
        (56.0, 6),
        (57.0, 7),
        (130.0, 7),
    ],
)
def test_age_to_class_adience(age: float, cls: int) -> None:
    assert age_to_class([age], ADIENCE).tolist() == [cls]


@pytest.mark.parametrize(
    ("age", "cls"),
    [
        (-1.0, 0),
        (2.0, 0),
        (2.5, 1),
        (3.0, 1),
        (9.0, 1),
        (9.5, 2),
        (10.0, 2),
        (19.0, 2),
        (20.0, 3),
        (29.0, 3),
        (30.0, 4),
        (39.4, 4),
        (40.0, 5),
        (49.0, 5),
        (50.0, 6),
        (59.0, 6),
        (60.0, 7),
        (69.0, 7),
        (69.5, 8),
        (70.0, 8),
        (130.0, 8),
    ],
)
def test_age_to_class_fairface(age: float, cls: int) -> None:
    assert age_to_class([age], FAIRFACE).tolist() == [cls]


def test_age_to_class_missing_is_minus_one() -> None:
    out = age_to_class(pd.Series([np.nan, 30.0]), ADIENCE)
    assert out.tolist() == [-1, 4]
    assert out.dtype == np.int64


def test_label_to_class_canonical_labels() -> None:
    assert label_to_class(list(ADIENCE.labels), ADIENCE).tolist() == list(range(8))
    assert label_to_class(list(FAIRFACE.labels), FAIRFACE).tolist() == list(range(9))


def test_label_to_class_other_forms() -> None:
    assert label_to_class(["(38, 42)", " 25-32 ", "60+", "(0, 2)"], ADIENCE).tolist() == [5, 4, 7, 0]
    assert label_to_class(["more than 70", "70+", "0-2", "10;19"], FAIRFACE).tolist() == [8, 8, 0, 2]
    assert label_to_class(pd.Series(["4;6"] * 3, dtype="string"), ADIENCE).tolist() == [1, 1, 1]
    assert label_to_class([], ADIENCE).tolist() == []


@pytest.mark.parametrize(
    ("label", "scheme"),
    [
        ("(8, 23)", ADIENCE),  # spans two classes
        ("30+", FAIRFACE),  # open label in a closed class
        ("abc", ADIENCE),
        ("13", ADIENCE),  # a bare age is not a class label
        ("32;25", ADIENCE),
    ],
)
def test_label_to_class_errors_name_the_label(label: str, scheme: metrics.ClassScheme) -> None:
    with pytest.raises(ValueError, match=label.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        label_to_class(["0;2", label], scheme)


def test_label_to_class_missing_label() -> None:
    with pytest.raises(ValueError, match="missing"):
        label_to_class(["0;2", None], ADIENCE)


def test_detect_class_scheme() -> None:
    assert detect_class_scheme(["25;32", "0;2", "60;100"]).name == "adience"
    assert detect_class_scheme(pd.Series(["(25, 32)", "48-53"])).name == "adience"
    assert detect_class_scheme(["20-29", "more than 70", "3-9"]).name == "fairface"
    # MiVOLO's FairFace annotations write the open last class as "70;120" (their prepare_fairface.py age_map)
    assert detect_class_scheme(["20;29", "70;120", "3;9"]).name == "fairface"
    assert label_to_class(["70;120"], FAIRFACE).tolist() == [8]
    # "0;2" / "0-2" alone fit both schemes: the exact spelling decides
    assert detect_class_scheme(["0;2"]).name == "adience"
    assert detect_class_scheme(["0-2"]).name == "fairface"


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["25;32", "20-29"], "mix"),
        (["foo"], "foo"),
        (["25;32", "26-31"], "26-31"),
        ([], "no age class labels"),
        (["(0, 2)"], "several"),
    ],
)
def test_detect_class_scheme_errors(labels: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detect_class_scheme(labels)


# ---------------------------------------------------------------- evaluate


def _samples() -> pd.DataFrame:
    rows = [
        # sample_id, dataset, age, age_class, gender
        ("s1", "lag", 20.0, None, "male"),
        ("s2", "lag", 30.0, None, "female"),
        ("s3", "lag", 40.0, None, None),
        ("s4", "lag", None, None, "male"),
        ("s5", "lag", 0.0, None, "female"),
        ("a1", "adi", None, "0;2", "male"),
        ("a2", "adi", None, "25;32", "female"),
        ("a3", "adi", None, "60;100", "male"),
        ("a4", "adi", None, "8;12", None),
    ]
    frame = pd.DataFrame(rows, columns=["sample_id", "dataset", "age", "age_class", "gender"])
    frame["split"] = "test"
    frame["image_path"] = frame["sample_id"] + ".jpg"
    return validate_samples(frame)


def _predictions() -> pd.DataFrame:
    rows = [
        # sample_id, model, input, age_pred, gender_pred, status
        ("s1", "A", "body", 25.0, "male", "ok"),
        ("s2", "A", "body", 20.0, "female", "ok"),
        ("s3", "A", "body", None, None, "refused"),
        ("s4", "A", "body", 50.0, "female", "ok"),
        # s5: no row for A
        ("s1", "B", "body", 45.0, "female", "ok"),
        ("s2", "B", "body", None, "female", "ok"),
        ("s3", "B", "body", 40.0, "male", "ok"),
        ("s4", "B", "body", None, None, "unparsed"),
        ("s5", "B", "body", 2.0, "female", "ok"),
        ("a1", "A", "face", 3.4, "male", "ok"),
        ("a2", "A", "face", 36.0, "male", "ok"),
        ("a3", "A", "face", 130.0, "male", "ok"),
        ("a4", "A", "face", 6.5, "female", "ok"),
        ("a1", "C", "face", None, None, "refused"),
        ("a2", "C", "face", None, None, "failed"),
        ("a3", "C", "face", None, None, "refused"),
    ]
    frame = pd.DataFrame(rows, columns=["sample_id", "model", "input", "age_pred", "gender_pred", "status"])
    return validate_predictions(frame)


def _row(table: pd.DataFrame, dataset: str, input_kind: str, model: str, view: str) -> pd.Series:
    sel = table[
        (table["dataset"] == dataset)
        & (table["input"] == input_kind)
        & (table["model"] == model)
        & (table["view"] == view)
    ]
    assert len(sel) == 1
    return sel.iloc[0]


def test_evaluate_layout_and_order() -> None:
    out = evaluate(_samples(), _predictions())
    assert list(out.columns) == list(EVAL_COLUMNS)
    keys = list(zip(out["dataset"], out["input"], out["model"], out["view"], strict=True))
    assert keys == [
        ("adi", "face", "A", "answered"),
        ("adi", "face", "A", "common"),
        ("adi", "face", "C", "answered"),
        ("adi", "face", "C", "common"),
        ("lag", "body", "A", "answered"),
        ("lag", "body", "A", "common"),
        ("lag", "body", "B", "answered"),
        ("lag", "body", "B", "common"),
    ]


def test_evaluate_answered_view() -> None:
    out = evaluate(_samples(), _predictions(), views=("answered",))
    a = _row(out, "lag", "body", "A", "answered")
    # answered: s1, s2, s4 (s3 refused, s5 missing) of 5
    assert (a["n_total"], a["n_answered"], a["coverage"]) == (5, 3, pytest.approx(0.6))
    # age over s1 (err 5) and s2 (err 10); s4 has no gt age
    assert a["age_n"] == 2
    assert a["age_mae"] == pytest.approx(7.5)
    assert a["age_cs5"] == pytest.approx(0.5)
    assert a["age_mape"] == pytest.approx((5 / 21 + 10 / 31) / 2)
    assert a["age_ce20"] == 0.0
    # gender over s1 (right), s2 (right), s4 (wrong): masked separately from age
    assert a["gender_n"] == 3
    assert a["gender_acc"] == pytest.approx(2 / 3)
    assert a["class_scheme"] is None and a["class_n"] == 0 and math.isnan(a["class_acc"])

    b = _row(out, "lag", "body", "B", "answered")
    assert (b["n_answered"], b["coverage"]) == (4, pytest.approx(0.8))
    # age over s1 (25), s3 (0), s5 (2); s2 has no age_pred
    assert b["age_n"] == 3
    assert b["age_mae"] == pytest.approx(9.0)
    assert b["age_cs5"] == pytest.approx(2 / 3)
    assert b["age_ce20"] == pytest.approx(1 / 3)
    assert b["age_mape"] == pytest.approx((25 / 21 + 0 + 2 / 1) / 3)
    # gender over s1 (wrong), s2 (right), s5 (right); s3 has no gt gender
    assert b["gender_n"] == 3
    assert b["gender_acc"] == pytest.approx(2 / 3)


def test_evaluate_class_dataset_and_zero_answered_model() -> None:
    out = evaluate(_samples(), _predictions(), views=("answered",))
    a = _row(out, "adi", "face", "A", "answered")
    assert a["class_scheme"] == "adience"
    assert (a["n_total"], a["n_answered"], a["class_n"]) == (4, 4, 4)
    # 3.4 -> "0;2" right, 36 -> "38;43" vs "25;32" (1 off), 130 -> "60;100" right, 6.5 -> 7 -> "8;12" right
    assert a["class_acc"] == pytest.approx(0.75)
    assert a["class_mae"] == pytest.approx(0.25)
    assert a["age_n"] == 0 and math.isnan(a["age_mae"]) and math.isnan(a["age_cs5"])
    assert a["gender_n"] == 3 and a["gender_acc"] == pytest.approx(2 / 3)

    c = _row(out, "adi", "face", "C", "answered")
    assert (c["n_total"], c["n_answered"], c["coverage"]) == (4, 0, 0.0)
    assert c["class_n"] == 0 and math.isnan(c["class_acc"]) and math.isnan(c["gender_acc"])


def test_evaluate_common_view() -> None:
    out = evaluate(_samples(), _predictions(), views=("common",))
    # both A and B answered only s1 and s2
    a = _row(out, "lag", "body", "A", "common")
    assert (a["n_total"], a["n_answered"], a["coverage"]) == (5, 2, pytest.approx(0.4))
    assert a["age_n"] == 2 and a["age_mae"] == pytest.approx(7.5)
    assert a["gender_acc"] == pytest.approx(1.0)
    b = _row(out, "lag", "body", "B", "common")
    assert b["n_answered"] == 2
    assert b["age_n"] == 1 and b["age_mae"] == pytest.approx(25.0)
    assert b["age_cs5"] == 0.0 and b["age_ce20"] == 1.0
    assert b["gender_n"] == 2 and b["gender_acc"] == pytest.approx(0.5)
    # C answered nothing, so the common set of (adi, face) is empty for A too
    for model in ("A", "C"):
        r = _row(out, "adi", "face", model, "common")
        assert (r["n_answered"], r["coverage"], r["class_n"]) == (0, 0.0, 0)
        assert math.isnan(r["class_acc"])


def test_evaluate_rejects_bad_input() -> None:
    samples, preds = _samples(), _predictions()
    with pytest.raises(InputError, match="outside the evaluated"):
        evaluate(samples[samples["sample_id"] != "s1"], preds)
    with pytest.raises(InputError, match="duplicate"):
        evaluate(samples, pd.concat([preds, preds.iloc[:1]], ignore_index=True))
    with pytest.raises(ValueError, match="views"):
        evaluate(samples, preds, views=("all",))
    no_model = preds.copy()
    no_model["model"] = no_model["model"].astype("object")
    no_model.loc[3, "model"] = None
    with pytest.raises(InputError, match="model"):
        evaluate(samples, no_model)
    bad = samples.copy()
    bad.loc[bad["sample_id"] == "a4", "age_class"] = "(8, 23)"
    with pytest.raises(InputError, match=r"adi.*\(8, 23\)"):
        evaluate(bad, preds)


def test_evaluate_empty_predictions() -> None:
    out = evaluate(_samples(), _predictions().iloc[:0], ci=True)
    assert len(out) == 0
    assert list(out.columns)[: len(EVAL_COLUMNS)] == list(EVAL_COLUMNS)


def _random_tables(n: int = 300, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 90, n).round()
    samples = pd.DataFrame(
        {
            "sample_id": [f"x{i}" for i in range(n)],
            "dataset": "rnd",
            "split": "test",
            "image_path": "img.jpg",
            "age": age,
            "gender": rng.choice(["male", "female"], n),
        }
    )
    frames = []
    for model, noise in (("good", 3.0), ("bad", 9.0)):
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": samples["sample_id"],
                    "model": model,
                    "input": "face",
                    "age_pred": np.clip(age + rng.normal(0, noise, n), 0, None),
                    "gender_pred": np.where(rng.random(n) < 0.9, samples["gender"], "male"),
                    "status": np.where(rng.random(n) < 0.9, "ok", "refused"),
                }
            )
        )
    return validate_samples(samples), validate_predictions(pd.concat(frames, ignore_index=True))


def test_evaluate_ci_contains_value_and_is_deterministic() -> None:
    samples, preds = _random_tables()
    out = evaluate(samples, preds, ci=True, n_resamples=200, seed=3)
    again = evaluate(samples, preds, ci=True, n_resamples=200, seed=3)
    pd.testing.assert_frame_equal(out, again)
    for name in metrics.CI_METRICS:
        low, high, value = out[f"{name}_ci_low"], out[f"{name}_ci_high"], out[name]
        defined = value.notna()
        assert (low[defined] <= value[defined] + 1e-12).all(), name
        assert (value[defined] <= high[defined] + 1e-12).all(), name
        assert low[~defined].isna().all() and high[~defined].isna().all(), name
    assert out["age_mae_ci_high"].gt(out["age_mae_ci_low"]).all()
    other = evaluate(samples, preds, ci=True, n_resamples=200, seed=4)
    assert not np.allclose(other["age_mae_ci_low"], out["age_mae_ci_low"])


def test_evaluate_matches_elementwise_metrics() -> None:
    samples, preds = _random_tables()
    row = _row(evaluate(samples, preds), "rnd", "face", "good", "answered")
    merged = preds[(preds["model"] == "good") & (preds["status"] == "ok")].merge(samples, on="sample_id")
    assert row["age_mae"] == pytest.approx(age_mae(merged["age_pred"], merged["age"]))
    assert row["age_cs5"] == pytest.approx(cs_at(merged["age_pred"], merged["age"]))
    assert row["age_mape"] == pytest.approx(mape(merged["age_pred"], merged["age"]))
    assert row["age_ce20"] == pytest.approx(ce_at(merged["age_pred"], merged["age"]))
    assert row["gender_acc"] == pytest.approx(gender_accuracy(merged["gender_pred"], merged["gender"]))


def test_flat_metrics() -> None:
    table = evaluate(_samples(), _predictions())
    flat = metrics.flat_metrics(table)
    assert flat["lag.body.A.age_mae"] == pytest.approx(7.5)
    assert flat["lag.body.A.n_answered"] == 3 and isinstance(flat["lag.body.A.n_answered"], int)
    assert flat["lag.body.B.coverage"] == pytest.approx(0.8)
    assert "adi.face.C.class_acc" not in flat  # NaN: JSON has none
    assert not any(".common." in k for k in flat)
    both = metrics.flat_metrics(table, views=("answered", "common"))
    assert both["lag.body.B.common.age_mae"] == pytest.approx(25.0)
    assert list(both) == sorted(both)


def test_metric_table_is_what_evaluation_rows_carry() -> None:
    """Every metric column of the evaluation rows (and of the flat metrics) is in `METRICS`, and every entry is
    produced, with a value where its target has labels and a bootstrap interval when it has a per-sample score."""
    table = evaluate(_samples(), _predictions(), ci=True, n_resamples=20)
    plain = [c for c in table.columns if not c.endswith(("_ci_low", "_ci_high"))]
    assert set(plain) == set(metrics.TEXT_COLUMNS) | set(metrics.COUNT_COLUMNS) | set(metrics.METRICS_BY_NAME)
    assert [c for c in plain if c in metrics.METRICS_BY_NAME] == [m.name for m in metrics.METRICS]
    bounds = {c.rsplit("_ci_", 1)[0] for c in table.columns if c.endswith(("_ci_low", "_ci_high"))}
    assert bounds == {m.name for m in metrics.METRICS if m.bootstrapped} == set(metrics.CI_METRICS)
    for m in metrics.METRICS:
        assert table[m.name].notna().any(), f"{m.name} is never produced"
        assert (m.target is None) == (m.per_sample is None), m.name
        if m.target is not None:
            assert f"{m.target}_n" in metrics.COUNT_COLUMNS, m.name
    flat = metrics.flat_metrics(table, views=("answered", "common"))
    names = {key.rsplit(".", 1)[1] for key in flat}
    assert names <= set(metrics.COUNT_COLUMNS) | set(metrics.METRICS_BY_NAME) | {
        f"{m}_ci_{side}" for m in metrics.CI_METRICS for side in ("low", "high")
    }
    assert set(metrics.METRICS_BY_NAME) <= names


def test_each_metric_is_the_mean_of_its_per_sample_score() -> None:
    """The score `evaluate` sums and the bootstrap resamples is the one the elementwise functions average."""
    rng = np.random.default_rng(0)
    pred, gt = rng.uniform(0, 90, 200), rng.uniform(0, 90, 200)
    pred[:5] = gt[:5] + 5.0  # on the CS@5 threshold
    scores = {m.name: m.per_sample for m in metrics.METRICS if m.per_sample is not None}
    assert np.mean(scores["age_mae"](pred, gt)) == age_mae(pred, gt)
    assert np.mean(scores["age_cs5"](pred, gt)) == cs_at(pred, gt, 5.0)
    assert np.mean(scores["age_mape"](pred, gt)) == mape(pred, gt)
    assert np.mean(scores["age_ce20"](pred, gt)) == ce_at(pred, gt, 20.0)
    cls_pred, cls_gt = rng.integers(0, 8, 200), rng.integers(0, 8, 200)
    assert np.mean(scores["class_acc"](cls_pred, cls_gt)) == class_accuracy(cls_pred, cls_gt)
    assert np.mean(scores["class_mae"](cls_pred, cls_gt)) == class_mae(cls_pred, cls_gt)
    genders = np.array(["male", "female"])[rng.integers(0, 2, (2, 200))]
    assert np.mean(scores["gender_acc"](*genders)) == gender_accuracy(*genders)


def test_metric_definitions_print_as_the_paper() -> None:
    headers = {m.name: m.paper_header for m in metrics.METRICS if m.in_paper or m.name == "age_ce20"}
    assert headers == {
        "age_mape": "Age MAPE, % ↓",
        "age_mae": "Age MAE ↓",
        "age_cs5": "Age CS@5, % ↑",
        "age_ce20": "Age CE@20, % ↓",
        "gender_acc": "Gender Acc, % ↑",
        "class_acc": "Age Acc, % ↑",
        "class_mae": "Age class MAE ↓",
    }
    assert metrics.metric_def("coverage").column_label == "Coverage, %"
    assert metrics.metric_def("class_mae").column_label == "Class MAE"
    assert {"coverage", "age_cs5", "age_mape", "age_ce20", "gender_acc", "class_acc"} == metrics.PERCENT_METRICS
    assert metrics.metric_def("age_mape").format(0.16864) == "16.86"
    assert metrics.metric_def("class_acc").format(pd.NA) == "-"
    with pytest.raises(ValueError, match="unknown metric 'age_rmse'; expected one of"):
        metrics.metric_def("age_rmse")


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_basic() -> None:
    low, high = bootstrap_ci(np.full(50, 2.0), n_resamples=100)
    assert low.tolist() == [2.0] and high.tolist() == [2.0]
    values = np.tile([0.0, 1.0], 100)
    low, high = bootstrap_ci(values, n_resamples=500, seed=1)
    # the binomial standard error is 0.035: a 95 % interval of about +-0.07
    assert 0.39 < low[0] < 0.5 < high[0] < 0.61
    again = bootstrap_ci(values, n_resamples=500, seed=1)
    assert again[0][0] == low[0] and again[1][0] == high[0]


def test_bootstrap_ci_ratio_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 statistics with different label masks; no labelled sample at all -> NaN
    num = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    den = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    monkeypatch.setattr(metrics, "_MAX_BOOTSTRAP_ELEMENTS", 7)  # chunks of 2 resamples
    stats = metrics.bootstrap_ratios(num, den, n_resamples=5, seed=0)
    assert stats.shape == (5, 2)
    finite = stats[:, 0][~np.isnan(stats[:, 0])]
    assert set(np.round(finite, 6)) <= {1.0, 2.0, 3.0}
    assert np.isnan(stats[:, 1]).all()
    low, high = bootstrap_ci(num, den, n_resamples=5, seed=0)
    assert 1.0 <= low[0] <= high[0] <= 3.0 and math.isnan(low[1])


def test_paired_bootstrap_sign() -> None:
    samples, preds = _random_tables()
    res = paired_bootstrap(
        samples, preds, dataset="rnd", input="face", model_a="good", model_b="bad", metric="age_mae", n_resamples=300
    )
    assert set(res) == {"metric", "n", "value_a", "value_b", "diff", "ci_low", "ci_high", "p_value"}
    assert res["diff"] == pytest.approx(res["value_a"] - res["value_b"])
    assert res["diff"] < 0 and res["ci_low"] <= res["diff"] <= res["ci_high"] < 0
    assert res["p_value"] < 0.01
    flipped = paired_bootstrap(
        samples, preds, dataset="rnd", input="face", model_a="bad", model_b="good", metric="age_mae", n_resamples=300
    )
    # swapping the models mirrors everything: same resamples, negated differences
    assert flipped["diff"] == pytest.approx(-res["diff"])
    assert flipped["ci_low"] == pytest.approx(-res["ci_high"]) and flipped["ci_high"] == pytest.approx(-res["ci_low"])
    assert flipped["p_value"] == res["p_value"] and flipped["n"] == res["n"]
    again = paired_bootstrap(
        samples, preds, dataset="rnd", input="face", model_a="good", model_b="bad", metric="age_mae", n_resamples=300
    )
    assert again == res
    gender = paired_bootstrap(
        samples, preds, dataset="rnd", input="face", model_a="good", model_b="good", metric="gender_acc"
    )
    assert (gender["diff"], gender["ci_low"], gender["ci_high"], gender["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    # n = samples both answered (the refusals are independent): about 0.81 of 300
    ok = preds[preds["status"] == "ok"]
    both = set(ok.loc[ok["model"] == "good", "sample_id"]) & set(ok.loc[ok["model"] == "bad", "sample_id"])
    assert res["n"] == len(both)


def test_paired_bootstrap_small_table() -> None:
    res = paired_bootstrap(
        _samples(), _predictions(), dataset="lag", input="body", model_a="A", model_b="B", metric="age_mae"
    )
    # only s1 has a gt age and an age_pred from both: errors 5 and 25
    assert res["n"] == 1
    assert (res["value_a"], res["value_b"], res["diff"]) == (5.0, 25.0, -20.0)
    assert res["ci_low"] == res["ci_high"] == -20.0
    assert res["p_value"] == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(_samples(), _predictions(), dataset="lag", input="body", model_a="A", model_b="B", metric="x")
    with pytest.raises(ValueError, match="'Z'"):
        paired_bootstrap(
            _samples(), _predictions(), dataset="lag", input="body", model_a="A", model_b="Z", metric="age_mae"
        )


# ---------------------------------------------------------------- age groups


def test_age_group_mae() -> None:
    out = age_group_mae(_samples(), _predictions())
    assert list(out.columns) == ["dataset", "input", "model", "age_lo", "age_hi", "group", "n", "mae"]
    got = [(r.model, r.group, r.n, r.mae) for r in out.itertuples()]
    # A: s1 (gt 20, err 5), s2 (gt 30, err 10); B: s5 (gt 0, err 2), s1 (gt 20, err 25), s3 (gt 40, err 0)
    assert got == [
        ("A", "20-25", 1, 5.0),
        ("A", "30-35", 1, 10.0),
        ("B", "0-5", 1, 2.0),
        ("B", "20-25", 1, 25.0),
        ("B", "40-45", 1, 0.0),
    ]
    capped = age_group_mae(_samples(), _predictions(), width=10.0, max_age=30.0)
    got = [(r.model, r.group, r.age_lo, r.age_hi, r.n, r.mae) for r in capped.itertuples()]
    assert got == [
        ("A", "20-30", 20.0, 30.0, 1, 5.0),
        ("A", "30+", 30.0, math.inf, 1, 10.0),
        ("B", "0-10", 0.0, 10.0, 1, 2.0),
        ("B", "20-30", 20.0, 30.0, 1, 25.0),
        ("B", "30+", 30.0, math.inf, 1, 0.0),
    ]
    common = age_group_mae(_samples(), _predictions(), view="common")
    assert [(r.model, r.group, r.mae) for r in common.itertuples()] == [
        ("A", "20-25", 5.0),
        ("A", "30-35", 10.0),
        ("B", "20-25", 25.0),
    ]


# ---------------------------------------------------------------- fairness view and significance


def _raced_samples() -> pd.DataFrame:
    """`_samples` with race labelled on the "lag" data set only (s3 unlabelled); "adi" has no race."""
    frame = _samples()
    frame["race"] = pd.array(["white", "black", None, "white", "black", None, None, None, None], dtype="string")
    return validate_samples(frame)


def test_group_metrics_by_gender_and_race() -> None:
    out = metrics.group_metrics(_raced_samples(), _predictions(), n_resamples=50)
    assert list(out.columns) == list(metrics.FAIRNESS_COLUMNS)
    got = {
        (r.dataset, r.model, r.attribute, r.group): (r.age_n, r.age_mae, r.gender_n, r.gender_acc)
        for r in out.itertuples()
    }
    nan = float("nan")
    # lag / A: s1 male (err 5, right), s2 female (err 10, right), s4 male (no gt age, wrong gender)
    # lag / B: s1 male (err 25, wrong), s2 female (no age_pred, right), s3 (no gender, err 0), s5 female (err 2)
    expected = {
        ("lag", "A", "gender", "female"): (1, 10.0, 1, 1.0),
        ("lag", "A", "gender", "male"): (1, 5.0, 2, 0.5),
        ("lag", "A", "race", "black"): (1, 10.0, 1, 1.0),
        ("lag", "A", "race", "white"): (1, 5.0, 2, 0.5),
        ("lag", "B", "gender", "female"): (1, 2.0, 2, 1.0),
        ("lag", "B", "gender", "male"): (1, 25.0, 1, 0.0),
        ("lag", "B", "race", "black"): (1, 2.0, 2, 1.0),
        ("lag", "B", "race", "white"): (1, 25.0, 1, 0.0),
        # the race-less data set: gender groups only (class data: no age MAE)
        ("adi", "A", "gender", "female"): (0, nan, 1, 0.0),
        ("adi", "A", "gender", "male"): (0, nan, 2, 1.0),
    }
    assert set(got) == set(expected)
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, nan_ok=True), key
    # one sample per cell: the interval is the value itself; no samples: no interval
    lag_a = out[(out["dataset"] == "lag") & (out["model"] == "A")]
    a_male = lag_a[(lag_a["attribute"] == "gender") & (lag_a["group"] == "male")].iloc[0]
    assert a_male["age_mae_ci_low"] == a_male["age_mae_ci_high"] == 5.0
    assert 0.0 <= a_male["gender_acc_ci_low"] <= 0.5 <= a_male["gender_acc_ci_high"] <= 1.0
    adi = out[out["dataset"] == "adi"]
    assert adi["age_mae_ci_low"].isna().all() and adi["age_mae_ci_high"].isna().all()
    again = metrics.group_metrics(_raced_samples(), _predictions(), n_resamples=50)
    pd.testing.assert_frame_equal(out, again)


def test_group_metrics_without_race_column_and_views() -> None:
    out = metrics.group_metrics(_samples(), _predictions(), n_resamples=20)
    assert set(out["attribute"]) == {"gender"}
    # the common view: lag/body samples both A and B answered (s1, s2); s3 refused by A
    common = metrics.group_metrics(_raced_samples(), _predictions(), view="common", n_resamples=20)
    lag_b = common[(common["dataset"] == "lag") & (common["model"] == "B") & (common["attribute"] == "gender")]
    assert list(lag_b["group"]) == ["female", "male"] and list(lag_b["gender_n"]) == [1, 1]
    empty = metrics.group_metrics(_samples(), _predictions().iloc[:0])
    assert list(empty.columns) == list(metrics.FAIRNESS_COLUMNS) and empty.empty
    with pytest.raises(ValueError, match="view"):
        metrics.group_metrics(_samples(), _predictions(), view="x")


def test_group_spread() -> None:
    groups = metrics.group_metrics(_raced_samples(), _predictions(), n_resamples=20)
    spread = metrics.group_spread(groups)
    assert list(spread.columns) == list(metrics.SPREAD_COLUMNS)
    got = {(r.dataset, r.model, r.attribute, r.metric): r for r in spread.itertuples()}
    b_race = got[("lag", "B", "race", "age_mae")]
    assert (b_race.n_groups, b_race.min_group, b_race.min, b_race.max_group, b_race.max) == (
        2,
        "black",
        2.0,
        "white",
        25.0,
    )
    assert b_race.difference == 23.0 and b_race.ratio == pytest.approx(12.5)
    a_gender = got[("lag", "A", "gender", "gender_acc")]
    assert (a_gender.min_group, a_gender.difference, a_gender.ratio) == ("male", 0.5, 2.0)
    # a zero minimum has no ratio; a metric with one scored group has no spread
    assert math.isnan(got[("lag", "B", "gender", "gender_acc")].ratio)
    assert ("adi", "A", "gender", "age_mae") not in got
    assert metrics.group_spread(groups.iloc[:0]).empty


def test_versus_best_marks_significant_and_insignificant_pairs() -> None:
    samples, preds = _random_tables()
    # "twin" is "good" with the same errors on every sample: it cannot differ significantly from it
    twin = preds[preds["model"] == "good"].assign(model="twin")
    both = validate_predictions(pd.concat([preds, twin], ignore_index=True))
    out = metrics.versus_best(samples, both, metrics=["age_mae", "gender_acc"], n_resamples=300)
    assert list(out.columns) == list(metrics.VERSUS_BEST_COLUMNS)
    mae = out[out["metric"] == "age_mae"].set_index("model")
    assert set(mae["best"]) == {"good"}  # tie with twin: the first name wins
    assert not mae.loc["good", "significant"] and mae.loc["good", "diff"] == 0.0
    assert not mae.loc["twin", "significant"] and mae.loc["twin", "diff"] == 0.0
    assert mae.loc["bad", "significant"] and mae.loc["bad", "ci_low"] > 0
    # the same numbers as paired_bootstrap on the answered view
    ref = paired_bootstrap(
        samples, both, dataset="rnd", input="face", model_a="bad", model_b="good", metric="age_mae", n_resamples=300
    )
    assert (mae.loc["bad", "n"], mae.loc["bad", "diff"], mae.loc["bad", "ci_low"], mae.loc["bad", "ci_high"]) == (
        ref["n"],
        pytest.approx(ref["diff"]),
        pytest.approx(ref["ci_low"]),
        pytest.approx(ref["ci_high"]),
    )
    assert mae.loc["bad", "value"] == pytest.approx(
        evaluate(samples, both, views=["answered"]).set_index("model").loc["bad", "age_mae"]
    )
    gender = out[out["metric"] == "gender_acc"]
    assert gender["best"].iloc[0] in {"good", "twin", "bad"}  # highest accuracy wins
    pd.testing.assert_frame_equal(
        out, metrics.versus_best(samples, both, metrics=["age_mae", "gender_acc"], n_resamples=300)
    )
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.versus_best(samples, both, metrics=["coverage"])


def test_versus_best_small_table() -> None:
    out = metrics.versus_best(_samples(), _predictions(), metrics=["age_mae", "class_mae"], n_resamples=50)
    lag = out[(out["dataset"] == "lag") & (out["metric"] == "age_mae")].set_index("model")
    # A: MAE 7.5 on s1, s2; B: 9 on s1, s3, s5: A is best; only s1 is paired (5 vs 25) -> diff 20, always
    assert lag.loc["A", "best"] == "A" and lag.loc["B", "value"] == pytest.approx(9.0)
    assert (lag.loc["B", "n"], lag.loc["B", "diff"], lag.loc["B", "significant"]) == (1, 20.0, True)
    # C answered nothing on adi: it has no class MAE, so A is compared with nobody
    adi = out[(out["dataset"] == "adi") & (out["metric"] == "class_mae")]
    assert list(adi["model"]) == ["A"]
