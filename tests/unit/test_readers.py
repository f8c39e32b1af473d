"""Readers: the MiVOLO annotation CSVs and a user's labelled folder -> sample table, masked table, report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import write_empty, write_truncated_jpeg  # noqa: E402

from agegender.data import crops  # noqa: E402
from agegender.data.readers import (  # noqa: E402
    MASKED_COLUMNS,
    SKIP_REASONS,
    parse_age,
    parse_gender,
    read_folder,
    read_mivolo,
)
from agegender.data.registry import read_dataset  # noqa: E402
from agegender.data.schema import SAMPLE_COLUMNS  # noqa: E402
from agegender.errors import InputError  # noqa: E402

HEADER = "img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1"


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def lagenda(tmp_path: Path) -> Path:
    """A MiVOLO-format data set: two images, a train and a test CSV (with a pandas index column)."""
    root = tmp_path / "lagenda"
    _image(root / "images" / "a.jpg", 100, 80)
    _image(root / "images" / "b.png", 50, 60)
    _csv(
        root / "annotations" / "lagenda_train.csv",
        "," + HEADER,
        [
            "0,images/a.jpg,25,M,10,10,30,40,5,5,60,79",
            "1,images/a.jpg,-1,-1,50,10,70,30,-1,-1,-1,-1",  # masked only
            "2,images/a.jpg,3.5, f ,-1,-1,-1,-1,40,0,120,90",  # no face; person box clamped
        ],
    )
    _csv(
        root / "annotations" / "lagenda_test.csv",
        HEADER,
        [
            "images/b.png,25;32,1,1.4,2.5,20.6,30,-1,-1,-1,-1",  # class age, float box
            "images/b.png,-1,0,30,30,45,50,-1,-1,-1,-1",  # gender only
        ],
    )
    return root


def test_read_mivolo_splits_values_and_report(lagenda: Path) -> None:
    result = read_mivolo(lagenda, "lagenda", splits={"train": "train", "test": "test"})
    s = result.samples
    assert list(s.columns) == list(SAMPLE_COLUMNS)
    assert dict(s.dtypes.astype(str)) == SAMPLE_COLUMNS
    # CSVs are read in file-name order (lagenda_test.csv, then lagenda_train.csv), rows in file order.
    assert s["sample_id"].tolist() == [
        "lagenda/images/b.png@1,3,21,30",  # 2.5 rounds half up to 3
        "lagenda/images/b.png@30,30,45,50",
        "lagenda/images/a.jpg@10,10,30,40",
        "lagenda/images/a.jpg@40,0,100,80",  # the clamped person box names a face-less sample
    ]
    assert s["split"].tolist() == ["test", "test", "train", "train"]
    assert s["image_width"].tolist() == [50, 50, 100, 100]
    assert s["image_height"].tolist() == [60, 60, 80, 80]
    assert s["age"].tolist()[2:] == [25.0, 3.5] and s["age"].isna().tolist() == [True, True, False, False]
    assert s["age_class"].isna().tolist() == [False, True, True, True] and s["age_class"].iloc[0] == "25;32"
    assert s["gender"].tolist() == ["female", "male", "male", "female"]
    assert s.loc[3, ["person_x0", "person_y0", "person_x1", "person_y1"]].tolist() == [40, 0, 100, 80]
    assert s.loc[3, ["face_x0", "face_y0", "face_x1", "face_y1"]].isna().all()
    assert s.loc[0, "face_x0"] == 1.4  # stored as given; only the id is rounded

    m = result.masked
    assert list(m.columns) == list(MASKED_COLUMNS) and len(m) == 1
    assert m.iloc[0][["dataset", "split", "image_path"]].tolist() == ["lagenda", "train", "images/a.jpg"]
    assert m.iloc[0][["face_x0", "face_y0", "face_x1", "face_y1"]].tolist() == [50, 10, 70, 30]
    assert m["person_x0"].isna().all() and str(m["face_x0"].dtype) == "Float64"

    r = result.report
    assert (r["rows"], r["samples"], r["masked"], r["boxes_clamped"], r["skipped"]) == (5, 4, 1, 1, 0)
    assert all(r[f"skipped_{reason}"] == 0 for reason in SKIP_REASONS)


def test_read_mivolo_opens_each_image_once(lagenda: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, bool]] = []
    real = crops.image_size

    def counting(path, *, decode=False):
        opened.append((Path(path).name, decode))
        return real(path, decode=decode)

    monkeypatch.setattr(crops, "image_size", counting)
    read_mivolo(lagenda, "lagenda", splits={"train": "train", "test": "test"})
    assert sorted(opened) == [("a.jpg", True), ("b.png", True)]  # once each, decoded (a truncated file is a bad row)


def test_read_mivolo_split_rules(lagenda: Path, tmp_path: Path) -> None:
    every = read_mivolo(lagenda, "lagenda")  # no splits: every CSV, all "test"
    assert set(every.samples["split"]) == {"test"} and len(every.samples) == 4
    only_test = read_mivolo(lagenda, "lagenda", splits={"test": "_test"})
    assert len(only_test.samples) == 2 and only_test.report["rows"] == 2
    with pytest.raises(InputError, match="several splits") as err:
        read_mivolo(lagenda, "lagenda", splits={"train": "train", "all": "lagenda"})
    assert err.value.file.endswith("lagenda_test.csv") or err.value.file.endswith("lagenda_train.csv")
    with pytest.raises(InputError, match="'val'"):
        read_mivolo(lagenda, "lagenda", splits={"train": "train", "val": "val"})
    absolute = read_mivolo(lagenda, "lagenda", annotations=lagenda / "annotations", splits={"test": "test"})
    assert len(absolute.samples) == 2
    with pytest.raises(InputError, match="annotation folder not found"):
        read_mivolo(tmp_path / "nowhere", "x")


def test_read_mivolo_missing_column(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", 10, 10)
    csv = _csv(
        tmp_path / "annotations" / "test.csv", "img_name,age,face_x0,face_y0,face_x1,face_y1", ["a.jpg,3,1,1,5,5"]
    )
    with pytest.raises(InputError) as err:
        read_mivolo(tmp_path, "d")
    assert (err.value.file, err.value.field) == (str(csv), "gender")


GOOD = "a.jpg,30,M,10,10,30,30,-1,-1,-1,-1"


@pytest.mark.parametrize(
    ("bad", "reason", "field"),
    [
        ("a.jpg,old,M,10,10,30,30,-1,-1,-1,-1", "bad_age", "age"),
        ("a.jpg,131,M,10,10,30,30,-1,-1,-1,-1", "bad_age", "age"),
        ("a.jpg,-3,M,10,10,30,30,-1,-1,-1,-1", "bad_age", "age"),
        ("a.jpg,32;25,M,10,10,30,30,-1,-1,-1,-1", "bad_age", "age"),
        ("a.jpg,30,X,10,10,30,30,-1,-1,-1,-1", "bad_gender", "gender"),
        ("a.jpg,30,M,10,ten,30,30,-1,-1,-1,-1", "bad_box", "face_y0"),
        ("gone.jpg,30,M,10,10,30,30,-1,-1,-1,-1", "missing_image", "img_name"),
        ("broken.jpg,30,M,10,10,30,30,-1,-1,-1,-1", "unreadable_image", "img_name"),
        ("cut.jpg,30,M,10,10,30,30,-1,-1,-1,-1", "unreadable_image", "img_name"),  # the header reads, the rest not
        ("empty.jpg,30,M,10,10,30,30,-1,-1,-1,-1", "unreadable_image", "img_name"),
        (",30,M,10,10,30,30,-1,-1,-1,-1", "missing_image_name", "img_name"),
        ("a.jpg,30,M,-1,-1,-1,-1,-1,-1,-1,-1", "no_box", "face_x0"),
        ("a.jpg,30,M,30,10,10,30,-1,-1,-1,-1", "degenerate_box", "face_x0"),
        ("a.jpg,30,M,10,30,30,30,-1,-1,-1,-1", "degenerate_box", "face_y0"),
        ("a.jpg,30,M,10,10,30,30,120,5,150,20", "degenerate_box", "person_x0"),  # empty after clamping to 100 px
    ],
)
def test_bad_rows_raise_or_are_counted(tmp_path: Path, bad: str, reason: str, field: str) -> None:
    _image(tmp_path / "a.jpg", 100, 80)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    write_truncated_jpeg(tmp_path / "cut.jpg", 100, 80)
    write_empty(tmp_path / "empty.jpg")
    csv = _csv(tmp_path / "annotations" / "test.csv", HEADER, [GOOD, bad, "a.jpg,40,F,50,10,70,30,-1,-1,-1,-1"])
    with pytest.raises(InputError) as err:
        read_mivolo(tmp_path, "d")
    assert (err.value.file, err.value.row, err.value.field) == (str(csv), 2, field)
    result = read_mivolo(tmp_path, "d", on_bad_row="skip")
    assert len(result.samples) == 2 and result.samples["age"].tolist() == [30.0, 40.0]
    assert result.report["skipped"] == 1 and result.report[f"skipped_{reason}"] == 1
    assert sum(result.report[f"skipped_{r}"] for r in SKIP_REASONS) == 1


def test_masked_row_needs_a_box_and_duplicates_name_both_rows(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", 100, 80)
    _csv(tmp_path / "annotations" / "test.csv", HEADER, [GOOD, "a.jpg,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"])
    with pytest.raises(InputError) as err:
        read_mivolo(tmp_path, "d")
    assert (err.value.row, err.value.field) == (2, "face_x0")

    # Same image and same (rounded) face box in the test CSV (read first: file-name order) and twice in train.
    test = _csv(tmp_path / "annotations" / "test.csv", HEADER, [GOOD])
    train = _csv(tmp_path / "annotations" / "train.csv", HEADER, ["a.jpg,31,M,10,10,30,30.2,-1,-1,-1,-1", GOOD])
    with pytest.raises(InputError, match="duplicate sample_id") as err:
        read_mivolo(tmp_path, "d", splits={"train": "train", "test": "test"})
    assert (err.value.file, err.value.row, err.value.field) == (str(train), 1, "sample_id")
    assert f"{test}, row 1" in err.value.message
    skipped = read_mivolo(tmp_path, "d", splits={"train": "train", "test": "test"}, on_bad_row="skip")
    assert len(skipped.samples) == 1 and skipped.report["skipped_duplicate_id"] == 2
    assert skipped.samples["split"].tolist() == ["test"]


def test_read_mivolo_person_box_image(lagenda: Path) -> None:
    """Adience-style rows (person box -1) get the whole image as person box; given boxes and masked rows stay."""
    given = read_mivolo(lagenda, "lagenda", splits={"train": "train", "test": "test"})
    whole = read_mivolo(lagenda, "lagenda", splits={"train": "train", "test": "test"}, person_box="image")
    assert whole.samples["sample_id"].tolist() == given.samples["sample_id"].tolist()  # ids keep the face box
    person = whole.samples[["person_x0", "person_y0", "person_x1", "person_y1"]].astype(float).values.tolist()
    assert person[:2] == [[0, 0, 50, 60], [0, 0, 50, 60]]  # b.png's rows had no person box
    assert person[2:] == [[5, 5, 60, 79], [40, 0, 100, 80]]  # as given (the second one clamped)
    assert given.samples["person_x0"].isna().tolist() == [True, True, False, False]
    assert whole.masked["person_x0"].isna().all() and len(whole.masked) == 1
    assert whole.report == given.report
    with pytest.raises(InputError, match="person_box"):
        read_mivolo(lagenda, "lagenda", person_box="body")


def test_read_mivolo_on_bad_row_value(lagenda: Path) -> None:
    with pytest.raises(InputError, match="on_bad_row"):
        read_mivolo(lagenda, "lagenda", on_bad_row="ignore")


def test_read_folder_defaults_to_whole_image(tmp_path: Path) -> None:
    _image(tmp_path / "p1.jpg", 40, 70)
    _image(tmp_path / "p2.jpg", 90, 60)
    _image(tmp_path / "p3.jpg", 90, 60)
    _csv(
        tmp_path / "labels.csv",
        "image,age,gender,face_x0,face_y0,face_x1,face_y1,note",
        ["p1.jpg,104,female,,,,,grandma", "p2.jpg,0.5,M,10,10,20,25,baby", "p3.jpg,,0,-1,-1,-1,-1,"],
    )
    result = read_folder(tmp_path, "wild")
    s = result.samples
    assert s["sample_id"].tolist() == ["wild/p1.jpg@0,0,40,70", "wild/p2.jpg@10,10,20,25", "wild/p3.jpg@0,0,90,60"]
    assert s["split"].unique().tolist() == ["test"]
    assert s["age"].tolist()[:2] == [104.0, 0.5] and pd.isna(s["age"].iloc[2])
    assert s["gender"].tolist() == ["female", "male", "male"]
    assert s.loc[0, ["person_x0", "person_y0", "person_x1", "person_y1"]].tolist() == [0, 0, 40, 70]
    assert s.loc[1, ["person_x0"]].isna().all()  # a face box given: no invented person box
    assert len(result.masked) == 0 and list(result.masked.columns) == list(MASKED_COLUMNS)
    assert result.report["rows"] == 3 and result.report["samples"] == 3


def test_read_folder_bad_rows(tmp_path: Path) -> None:
    _image(tmp_path / "p1.jpg", 40, 70)
    csv = _csv(tmp_path / "my.csv", "image,age,gender", ["p1.jpg,30,female", "p1.jpg,,", "p1.jpg,20,unknown"])
    with pytest.raises(InputError) as err:
        read_folder(tmp_path, "wild", csv="my.csv")
    assert (err.value.file, err.value.row, err.value.field) == (str(csv), 2, "age")
    result = read_folder(tmp_path, "wild", csv=csv, on_bad_row="skip", split="val")
    # Row 3 would repeat row 1's id (whole image), but it is bad first: one sample, two skips.
    assert len(result.samples) == 1 and result.samples["split"].iloc[0] == "val"
    assert (result.report["skipped_no_label"], result.report["skipped_bad_gender"]) == (1, 1)
    _csv(tmp_path / "half.csv", "image,age,gender,person_x0,person_y0", ["p1.jpg,30,female,1,1"])
    with pytest.raises(InputError, match="all be present") as err:
        read_folder(tmp_path, "wild", csv="half.csv")
    assert err.value.field == "person_x1"
    with pytest.raises(InputError, match="labels file not found"):
        read_folder(tmp_path, "wild")
    _csv(tmp_path / "labels.csv", "img,age,gender", ["p1.jpg,30,female"])
    with pytest.raises(InputError) as err:
        read_folder(tmp_path, "wild")
    assert err.value.field == "image"


def test_read_dataset_registry(lagenda: Path) -> None:
    result = read_dataset("lagenda", "mivolo", lagenda, splits={"test": "test"})
    assert len(result.samples) == 2
    with pytest.raises(InputError, match=r"known readers: \['fairface', 'fgnet', 'folder', 'mivolo', 'utkface'\]"):
        read_dataset("lagenda", "imdb", lagenda)
    with pytest.raises(InputError, match="unexpected keyword"):
        read_dataset("lagenda", "mivolo", lagenda, split="test")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("25;32", (None, "25;32")),
        (" 25 ; 32 ", (None, "25;32")),
        ("(8, 12)", (None, "8;12")),
        ("30-39", (None, "30;39")),
        ("0.5", (0.5, None)),
        (" 130 ", (130.0, None)),
        ("-1", (None, None)),
        ("", (None, None)),
        (float("nan"), (None, None)),
    ],
)
def test_parse_age(text, expected) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["x", "130.5", "-2", "32;25", "inf", "1;2;3"])
def test_parse_age_rejects(text) -> None:
    with pytest.raises(ValueError):
        parse_age(text)


def test_parse_gender() -> None:
    assert [parse_gender(v) for v in ["M", " f ", "Male", "FEMALE", "0", "1", "-1", ""]] == [
        "male",
        "female",
        "male",
        "female",
        "male",
        "female",
        None,
        None,
    ]
    with pytest.raises(ValueError, match="'2'"):
        parse_gender("2")
