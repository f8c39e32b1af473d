"""`agegender annotate`: label a folder of raw photos with MiVOLO (the paper's motivating use).

Every image (jpg, jpeg, png, webp; recursive, sorted) goes through: detection of faces and persons
(an optional `Detector`; without one the whole image is one person box with no face, or one face box
for a face-only model), Hungarian assignment of faces to persons, then MiVOLO through
`predict_samples` as the official inference does: a face with its person gets face + body-without-face,
a face without a person gets face + black body, a person without a face black face + body-without-face.
The other detections on the same image are the neighbours blacked out of a body crop.

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
from agegender.mivolo.detect import Detections, Detector, assign_faces

if TYPE_CHECKING:
    import torch

    from agegender.mivolo.model import MiVOLOModel

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
#: `status` values: predicted; detected but no usable crop; nothing detected; the file cannot be decoded.
ANNOTATE_STATUSES: tuple[str, ...] = ("ok", "no_crop", "no_detection", "unreadable")


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
        tmp = out_csv.with_name(f".{out_csv.name}.tmp")
        kept.to_csv(tmp, index=False, lineterminator="\n")
        os.replace(tmp, out_csv)
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


def _load_model(checkpoint: str | Path | MiVOLOModel, device: torch.device) -> MiVOLOModel:
    from agegender.mivolo.checkpoint import load_checkpoint

    if isinstance(checkpoint, str | Path):
        return load_checkpoint(checkpoint, device=device)
    return checkpoint


def annotate_folder(
    folder: str | Path,
    checkpoint: str | Path | MiVOLOModel,
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
        checkpoint: a MiVOLO checkpoint file, or a loaded `MiVOLOModel`.
        out_csv: the output CSV (`ANNOTATE_COLUMNS`); images already in it are skipped.
        detector: finds faces and persons (e.g. `YoloDetector`); None treats each image as one person
            (or, for a face-only model, one face).
        batch_size: MiVOLO batch size.
        device: torch device; None picks CUDA when available.
        progress: show a progress bar over images.
        chunk_images: images detected, predicted and written together.

    Returns:
        The whole CSV as read back (earlier runs included), with `attrs["counts"]` for this run: `images`
        (found), `done_before`, `processed`, `unreadable`, `no_detection`, `persons`, `predicted`, `no_crop`.

    Raises:
        InputError: a missing folder or checkpoint, an output CSV that is not an annotate output.
    """
    from agegender.device import resolve_device

    folder, out_csv = Path(folder), Path(out_csv)
    if chunk_images < 1 or batch_size < 1:
        raise InputError("batch size and chunk size must be >= 1", field="batch_size")
    images = list_images(folder)
    done = _read_done(out_csv)
    todo = [im for im in images if im not in done]
    dev = resolve_device(device)
    model = _load_model(checkpoint, dev)
    face_only = not model.with_persons
    inputs = ("face",) if face_only else ("face_body",)
    counts = dict.fromkeys(("processed", "unreadable", "no_detection", "persons", "predicted", "no_crop"), 0)
    counts = {"images": len(images), "done_before": len(images) - len(todo), **counts}
    writer = _Writer(out_csv)
    bar = tqdm(total=len(todo), desc="annotate", unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), chunk_images):
            chunk = todo[start : start + chunk_images]
            rows = _annotate_chunk(folder, chunk, model, detector, face_only, inputs, batch_size, dev, counts)
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
    model: MiVOLOModel,
    detector: Detector | None,
    face_only: bool,
    inputs: tuple[str, ...],
    batch_size: int,
    device: torch.device,
    counts: dict[str, int],
) -> list[list[str]]:
    """Detect, assign and predict one chunk of images; returns its CSV rows in image order."""
    from agegender.mivolo.predict import predict_samples

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
        found = [_whole_image(*sizes[name], face_only) for name in readable]
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
    predictions: dict[str, tuple[float, Any, Any]] = {}
    if records:
        samples = pd.DataFrame.from_records(records)
        pred = predict_samples(
            model, samples, None, folder, inputs=inputs, batch_size=batch_size, device=device, progress=False
        )
        for row in pred.itertuples(index=False):
            predictions[row.sample_id] = (row.age_pred, row.gender_pred, row.gender_score)
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
            age, gender, score = predictions.get(sid, (None, None, None))
            status = "ok" if sid in predictions else "no_crop"
            counts["predicted" if status == "ok" else "no_crop"] += 1
            rows.append(
                [name, str(k), *_box_cells(face), _fmt(face_score, 4), *_box_cells(person), _fmt(person_score, 4),
                 _fmt(age, 2), "" if gender is None or pd.isna(gender) else str(gender), _fmt(score, 4), status]
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# `agegender annotate`


def annotate_command(args: argparse.Namespace) -> int:
    """Run `agegender annotate` (arguments as in the report's parser code); returns the exit code."""
    from agegender.mivolo.detect import YoloDetector

    detector = YoloDetector(args.detector, device=args.device) if args.detector else None
    table = annotate_folder(
        args.folder,
        args.mivolo,
        args.out,
        detector=detector,
        batch_size=args.batch_size,
        device=args.device,
        progress=not getattr(args, "no_progress", False),
    )
    c = table.attrs["counts"]
    print(
        f"{c['processed']} images annotated ({c['done_before']} already in {args.out}): {c['predicted']} people "
        f"predicted, {c['no_crop']} without a usable crop, {c['no_detection']} images with nobody found, "
        f"{c['unreadable']} unreadable images skipped -> {args.out}"
    )
    return 0


def add_annotate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `agegender annotate FOLDER --mivolo CKPT [--detector WEIGHTS] --out CSV ...`.

    This module imports no torch at import time, so registering costs the CLI little.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returned.

    Returns:
        The subcommand's parser (its `func` default runs `annotate_command`).
    """
    from agegender.mllm.annotate import add_mllm_annotate_arguments, dispatch_annotate

    parser = subparsers.add_parser(
        "annotate",
        help="label a folder of photos with MiVOLO (--mivolo) or an MLLM (--backend): a CSV with age and gender",
    )
    parser.add_argument("folder", help="folder of photos (jpg, jpeg, png, webp; searched recursively)")
    parser.add_argument("--mivolo", default=None, help="MiVOLO checkpoint (official release or trained here)")
    parser.add_argument(
        "--detector",
        default=None,
        help="ultralytics YOLO weights with classes 'person' and 'face' (pip install 'agegender[detect]'); "
        "without it every image is one person (one face for a face-only checkpoint)",
    )
    parser.add_argument("--out", required=True, help="output CSV; images already in it are skipped (resume)")
    parser.add_argument("--batch-size", type=int, default=32, help="MiVOLO batch size (default: 32)")
    parser.add_argument("--device", default=None, help="torch device: cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_mllm_annotate_arguments(parser)
    parser.set_defaults(func=lambda args: dispatch_annotate(args, annotate_command))
    return parser
