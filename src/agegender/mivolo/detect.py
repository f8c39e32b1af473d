"""The raw-photo path: detect faces and persons, then give each face its person.

MiVOLO's own pipeline runs one YOLOv8 model whose classes include `person` and `face` and pairs
faces with persons by Hungarian matching on mean(IoU, intersection / face area), accepting pairs
scoring above 1e-4 (FACTS.md "Detector"). Unmatched faces are predicted face-only, unmatched persons
body-only. ultralytics is an optional dependency (`pip install 'agegender[detect]'`), imported only
when a `YoloDetector` is built; anything with a `detect` method satisfies the `Detector` protocol, so
tests and other detectors plug in without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from agegender.errors import AgegenderError, InputError

#: the class names a detector's weights must have.
FACE_CLASS = "face"
PERSON_CLASS = "person"


class MissingDependencyError(AgegenderError, ImportError):
    """An optional dependency is not installed (the CLI reports it as a one-line message)."""


def _boxes(boxes: Any, name: str) -> np.ndarray:
    arr = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (x0, y0, x1, y1), got {arr.shape}")
    return arr


def match_scores(face_boxes: Any, person_boxes: Any) -> np.ndarray:
    """Score every (face, person) pair: mean of their IoU and of the share of the face inside the person.

    The second term is 1 for a face fully inside a (much larger) person box, where the IoU alone is tiny.

    Args:
        face_boxes: (F, 4) xyxy.
        person_boxes: (P, 4) xyxy.

    Returns:
        (F, P) scores in [0, 1]; a degenerate (zero-area) face scores 0 with everything.
    """
    faces, persons = _boxes(face_boxes, "face_boxes"), _boxes(person_boxes, "person_boxes")
    ix0 = np.maximum(faces[:, None, 0], persons[None, :, 0])
    iy0 = np.maximum(faces[:, None, 1], persons[None, :, 1])
    ix1 = np.minimum(faces[:, None, 2], persons[None, :, 2])
    iy1 = np.minimum(faces[:, None, 3], persons[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    face_area = ((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1]))[:, None]
    person_area = ((persons[:, 2] - persons[:, 0]) * (persons[:, 3] - persons[:, 1]))[None, :]
    union = face_area + person_area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
        inside = np.where(face_area > 0, inter / face_area, 0.0)
    return (iou + inside) / 2


def assign_faces(face_boxes: Any, person_boxes: Any, min_score: float = 1e-4) -> list[tuple[int | None, int | None]]:
    """Pair faces with persons one to one, maximising the total `match_scores` (Hungarian matching).

    Args:
        face_boxes: (F, 4) xyxy face boxes.
        person_boxes: (P, 4) xyxy person boxes.
        min_score: a matched pair is kept only when its score is above this.

    Returns:
        One (face index, person index) per detected individual: first every face in order, with its
        person or None, then every person left without a face as (None, person index).
    """
    from scipy.optimize import linear_sum_assignment

    scores = match_scores(face_boxes, person_boxes)
    n_faces, n_persons = scores.shape
    person_of: dict[int, int] = {}
    if n_faces and n_persons:
        rows, cols = linear_sum_assignment(scores, maximize=True)
        person_of = {int(f): int(p) for f, p in zip(rows, cols, strict=True) if scores[f, p] > min_score}
    taken = set(person_of.values())
    pairs: list[tuple[int | None, int | None]] = [(f, person_of.get(f)) for f in range(n_faces)]
    pairs += [(None, p) for p in range(n_persons) if p not in taken]
    return pairs


@dataclass(frozen=True)
class Detections:
    """Face and person boxes found in one image (absolute pixels, xyxy) with their confidences."""

    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    persons: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    face_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    person_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        faces, persons = _boxes(self.faces, "faces"), _boxes(self.persons, "persons")
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "persons", persons)
        for name, boxes in (("face_scores", faces), ("person_scores", persons)):
            scores = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if scores.size == 0 and len(boxes):
                scores = np.ones(len(boxes))  # a detector without confidences
            if scores.shape[0] != len(boxes):
                raise ValueError(f"{name} has {scores.shape[0]} values for {len(boxes)} boxes")
            object.__setattr__(self, name, scores)


@runtime_checkable
class Detector(Protocol):
    """Finds faces and persons in images."""

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in a batch of RGB uint8 images (H, W, 3); one `Detections` per image, in order."""
        ...


class YoloDetector:
    """An ultralytics YOLO model (e.g. YOLOv8) whose classes include `person` and `face`.

    Args:
        weights: the user's weights file (`.pt`, or any format ultralytics loads); it is never downloaded.
        device: torch device string (`cuda`, `cuda:1`, `cpu`); None lets ultralytics choose.
        conf: minimum detection confidence (MiVOLO's demo uses 0.4).
        iou: non-maximum-suppression IoU threshold (MiVOLO's demo uses 0.7).
        half: fp16 inference on CUDA (ignored on the CPU).
        imgsz: inference size in pixels.

    Raises:
        MissingDependencyError: ultralytics is not installed.
        InputError: the weights file is missing or has no `person` / `face` class.
    """

    def __init__(
        self,
        weights: str | Path,
        *,
        device: str | None = None,
        conf: float = 0.4,
        iou: float = 0.7,
        half: bool = True,
        imgsz: int = 640,
    ) -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise InputError("detector weights file not found", file=weights)
        try:
            from ultralytics import YOLO
        except ImportError as exc:
            raise MissingDependencyError(
                "the detector needs ultralytics: pip install 'agegender[detect]' (or pip install ultralytics)"
            ) from exc
        try:
            self.model = YOLO(str(weights))
        except Exception as exc:  # ultralytics raises many types for a bad file; the user needs the name
            raise InputError(f"cannot be loaded by ultralytics ({type(exc).__name__}: {exc})", file=weights) from exc
        names = {int(k): str(v) for k, v in dict(self.model.names).items()}
        by_name = {v.lower(): k for k, v in names.items()}
        missing = [c for c in (FACE_CLASS, PERSON_CLASS) if c not in by_name]
        if missing:
            raise InputError(
                f"detector has no class {missing} (its classes: {sorted(names.values())}); "
                "MiVOLO needs one model that detects both 'person' and 'face'",
                file=weights,
            )
        self.face_id, self.person_id = by_name[FACE_CLASS], by_name[PERSON_CLASS]
        on_cuda = device is not None and str(device).startswith("cuda")
        self.kwargs: dict[str, Any] = {"conf": conf, "iou": iou, "imgsz": imgsz, "half": half and on_cuda}
        if device is not None:
            self.kwargs["device"] = device
        self.kwargs["verbose"] = False

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces and persons in a batch of RGB uint8 images.

        Args:
            images: arrays (H, W, 3), RGB.

        Returns:
            One `Detections` per image, in order.
        """
        if not images:
            return []
        # ultralytics reads numpy arrays as BGR (OpenCV's order).
        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]
        results = self.model.predict(bgr, **self.kwargs)
        out = []
        for res in results:
            boxes = res.boxes
            xyxy = _numpy(boxes.xyxy).reshape(-1, 4)
            cls = _numpy(boxes.cls).reshape(-1).astype(int)
            conf = _numpy(boxes.conf).reshape(-1)
            f, p = cls == self.face_id, cls == self.person_id
            out.append(Detections(faces=xyxy[f], persons=xyxy[p], face_scores=conf[f], person_scores=conf[p]))
        return out


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like -> float64 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
