"""agegender.explore on hand-made samples and predictions (the notebook itself runs in tests/integration)."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender import explore, metrics
from agegender.data.schema import validate_predictions, validate_samples


def _samples() -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            # sample_id, dataset, age, gender, race, face box, person box
            ("s1", "lag", 20.0, "male", "asian", (2, 2, 8, 8), (0, 0, 16, 16)),
            ("s2", "lag", 30.0, "female", "black", (10, 2, 14, 6), (8, 0, 16, 16)),
            ("s3", "lag", 40.0, "female", "asian", None, (0, 0, 8, 16)),
        ],
        columns=["sample_id", "dataset", "age", "gender", "race", "face", "person"],
    )
    for i, c in enumerate(("x0", "y0", "x1", "y1")):
        frame[f"face_{c}"] = [None if b is None else float(b[i]) for b in frame["face"]]
        frame[f"person_{c}"] = [float(b[i]) for b in frame["person"]]
    frame["split"] = "test"
    frame["image_path"] = "img.png"
    return validate_samples(frame.drop(columns=["face", "person"]))


def _predictions() -> pd.DataFrame:
    rows = [
        # sample_id, model, input, age_pred, gender_pred, status, raw_answer
        ("s1", "A", "face", 25.0, "male", "ok", "25, male"),
        ("s2", "A", "face", 20.0, "male", "ok", "20, male"),
        ("s3", "A", "face", None, None, "refused", "I cannot tell"),
        ("s1", "B", "face", 21.0, "female", "ok", "21, female"),
        ("s2", "B", "face", 31.0, "female", "ok", "31, female"),
        ("s3", "B", "face", None, None, "unparsed", "old"),
        ("s3", "B", "body", 44.0, "female", "ok", "44, female"),
    ]
    columns = ["sample_id", "model", "input", "age_pred", "gender_pred", "status", "raw_answer"]
    return validate_predictions(pd.DataFrame(rows, columns=columns))


def _run(tmp_path=None) -> explore.RunOutputs:
    roots = {}
    if tmp_path is not None:
        image = np.zeros((16, 16, 3), dtype=np.uint8)
        image[:, :8] = 200  # s1's half is bright, s2's dark
        Image.fromarray(image).save(tmp_path / "img.png")
        roots = {"lag": tmp_path}
    return explore.RunOutputs(_samples(), _predictions(), image_roots=roots, n_resamples=50, seed=3)


def test_scored_attaches_labels_errors_and_gender():
    table = explore.scored(_samples(), _predictions())
    row = table[(table["sample_id"] == "s2") & (table["model"] == "A")].iloc[0]
    assert row["age_true"] == 30 and row["abs_error"] == 10 and row["race"] == "black"
    assert not row["gender_correct"]
    refused = table[table["status"] == "refused"].iloc[0]
    assert pd.isna(refused["abs_error"]) and pd.isna(refused["gender_correct"])


def test_worst_errors_are_the_largest_per_model_and_input():
    worst = explore.worst_errors(explore.scored(_samples(), _predictions()), n=1)
    assert list(zip(worst["model"], worst["input"], worst["sample_id"], strict=True)) == [
        ("A", "face", "s2"),
        ("B", "body", "s3"),
        ("B", "face", "s1"),
    ]
    assert worst["abs_error"].tolist() == [10, 4, 1]


def test_disagreements_pair_the_same_sample_and_input():
    gaps = explore.disagreements(explore.scored(_samples(), _predictions()), "A", "B")
    assert gaps["sample_id"].tolist() == ["s2", "s1"]  # s3: neither answered on the face; body: only B
    assert gaps["gap"].tolist() == [11, 4] and gaps["age_a"].tolist() == [20, 25]


def test_unanswered_keep_their_raw_text_and_statuses_are_counted():
    table = explore.scored(_samples(), _predictions())
    rest = explore.unanswered(table)
    assert rest[["model", "status", "raw_answer"]].values.tolist() == [
        ["A", "refused", "I cannot tell"],
        ["B", "unparsed", "old"],
    ]
    counts = explore.status_counts(table).set_index(["model", "input"])
    assert counts.loc[("B", "face")].tolist() == ["lag", 2, 0, 1]
    assert list(counts.columns) == ["dataset", "ok", "refused", "unparsed"]


def test_error_by_gender_and_race_is_the_fairness_view_on_answers():
    run = _run()
    race = explore.error_by(run, "race").set_index(["model", "input", "group"])
    assert race.loc[("A", "face", "asian"), "age_n"] == 1 and race.loc[("A", "face", "asian"), "age_mae"] == 5
    assert race.loc[("B", "face", "black"), "gender_acc"] == 1.0
    gender = explore.error_by(run, "gender").set_index(["model", "input", "group"])
    assert gender.loc[("B", "face", "female"), "age_mae"] == 1 and gender.loc[("B", "body", "female"), "age_n"] == 1
    expected = metrics.group_metrics(run.samples, run.predictions, attributes=("gender",), n_resamples=50, seed=3)
    pd.testing.assert_frame_equal(explore.error_by(run, "gender"), expected)
    assert explore.error_by(replace(run, samples=run.samples.drop(columns="race")), "race").empty


def test_error_by_age_group_is_the_metrics_one():
    groups = explore.error_by_age_group(_run(), width=10)
    expected = metrics.age_group_mae(_samples(), _predictions(), width=10)
    pd.testing.assert_frame_equal(groups, expected)


def test_paired_differences_cover_every_pair_with_the_study_bootstrap():
    run = _run()
    diffs = explore.paired_differences(run, "lag", "face")
    assert diffs[["model_a", "model_b", "n"]].values.tolist() == [["A", "B", 2]]
    direct = metrics.paired_bootstrap(
        run.samples, run.predictions, dataset="lag", input="face", model_a="A", model_b="B", metric="age_mae",
        n_resamples=50, seed=3,
    )  # fmt: skip
    assert diffs.iloc[0]["diff"] == pytest.approx(direct["diff"]) == 7.5 - 1.0
    assert diffs.iloc[0]["ci_low"] == direct["ci_low"]
    assert explore.paired_differences(run, "lag", "body").empty  # one model only


def test_crops_are_the_pipeline_crops_and_the_sheet_renders(tmp_path):
    run = _run(tmp_path)
    rows = pd.DataFrame({"sample_id": ["s2", "s1", "s3"], "input": ["face", "body", "face"]})
    crops = explore.crops_of(run, rows)
    assert crops[0].shape == (4, 4, 3) and crops[0].max() == 0  # s2's face, in the dark half
    assert crops[1].shape == (16, 16, 3)  # s1's person box
    assert crops[2] is None  # s3 has no face box
    sheet = explore.crop_sheet(run, rows, ["a", "b", "c"], columns=2)
    assert sheet.size[0] > 0 and sheet.size[1] > 0


def test_worst_error_captions():
    worst = explore.worst_errors(explore.scored(_samples(), _predictions()), n=1)
    assert explore.worst_error_captions(worst)[0] == "A · face\ntrue 30, said 20.0"


def test_choose_comparison_fills_what_is_left_open():
    table = explore.scored(_samples(), _predictions())
    assert explore.choose_comparison(table) == explore.Comparison("lag", "face", "A", "B")
    assert explore.choose_comparison(table, model_a="B") == explore.Comparison("lag", "face", "B", "A")
    assert explore.choose_comparison(table, input_kind="body") is None  # one model answered there


def test_worst_errors_of_one_dataset():
    table = explore.scored(_samples(), _predictions())
    assert explore.worst_errors(table, dataset="other").empty
    assert len(explore.worst_errors(table, n=1, dataset="lag")) == 3
