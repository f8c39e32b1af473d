"""Native-format readers (UTKFace, FG-NET, FairFace) -> sample table, report; their splits and checks."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import write_empty, write_truncated_jpeg  # noqa: E402

from agegender.data import native  # noqa: E402
from agegender.data.native import (  # noqa: E402
    assign_splits,
    fairface_age_class,
    parse_fgnet_name,
    parse_utkface_name,
    read_fairface,
    read_fgnet,
    read_utkface,
)
from agegender.data.readers import SKIP_REASONS
from agegender.data.registry import check_dataset, read_dataset, resolve_reader  # noqa: E402
from agegender.data.schema import OPTIONAL_SAMPLE_COLUMNS, SAMPLE_COLUMNS, validate_samples  # noqa: E402
from agegender.errors import InputError  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"

FACE = ["face_x0", "face_y0", "face_x1", "face_y1"]
PERSON = ["person_x0", "person_y0", "person_x1", "person_y1"]


def _image(path: Path, width: int = 20, height: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path, format="JPEG")


def _utk_names(n: int) -> list[str]:
    return [f"{(7 * i) % 90}_{i % 2}_{i % 5}_2017010{i % 10}1234567{i:02d}.jpg.chip.jpg" for i in range(n)]


@pytest.fixture
def utk(tmp_path: Path) -> Path:
    root = tmp_path / "utk"
    for name in ["25_0_2_20170116174525125.jpg.chip.jpg", "3_1_4_20170103210321445.jpg.chip.jpg"]:
        _image(root / name, 30, 30)
    _image(root / "61_1_20170109142408075.jpg.chip.jpg", 30, 30)  # the race field is missing
    (root / "README.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(b"")
    return root


# ----------------------------------------------------------------------------------------------
# UTKFace


def test_parse_utkface_name() -> None:
    assert parse_utkface_name("100_1_0_20170110183726390.jpg.chip.jpg") == {
        "age": "100",
        "gender": "female",
        "race": "White",
    }
    assert parse_utkface_name("1_0_3_20161219140627985.jpg")["race"] == "Indian"
    for name, field in [
        ("61_1_20170109142408075.jpg.chip.jpg", "file name"),
        ("61_3_20170109150557335.jpg.chip.jpg", "file name"),
        ("x_1_0_20170109150557335.jpg", "age"),
        ("200_1_0_20170109150557335.jpg", "age"),
        ("20_2_0_20170109150557335.jpg", "gender"),
        ("20_1_5_20170109150557335.jpg", "race"),
        ("20_1_0_2017a.jpg", "datetime"),
    ]:
        with pytest.raises(ValueError) as err:
            parse_utkface_name(name)
        assert err.value.args[1] == field, name


def test_read_utkface_whole_image_face_and_race(utk: Path) -> None:
    result = read_utkface(utk, "utkface", on_bad_row="skip")
    s = result.samples
    assert list(s.columns) == [*SAMPLE_COLUMNS, "race"]
    assert str(s["race"].dtype) == "string"
    # sorted by file name; the face box is the whole image, there is no person box
    assert s["image_path"].tolist() == ["25_0_2_20170116174525125.jpg.chip.jpg", "3_1_4_20170103210321445.jpg.chip.jpg"]
    assert s["sample_id"].tolist() == [f"utkface/{p}@0,0,30,30" for p in s["image_path"]]
    assert s[FACE].astype(float).values.tolist() == [[0, 0, 30, 30]] * 2
    assert s[PERSON].isna().all().all()
    assert s["age"].tolist() == [25.0, 3.0] and s["gender"].tolist() == ["male", "female"]
    assert s["race"].tolist() == ["Asian", "Others"] and s["age_class"].isna().all()
    assert set(s["split"]) == {"test"}
    r = result.report
    assert (r["rows"], r["samples"], r["skipped"], r["skipped_bad_name"]) == (3, 2, 1, 1)
    assert all(r[f"skipped_{reason}"] == 0 for reason in SKIP_REASONS)
    assert len(result.notes) == 1 and "61_1_20170109142408075.jpg.chip.jpg" in result.notes[0]


def test_read_utkface_malformed_name_raises(utk: Path) -> None:
    with pytest.raises(InputError) as err:
        read_utkface(utk, "utkface")
    assert err.value.file == str(utk / "61_1_20170109142408075.jpg.chip.jpg")
    assert err.value.field == "file name" and "not guessed" in err.value.message
    (utk / "61_1_20170109142408075.jpg.chip.jpg").rename(utk / "61_7_0_20170109142408075.jpg.chip.jpg")
    with pytest.raises(InputError) as err:
        read_utkface(utk, "utkface")
    assert (Path(err.value.file).name, err.value.field) == ("61_7_0_20170109142408075.jpg.chip.jpg", "gender")


def test_read_utkface_images_subfolder_and_unreadable(tmp_path: Path) -> None:
    _image(tmp_path / "UTKFace" / "30_0_0_20170116174525125.jpg.chip.jpg", 40, 50)
    (tmp_path / "UTKFace" / "31_0_0_20170116174525125.jpg.chip.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(InputError, match="cannot be decoded as an image") as err:
        read_utkface(tmp_path, "u", images="UTKFace")
    assert err.value.field == "image"
    result = read_utkface(tmp_path, "u", images="UTKFace", on_bad_row="skip")
    assert result.samples["image_path"].tolist() == ["UTKFace/30_0_0_20170116174525125.jpg.chip.jpg"]
    assert result.report["skipped_unreadable_image"] == 1 and result.report["skipped_bad_name"] == 0
    with pytest.raises(InputError, match="image folder not found"):
        read_utkface(tmp_path, "u", images="nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image file"):
        read_utkface(tmp_path / "empty", "u")


def _utk_folder(root: Path, n: int) -> Path:
    for name in _utk_names(n):
        _image(root / name, 8, 8)
    return root


def test_utkface_split_fractions_are_seeded_and_listing_independent(tmp_path: Path, monkeypatch) -> None:
    root = _utk_folder(tmp_path / "utk", 40)
    splits = {"train": 0.7, "val": 0.1, "test": 0.2}
    a = read_utkface(root, "u", splits=splits, seed=3).samples
    assert a["split"].value_counts().to_dict() == {"train": 28, "test": 8, "val": 4}
    b = read_utkface(root, "u", splits=splits, seed=3).samples
    pd.testing.assert_frame_equal(a, b)
    c = read_utkface(root, "u", splits=splits, seed=4).samples
    assert c["split"].tolist() != a["split"].tolist() and c["sample_id"].tolist() == a["sample_id"].tolist()

    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: reversed(list(real_iterdir(self))))
    d = read_utkface(root, "u", splits=splits, seed=3).samples
    pd.testing.assert_frame_equal(a, d)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"splits": {"train": 0.7, "test": 0.2}}, "sum to 1"),
        ({"splits": {"train": 1.2, "test": -0.2}}, r"\(0, 1\]"),
        ({"splits": {"train": "half", "test": 0.5}}, r"\(0, 1\]"),
        ({"splits": {}}, "map split names"),
        ({"splits": {"train": 0.5, "test": 0.5}, "split": "test"}, "not both"),
        ({"splits": {"train": 0.5, "test": 0.5}, "seed": 1.5}, "seed"),
        ({"split": ""}, "non-empty"),
        ({"on_bad_row": "ignore"}, "on_bad_row"),
    ],
)
def test_split_options_are_checked(utk: Path, options: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        read_utkface(utk, "u", **options)
    assert any(re.search(match, line) for line in check_dataset("utkface", utk, **options))


def test_assign_splits_counts_and_edge_cases() -> None:
    units = [f"u{i}" for i in range(10)]
    out = assign_splits(units, {"a": 0.34, "b": 0.33, "c": 0.33}, seed=0)
    assert sorted(pd.Series(out).value_counts().tolist()) == [3, 3, 4] and set(out) == set(units)
    assert assign_splits(units[::-1], {"a": 0.5, "b": 0.5}, seed=1) == assign_splits(units, {"a": 0.5, "b": 0.5}, 1)
    assert set(assign_splits(["x"], {"train": 0.9, "test": 0.1}, seed=0).values()) == {"train"}
    assert assign_splits([], {"train": 0.5, "test": 0.5}, seed=0) == {}
    assert set(assign_splits(units, {"all": 1.0}, seed=0).values()) == {"all"}


# ----------------------------------------------------------------------------------------------
# FG-NET


def test_parse_fgnet_name() -> None:
    assert parse_fgnet_name("001A02.JPG") == {"subject": "001", "age": "2"}
    assert parse_fgnet_name("001A43a.JPG") == {"subject": "001", "age": "43"}
    assert parse_fgnet_name("069a08B.jpg") == {"subject": "069", "age": "8"}
    for name, field in [("001B02.JPG", "file name"), ("001A.JPG", "file name"), ("001A02ab.JPG", "file name")]:
        with pytest.raises(ValueError) as err:
            parse_fgnet_name(name)
        assert err.value.args[1] == field, name


def _fgnet(root: Path, subjects: int, per_subject: int = 3) -> Path:
    for s in range(1, subjects + 1):
        for k in range(per_subject):
            _image(root / f"{s:03d}A{k * 5 + s % 4:02d}{'a' if k == 2 else ''}.JPG", 12, 16)
    return root


def test_read_fgnet_subject_person_box_no_gender(tmp_path: Path) -> None:
    root = _fgnet(tmp_path / "fg", 2)
    _image(root / "notes.JPG")  # not an FG-NET name
    with pytest.raises(InputError) as err:
        read_fgnet(root, "fgnet")
    assert (Path(err.value.file).name, err.value.field) == ("notes.JPG", "file name")
    result = read_fgnet(root, "fgnet", on_bad_row="skip")
    s = result.samples
    assert list(s.columns) == [*SAMPLE_COLUMNS, "subject"]
    assert s["image_path"].tolist() == [
        "001A01.JPG",
        "001A06.JPG",
        "001A11a.JPG",
        "002A02.JPG",
        "002A07.JPG",
        "002A12a.JPG",
    ]
    assert s["subject"].tolist() == ["001"] * 3 + ["002"] * 3
    assert s["age"].tolist() == [1.0, 6.0, 11.0, 2.0, 7.0, 12.0] and s["gender"].isna().all()
    assert s[PERSON].astype(float).values.tolist() == [[0, 0, 12, 16]] * 6 and s[FACE].isna().all().all()
    assert result.report["skipped_bad_name"] == 1 and result.report["rows"] == 7


def test_fgnet_splits_are_subject_exclusive(tmp_path: Path) -> None:
    root = _fgnet(tmp_path / "fg", 10)
    s = read_fgnet(root, "fgnet", splits={"train": 0.6, "val": 0.2, "test": 0.2}, seed=7).samples
    per_subject = s.groupby("subject")["split"].nunique()
    assert (per_subject == 1).all()
    subjects = s.groupby("split")["subject"].nunique().to_dict()
    assert subjects == {"train": 6, "val": 2, "test": 2}  # the fractions count subjects
    again = read_fgnet(root, "fgnet", splits={"train": 0.6, "val": 0.2, "test": 0.2}, seed=7).samples
    pd.testing.assert_frame_equal(s, again)


# ----------------------------------------------------------------------------------------------
# FairFace


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-2", "0;2"), ("70+", "70;120"), ("more than 70", "70;120"), (" More Than 70 ", "70;120"), ("30-39", "30;39")],
)
def test_fairface_age_class(text: str, expected: str) -> None:
    from agegender.data.readers import parse_age

    assert parse_age(fairface_age_class(text)) == (None, expected)


@pytest.fixture
def fairface(tmp_path: Path) -> Path:
    root = tmp_path / "ff"
    for i in range(1, 5):
        _image(root / "train" / f"{i}.jpg", 40, 30)
    _image(root / "val" / "1.jpg", 44, 44)
    (root / "fairface_label_train.csv").write_text(
        "file,age,gender,race,service_test\n"
        "train/1.jpg,50-59,Male,East Asian,True\n"
        "train/2.jpg,more than 70,Female,White,False\n"
        "train/3.jpg,0-2,Female,Latino_Hispanic,True\n"
        "train/4.jpg,3-9,Male,Indian,False\n"
    )
    (root / "fairface_label_val.csv").write_text(
        "file,age,gender,race,service_test\nval/1.jpg,20-29,Female,Black,True\n"
    )
    return root


def test_read_fairface_csv(fairface: Path) -> None:
    result = read_fairface(fairface, "fairface", labels="fairface_label_train.csv")
    s = result.samples
    assert list(s.columns) == [*SAMPLE_COLUMNS, "race"]
    assert s["image_path"].tolist() == ["train/1.jpg", "train/2.jpg", "train/3.jpg", "train/4.jpg"]
    assert s["age_class"].tolist() == ["50;59", "70;120", "0;2", "3;9"] and s["age"].isna().all()
    assert s["gender"].tolist() == ["male", "female", "female", "male"]
    assert s["race"].tolist() == ["East Asian", "White", "Latino_Hispanic", "Indian"]
    assert s[PERSON].astype(float).values.tolist() == [[0, 0, 40, 30]] * 4 and s[FACE].isna().all().all()
    assert s["sample_id"].iloc[0] == "fairface/train/1.jpg@0,0,40,30" and set(s["split"]) == {"test"}


def test_read_fairface_own_split(fairface: Path) -> None:
    labels = {"train": "fairface_label_train.csv", "test": "fairface_label_val.csv"}
    s = read_fairface(fairface, "fairface", labels=labels).samples
    assert s["split"].tolist() == ["train"] * 4 + ["test"]
    with pytest.raises(InputError, match="leave split and splits out"):
        read_fairface(fairface, "fairface", labels=labels, split="test")


def test_read_fairface_json_and_fractions(fairface: Path) -> None:
    entries = [
        {"id": f"x{i}", "filename": f"train/{i}.jpg", "age": age, "gender": g}
        for i, age, g in [(1, "0-2", "Male"), (2, "70+", "Female"), (3, "30-39", "Female"), (4, "60-69", "Male")]
    ]
    (fairface / "ground_truth.json").write_text(json.dumps(entries))
    s = read_fairface(fairface, "ff", labels="ground_truth.json", splits={"train": 0.5, "test": 0.5}, seed=1).samples
    assert s["age_class"].tolist() == ["0;2", "70;120", "30;39", "60;69"] and "race" not in s.columns
    assert s["split"].value_counts().to_dict() == {"train": 2, "test": 2}
    again = read_fairface(fairface, "ff", labels="ground_truth.json", splits={"train": 0.5, "test": 0.5}, seed=1)
    assert again.samples["split"].tolist() == s["split"].tolist()


def test_read_fairface_bad_rows_name_file_row_field(fairface: Path) -> None:
    csv = fairface / "bad.csv"
    csv.write_text("file,age,gender\ntrain/1.jpg,adult,Male\ntrain/2.jpg,20-29,Female\ntrain/9.jpg,20-29,Male\n")
    with pytest.raises(InputError) as err:
        read_fairface(fairface, "ff", labels="bad.csv")
    assert (err.value.file, err.value.row, err.value.field) == (str(csv), 1, "age")
    result = read_fairface(fairface, "ff", labels="bad.csv", on_bad_row="skip")
    assert len(result.samples) == 1
    assert (result.report["skipped_bad_age"], result.report["skipped_missing_image"]) == (1, 1)
    (fairface / "gt.json").write_text(json.dumps([{"filename": "train/1.jpg", "age": "0-2", "gender": "M"}, 3]))
    with pytest.raises(InputError, match="not an object") as err:
        read_fairface(fairface, "ff", labels="gt.json")
    assert err.value.row == 2
    (fairface / "nocol.csv").write_text("file,age\ntrain/1.jpg,0-2\n")
    with pytest.raises(InputError) as err:
        read_fairface(fairface, "ff", labels="nocol.csv")
    assert err.value.field == "gender"
    with pytest.raises(InputError, match="labels is required"):
        read_fairface(fairface, "ff")
    with pytest.raises(InputError, match="unknown labels format"):
        (fairface / "labels.txt").write_text("x")
        read_fairface(fairface, "ff", labels="labels.txt")


# ----------------------------------------------------------------------------------------------
# Checks and the registry


def test_checks_list_every_problem(fairface: Path, utk: Path, tmp_path: Path) -> None:
    assert check_dataset("fairface", fairface, labels="fairface_label_train.csv") == []
    (fairface / "train" / "2.jpg").unlink()
    (fairface / "nocol.csv").write_text("file,age\ntrain/1.jpg,0-2\n")
    (fairface / "broken.json").write_text("[{")
    problems = check_dataset(
        "fairface", fairface, labels={"a": "fairface_label_train.csv", "b": "nocol.csv", "c": "x.csv"}
    )
    assert len(problems) == 3
    assert "1 of 4 images" in problems[0] and "train/2.jpg" in problems[0]
    assert "'gender'" in problems[1] and "labels file not found" in problems[2]
    assert "cannot be read as JSON" in check_dataset("fairface", fairface, labels="broken.json")[0]

    lines = check_dataset("utkface", utk)
    assert len(lines) == 1 and "1 of 3 file names" in lines[0] and "61_1_20170109142408075" in lines[0]
    assert check_dataset("utkface", utk, on_bad_row="skip") == []  # skipped and counted, not a reason to stop
    assert "image folder not found" in check_dataset("fgnet", tmp_path, images="FGNET/images")[0]
    assert "unexpected keyword" in check_dataset("utkface", utk, labels="x.csv")[0]


def test_checks_decode_every_image(fairface: Path, utk: Path) -> None:
    cut = write_truncated_jpeg(utk / "40_1_0_20170116174525125.jpg.chip.jpg", 30, 30)
    empty = write_empty(utk / "41_0_1_20170116174525125.jpg.chip.jpg")
    lines = check_dataset("utkface", utk, on_bad_row="skip")  # each file named, with why
    assert len(lines) == 2
    assert f"{cut.name}: cannot be decoded" in lines[0] and "truncated" in lines[0] and str(utk) in lines[0]
    assert f"{empty.name}: image file is empty (0 bytes)" in lines[1]
    write_truncated_jpeg(fairface / "train" / "2.jpg", 20, 20)
    (line,) = check_dataset("fairface", fairface, labels="fairface_label_train.csv")
    assert line.startswith(f"{fairface / 'fairface_label_train.csv'}, row 2, field 'image': train/2.jpg: cannot be")
    assert "truncated" in line


def test_registry_and_read_dataset(utk: Path) -> None:
    assert resolve_reader("utkface") is read_utkface
    assert resolve_reader("fgnet") is read_fgnet and resolve_reader("fairface") is read_fairface
    assert len(read_dataset("u", "utkface", utk, on_bad_row="skip", split="val").samples) == 2
    with pytest.raises(InputError, match="unexpected keyword"):
        read_dataset("u", "utkface", utk, labels="x.csv")


def test_optional_columns_survive_validation_and_concat(utk: Path, tmp_path: Path) -> None:
    assert list(OPTIONAL_SAMPLE_COLUMNS) == ["subject", "race"]
    utk_samples = read_utkface(utk, "u", on_bad_row="skip").samples
    fg_samples = read_fgnet(_fgnet(tmp_path / "fg", 1), "fg").samples
    both = validate_samples(pd.concat([fg_samples, utk_samples], ignore_index=True))
    assert list(both.columns) == [*SAMPLE_COLUMNS, "subject", "race"]
    assert both["race"].isna().sum() == 3 and both["subject"].isna().sum() == 2
    assert list(validate_samples(utk_samples.drop(columns="race")).columns) == list(SAMPLE_COLUMNS)


# ----------------------------------------------------------------------------------------------
# The real data sets in ../shared/data (skipped where absent)


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it lives only beside this project on the build machine)")
    return path


def test_real_utkface_part1() -> None:
    root = _shared("utkface_part1")
    start = time.perf_counter()
    result = read_dataset("utkface", "utkface", root, on_bad_row="skip", splits={"train": 0.8, "test": 0.2}, seed=0)
    elapsed = time.perf_counter() - start
    s, r = result.samples, result.report
    assert len(s) == 9778 and (r["rows"], r["skipped"], r["skipped_bad_name"]) == (9780, 2, 2)
    assert sorted(Path(n.split(",")[0]).name for n in result.notes) == [
        "61_1_20170109142408075.jpg.chip.jpg",
        "61_3_20170109150557335.jpg.chip.jpg",
    ]
    assert s["split"].value_counts().to_dict() == {"train": 7822, "test": 1956}
    assert (s["image_width"] == 200).all() and (s["face_x1"] == 200).all() and s["person_x0"].isna().all()
    assert set(s["race"]) == set(native.UTKFACE_RACES) and s["gender"].value_counts()["male"] == 4372
    print(f"read {len(s)} UTKFace samples in {elapsed:.2f} s")
    lines = check_dataset("utkface", root)
    assert len(lines) == 1 and lines[0].startswith("2 of 9780 file names")


def test_real_fairface540() -> None:
    root = _shared("fairface540")
    assert check_dataset("fairface", root, labels="ground_truth.json") == []
    s = read_dataset("fairface540", "fairface", root, labels="ground_truth.json").samples
    assert len(s) == 540 and s["age"].isna().all()
    counts = s.groupby(["age_class", "gender"]).size()
    assert len(counts) == 18 and (counts == 30).all()
    assert set(s["age_class"]) == {"0;2", "3;9", "10;19", "20;29", "30;39", "40;49", "50;59", "60;69", "70;120"}
    assert (s["person_x1"] == 448).all() and s["face_x0"].isna().all()
