"""`agegender evaluate` end to end on small files, and its errors (exit 2, one line, no traceback)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender.cli import main


@pytest.fixture
def files(tmp_path):
    samples = pd.DataFrame(
        {
            "sample_id": [f"d/{i}" for i in range(6)],
            "dataset": "d",
            "split": ["test"] * 5 + ["train"],
            "image_path": [f"{i}.png" for i in range(6)],
            "age": [10.0, 20.0, 30.0, 40.0, None, 50.0],
            "gender": ["male", "female", "male", None, "female", "male"],
        }
    )
    preds = pd.DataFrame(
        {
            "sample_id": [f"d/{i}" for i in range(5)],
            "model": "m",
            "input": "body",
            "age_pred": [12.0, 20.0, 36.0, 40.0, 50.0],
            "gender_pred": ["male", "male", "male", "female", "female"],
            "status": ["ok", "ok", "ok", "ok", "refused"],
        }
    )
    s, p = tmp_path / "samples.csv", tmp_path / "preds.parquet"
    samples.to_csv(s, index=False)
    preds.to_parquet(p, index=False)
    return tmp_path, s, p, preds


def test_evaluate_writes_rows(files):
    tmp, s, p, _ = files
    out = tmp / "out.json"
    assert (
        main(
            ["evaluate", "--samples", str(s), "--predictions", str(p), "--out", str(out), "--flat", str(tmp / "f.json")]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    row = next(r for r in rows if r["view"] == "answered")
    assert (row["dataset"], row["input"], row["model"]) == ("d", "body", "m")
    assert row["n_total"] == 5 and row["n_answered"] == 4 and row["coverage"] == pytest.approx(0.8)
    assert row["age_n"] == 4 and row["age_mae"] == pytest.approx((2 + 0 + 6 + 0) / 4)
    assert row["age_cs5"] == pytest.approx(0.75)
    assert row["gender_n"] == 3 and row["gender_acc"] == pytest.approx(2 / 3)
    # the age-assurance counts with NIST IR 8525's limits; 4 answered ages are below min_n (30): no rate
    assert row["minor_n"] + row["adult_n"] == 4 and row["minor_as_adult"] is None
    flat = json.loads((tmp / "f.json").read_text())
    assert flat["d.body.m.age_mae"] == pytest.approx(2.0)
    assert isinstance(flat["d.body.m.adult_n"], int) and "d.body.m.minor_as_adult" not in flat


def test_evaluate_with_ci(files):
    tmp, s, p, _ = files
    out = tmp / "out.json"
    assert (
        main(
            [
                "evaluate",
                "--samples",
                str(s),
                "--predictions",
                str(p),
                "--out",
                str(out),
                "--ci",
                "--n-resamples",
                "200",
            ]
        )
        == 0
    )
    row = json.loads(out.read_text())["rows"][0]
    assert row["age_mae_ci_low"] <= row["age_mae"] <= row["age_mae_ci_high"]


def bad_case(name, preds, tmp):
    path = tmp / f"{name}.csv"
    preds.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        ("missing_column", lambda d: d.drop(columns="status"), "field 'status': required column is missing"),
        ("unknown_id", lambda d: d.assign(sample_id=["d/0", "d/1", "x/9", "d/3", "d/4"]), "not in the sample table"),
        ("duplicate", lambda d: d.assign(sample_id=["d/0", "d/0", "d/2", "d/3", "d/4"]), "duplicate row"),
        ("bad_status", lambda d: d.assign(status=["ok", "ok", "timeout", "ok", "ok"]), "'timeout' is not one of"),
        # impossible values are rejected, not scored: file, row (1-based, with the sample id) and field
        ("negative_age", lambda d: d.assign(age_pred=[12, -5, 36, 40, 50]), "row 2 (sample_id d/1), field 'age_pred'"),
        ("age_500", lambda d: d.assign(age_pred=[12, 20, 36, 500, 50]), "field 'age_pred': age_pred 500 is outside"),
        (
            "age_inf",
            lambda d: d.assign(age_pred=[12, 20, np.inf, 40, 50]),
            "row 3 (sample_id d/2), field 'age_pred': age_pred is not a finite",
        ),
        (
            "score_1.5",
            lambda d: d.assign(gender_score=[0.2, 1.5, 0, 1, None]),
            "row 2 (sample_id d/1), field 'gender_s",
        ),
        ("score_neg", lambda d: d.assign(gender_score=[0.2, 0.5, -0.1, 1, 0]), "gender_score -0.1 is outside [0, 1]"),
        ("gender_x", lambda d: d.assign(gender_pred=["male", "x", None, "male", "female"]), "gender_pred must be one"),
    ],
)
def test_evaluate_bad_input_exits_2_naming_the_file(files, capsys, name, mutate, expected):
    tmp, s, _, preds = files
    path = bad_case(name, mutate(preds.copy()), tmp)
    code = main(["evaluate", "--samples", str(s), "--predictions", str(path), "--out", str(tmp / "o.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_same_prediction_in_two_files_is_an_error(files, capsys):
    tmp, s, p, _ = files
    copy = tmp / "copy.parquet"
    shutil.copy(p, copy)
    assert (
        main(["evaluate", "--samples", str(s), "--predictions", str(p), str(copy), "--out", str(tmp / "o.json")]) == 2
    )
    assert "several files" in capsys.readouterr().err


def test_missing_samples_file(files, capsys):
    tmp, _, p, _ = files
    assert (
        main(["evaluate", "--samples", str(tmp / "nope.csv"), "--predictions", str(p), "--out", str(tmp / "o.json")])
        == 2
    )
    assert "nope.csv" in capsys.readouterr().err


def test_console_script_reports_without_traceback(files):
    tmp, s, _, _ = files
    exe = Path(sys.executable).with_name("agegender")
    proc = subprocess.run(
        [str(exe), "evaluate", "--samples", str(s), "--predictions", str(tmp / "none.parquet"), "--out", "o.json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "none.parquet" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_metrics_become_null(files):
    tmp, s, p, preds = files
    path = tmp / "allrefused.parquet"
    preds.assign(status="refused", age_pred=np.nan, gender_pred=None).to_parquet(path, index=False)
    out = tmp / "out.json"
    assert main(["evaluate", "--samples", str(s), "--predictions", str(path), "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["coverage"] == 0 and row["age_mae"] is None


def test_evaluate_with_nothing_to_evaluate_keeps_the_previous_outputs(files, capsys):
    tmp, s, p, preds = files
    outs = {"--out": tmp / "o.json", "--flat": tmp / "f.json", "--age-groups": tmp / "g.csv"}
    argv = ["evaluate", "--samples", str(s), *[a for k, v in outs.items() for a in (k, str(v))]]
    assert main([*argv, "--predictions", str(p)]) == 0
    before = {k: v.read_bytes() for k, v in outs.items()}
    header_only = tmp / "header_only.csv"
    preds.iloc[:0].to_csv(header_only, index=False)
    train_only = tmp / "train_only.parquet"  # d/5 is the train sample; the default split is test
    preds.iloc[:1].assign(sample_id="d/5").to_parquet(train_only, index=False)
    for path, expected in [
        (header_only, "has no prediction rows (header only)"),
        (train_only, "none of the 1 predictions is for a sample of split 'test': nothing to evaluate"),
    ]:
        capsys.readouterr()
        assert main([*argv, "--predictions", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and expected in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert {k: v.read_bytes() for k, v in outs.items()} == before
    # a header-only file next to good ones is not a model that silently drops out of the results
    assert main([*argv, "--predictions", str(p), str(header_only)]) == 2
    assert {k: v.read_bytes() for k, v in outs.items()} == before


def test_evaluate_stage_with_nothing_to_evaluate_keeps_its_outputs(files):
    """The `evaluate` stage reads prediction tables through the same checks as the CLI."""
    from agegender.errors import InputError
    from agegender.params import params_from_dict
    from agegender.paths import ProjectPaths
    from agegender.stages import evaluate

    tmp, s, _, preds = files
    root = tmp / "project"
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    pd.read_csv(s).to_parquet(prepared / "samples.parquet", index=False)
    pd.DataFrame().to_parquet(prepared / "masked.parquet")
    (prepared / "datasets.json").write_text(json.dumps({"d": {"root": "data/d"}}))
    (root / "predictions" / "predict").mkdir(parents=True)
    params = params_from_dict(
        {
            "profile": "paper",
            "prepare_data": {"demo": None, "datasets": {"d": {"reader": "folder", "root": "data/d"}}},
            "study": {"datasets": ["d"]},
            "evaluate": {"n_resamples": 20},
        }
    )
    paths = ProjectPaths(root)
    table = root / "predictions" / "predict" / "m.parquet"
    preds.to_parquet(table, index=False)
    evaluate.run(params, paths)
    outputs = [
        root / "reports" / "evaluation.json",
        root / "reports" / "age_groups.csv",
        root / "metrics" / "evaluate.json",
    ]
    before = [p.read_bytes() for p in outputs]
    for bad, expected in [
        (preds.iloc[:0], "has no prediction rows (header only)"),
        (preds.iloc[:1].assign(sample_id="d/5"), "is for a sample of split 'test' of data sets ['d']"),
        (preds.assign(age_pred=[12, 20, 36, 40, 500]), "age_pred 500 is outside [0, 130] years"),
    ]:
        bad.to_parquet(table, index=False)
        with pytest.raises(InputError, match=re.escape(expected)) as info:
            evaluate.run(params, paths)
        assert str(table) in str(info.value)
        assert [p.read_bytes() for p in outputs] == before
