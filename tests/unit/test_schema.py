import numpy as np
import pandas as pd
import pytest

from agegender.data.schema import (
    AGE_RANGE,
    PREDICTION_COLUMNS,
    SAMPLE_COLUMNS,
    read_table,
    validate_predictions,
    validate_samples,
)
from agegender.errors import InputError


def samples(**changes):
    df = pd.DataFrame(
        {
            "sample_id": ["d/a.png@0", "d/a.png@1", "d/b.png@0"],
            "dataset": "d",
            "split": "test",
            "image_path": ["a.png", "a.png", "b.png"],
            "image_width": [100, 100, 50],
            "image_height": [80, 80, 50],
            "face_x0": [10.0, 50.0, np.nan],
            "face_y0": [10.0, 10.0, np.nan],
            "face_x1": [20.0, 60.0, np.nan],
            "face_y1": [20.0, 20.0, np.nan],
            "person_x0": [0.0, 40.0, 0.0],
            "person_y0": [0.0, 0.0, 0.0],
            "person_x1": [40.0, 100.0, 50.0],
            "person_y1": [80.0, 80.0, 50.0],
            "age": [30.0, 4.5, np.nan],
            "gender": ["male", "female", None],
        }
    )
    for key, (row, value) in changes.items():
        df.loc[row, key] = value
    return df


def test_valid_table_gets_canonical_columns_and_dtypes():
    out = validate_samples(samples(), "s.csv")
    assert list(out.columns) == list(SAMPLE_COLUMNS)
    assert str(out["age"].dtype) == "Float64"
    assert out["age_class"].isna().all()


@pytest.mark.parametrize(
    ("changes", "field", "row"),
    [
        ({"sample_id": (1, "d/a.png@0")}, "sample_id", "2 (sample_id d/a.png@0)"),
        ({"face_x1": (0, 5.0)}, "face_x0", "1"),
        ({"person_y1": (1, 90.0)}, "person_y1", "2"),
        ({"person_x0": (2, -1.0)}, "person_x0", "3"),
        ({"age": (0, 131.0)}, "age", "1"),
        ({"gender": (1, "F")}, "gender", "2"),
        ({"face_y0": (0, np.nan)}, "face_x0", "1"),
    ],
)
def test_bad_rows_name_file_row_and_field(changes, field, row):
    with pytest.raises(InputError) as info:
        validate_samples(samples(**changes), "s.csv")
    err = info.value
    assert err.file == "s.csv"
    assert err.field == field
    assert str(err.row).startswith(row)
    assert "s.csv" in str(err)


def test_missing_required_column():
    with pytest.raises(InputError, match="image_path"):
        validate_samples(samples().drop(columns="image_path"), "s.csv")


def test_non_numeric_age_is_reported():
    df = samples().astype({"age": object})
    df.loc[1, "age"] = "old"
    with pytest.raises(InputError) as info:
        validate_samples(df, "s.csv")
    assert info.value.field == "age" and str(info.value.row).startswith("2")


def preds(**changes):
    df = pd.DataFrame(
        {
            "sample_id": ["d/a.png@0", "d/a.png@1"],
            "model": "m",
            "input": ["body", "body"],
            "age_pred": [31.0, np.nan],
            "gender_pred": ["male", None],
            "status": ["ok", "refused"],
        }
    )
    for key, (row, value) in changes.items():
        df.loc[row, key] = value
    return df


def test_predictions_fill_optional_columns():
    out = validate_predictions(preds(), "p.csv", known_ids=samples()["sample_id"])
    assert list(out.columns) == list(PREDICTION_COLUMNS)
    assert out["raw_answer"].isna().all()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"status": (1, "error")}, "status"),
        ({"input": (0, "torso")}, "input"),
        ({"gender_pred": (0, "m")}, "gender_pred"),
        ({"age_pred": (0, np.inf)}, "age_pred"),
        ({"age_pred": (0, -5.0)}, "age_pred"),
        ({"age_pred": (0, 500.0)}, "age_pred"),
        ({"gender_score": (0, 1.5)}, "gender_score"),
        ({"gender_score": (1, -0.01)}, "gender_score"),
        ({"gender_score": (1, np.inf)}, "gender_score"),
        ({"sample_id": (1, "d/a.png@0")}, "sample_id"),
        ({"sample_id": (1, "nope")}, "sample_id"),
    ],
)
def test_bad_predictions(changes, field):
    with pytest.raises(InputError) as info:
        validate_predictions(preds(**changes), "p.csv", known_ids=samples()["sample_id"])
    assert info.value.field == field and info.value.file == "p.csv"


def test_read_table_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_table(tmp_path / "missing.csv")
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InputError, match="cannot be read"):
        read_table(bad)
    other = tmp_path / "x.txt"
    other.write_text("a")
    with pytest.raises(InputError, match="unknown table format"):
        read_table(other)


def test_prediction_ranges_are_the_schema_constants():
    lo, hi = AGE_RANGE
    edge = validate_predictions(preds(age_pred=(0, hi), gender_score=(0, 1.0)), "p.csv")  # the ends are possible
    assert edge["age_pred"].iloc[0] == hi and edge["gender_score"].iloc[0] == 1.0
    assert validate_predictions(preds(age_pred=(0, lo), gender_score=(0, 0.0)), "p.csv")["age_pred"].iloc[0] == lo
    with pytest.raises(InputError) as info:
        validate_predictions(preds(age_pred=(0, np.nextafter(hi, np.inf))), "p.csv")
    assert info.value.row == "1 (sample_id d/a.png@0)" and info.value.field == "age_pred"
    assert f"outside [{lo:g}, {hi:g}] years" in info.value.message


def test_every_reader_of_prediction_tables_rejects_impossible_values(tmp_path):
    from agegender.evaluate import load_predictions, read_external_predictions
    from agegender.mllm.runner import merge_predictions

    path = tmp_path / "p.parquet"
    preds(age_pred=(0, 500.0)).to_parquet(path, index=False)
    known = ["d/a.png@0", "d/a.png@1"]
    for read in (
        lambda: load_predictions([path], known),
        lambda: read_external_predictions(path, "m", pd.Series(known)),
        lambda: merge_predictions([path]),
    ):
        with pytest.raises(InputError) as info:
            read()
        assert (info.value.file, info.value.field) == (str(path), "age_pred")
        assert str(info.value.row).startswith("1 ")
