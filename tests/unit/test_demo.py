"""Tests of the generated demo data set (agegender.data.demo)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.data import demo
from agegender.data.demo import CSV_HEADER, DemoConfig, _sample_age, adience_class, generate_demo
from agegender.data.schema import validate_samples
from agegender.errors import InputError

FACE = ["face_x0", "face_y0", "face_x1", "face_y1"]
PERSON = ["person_x0", "person_y0", "person_x1", "person_y1"]
SMALL = {"n_train": 6, "n_val": 3, "n_test": 12, "image_size": 128}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _read(root: Path, split: str, folder: str = "annotations", prefix: str = "demo") -> pd.DataFrame:
    return pd.read_csv(root / folder / f"{prefix}_{split}.csv", dtype={"age": str, "gender": str})


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("small") / "demo"
    return root, generate_demo(root, DemoConfig(**SMALL), workers=1)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoConfig, dict[str, int]]:
    """Exaggerated fractions on small images, so that 'roughly as configured' can be checked tightly."""
    config = DemoConfig(
        n_train=0,
        n_val=0,
        n_test=400,
        image_size=128,
        seed=99,
        p_two_people=0.5,
        p_overlap=0.5,
        p_no_face=0.2,
        p_body_cut=0.2,
        p_no_person_box=0.1,
        p_masked_bystander=0.3,
    )
    root = tmp_path_factory.mktemp("skewed") / "demo"
    return root, config, generate_demo(root, config, workers=1)


@pytest.fixture(scope="module")
def signal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signal") / "demo"
    generate_demo(root, DemoConfig(n_train=160, n_val=0, n_test=200, seed=5), workers=1)
    return root


# ---------------------------------------------------------------------------------------------- config


def test_config_from_dict_round_trip_and_defaults() -> None:
    config = DemoConfig.from_dict({"n_train": 10, "seed": 3, "p_two_people": 0.5})
    assert (config.n_train, config.n_val, config.seed, config.p_two_people) == (10, 100, 3, 0.5)
    assert DemoConfig.from_dict(config.to_dict()) == config
    assert config.n_people("val") == 100


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        ({"n_trian": 10}, "n_trian"),
        ({"root": "data/demo"}, "root"),
        ({"p_no_face": 1.5}, "p_no_face"),
        ({"n_test": -1}, "n_test"),
        ({"n_test": 2.5}, "n_test"),
        ({"n_test": True}, "n_test"),
        ({"image_size": 32}, "image_size"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values(settings: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DemoConfig.from_dict(settings)


@pytest.mark.parametrize(
    ("age", "label"),
    [(0, "0;2"), (2, "0;2"), (3, None), (4, "4;6"), (7, None), (12, "8;12"), (14, None), (15, "15;20"),
     (24, None), (25, "25;32"), (37, None), (43, "38;43"), (47, None), (53, "48;53"), (59, None), (60, "60;100"),
     (95, "60;100")],
)  # fmt: skip
def test_adience_class(age: int, label: str | None) -> None:
    assert adience_class(age) == label


# ---------------------------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_bytes_and_workers_do_not_matter(
    small: tuple[Path, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, counts = small
    monkeypatch.setattr(demo, "_POOL_MIN_IMAGES", 1)  # draw this small set in a process pool too
    again = generate_demo(tmp_path / "again", DemoConfig(**SMALL), workers=2)
    assert again == counts
    first, second = _hashes(root), _hashes(tmp_path / "again")
    assert first == second
    assert len([k for k in first if k.endswith(".png")]) == counts["images"]


def test_other_seed_gives_other_images(small: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    root, _ = small
    generate_demo(tmp_path / "other", DemoConfig(**{**SMALL, "seed": 4321}), workers=1)
    first, other = _hashes(root), _hashes(tmp_path / "other")
    shared = set(first) & set(other)
    assert "images/test/000000.png" in shared
    assert all(first[k] != other[k] for k in shared if k.endswith(".png"))
    assert first["annotations/demo_test.csv"] != other["annotations/demo_test.csv"]


def test_a_split_does_not_depend_on_the_other_splits(small: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    root, _ = small
    generate_demo(tmp_path / "more", DemoConfig(**{**SMALL, "n_train": 9, "n_val": 0}), workers=1)
    assert _hashes(root / "images" / "test") == _hashes(tmp_path / "more" / "images" / "test")
    assert (root / "annotations/demo_test.csv").read_bytes() == (
        tmp_path / "more/annotations/demo_test.csv"
    ).read_bytes()
    assert list(csv.reader((tmp_path / "more/annotations/demo_val.csv").open())) == [list(CSV_HEADER)]


def test_rerun_fully_rewrites_root_and_refuses_foreign_folders(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    config = DemoConfig(n_train=2, n_val=1, n_test=2, image_size=64)
    generate_demo(root, config, workers=1)
    stray = root / "images" / "train" / "999999.png"
    stray.write_bytes(b"left over")
    generate_demo(root, config, workers=1)
    assert not stray.exists()
    info = json.loads((root / "demo_info.json").read_text())
    assert "demo data" in info["description"] and info["config"] == config.to_dict()

    def broken(task: tuple) -> None:
        raise RuntimeError("disk full")

    before = _hashes(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_make_image", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            generate_demo(root, config, workers=1)
    assert _hashes(root) == before, "a failed run leaves the previous set as it was"

    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt") as err:
        generate_demo(foreign, config, workers=1)
    assert err.value.file == str(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------- format


def test_csv_schema_and_boxes(small: tuple[Path, dict[str, int]]) -> None:
    root, counts = small
    size = SMALL["image_size"]
    for split in ("train", "val", "test"):
        path = root / "annotations" / f"demo_{split}.csv"
        with path.open() as fh:
            assert next(csv.reader(fh)) == list(CSV_HEADER)
        df = pd.read_csv(path)
        assert len(df[df.age >= 0]) == SMALL[f"n_{split}"] == counts[f"{split}_people"]
        assert df.img_name.str.fullmatch(rf"images/{split}/\d{{6}}\.png").all()
        assert df.img_name.nunique() == counts[f"{split}_images"]
        for name in df.img_name.unique():
            with Image.open(root / name) as im:
                assert (im.mode, im.size) == ("RGB", (size, size))
        assert df.age.between(-1, 95).all() and not df.age.isin([]).any()
        labelled = df.age >= 0
        assert set(df.gender[labelled]) <= {"M", "F"} and (df.gender[~labelled].astype(str) == "-1").all()
        for cols in (FACE, PERSON):
            box = df[cols].to_numpy()
            missing = (box == -1).all(axis=1)
            assert ((box == -1).any(axis=1) == missing).all(), "a box is either complete or all -1"
            b = box[~missing]
            assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= size).all() and (b[:, 3] <= size).all()
            assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all()
        assert ((df[FACE] >= 0).all(axis=1) | (df[PERSON] >= 0).all(axis=1)).all(), "every row has a box"
        both = (df[FACE] >= 0).all(axis=1) & (df[PERSON] >= 0).all(axis=1)
        f, p = df.loc[both, FACE].to_numpy(), df.loc[both, PERSON].to_numpy()
        assert (f[:, :2] >= p[:, :2]).all() and (f[:, 2:] <= p[:, 2:]).all(), "the face lies inside its body"


def test_rows_fit_the_sample_table_contract(small: tuple[Path, dict[str, int]]) -> None:
    root, _ = small
    df = pd.read_csv(root / "annotations" / "demo_test.csv")
    df = df[df.age >= 0].reset_index(drop=True)
    table = pd.DataFrame(
        {
            "sample_id": [f"demo/{i}" for i in range(len(df))],
            "dataset": "demo",
            "split": "test",
            "image_path": df.img_name,
            "image_width": SMALL["image_size"],
            "image_height": SMALL["image_size"],
            **{c: df[c].where(df[c] >= 0).astype("Float64") for c in FACE + PERSON},
            "age": df.age.astype(float),
            "gender": df.gender.map({"M": "male", "F": "female"}),
        }
    )
    assert len(validate_samples(table, source="demo_test.csv")) == SMALL["n_test"]


# ---------------------------------------------------------------------------------------------- make-up


def test_fractions_roughly_as_configured(skewed: tuple[Path, DemoConfig, dict[str, int]]) -> None:
    root, config, counts = skewed
    size = config.image_size
    df = pd.read_csv(root / "annotations" / "demo_test.csv")
    lab = df[df.age >= 0]
    per_image = lab.groupby("img_name").size()
    n_images = df.img_name.nunique()
    assert len(lab) == 400 and n_images == counts["test_images"]
    two = per_image[per_image == 2].index
    assert len(two) == counts["test_two_people_images"]
    assert 0.4 < len(two) / n_images < 0.6
    # Overlap of the two labelled people's body boxes, where both have one.
    overlaps = []
    for name in two:
        a, b = lab[lab.img_name == name][PERSON].to_numpy()
        if (a >= 0).all() and (b >= 0).all():
            overlaps.append(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))
    assert 0.35 < np.mean(overlaps) < 0.65
    assert 0.35 < counts["test_overlapping_pairs"] / len(two) < 0.65
    no_face = (lab[FACE] == -1).all(axis=1)
    assert no_face.sum() == counts["test_no_face"]
    assert 0.15 < no_face.mean() < 0.3  # 0.2 configured, plus faces hidden behind someone in front
    no_body = (lab[PERSON] == -1).all(axis=1)
    assert no_body.sum() == counts["test_no_person_box"]
    assert 0.05 < no_body.mean() < 0.16
    assert not (no_face & no_body).any()
    p = lab[PERSON].to_numpy()
    cut = ~no_body.to_numpy() & ((p[:, 0] == 0) | (p[:, 1] == 0) | (p[:, 2] == size) | (p[:, 3] == size))
    assert cut.sum() == counts["test_body_cut"]
    assert 0.14 < cut.mean() < 0.3
    bystanders = df[df.age == -1]
    assert len(bystanders) == counts["test_bystanders"]
    assert 0.2 < bystanders.img_name.nunique() / n_images < 0.4


def test_ages_and_genders_are_spread(skewed: tuple[Path, DemoConfig, dict[str, int]]) -> None:
    root, _, _ = skewed
    lab = pd.read_csv(root / "annotations" / "demo_test.csv").query("age >= 0")
    groups = np.bincount(lab.age.to_numpy() // 5, minlength=20)
    assert len(groups) == 20 and groups[:19].min() >= 5  # 0-4 ... 90-94 all populated (95 is the last age)
    assert lab.age.max() <= 95
    assert 0.4 < (lab.gender == "F").mean() < 0.6


def test_age_distribution_is_flat_with_a_thinner_tail() -> None:
    rng = np.random.default_rng(0)
    ages = np.array([_sample_age(rng) for _ in range(20000)])
    per_year = np.bincount(ages, minlength=96) / len(ages)
    assert ages.min() == 0 and ages.max() == 95
    assert np.allclose(per_year[:90], 0.96 / 90, atol=0.004)
    assert np.allclose(per_year[90:], 0.04 / 6, atol=0.003)
    assert per_year[90:].mean() < 0.75 * per_year[:90].mean()


def test_adience_copy(skewed: tuple[Path, DemoConfig, dict[str, int]]) -> None:
    root, _, counts = skewed
    demo = _read(root, "test")
    adience = _read(root, "test", "annotations_adience", "demoadience")
    assert list(adience.columns) == list(CSV_HEADER)
    key = ["img_name", *FACE, *PERSON]
    merged = adience.merge(demo, on=key, how="left", suffixes=("", "_true"), validate="one_to_one")
    assert merged.age_true.notna().all(), "every Adience row is a row of the demo test split"
    true_age = merged.age_true.astype(int)
    labelled = merged.age != "-1"
    for label, age in zip(merged.age[labelled], true_age[labelled], strict=True):
        lo, hi = (int(v) for v in label.split(";"))
        assert lo <= age <= hi and adience_class(age) == label
    gap = ~labelled & (true_age >= 0)
    assert all(adience_class(a) is None for a in true_age[gap])
    assert (merged.gender[labelled] == merged.gender_true[labelled]).all()
    assert labelled.sum() == counts["adience_test_people"]
    # Every labelled demo person in a class is labelled in the copy; gap ages are not, and images left
    # without anybody labelled are not in the copy at all.
    in_class = demo[demo.age.astype(int) >= 0].age.astype(int).map(adience_class).notna()
    assert in_class.sum() == labelled.sum()
    assert (~in_class).sum() == counts["adience_test_gap_ages"] > gap.sum() > 0
    assert set(adience.img_name) == set(adience.img_name[labelled])
    assert (root / "images" / "test").is_dir() and all((root / n).is_file() for n in adience.img_name.unique())


# ---------------------------------------------------------------------------------------------- signal


def _face_top_brightness(root: Path, df: pd.DataFrame) -> np.ndarray:
    """Mean brightness of the top quarter, middle 40% of each face box: hair that greys with age."""
    out = []
    for r in df.itertuples():
        im = np.asarray(Image.open(root / r.img_name).convert("RGB"), dtype=np.float64)
        crop = im[r.face_y0 : r.face_y1, r.face_x0 : r.face_x1]
        h, w = crop.shape[:2]
        out.append(crop[: max(1, h // 4), int(0.3 * w) : max(int(0.3 * w) + 1, int(0.7 * w))].mean())
    return np.array(out)


def _body_features(root: Path, df: pd.DataFrame) -> np.ndarray:
    """Per body crop with the face zeroed: torso colour saturation, mean torso RGB, crop aspect ratio."""
    out = []
    for r in df.itertuples():
        im = np.asarray(Image.open(root / r.img_name).convert("RGB"), dtype=np.float64).copy()
        if r.face_x0 >= 0:
            im[r.face_y0 : r.face_y1, r.face_x0 : r.face_x1] = 0
        crop = im[r.person_y0 : r.person_y1, r.person_x0 : r.person_x1]
        h, w = crop.shape[:2]
        torso = crop[int(0.3 * h) : int(0.5 * h), int(0.35 * w) : int(0.65 * w)].reshape(-1, 3)
        sat = (torso.max(axis=1) - torso.min(axis=1)).mean()
        out.append([1.0, sat, *torso.mean(axis=0), w / h])
    return np.array(out)


def test_face_cue_carries_age(signal: Path) -> None:
    df = pd.read_csv(signal / "annotations" / "demo_test.csv").query("age >= 0 and face_x0 >= 0")
    r = np.corrcoef(_face_top_brightness(signal, df), df.age)[0, 1]
    assert r > 0.5


def test_body_cues_carry_age_and_gender_more_weakly(signal: Path) -> None:
    train = pd.read_csv(signal / "annotations" / "demo_train.csv").query("age >= 0 and person_x0 >= 0")
    test = pd.read_csv(signal / "annotations" / "demo_test.csv").query("age >= 0 and person_x0 >= 0")
    x_train, x_test = _body_features(signal, train), _body_features(signal, test)
    # Children wear bright colours, the old muted ones: saturation falls with age.
    r_sat = np.corrcoef(x_test[:, 1], test.age)[0, 1]
    assert r_sat < -0.2
    # Least squares on the hand features, fitted on train, scored on test.
    w_age, *_ = np.linalg.lstsq(x_train, train.age.to_numpy(float), rcond=None)
    r_age = np.corrcoef(x_test @ w_age, test.age)[0, 1]
    faces = test.query("face_x0 >= 0")
    r_face = np.corrcoef(_face_top_brightness(signal, faces), faces.age)[0, 1]
    assert 0.2 < r_age < r_face
    w_gender, *_ = np.linalg.lstsq(x_train, (train.gender == "F").to_numpy(float), rcond=None)
    accuracy = ((x_test @ w_gender > 0.5) == (test.gender == "F")).mean()
    assert accuracy > 0.55
