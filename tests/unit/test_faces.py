"""Face detectors with packaged weights (`agegender.faces`): registry, subject rule, filling a sample table."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender import faces
from agegender.check import check_params
from agegender.data.crops import load_image
from agegender.data.schema import FACE_BOX, PERSON_BOX, validate_samples
from agegender.errors import InputError
from agegender.faces import (
    FACE_COUNTS,
    FACE_DETECTORS,
    check_face_detector,
    detect_faces,
    pick_subject,
    register_face_detector,
    resolve_face_detector,
)
from agegender.mivolo.detect import Detections, Detector, MissingDependencyError
from agegender.params import as_dict, params_from_dict
from agegender.paths import ProjectPaths

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
FAIRFACE = SHARED / "fairface540"
NO_FAIRFACE = f"real photos not found at {FAIRFACE} (../shared/data is absent on this machine)"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class FakeDetector:
    """Fixed detections per image, recognised by the image's pixels; records each call's batch size."""

    def __init__(self, by_hash: dict[str, Detections]) -> None:
        self.by_hash = by_hash
        self.calls: list[int] = []

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.calls.append(len(images))
        return [self.by_hash.get(hashlib.sha1(im.tobytes()).hexdigest(), Detections()) for im in images]


def _image(path: Path, seed: int, width: int = 100, height: int = 80) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return hashlib.sha1(load_image(path).tobytes()).hexdigest()


def _row(sid: str, image: str, face=None, person=None, size=(100, 80)) -> dict:
    face = [np.nan] * 4 if face is None else face
    person = [np.nan] * 4 if person is None else person
    return {
        "sample_id": sid,
        "dataset": "ds",
        "split": "test",
        "image_path": image,
        "image_width": size[0],
        "image_height": size[1],
        **dict(zip(FACE_BOX, face, strict=True)),
        **dict(zip(PERSON_BOX, person, strict=True)),
        "age": 30.0,
        "gender": "male",
    }


# --- registry ------------------------------------------------------------------------------------


def test_registry_knows_mtcnn_and_dlib() -> None:
    assert {"mtcnn", "dlib-hog"} <= set(FACE_DETECTORS)
    assert faces.DEFAULT_FACE_DETECTOR == "mtcnn"
    assert "min_face_size" in FACE_DETECTORS["mtcnn"].options()
    assert set(FACE_DETECTORS["dlib-hog"].options()) == {"upsample", "adjust_threshold"}


def test_unknown_detector_lists_known_names() -> None:
    with pytest.raises(InputError, match=r"unknown face detector 'mtcn'.*dlib-hog, mtcnn"):
        resolve_face_detector("mtcn")
    assert "dlib-hog, mtcnn" in check_face_detector("mtcn")[0]


def test_unknown_option_is_named() -> None:
    with pytest.raises(InputError, match=r"no option 'min_size'.*min_face_size"):
        resolve_face_detector("mtcnn", min_size=30)
    assert check_face_detector("dlib-hog", {"upsample": 2, "upsampling": 1}) == [
        "face detector 'dlib-hog' has no option 'upsampling' (its options: upsample, adjust_threshold)"
    ]


@pytest.fixture
def absent_package(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(faces, "FACE_DETECTORS", dict(FACE_DETECTORS))

    @register_face_detector("absent", module="agegender_no_such_package", install="pip install no-such-package")
    class Absent:
        def __init__(self, *, size: int = 1) -> None:
            raise AssertionError("never built: its package is missing")

    return "absent"


def test_missing_package_names_the_install_command(absent_package: str) -> None:
    with pytest.raises(MissingDependencyError, match=r"agegender_no_such_package.*pip install no-such-package"):
        resolve_face_detector(absent_package)
    assert "pip install no-such-package" in check_face_detector(absent_package)[0]


def test_install_commands_of_the_real_detectors() -> None:
    assert FACE_DETECTORS["mtcnn"].install == "pip install --no-deps -r requirements-nodeps.txt"
    assert FACE_DETECTORS["dlib-hog"].install == "pip install 'agegender[pretrained]'"


def test_registering_a_name_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces, "FACE_DETECTORS", dict(FACE_DETECTORS))
    with pytest.raises(ValueError, match="already registered"):
        register_face_detector("mtcnn", module="x", install="y")(FakeDetector)


# --- the subject rule --------------------------------------------------------------------------


def test_pick_subject_takes_the_largest_face() -> None:
    det = Detections(faces=[[0, 0, 10, 10], [20, 20, 50, 50], [60, 0, 70, 10]], face_scores=[0.99, 0.8, 0.9])
    assert pick_subject(det, (100, 100)) == 1
    assert pick_subject(det, (100, 100), candidates=[0, 2]) == 0  # equal areas: the higher score
    assert pick_subject(Detections(), (100, 100)) is None
    assert pick_subject(det, (100, 100), candidates=[]) is None


def test_pick_subject_measures_faces_clamped_to_the_image() -> None:
    # the first box is larger on paper, but most of it lies outside the image; a box wholly outside never wins
    det = Detections(faces=[[-80, -80, 20, 20], [40, 40, 70, 70], [200, 200, 300, 300]])
    assert pick_subject(det, (100, 100)) == 1
    assert pick_subject(Detections(faces=[[200, 200, 300, 300]]), (100, 100)) is None


def test_pick_subject_ties_go_to_the_first() -> None:
    det = Detections(faces=[[0, 0, 10, 10], [50, 50, 60, 60]], face_scores=[0.5, 0.5])
    assert pick_subject(det, (100, 100)) == 0


# --- detect_faces ------------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path: Path) -> tuple[pd.DataFrame, Path, FakeDetector]:
    root = tmp_path / "ds"
    dets = {
        # one sample, no person box, two faces: the larger one, clamped to the image
        "one.png": Detections(faces=[[5, 5, 15, 15], [60, -10, 110, 40]], face_scores=[0.99, 0.9]),
        # one sample whose person box holds only the smaller face
        "inside.png": Detections(faces=[[5, 5, 15, 15], [60, 10, 95, 45]]),
        # one sample whose person box holds no face: nothing filled
        "outside.png": Detections(faces=[[60, 10, 95, 45]]),
        # two people with person boxes, faces listed in the other order; a third sample without a person box
        "group.png": Detections(faces=[[70, 5, 90, 25], [10, 5, 30, 25]], face_scores=[0.8, 0.9]),
        # nobody found
        "empty.png": Detections(),
        # its only sample already has a face: never detected
        "known.png": Detections(faces=[[0, 0, 50, 50]]),
        # two people, one with a face already: it keeps it, the other gets the other face
        "half.png": Detections(faces=[[12, 6, 28, 24], [72, 6, 88, 24]]),
    }
    by_hash = {_image(root / name, seed): det for seed, (name, det) in enumerate(dets.items())}
    rows = [
        _row("a", "one.png"),
        _row("b", "inside.png", person=[0, 0, 50, 80]),
        _row("c", "outside.png", person=[0, 0, 50, 80]),
        _row("d1", "group.png", person=[0, 0, 45, 80]),
        _row("d2", "group.png", person=[55, 0, 100, 80]),
        _row("d3", "group.png"),
        _row("e", "empty.png"),
        _row("f", "known.png", face=[1.5, 2.5, 30.25, 40.0]),
        _row("g1", "half.png", face=[10, 5, 30, 25], person=[0, 0, 45, 80]),
        _row("g2", "half.png", person=[55, 0, 100, 80]),
    ]
    return validate_samples(pd.DataFrame(rows)), root, FakeDetector(by_hash)


def _face(out: pd.DataFrame, sid: str) -> list[float] | None:
    values = out.loc[out["sample_id"] == sid, list(FACE_BOX)].iloc[0]
    return None if values.isna().any() else [float(v) for v in values]


def test_detect_faces_fills_the_rules(table) -> None:
    samples, root, detector = table
    out, counts = detect_faces(samples, {"ds": root}, detector, progress=False, batch_size=4)
    assert _face(out, "a") == [60.0, 0.0, 100.0, 40.0]  # the larger face, clamped to the 100 x 80 image
    assert _face(out, "b") == [5.0, 5.0, 15.0, 15.0]  # the only face inside its person box
    assert _face(out, "c") is None
    assert _face(out, "d1") == [10.0, 5.0, 30.0, 25.0]  # Hungarian matching on the person boxes
    assert _face(out, "d2") == [70.0, 5.0, 90.0, 25.0]
    assert _face(out, "d3") is None  # several people and no person box: cannot be told apart
    assert _face(out, "e") is None
    assert _face(out, "f") == [1.5, 2.5, 30.25, 40.0]  # untouched
    assert _face(out, "g1") == [10.0, 5.0, 30.0, 25.0]  # untouched (and it kept its own detected face)
    assert _face(out, "g2") == [72.0, 6.0, 88.0, 24.0]
    assert counts == {
        "images": 6,  # known.png is not detected
        "unreadable": 0,
        "with_face": 5,
        "no_face": 1,
        "several_faces": 4,
        "missing": 8,
        "filled": 5,
        "not_filled": 3,
    }
    assert list(counts) == list(FACE_COUNTS)
    assert sorted(detector.calls) == [2, 4]  # batches of at most 4 images, each image once
    # same columns, dtypes, order and everything else; the result is a valid sample table
    assert list(out.columns) == list(samples.columns) and (out.dtypes == samples.dtypes).all()
    pd.testing.assert_frame_equal(out.drop(columns=list(FACE_BOX)), samples.drop(columns=list(FACE_BOX)))
    validate_samples(out)
    assert samples[FACE_BOX[0]].isna().sum() == 8  # the input is not changed


def test_detect_faces_counts_unreadable_images_and_needs_a_root(table) -> None:
    samples, root, detector = table
    (root / "one.png").write_bytes(b"not a png")
    out, counts = detect_faces(samples, {"ds": root}, detector, progress=False)
    assert counts["unreadable"] == 1 and counts["images"] == 5 and _face(out, "a") is None
    assert counts["filled"] + counts["not_filled"] == counts["missing"]
    with pytest.raises(InputError, match="no image folder given for data set 'ds'"):
        detect_faces(samples, {"other": root}, detector, progress=False)


def test_detect_faces_with_nothing_missing_runs_no_detector(table) -> None:
    samples, root, detector = table
    known = samples[samples["sample_id"] == "f"]
    out, counts = detect_faces(known, {"ds": root}, detector, progress=False)
    assert detector.calls == [] and counts["missing"] == 0 and counts["images"] == 0
    pd.testing.assert_frame_equal(out, known)


def test_detect_faces_keeps_the_index(table) -> None:
    samples, root, detector = table
    shuffled = samples.iloc[::-1]
    out, _ = detect_faces(shuffled, {"ds": root}, detector, progress=False)
    assert list(out.index) == list(shuffled.index) and _face(out, "a") == [60.0, 0.0, 100.0, 40.0]


def test_boxes_are_rounded(tmp_path: Path) -> None:
    samples = validate_samples(pd.DataFrame([_row("a", "x.png")]))
    _image(tmp_path / "x.png", 0)

    class Exact:
        def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
            return [Detections(faces=[[10.123456, 20.98765, 40.5, 60.004]]) for _ in images]

    out, _ = detect_faces(samples, {"ds": tmp_path}, Exact(), progress=False)
    assert _face(out, "a") == [10.12, 20.99, 40.5, 60.0]


# --- params, prepare_data and check --------------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    wild = root / "data" / "wild"
    _image(wild / "p1.png", 1)
    _image(wild / "p2.png", 2)
    (wild / "labels.csv").write_text("image,age,gender\np1.png,30,female\np2.png,40,male\n")
    (root / "pyproject.toml").write_text("")
    return root


def _params(detector: str | None = "fake", options: dict | None = None) -> dict:
    wild: dict = {"reader": "folder", "root": "data/wild"}
    if detector is not None:
        wild["face_detector"] = detector
    if options is not None:
        wild["face_detector_options"] = options
    return {"profile": "paper", "prepare_data": {"demo": None, "datasets": {"wild": wild}}, "study": {"datasets": []}}


def test_params_round_trip() -> None:
    params = params_from_dict(_params("mtcnn", {"min_face_size": 40, "thresholds": [0.6, 0.7, 0.8]}))
    wild = params.prepare_data.datasets["wild"]
    assert wild.face_detector == "mtcnn" and wild.face_detector_options["min_face_size"] == 40
    again = params_from_dict(as_dict(params))
    assert again == params
    plain = params_from_dict(_params(None)).prepare_data.datasets["wild"]
    assert plain.face_detector is None and plain.face_detector_options == {}
    with pytest.raises(InputError, match="face_detector: expected a string"):
        params_from_dict(_params(3))  # type: ignore[arg-type]


def test_check_reports_detector_problems(tmp_path: Path, absent_package: str) -> None:
    project = ProjectPaths(_project(tmp_path))
    cfg = _params("mtcn")
    cfg["prepare_data"]["datasets"]["gone"] = {"reader": "folder", "root": "data/wild", "face_detector": "absent"}
    cfg["prepare_data"]["datasets"]["opts"] = {
        "reader": "folder",
        "root": "data/wild",
        "face_detector_options": {"min_face_size": 30},
    }
    cfg["prepare_data"]["datasets"]["good"] = {
        "reader": "folder",
        "root": "data/wild",
        "face_detector": "mtcnn",
        "face_detector_options": {"min_face_size": 30},
    }
    problems = check_params(params_from_dict(cfg), project, env={}, sections=["prepare_data"])
    by_where = {p.where: p.message for p in problems}
    expected = {
        "prepare_data.datasets.wild.face_detector",
        "prepare_data.datasets.gone.face_detector",
        "prepare_data.datasets.opts.face_detector_options",
    }
    if importlib.util.find_spec("facenet_pytorch") is None:  # then `good` is reported too, with its install line
        expected.add("prepare_data.datasets.good.face_detector")
    assert set(by_where) == expected
    assert "unknown face detector 'mtcn'" in by_where["prepare_data.datasets.wild.face_detector"]
    assert "pip install no-such-package" in by_where["prepare_data.datasets.gone.face_detector"]


def test_prepare_data_fills_faces_and_reports_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agegender.stages import prepare_data

    monkeypatch.setattr(faces, "FACE_DETECTORS", dict(FACE_DETECTORS))
    built: list[dict] = []

    @register_face_detector("fake", module="numpy", install="-")
    class Fake:
        def __init__(self, *, size: int = 20) -> None:
            built.append({"size": size})
            self.size = size

        def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
            # a face in the first image only (recognised by its seed-1 pixels)
            first = load_image(root / "data" / "wild" / "p1.png")
            return [
                Detections(faces=[[10, 10, 10 + self.size, 10 + self.size]])
                if np.array_equal(im, first)
                else Detections()
                for im in images
            ]

    root = _project(tmp_path)
    params = params_from_dict(_params("fake", {"size": 30}))
    summary = prepare_data.run(params, ProjectPaths(root), progress=False)
    assert built == [{"size": 30}]
    counts = summary["datasets"]["wild"]["faces"]
    assert counts["detector"] == "fake" and counts["filled"] == 1 and counts["no_face"] == 1
    info = json.loads((root / "data" / "prepared" / "datasets.json").read_text())
    assert info["wild"]["faces"] == counts
    metrics = json.loads((root / "metrics" / "prepare_data.json").read_text())
    assert metrics["wild.faces.filled"] == 1 and metrics["wild.faces.images"] == 2
    assert "wild.faces.detector" not in metrics
    table = pd.read_parquet(root / "data" / "prepared" / "samples.parquet")
    p1 = table[table["image_path"] == "p1.png"].iloc[0]
    assert [p1[c] for c in FACE_BOX] == [10.0, 10.0, 40.0, 40.0]


# --- the real detectors ----------------------------------------------------------------------------


def _real(name: str) -> Detector:
    try:
        return resolve_face_detector(name)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["mtcnn", "dlib-hog"])
def test_real_detector_on_blank_and_tiny_images(name: str) -> None:
    detector = _real(name)
    assert isinstance(detector, Detector)
    blank = [np.zeros((64, 64, 3), np.uint8), np.zeros((8, 12, 3), np.uint8), np.zeros((64, 80, 3), np.uint8)]
    found = detector.detect(blank)
    assert [len(d.faces) for d in found] == [0, 0, 0]
    assert detector.detect([]) == []


@pytest.mark.parametrize("name", ["mtcnn", "dlib-hog"])
def test_real_detector_finds_one_face_on_a_portrait(name: str) -> None:
    # fairface_0002: one woman, centred, frontal; both detectors see exactly her face
    path = FAIRFACE / "fairface_0002.jpg"
    if not path.is_file():
        pytest.skip(NO_FAIRFACE)
    detector = _real(name)
    image = load_image(path)
    (det,) = detector.detect([image])
    assert len(det.faces) == 1
    x0, y0, x1, y1 = det.faces[0]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert 150 < cx < 300 and 120 < cy < 300 and 100 < x1 - x0 < 300  # the centred head of a 448 x 448 photo
    # mixed sizes in one call: each image answered in order, the same as alone
    both = detector.detect([image[:300, :400], image])
    assert np.allclose(both[1].faces, det.faces, atol=1e-3)


def test_mtcnn_finds_faces_on_fairface() -> None:
    if not FAIRFACE.is_dir():
        pytest.skip(NO_FAIRFACE)
    detector = _real("mtcnn")
    files = sorted(FAIRFACE.glob("*.jpg"))[::4]  # 135 of 540 images (all age and gender classes): ~7 s
    rows = [_row(f"s{i}", f.name, size=(448, 448)) for i, f in enumerate(files)]
    samples = validate_samples(pd.DataFrame(rows))
    out, counts = detect_faces(samples, {"ds": FAIRFACE}, detector, progress=False)
    assert counts["images"] == len(files) and counts["unreadable"] == 0
    assert counts["with_face"] >= 0.95 * len(files), counts
    assert counts["filled"] == counts["with_face"]
    validate_samples(out)


def test_mtcnn_plugs_into_annotate(tmp_path: Path) -> None:
    """`resolve_face_detector("mtcnn")` is a `Detector` that `annotate_folder` takes as it is (tiny MiVOLO)."""
    import shutil

    import torch

    from agegender.annotate import annotate_folder
    from agegender.mivolo.model import create_mivolo

    detector = _real("mtcnn")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((96, 128, 3), 90, dtype=np.uint8)).save(folder / "blank.png")
    real = FAIRFACE / "fairface_0002.jpg"
    if real.is_file():
        shutil.copy(real, folder / "face.jpg")  # a temporary copy, removed with tmp_path
    torch.manual_seed(0)
    model = create_mivolo("mivolo_tiny_64", in_chans=6)
    model.set_age_range(1, 95)
    table = annotate_folder(folder, model.eval(), tmp_path / "out.csv", detector=detector, device="cpu", progress=False)
    counts = table.attrs["counts"]
    assert counts["processed"] == counts["images"] and counts["no_detection"] == 1  # the blank image
    assert table.loc[table["image"] == "blank.png", "status"].tolist() == ["no_detection"]
    if real.is_file():
        face = table[table["image"] == "face.jpg"]
        assert face["status"].tolist() == ["ok"] and face["face_score"].iloc[0] > 0.9
        assert face["person_x0"].isna().all()  # a face detector finds no persons: face + black body
