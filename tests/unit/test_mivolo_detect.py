"""Face-to-person matching and the YOLO wrapper (with a fake ultralytics module: it is not installed)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from agegender.errors import InputError
from agegender.mivolo.detect import (
    Detections,
    Detector,
    MissingDependencyError,
    YoloDetector,
    assign_faces,
    match_scores,
)


def test_scores_mean_of_iou_and_face_inside() -> None:
    face = [[10, 10, 20, 20]]
    person = [[0, 0, 100, 100]]
    # face fully inside: inside share 1, IoU 100 / 10000
    assert match_scores(face, person)[0, 0] == pytest.approx((1 + 0.01) / 2)
    assert match_scores([[0, 0, 10, 10]], [[20, 20, 30, 30]])[0, 0] == 0
    half = match_scores([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0]
    assert half == pytest.approx((50 / 150 + 0.5) / 2)
    assert match_scores([[5, 5, 5, 9]], person)[0, 0] == 0  # degenerate face: no NaN


def test_faces_go_to_their_own_person() -> None:
    persons = [[0, 0, 100, 300], [120, 0, 220, 300]]
    faces = [[150, 10, 190, 50], [30, 10, 70, 50]]  # listed in the other order
    assert assign_faces(faces, persons) == [(0, 1), (1, 0)]


def test_face_inside_two_persons_goes_to_the_tighter_one_and_the_other_stays_alone() -> None:
    persons = [[0, 0, 400, 400], [90, 90, 160, 300]]  # a big box and a tight one, both containing the face
    faces = [[100, 100, 150, 150]]
    assert assign_faces(faces, persons) == [(0, 1), (None, 0)]


def test_two_faces_in_two_overlapping_persons_are_matched_one_to_one() -> None:
    # Greedy matching would give face 0 person 0 (score higher) and leave face 1 with person 0's box too.
    persons = [[0, 0, 100, 200], [60, 0, 160, 200]]
    faces = [[60, 10, 90, 40], [100, 10, 130, 40]]
    pairs = assign_faces(faces, persons)
    assert sorted(p for _, p in pairs) == [0, 1]
    assert pairs == [(0, 0), (1, 1)]


def test_no_faces_no_persons_and_unmatched() -> None:
    persons = [[0, 0, 50, 100], [60, 0, 110, 100]]
    faces = [[200, 200, 220, 220]]
    assert assign_faces(np.zeros((0, 4)), persons) == [(None, 0), (None, 1)]
    assert assign_faces(faces, np.zeros((0, 4))) == [(0, None)]
    assert assign_faces([], []) == []
    # a face touching no person stays face-only; both persons body-only
    assert assign_faces(faces, persons) == [(0, None), (None, 0), (None, 1)]


def test_min_score_threshold() -> None:
    persons = [[0, 0, 100, 100]]
    faces = [[99, 99, 200, 200]]  # corner overlap of 1 px^2
    score = match_scores(faces, persons)[0, 0]
    assert 0 < score < 1e-4
    assert assign_faces(faces, persons) == [(0, None), (None, 0)]
    assert assign_faces(faces, persons, min_score=0) == [(0, 0)]


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        assign_faces([[1, 2, 3]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="face_scores"):
        Detections(faces=[[0, 0, 1, 1]], face_scores=[0.5, 0.6])


# ---------------------------------------------------------------------------------------------
# YoloDetector against a fake ultralytics


class _FakeBoxes:
    def __init__(self, xyxy: list, cls: list, conf: list) -> None:
        import torch

        self.xyxy = torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
        self.cls = torch.tensor(cls, dtype=torch.float32)
        self.conf = torch.tensor(conf, dtype=torch.float32)


class _FakeYOLO:
    seen: list = []

    def __init__(self, weights: str) -> None:
        self.weights = weights
        self.names = {0: "person", 1: "face", 2: "car"}

    def predict(self, images: list, **kwargs: object) -> list:
        _FakeYOLO.seen.append((images, kwargs))
        return [
            types.SimpleNamespace(
                boxes=_FakeBoxes([[0, 0, 50, 100], [10, 5, 30, 25], [1, 1, 2, 2]], [0, 1, 2], [0.9, 0.8, 0.7])
            )
            for _ in images
        ]


@pytest.fixture()
def fake_ultralytics(monkeypatch: pytest.MonkeyPatch) -> type[_FakeYOLO]:
    module = types.ModuleType("ultralytics")
    module.YOLO = _FakeYOLO  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ultralytics", module)
    _FakeYOLO.seen = []
    return _FakeYOLO


def test_yolo_detector_splits_classes_and_sends_bgr(tmp_path, fake_ultralytics) -> None:
    weights = tmp_path / "det.pt"
    weights.write_bytes(b"x")
    det = YoloDetector(weights, device="cpu", conf=0.3)
    assert isinstance(det, Detector)
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 255  # red in RGB
    (out,) = det.detect([image])
    np.testing.assert_allclose(out.persons, [[0, 0, 50, 100]])
    np.testing.assert_allclose(out.faces, [[10, 5, 30, 25]])
    np.testing.assert_allclose(out.face_scores, [0.8], rtol=1e-6)
    sent, kwargs = fake_ultralytics.seen[0]
    assert sent[0][0, 0].tolist() == [0, 0, 255]  # BGR
    assert kwargs["conf"] == 0.3 and kwargs["half"] is False and kwargs["device"] == "cpu"
    assert det.detect([]) == []


def test_yolo_detector_needs_face_and_person_classes(tmp_path, fake_ultralytics, monkeypatch) -> None:
    weights = tmp_path / "det.pt"
    weights.write_bytes(b"x")
    monkeypatch.setattr(_FakeYOLO, "__init__", lambda self, w: setattr(self, "names", {0: "person"}))
    with pytest.raises(InputError, match="face") as info:
        YoloDetector(weights)
    assert info.value.file == str(weights)


def test_yolo_detector_errors_without_weights_or_ultralytics(tmp_path, monkeypatch) -> None:
    with pytest.raises(InputError, match="not found"):
        YoloDetector(tmp_path / "missing.pt")
    weights = tmp_path / "det.pt"
    weights.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"agegender\[detect\]"):
        YoloDetector(weights)
