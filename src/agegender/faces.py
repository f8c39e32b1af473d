"""Face detection that runs offline with weights that ship inside a package, and filling missing face boxes.

Two detectors are registered (`FACE_DETECTORS`), both implementing the `Detector` protocol of
`agegender.mivolo.detect` (faces only, no persons), so `agegender annotate` and `detect_faces` take either:

- `mtcnn` (the default): facenet-pytorch's MTCNN, whose three small networks ship inside the package
  (`facenet_pytorch/data/*.pt`). Install: `pip install --no-deps -r requirements-nodeps.txt`.
- `dlib-hog`: dlib's frontal HOG detector (built into dlib). Install: `pip install 'agegender[pretrained]'`.

`detect_faces` fills the null face boxes of a sample table: each image is decoded and detected once; on an
image with one sample the subject is chosen by `pick_subject`; on an image with several samples the detected
faces are matched to their person boxes with `assign_faces` (Hungarian matching, MiVOLO's rule). Nothing here
imports torch or dlib until a detector is built.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from agegender.data.schema import FACE_BOX, PERSON_BOX
from agegender.errors import InputError
from agegender.mivolo.detect import Detections, Detector, MissingDependencyError, assign_faces

#: the detector `prepare_data` and `agegender annotate` mean when none is named.
DEFAULT_FACE_DETECTOR = "mtcnn"
#: a detected face belongs to a person box when at least this share of its area lies inside it.
MIN_FACE_INSIDE_PERSON = 0.5
#: face boxes written into a sample table are rounded to this many decimals (stable across float rounding).
BOX_DECIMALS = 2
#: the keys of the counts `detect_faces` returns, in order.
FACE_COUNTS: tuple[str, ...] = (
    "images",
    "unreadable",
    "with_face",
    "no_face",
    "several_faces",
    "missing",
    "filled",
    "not_filled",
)


@dataclass(frozen=True)
class FaceDetectorSpec:
    """A registered face detector.

    Attributes:
        name: the registry name (`mtcnn`, `dlib-hog`).
        factory: builds the detector from keyword options.
        module: the import name of the package it needs (checked without importing it).
        install: the command that installs that package.
    """

    name: str
    factory: Callable[..., Detector]
    module: str
    install: str

    def options(self) -> tuple[str, ...]:
        """The keyword options the factory accepts."""
        params = inspect.signature(self.factory).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


#: name -> spec of every registered face detector.
FACE_DETECTORS: dict[str, FaceDetectorSpec] = {}


def register_face_detector(name: str, *, module: str, install: str) -> Callable[[Callable], Callable]:
    """Class decorator: register a face detector under `name`.

    Args:
        name: the registry name (no `.`; used in params).
        module: the import name of the package the detector needs, e.g. `facenet_pytorch`.
        install: the command that installs it, shown when it is missing.

    Returns:
        The decorator; it returns the class unchanged.
    """

    def decorate(factory: Callable) -> Callable:
        if name in FACE_DETECTORS and FACE_DETECTORS[name].factory is not factory:
            raise ValueError(f"face detector {name!r} is already registered")
        FACE_DETECTORS[name] = FaceDetectorSpec(name, factory, module, install)
        return factory

    return decorate


def _spec(name: str) -> FaceDetectorSpec:
    if name not in FACE_DETECTORS:
        raise InputError(f"unknown face detector {name!r} (known: {', '.join(sorted(FACE_DETECTORS))})")
    return FACE_DETECTORS[name]


def _missing_dependency(spec: FaceDetectorSpec) -> MissingDependencyError:
    return MissingDependencyError(
        f"face detector {spec.name!r} needs the Python package {spec.module!r}, which is not installed: {spec.install}"
    )


def check_face_detector(name: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """Problems with a configured face detector, found without building it (the pre-flight check).

    Args:
        name: the registry name.
        options: the keyword options it would be built with.

    Returns:
        One line per problem: an unknown name (with the known ones), a package that is not installed (with the
        install command), an option the detector does not take (with those it does).
    """
    if name not in FACE_DETECTORS:
        return [f"unknown face detector {name!r} (known: {', '.join(sorted(FACE_DETECTORS))})"]
    spec = FACE_DETECTORS[name]
    lines = []
    if importlib.util.find_spec(spec.module) is None:
        lines.append(str(_missing_dependency(spec)))
    known = spec.options()
    for key in sorted(set(options or {}) - set(known)):
        lines.append(f"face detector {name!r} has no option {key!r} (its options: {', '.join(known)})")
    return lines


def resolve_face_detector(name: str = DEFAULT_FACE_DETECTOR, **options: Any) -> Detector:
    """Build a registered face detector.

    Args:
        name: the registry name (`FACE_DETECTORS`).
        **options: the detector's keyword options (e.g. `min_face_size` for `mtcnn`, `upsample` for `dlib-hog`).

    Returns:
        A `Detector` (faces only).

    Raises:
        InputError: an unknown name (listing the known ones) or an option the detector does not take.
        MissingDependencyError: the detector's package is not installed (naming the install command).
    """
    spec = _spec(name)
    known = spec.options()
    for key in options:
        if key not in known:
            raise InputError(f"face detector {name!r} has no option {key!r} (its options: {', '.join(known)})")
    if importlib.util.find_spec(spec.module) is None:
        raise _missing_dependency(spec)
    return spec.factory(**options)


# ----------------------------------------------------------------------------------------------
# The detectors


def _faces_only(boxes: np.ndarray, scores: np.ndarray) -> Detections:
    return Detections(faces=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), face_scores=scores)


@register_face_detector("mtcnn", module="facenet_pytorch", install="pip install --no-deps -r requirements-nodeps.txt")
class MtcnnDetector:
    """facenet-pytorch's MTCNN (P-Net, R-Net, O-Net; weights inside the package), every face of an image.

    Images of one size in a call go through MTCNN as one batch; images of other sizes form their own batches.
    Boxes may reach past the image border (as MTCNN returns them); `detect_faces` clamps them.

    Args:
        device: torch device (`cpu`, `cuda`, `auto`: see `agegender.device.resolve_device`).
        min_face_size: smallest face searched for, in pixels.
        thresholds: the three stages' score thresholds.
        factor: scale step of the image pyramid.
        min_score: faces scoring below this (the O-Net probability) are dropped.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        min_score: float = 0.0,
    ) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise _missing_dependency(FACE_DETECTORS["mtcnn"]) from exc
        from agegender.device import resolve_device

        if len(thresholds) != 3:
            raise InputError(f"mtcnn thresholds need 3 values, got {list(thresholds)}", field="thresholds")
        self.min_face_size, self.min_score = int(min_face_size), float(min_score)
        self.device = resolve_device(device)
        self.model = MTCNN(
            keep_all=True,
            select_largest=False,
            min_face_size=self.min_face_size,
            thresholds=[float(t) for t in thresholds],
            factor=float(factor),
            device=self.device,
        ).eval()

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces in a batch of RGB uint8 images (H, W, 3); one `Detections` per image, in order."""
        out: list[Detections | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for shape, indices in by_size.items():
            if min(shape[:2]) < self.min_face_size:  # MTCNN's image pyramid would be empty
                for i in indices:
                    out[i] = Detections()
                continue
            batch = np.stack([np.asarray(images[i], dtype=np.uint8) for i in indices])
            boxes, probs = self.model.detect(batch)
            for i, b, p in zip(indices, boxes, probs, strict=True):
                if b is None:
                    out[i] = Detections()
                    continue
                b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
                p = np.asarray(p, dtype=np.float64).reshape(-1)
                keep = p >= self.min_score
                out[i] = _faces_only(b[keep], p[keep])
        return out  # type: ignore[return-value]


@register_face_detector("dlib-hog", module="dlib", install="pip install 'agegender[pretrained]'")
class DlibHogDetector:
    """dlib's frontal face detector (HOG + linear SVM, built into dlib), every face of an image.

    Scores are the SVM margins dlib reports (not probabilities). dlib's rectangles are inclusive; the boxes
    returned are xyxy with exclusive ends (`right + 1`), as the sample table's boxes are.

    Args:
        upsample: times the image is upsampled first (finds faces down to ~40 px at 1, ~20 px at 2; slower).
        adjust_threshold: added to the detection threshold; negative values find more (and falser) faces.
    """

    def __init__(self, *, upsample: int = 1, adjust_threshold: float = 0.0) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise _missing_dependency(FACE_DETECTORS["dlib-hog"]) from exc
        if int(upsample) < 0:
            raise InputError(f"dlib-hog upsample must be >= 0, got {upsample}", field="upsample")
        self.upsample, self.adjust_threshold = int(upsample), float(adjust_threshold)
        self.model = dlib.get_frontal_face_detector()

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces in a batch of RGB uint8 images (H, W, 3); one `Detections` per image, in order."""
        out = []
        for image in images:
            rects, scores, _ = self.model.run(
                np.ascontiguousarray(image, dtype=np.uint8), self.upsample, self.adjust_threshold
            )
            boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], dtype=np.float64)
            out.append(_faces_only(boxes, np.asarray(scores, dtype=np.float64)))
        return out


# ----------------------------------------------------------------------------------------------
# Choosing the subject and filling a sample table


def clamp_face_boxes(boxes: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Clamp xyxy float boxes to the image, [0, width] x [0, height] (a box may become empty).

    Args:
        boxes: (N, 4) xyxy boxes.
        image_size: (width, height).

    Returns:
        (N, 4) float64 boxes.
    """
    width, height = image_size
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width)
    arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height)
    return arr


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def pick_subject(
    detections: Detections, image_size: tuple[int, int], candidates: Sequence[int] | None = None
) -> int | None:
    """The face of the photo's subject, when an image shows one labelled person.

    Rule: the largest face by area once clamped to the image (the subject of a portrait is the person the
    photographer framed, nearly always the biggest face; bystanders and faces on posters are smaller). Ties
    go to the higher score, then to the lower index. Faces that are empty after clamping never win.

    Args:
        detections: what a detector found in the image.
        image_size: (width, height) of the image.
        candidates: only these face indices compete (default: all).

    Returns:
        The index into `detections.faces`, or None when no face is left.
    """
    faces = clamp_face_boxes(detections.faces, image_size)
    order = range(len(faces)) if candidates is None else candidates
    pool = [i for i in order if _areas(faces[i : i + 1])[0] > 0]
    if not pool:
        return None
    return min(pool, key=lambda i: (-_areas(faces[i : i + 1])[0], -detections.face_scores[i], i))


def _inside_share(face: np.ndarray, person: np.ndarray) -> float:
    ix = max(0.0, min(face[2], person[2]) - max(face[0], person[0]))
    iy = max(0.0, min(face[3], person[3]) - max(face[1], person[1]))
    area = _areas(face[None])[0]
    return float(ix * iy / area) if area > 0 else 0.0


def _boxes_of(table: pd.DataFrame, rows: Sequence[int], cols: tuple[str, ...]) -> np.ndarray:
    values = table.loc[list(rows), list(cols)].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    return values.reshape(-1, 4)


def _choose(
    det: Detections, size: tuple[int, int], rows: list[int], persons: np.ndarray, missing: np.ndarray
) -> dict[int, np.ndarray]:
    """Row -> clamped face box for the rows of one image that lack a face and get one."""
    faces = np.round(clamp_face_boxes(det.faces, size), BOX_DECIMALS)
    det = Detections(faces=faces, face_scores=det.face_scores)  # a face empty once clamped and rounded never wins
    has_person = ~np.isnan(persons).any(axis=1)
    chosen: dict[int, np.ndarray] = {}
    if len(rows) == 1:
        candidates = range(len(faces))
        if has_person[0]:
            candidates = [f for f in candidates if _inside_share(faces[f], persons[0]) >= MIN_FACE_INSIDE_PERSON]
        pick = pick_subject(det, size, list(candidates))
        if pick is not None and missing[0]:
            chosen[rows[0]] = faces[pick]
        return chosen
    with_person = np.flatnonzero(has_person)
    if not len(with_person) or not len(faces):
        return chosen
    # every person on the image takes part (those with a face too), so a known subject keeps its own face
    for f, p in assign_faces(faces, persons[with_person]):
        if f is None or p is None:
            continue
        k = int(with_person[p])
        if missing[k] and _inside_share(faces[f], persons[k]) >= MIN_FACE_INSIDE_PERSON:
            chosen[rows[k]] = faces[f]
    return chosen


def detect_faces(
    samples: pd.DataFrame,
    image_roots: Mapping[str, str | Path],
    detector: Detector,
    *,
    progress: bool = True,
    batch_size: int = 16,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fill the null face boxes of a sample table with detected faces.

    Every image holding a sample without a face box is decoded and detected once (in batches). Which face a
    sample gets:

    - an image with one sample: the face `pick_subject` chooses (the largest); when the sample has a person
      box, only faces with at least `MIN_FACE_INSIDE_PERSON` of their area inside it compete;
    - an image with several samples: the faces are matched one to one to the samples' person boxes with
      `assign_faces` (Hungarian matching on MiVOLO's score; samples that already have a face take part, so
      they keep theirs), and a matched face is kept when at least `MIN_FACE_INSIDE_PERSON` of it lies inside
      its person box. A sample without a person box on such an image cannot be told apart and gets no face.

    Boxes are clamped to the image and rounded to `BOX_DECIMALS`; face boxes that were already set are never
    changed. An image that cannot be decoded is counted (`unreadable`) and its samples keep no face.

    Args:
        samples: a sample table (DESIGN.md); its `dataset` + `image_path` name the images.
        image_roots: data set -> folder its image paths are relative to.
        detector: any `Detector` (e.g. from `resolve_face_detector`); only its faces are used.
        progress: show a progress bar over images.
        batch_size: images per `detector.detect` call.

    Returns:
        The table with face boxes filled (a copy; same columns and row order), and the counts `FACE_COUNTS`:
        `images` detected on, `unreadable`, `with_face` (at least one face found), `no_face`, `several_faces`
        (more than one found), `missing` (samples without a face box before), `filled`, `not_filled`.

    Raises:
        InputError: `image_roots` names no folder for a data set that needs detection, or a bad `batch_size`.
    """
    from agegender.data.crops import image_file, load_image

    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    table = samples.copy()
    for col in FACE_BOX + PERSON_BOX:
        if col not in table.columns:
            table[col] = pd.Series(pd.NA, index=table.index, dtype="Float64")
    table = table.reset_index(drop=True)
    counts = dict.fromkeys(FACE_COUNTS, 0)
    missing = table[list(FACE_BOX)].isna().any(axis=1).to_numpy(dtype=bool)
    counts["missing"] = int(missing.sum())
    if not missing.any():
        return _restore_index(table, samples), counts

    files: list[Path] = []
    for dataset, image_path in zip(table["dataset"].astype(str), table["image_path"].astype(str), strict=True):
        path = image_file(image_roots, dataset, image_path)
        if path is None:
            raise InputError(f"no image folder given for data set {dataset!r} (known: {sorted(image_roots)})")
        files.append(path)
    rows_of: dict[Path, list[int]] = {}
    for i, path in enumerate(files):
        rows_of.setdefault(path, []).append(i)
    todo = [path for path, rows in rows_of.items() if missing[rows].any()]

    filled: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(todo), desc="faces", unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            chunk, arrays = [], []
            for path in todo[start : start + batch_size]:
                try:
                    arrays.append(load_image(path))
                    chunk.append(path)
                except InputError:
                    counts["unreadable"] += 1
            found = list(detector.detect(arrays)) if arrays else []
            if len(found) != len(chunk):
                raise RuntimeError(f"the detector returned {len(found)} results for {len(chunk)} images")
            for path, image, det in zip(chunk, arrays, found, strict=True):
                n = len(det.faces)
                counts["images"] += 1
                counts["with_face" if n else "no_face"] += 1
                counts["several_faces"] += int(n > 1)
                rows = rows_of[path]
                size = (image.shape[1], image.shape[0])
                filled.update(_choose(det, size, rows, _boxes_of(table, rows, PERSON_BOX), missing[rows]))
            bar.update(len(todo[start : start + batch_size]))
    finally:
        bar.close()

    for row, box in filled.items():
        table.loc[row, list(FACE_BOX)] = box
    counts["filled"] = len(filled)
    counts["not_filled"] = counts["missing"] - counts["filled"]
    return _restore_index(table, samples), counts


def _restore_index(table: pd.DataFrame, original: pd.DataFrame) -> pd.DataFrame:
    table.index = original.index
    return table
