"""Batch prediction with MiVOLO: a sample table in, DESIGN.md's prediction table out.

Four input kinds, all through the same 6-channel model (face in channels 0-2, body in 3-5; a missing
crop is a black image, normalised):

- `face_body`: face crop + body-without-face crop, the official MiVOLO inference;
- `face`: face crop + black body;
- `body`: black face + the full person crop, face visible (what the MLLMs see as "entire body");
- `body_wo_face`: black face + body-without-face crop.

A face-only (3-channel) model takes only `face`. A sample whose needed crops are all missing gets no
row (it is unanswered); the skips are counted in the result's `attrs["skipped"]` and logged. An image that
cannot be loaded (missing, empty, truncated) does not end the run: its samples get a `failed` row with no
prediction, are counted and named in `attrs["bad_images"]`, and are tried again by a resumed run.

Speed: crops are made one image at a time (each image is decoded once per input kind, and the
neighbours of a person are every box on the same image file) in a background thread or DataLoader
workers while the model runs batched in `inference_mode`, channels-last, with bf16 autocast on CUDA.
Big runs resume: with `out`, finished rows are appended to part files in that folder and skipped on
the next run. Each row records its producer, a digest of `producer_fingerprint` (the weights, age range and
architecture, the preprocessing, and the numerics): rows are only reused by a run with the same producer. A
run that finds rows of its model name made by another producer (another checkpoint, a retrained one, bf16 on a
GPU vs float32 on a CPU) refuses to resume, naming the folder and what differs, rather than mix two models' rows
in one table; `restart=True` (`mivolo-predict --restart`) discards those rows instead. Settings that only move
the last float bits (batch size, channels-last, workers) are not part of the producer.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from agegender.data.crops import (
    INPUT_CROPS,
    BadImages,
    ImageBoxes,
    _image_boxes,
    body_without_face,
    crop,
    image_file,
    letterbox,
    load_image,
)
from agegender.data.schema import (
    AGE_RANGE,
    FACE_BOX,
    GENDERS,
    INPUT_KINDS,
    PERSON_BOX,
    PREDICTION_COLUMNS,
    empty_predictions,
    read_table,
    validate_predictions,
    validate_samples,
)
from agegender.device import resolve_device
from agegender.errors import IncompleteRunError, InputError
from agegender.files import atomic_path, write_json, write_table
from agegender.fingerprint import describe_changes, json_sha256, tensors_sha256

if TYPE_CHECKING:
    import torch

    from agegender.mivolo.model import MiVOLOModel

_log = logging.getLogger(__name__)

# INPUT_CROPS (agegender.data.crops): input kind -> (crop kind in the face channels, in the body channels); None =
# black image. Imported here too, where it has always been importable from.
assert set(INPUT_CROPS) == set(INPUT_KINDS)

#: suffix of the resume part files: not `.parquet`, so `agegender evaluate` never reads them as predictions.
PART_SUFFIX = ".parquet-part"
#: column of the part files naming the producer of each row (`producer_digest`)
PRODUCER_COLUMN = "producer"

ImageRoots = str | Path | Mapping[str, str | Path]


def input_crops(input_kind: str, with_persons: bool = True) -> tuple[str | None, str | None]:
    """The crops an input kind feeds to the face and body channels.

    Args:
        input_kind: one of `INPUT_CROPS`.
        with_persons: whether the model takes a body (6 channels); a face-only model accepts only `face`.

    Returns:
        (face crop kind or None, body crop kind or None), kinds of `agegender.data.crops.CROP_KINDS`.

    Raises:
        InputError: an unknown kind, or a kind other than `face` for a face-only model.
    """
    if input_kind not in INPUT_CROPS:
        raise InputError(f"unknown input kind {input_kind!r}; known: {list(INPUT_CROPS)}", field="inputs")
    if not with_persons and input_kind != "face":
        raise InputError(
            f"input kind {input_kind!r} needs a face+body (6-channel) model; this checkpoint is face-only "
            "and takes only 'face'",
            field="inputs",
        )
    return INPUT_CROPS[input_kind]


class CropItem(NamedTuple):
    """The model inputs of one image file (an item of `CropDataset`).

    Attributes:
        kept: positions (into the samples) of the image's samples that have at least one needed crop.
        skipped: positions of those that have none (no row).
        pixels: the letterboxed uint8 array (len(kept), S, S, 6 | 3) of the kept ones, face then body; None when
            none is kept.
        failed: positions of the samples with a needed box, when the image cannot be loaded (then `kept` is empty
            and the others are `skipped`).
        error: why it cannot be loaded (None when it could).
        path: the image file.
    """

    kept: list[int]
    skipped: list[int]
    pixels: np.ndarray | None
    failed: list[int]
    error: str | None
    path: str


class CropDataset:
    """Model inputs of one input kind, one item per image file (a map-style dataset for a DataLoader).

    Item i is a `CropItem`: the positions (into `samples`) of the image's samples with and without a needed crop
    and the pixels of the former, or, for an image that cannot be loaded, every position as `failed` with the
    reason (returned, not raised, so that one bad file does not end a run, in DataLoader workers too). An image
    none of whose samples has a needed box is not decoded.

    Args:
        samples: sample table (sample_id, dataset, image_path, box columns).
        masked: masked-persons side table (or None): more neighbours to black out.
        image_roots: folder image paths are relative to, or a mapping data set -> folder.
        input_kind: one of `INPUT_CROPS`.
        size: input side S of the model.
        with_persons: 6-channel (face + body) model.
        context: a larger sample table whose boxes also count as neighbours (when `samples` is a subset).

    Raises:
        InputError: missing columns, or a sample whose data set has no folder in `image_roots`.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        masked: pd.DataFrame | None,
        image_roots: ImageRoots,
        input_kind: str,
        size: int,
        with_persons: bool,
        context: pd.DataFrame | None = None,
    ) -> None:
        self.face_kind, self.body_kind = input_crops(input_kind, with_persons)
        self.size, self.with_persons = int(size), with_persons
        self.kinds = [k for k in (self.face_kind, self.body_kind) if k is not None]
        for col in ("sample_id", "dataset", "image_path"):
            if col not in samples.columns:
                raise InputError("required column is missing from the sample table", field=col)
        groups: dict[Path, list[int]] = {}
        pairs = zip(samples["dataset"].astype(str), samples["image_path"].astype(str), strict=True)
        for pos, (dataset, image_path) in enumerate(pairs):
            path = image_file(image_roots, dataset, image_path)
            if path is None:
                sid = samples["sample_id"].iloc[pos]
                raise InputError(
                    f"no image folder given for data set {dataset!r}",
                    row=f"{pos + 1} (sample_id {sid})",
                    field="dataset",
                )
            groups.setdefault(path, []).append(pos)
        self.groups: list[tuple[Path, list[int]]] = list(groups.items())
        self.faces, self.persons = _box_array(samples, FACE_BOX), _box_array(samples, PERSON_BOX)
        self.neighbours: dict[Path, ImageBoxes] = {}
        if "body_wo_face" in (self.face_kind, self.body_kind):
            tables = [samples] if context is None else [samples, context]
            if masked is not None and len(masked):
                tables.append(masked)
            self.neighbours = _image_boxes(tables, image_roots, set(groups))

    def __len__(self) -> int:
        return len(self.groups)

    def _crop(self, image: np.ndarray, pos: int, kind: str | None, path: Path) -> np.ndarray | None:
        face, person = self.faces[pos], self.persons[pos]
        face = face if np.isfinite(face).all() else None
        person = person if np.isfinite(person).all() else None
        if kind is None:
            return None
        if kind == "face":
            return crop(image, face)
        if kind == "body":
            return crop(image, person)
        boxes = self.neighbours[path]
        return body_without_face(image, person, boxes.faces, boxes.persons)

    def __getitem__(self, index: int) -> CropItem:
        path, positions = self.groups[index]
        has_box = [
            any(np.isfinite(self.faces[p] if k == "face" else self.persons[p]).all() for k in self.kinds)
            for p in positions
        ]
        if not any(has_box):
            return CropItem([], list(positions), None, [], None, str(path))
        try:
            image = load_image(path)
        except InputError as exc:
            # the samples with a box this kind needs are failed; the others would have had no crop anyway
            failed = [p for p, has in zip(positions, has_box, strict=True) if has]
            no_box = [p for p, has in zip(positions, has_box, strict=True) if not has]
            return CropItem([], no_box, None, failed, exc.message, str(path))
        kept, skipped, pixels = [], [], []
        for pos in positions:
            face = self._crop(image, pos, self.face_kind, path)
            body = self._crop(image, pos, self.body_kind, path) if self.with_persons else None
            if face is None and body is None:
                skipped.append(pos)
                continue
            kept.append(pos)
            pixels.append((face, body))
        if not kept:
            return CropItem(kept, skipped, None, [], None, str(path))
        # Letterboxed uint8 (N, S, S, C): normalising happens on the model's device, after a 4x smaller copy.
        channels = 6 if self.with_persons else 3
        buffer = np.zeros((len(kept), self.size, self.size, channels), dtype=np.uint8)
        for i, (face, body) in enumerate(pixels):
            if face is not None:
                buffer[i, :, :, :3] = letterbox(face, self.size)
            if body is not None:
                buffer[i, :, :, 3:] = letterbox(body, self.size)
        return CropItem(kept, skipped, buffer, [], None, str(path))


def _box_array(frame: pd.DataFrame, cols: tuple[str, ...]) -> np.ndarray:
    if not set(cols) <= set(frame.columns):
        return np.full((len(frame), 4), np.nan)
    return frame[list(cols)].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, 4)


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run an iterator in a background thread, `depth` items ahead (decoding and resizing release the GIL)."""
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(("end", done))
        except BaseException as exc:  # handed to the consumer, which re-raises it with its traceback
            box.put(("error", exc))

    thread = threading.Thread(target=work, name="mivolo-crops", daemon=True)
    thread.start()
    try:
        while True:
            tag, item = box.get()
            if tag == "error":
                raise item
            if tag == "end":
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _items(dataset: CropDataset, num_workers: int, pin_memory: bool) -> Iterator[Any]:
    if num_workers <= 0:
        return _prefetch((dataset[i] for i in range(len(dataset))), depth=8)
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,  # type: ignore[arg-type]  # any object with __getitem__ and __len__ is a map-style dataset
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4,
    )
    return iter(loader)


def decode_outputs(model: MiVOLOModel, outputs: torch.Tensor) -> dict[str, np.ndarray | None]:
    """Raw model outputs -> age in years (clamped to `AGE_RANGE`), gender index and P(female).

    The age head is a linear regression, so an odd crop can land outside any possible age; clamped to the nearest
    possible one, the prediction table stays valid (`validate_predictions` rejects impossible ages).

    Args:
        model: the model (for its age range and whether it predicts gender).
        outputs: [N, 3] (male logit, female logit, normalised age) or [N, 1] for age-only models.

    Returns:
        `age` (N,) float; `gender` (N,) int (0 male, 1 female) and `score` (N,) P(female), or None for
        age-only models.
    """
    outputs = outputs.float()
    age = model.decode_age(outputs[:, -1]).clamp(min=AGE_RANGE[0], max=AGE_RANGE[1])
    if model.no_gender:
        return {"age": age.cpu().numpy().astype(np.float64), "gender": None, "score": None}
    probs = outputs[:, :2].softmax(dim=-1)
    return {
        "age": age.cpu().numpy().astype(np.float64),
        "gender": probs.argmax(dim=-1).cpu().numpy(),
        "score": probs[:, 1].cpu().numpy().astype(np.float64),
    }


def producer_fingerprint(model: MiVOLOModel, *, amp: bool) -> dict[str, Any]:
    """What decides a MiVOLO prediction besides the sample: the key of the resumable part files.

    Args:
        model: the model (its weights, age range, architecture and channels).
        amp: whether the forward pass runs under bf16 autocast (on CUDA), which moves ages by up to ~0.1 year.

    Returns:
        A JSON-able mapping: `model` (SHA-256 of the state dict, age range, outputs, architecture, channels),
        `preprocessing` (input size, letterbox, normalisation, body-without-face rules) and `numerics`.
    """
    from agegender.mivolo.preprocess import IMAGENET_MEAN, IMAGENET_STD

    wo_face = inspect.signature(body_without_face).parameters
    return {
        "model": {
            "weights_sha256": tensors_sha256(model.state_dict()),
            "age_range": [model.min_age, model.max_age, model.avg_age],
            "no_gender": bool(model.no_gender),
            "with_persons": bool(model.with_persons),
            "architecture": dataclasses.asdict(model.spec),
        },
        "preprocessing": {
            "input_size": int(model.spec.img_size),
            "letterbox": "aspect kept, centred on black",
            "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "missing_crop": "black image, normalised",
            "body_wo_face": {k: wo_face[k].default for k in ("min_size", "min_nonzero")},
        },
        "numerics": "bf16-autocast" if amp else "float32",
    }


def producer_digest(fingerprint: Mapping[str, Any]) -> str:
    """The 16-hex digest of a producer fingerprint that each part row carries."""
    return json_sha256(fingerprint)[:16]


class _PartStore:
    """Append-only part files of finished rows in a folder; each part is written atomically (tmp + rename).

    Rows carry an extra boolean `skipped` so that samples without crops are not retried either, and the
    `producer` digest of what made them; `producer-<digest>.json` beside the parts spells each producer out, so
    that a refusal can say what changed.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError("resume folder is a file", file=self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _parts(self) -> list[Path]:
        return sorted(self.folder.glob(f"part-*{PART_SUFFIX}"))

    def _read(self, part: Path) -> pd.DataFrame:
        try:
            frame = pd.read_parquet(part)
        except Exception as exc:  # a part is only ever renamed into place complete; this is a foreign file
            raise InputError(f"cannot be read as a prediction part ({exc}); remove it", file=part) from exc
        if PRODUCER_COLUMN not in frame.columns:  # written before rows recorded their producer
            frame[PRODUCER_COLUMN] = pd.array([pd.NA] * len(frame), dtype="string")
        return frame

    def _producer_file(self, digest: str) -> Path:
        return self.folder / f"producer-{digest}.json"

    def _changes(self, old: str | None, new: Mapping[str, Any]) -> str:
        if old is None:
            return "rows written before parts recorded their producer (model and settings unknown)"
        try:
            recorded = json.loads(self._producer_file(old).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"producer {old}, whose description is missing"
        changes = describe_changes(recorded, new)
        return "; ".join(changes[:6]) + (f" (+{len(changes) - 6} more)" if len(changes) > 6 else "")

    def claim(
        self, model_name: str, fingerprint: Mapping[str, Any], *, restart: bool = False
    ) -> tuple[str, pd.DataFrame]:
        """The finished rows of `model_name` that this producer may reuse.

        Args:
            model_name: the `model` column of the run.
            fingerprint: `producer_fingerprint` of the run.
            restart: discard rows of `model_name` made by another producer instead of refusing.

        Returns:
            (producer digest, its finished rows (with `skipped`, without `producer`)).

        Raises:
            InputError: rows of `model_name` made by another producer (naming the folder and what differs), unless
                `restart`; an unreadable part.
        """
        fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as read back from its file (tuples -> lists)
        digest = producer_digest(fingerprint)
        kept: list[pd.DataFrame] = []
        stale: dict[Path, tuple[pd.DataFrame, pd.Series]] = {}
        for part in self._parts():
            frame = self._read(part)
            mine = frame["model"].astype(str) == model_name
            other = mine & (frame[PRODUCER_COLUMN].astype("string") != digest).fillna(True).astype(bool)
            if other.any():
                stale[part] = (frame, other)
            kept.append(frame[mine & ~other])
        if stale:
            n = sum(int(other.sum()) for _, other in stale.values())
            olds = {v for frame, other in stale.values() for v in frame.loc[other, PRODUCER_COLUMN].unique()}
            what = " | ".join(self._changes(None if pd.isna(v) else str(v), fingerprint) for v in sorted(olds, key=str))
            if not restart:
                raise InputError(
                    f"holds {n} finished rows of model {model_name!r} made by another producer ({what}); resuming "
                    "would mix two models' predictions in one table. Discard them with --restart (restart=True), or "
                    "write to another output",
                    file=self.folder,
                )
            for part, (frame, other) in stale.items():
                # parts are written by one run (one model), so a stale part is usually deleted whole
                if other.all():
                    part.unlink()
                else:
                    with atomic_path(part) as tmp:
                        frame[~other].to_parquet(tmp, index=False)
            _log.warning("%s: discarded %d rows of %s made by another producer (%s)", self.folder, n, model_name, what)
        if not self._producer_file(digest).is_file():  # before any row of this producer is written
            write_json(fingerprint, self._producer_file(digest))
        frames = [f for f in kept if len(f)]
        rows = pd.concat(frames, ignore_index=True) if frames else _with_skipped(empty_predictions(), False)
        return digest, rows.drop(columns=[PRODUCER_COLUMN], errors="ignore")

    def write(self, frame: pd.DataFrame, producer: str) -> None:
        if not len(frame):
            return
        parts = self._parts()
        index = int(parts[-1].name.split("-")[1].split(".")[0]) + 1 if parts else 0
        final = self.folder / f"part-{index:06d}{PART_SUFFIX}"
        with atomic_path(final) as tmp:
            frame.assign(**{PRODUCER_COLUMN: pd.array([producer] * len(frame), dtype="string")}).to_parquet(
                tmp, index=False
            )


def _with_skipped(frame: pd.DataFrame, skipped: bool) -> pd.DataFrame:
    return frame.assign(skipped=pd.Series(skipped, index=frame.index, dtype="boolean"))


def _rows(
    ids: Sequence[str], kind: str, model_name: str, decoded: dict[str, np.ndarray | None] | None, status: str = "ok"
) -> pd.DataFrame:
    """Prediction rows; `decoded` None: rows without a prediction, `skipped` ones (no crop: kept in the resume parts
    only) or, with `status="failed"`, the rows of an image that cannot be loaded (in the result, not in the parts)."""
    n = len(ids)
    frame = pd.DataFrame({"sample_id": pd.array(list(ids), dtype="string")})
    frame["model"] = pd.array([model_name] * n, dtype="string")
    frame["input"] = pd.array([kind] * n, dtype="string")
    if decoded is None:
        for col in ("age_pred", "gender_score"):
            frame[col] = pd.array([pd.NA] * n, dtype="Float64")
        frame["gender_pred"] = pd.array([pd.NA] * n, dtype="string")
        frame["status"] = pd.array([status] * n, dtype="string")
        frame["raw_answer"] = pd.array([pd.NA] * n, dtype="string")
        return _with_skipped(frame[list(PREDICTION_COLUMNS)], status != "failed")
    frame["age_pred"] = pd.array(decoded["age"], dtype="Float64")
    if decoded["gender"] is None:
        frame["gender_pred"] = pd.array([pd.NA] * n, dtype="string")
        frame["gender_score"] = pd.array([pd.NA] * n, dtype="Float64")
    else:
        frame["gender_pred"] = pd.array([GENDERS[int(g)] for g in decoded["gender"]], dtype="string")
        frame["gender_score"] = pd.array(decoded["score"], dtype="Float64")
    frame["status"] = pd.array(["ok"] * n, dtype="string")
    frame["raw_answer"] = pd.array([pd.NA] * n, dtype="string")
    return _with_skipped(frame[list(PREDICTION_COLUMNS)], False)


def predict_samples(
    model: MiVOLOModel,
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: ImageRoots,
    *,
    inputs: Sequence[str] = ("face_body",),
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    model_name: str = "mivolo",
    context: pd.DataFrame | None = None,
    out: str | Path | None = None,
    flush_rows: int = 1024,
    flush_seconds: float = 60.0,
    channels_last: bool = True,
    restart: bool = False,
) -> pd.DataFrame:
    """Predict age and gender of every sample for each input kind.

    The model is put in eval mode and moved to `device` (in place; also to channels-last memory layout
    unless `channels_last` is False).

    Args:
        model: a MiVOLO model with its age range set (e.g. from `load_checkpoint`).
        samples: the sample table (DESIGN.md) to predict.
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: folder that image paths are relative to, or a mapping data set -> folder.
        inputs: input kinds (see the module docstring); a face-only model takes only `face`.
        batch_size: images per forward pass.
        device: torch device; None picks CUDA when available, else the CPU.
        num_workers: DataLoader worker processes making crops; 0 uses one background thread.
        progress: show a tqdm bar per input kind.
        model_name: the `model` column.
        context: a larger sample table whose boxes also count as neighbours for the body-without-face
            crops (pass the full table when `samples` is a subset).
        out: resume folder: finished rows are appended there as part files (`part-*.parquet-part`) and
            rows already there (same model name, input kind and sample id, made by the same producer: see the
            module docstring) are not recomputed.
        flush_rows: with `out`, write a part once this many rows are waiting ...
        flush_seconds: ... or this many seconds after the last part.
        channels_last: run convolutions in channels-last layout (faster with cuDNN; compare on a CPU).
        restart: with `out`, discard finished rows of `model_name` made by another producer (other weights,
            preprocessing or numerics) instead of refusing to resume.

    Returns:
        The prediction table (`PREDICTION_COLUMNS`, validated), ordered by input kind then sample order,
        with `attrs["skipped"]` = {input kind: samples without any needed crop (no row)},
        `attrs["bad_images"]` = `BadImages.summary()` (images that cannot be loaded: their samples' rows are
        `failed`, without a prediction) and `attrs["n_samples"]`.

    Raises:
        InputError: a bad input kind, a missing column or image folder, an unreadable image; rows of `model_name`
            in `out` made by another producer (unless `restart`).
    """
    import torch

    from agegender.mivolo.preprocess import normalize_uint8

    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}", field="batch_size")
    kinds = list(dict.fromkeys(inputs))
    for kind in kinds:
        input_crops(kind, model.with_persons)
    if "sample_id" not in samples.columns:
        raise InputError("required column is missing from the sample table", field="sample_id")
    samples = samples.reset_index(drop=True)
    ids = samples["sample_id"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        raise InputError("duplicate sample_id in the sample table", field="sample_id")
    dev = resolve_device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(dev).eval().to(memory_format=layout)
    amp = dev.type == "cuda"
    size = int(model.spec.img_size)

    store = _PartStore(out) if out is not None else None
    producer, previous = "", _with_skipped(empty_predictions(), False)
    if store is not None:
        producer, previous = store.claim(model_name, producer_fingerprint(model, amp=amp), restart=restart)
    collected: list[pd.DataFrame] = [previous]
    pending: list[pd.DataFrame] = []
    last_flush = time.monotonic()
    bad = BadImages()

    def flush() -> None:
        nonlocal last_flush
        if store is not None and pending:
            store.write(pd.concat(pending, ignore_index=True), producer)
            pending.clear()
        last_flush = time.monotonic()

    def emit(frame: pd.DataFrame, *, resumable: bool = True) -> None:
        collected.append(frame)
        if store is None or not resumable:  # a failed row is not kept in the parts: a resumed run tries again
            return
        pending.append(frame)
        if sum(len(f) for f in pending) >= flush_rows or time.monotonic() - last_flush >= flush_seconds:
            flush()

    # Neighbours for masking come from every row of the table (and context), not only the rows still to do.
    neighbour_table = samples if context is None else pd.concat([samples, context], ignore_index=True)
    for kind in kinds:
        done = set(previous.loc[previous["input"] == kind, "sample_id"].astype(str))
        todo = samples[~samples["sample_id"].astype(str).isin(done)] if done else samples
        if not len(todo):
            continue
        todo = todo.reset_index(drop=True)
        todo_ids = todo["sample_id"].astype(str).tolist()
        dataset = CropDataset(todo, masked, image_roots, kind, size, model.with_persons, context=neighbour_table)
        bar = tqdm(total=len(todo), desc=f"{model_name} {kind}", unit="img", disable=not progress)
        buf_pos: list[int] = []
        buf_x: list[np.ndarray] = []

        def run(positions: list[int], pixels: np.ndarray, ids: list[str] = todo_ids, kind: str = kind) -> None:
            x = normalize_uint8(torch.as_tensor(pixels), device=dev).contiguous(memory_format=layout)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                outputs = model(x)
            emit(_rows([ids[p] for p in positions], kind, model_name, decode_outputs(model, outputs)))

        try:
            for kept, skipped, pixels, failed, error, path in _items(dataset, num_workers, pin_memory=amp):
                if failed:
                    failed_ids = [todo_ids[p] for p in failed]
                    bad.add(path, str(error), failed_ids)
                    emit(_rows(failed_ids, kind, model_name, None, status="failed"), resumable=False)
                    bar.update(len(failed))
                if skipped:
                    emit(_rows([todo_ids[p] for p in skipped], kind, model_name, None))
                    bar.update(len(skipped))
                if not kept:
                    continue
                buf_pos.extend(kept)
                buf_x.append(np.asarray(pixels))
                while len(buf_pos) >= batch_size:
                    stacked = np.concatenate(buf_x) if len(buf_x) > 1 else buf_x[0]
                    run(buf_pos[:batch_size], stacked[:batch_size])
                    bar.update(batch_size)
                    buf_pos, buf_x = buf_pos[batch_size:], [stacked[batch_size:]]
            if buf_pos:
                run(buf_pos, np.concatenate(buf_x))
                bar.update(len(buf_pos))
        finally:
            bar.close()
            flush()  # also on an interruption: what is finished is kept

    frames = [f for f in collected if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else _with_skipped(empty_predictions(), False)
    table = table[table["input"].isin(kinds) & table["sample_id"].isin(ids)]
    order = {sid: i for i, sid in enumerate(ids)}
    table = table.assign(
        _k=table["input"].map({k: i for i, k in enumerate(kinds)}), _s=table["sample_id"].map(order)
    ).sort_values(["_k", "_s"], kind="stable")
    skipped = table["skipped"].fillna(False).astype(bool)
    counts = {k: int((skipped & (table["input"] == k)).sum()) for k in kinds}
    result = validate_predictions(table[~skipped].drop(columns=["skipped", "_k", "_s"]))
    result.attrs["skipped"] = counts
    result.attrs["bad_images"] = bad.summary()
    result.attrs["n_samples"] = len(ids)
    if any(counts.values()):
        _log.info("%s: samples without any needed crop (no prediction): %s", model_name, counts)
    if bad.images:
        _log.warning("%s: %s", model_name, BadImages.describe(bad.summary(limit=3)))
    return result


def predict_checkpoint(
    checkpoint_path: str | Path,
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: ImageRoots,
    **kwargs: Any,
) -> pd.DataFrame:
    """Load a checkpoint (`agegender.mivolo.checkpoint.load_checkpoint`) and run `predict_samples`.

    Args:
        checkpoint_path: a MiVOLO checkpoint (official release or this project's training).
        samples: the sample table.
        masked: the masked-persons side table (or None).
        image_roots: folder or mapping data set -> folder.
        **kwargs: keyword arguments of `predict_samples` (`inputs`, `batch_size`, `device`, ...).

    Returns:
        The prediction table of `predict_samples`.
    """
    from agegender.mivolo.checkpoint import load_checkpoint

    device = resolve_device(kwargs.get("device"))
    kwargs["device"] = device
    model = load_checkpoint(checkpoint_path, device=device)
    return predict_samples(model, samples, masked, image_roots, **kwargs)


# ---------------------------------------------------------------------------------------------
# `agegender mivolo-predict`


def parse_data_roots(values: Sequence[str]) -> ImageRoots:
    """`--data-root` values -> `image_roots`: one plain folder, or `DATASET=FOLDER` entries.

    Args:
        values: command-line values.

    Returns:
        A folder, or a mapping data set -> folder.

    Raises:
        InputError: a mix of both forms, or several plain folders.
    """
    named = [v for v in values if "=" in v]
    plain = [v for v in values if "=" not in v]
    if named and plain or len(plain) > 1:
        raise InputError("give one folder, or DATASET=FOLDER for each data set", field="--data-root")
    if plain:
        return Path(plain[0])
    return {k: Path(v) for k, v in (item.split("=", 1) for item in named)}


def mivolo_predict_command(args: argparse.Namespace) -> int:
    """Run `agegender mivolo-predict` (arguments as in the report's parser code); returns the exit code.

    Finished rows go to `<out>.parts/` while it runs, so an interrupted run resumes; the folder is
    removed once `out` is written. Resuming over rows another checkpoint or other settings made is refused
    (exit 2, naming what differs) unless `--restart` discards them. Exit code 3 (after writing `out`, like
    `agegender query` with failed rows) when images could not be loaded: their rows are `failed`, and the
    images are named.
    """
    samples_path = Path(args.samples)
    samples = validate_samples(read_table(samples_path), source=samples_path)
    if getattr(args, "split", "all") not in (None, "all"):
        samples = samples[samples["split"] == args.split]
    masked = read_table(args.masked) if getattr(args, "masked", None) else None
    out = Path(args.out)
    parts = out.with_name(out.name + ".parts")
    table = predict_checkpoint(
        args.checkpoint,
        samples,
        masked,
        parse_data_roots(args.data_root),
        inputs=args.inputs,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        model_name=args.model_name,
        out=parts,
        progress=not getattr(args, "no_progress", False),
        restart=getattr(args, "restart", False),
    )
    write_table(table, out)
    shutil.rmtree(parts, ignore_errors=True)
    skipped = {k: v for k, v in table.attrs.get("skipped", {}).items() if v}
    note = f" (no crop, so unanswered: {', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else ""
    print(f"{len(table)} predictions -> {out}{note}")
    if table.attrs["bad_images"]["images"]:
        print(BadImages.describe(table.attrs["bad_images"]))
        return IncompleteRunError.exit_code
    return 0


def add_mivolo_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `agegender mivolo-predict --checkpoint CKPT --samples S --data-root R ... --out PRED`.

    This module imports no torch at import time, so registering costs the CLI little.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returned.

    Returns:
        The subcommand's parser (its `func` default runs `mivolo_predict_command`).
    """
    parser = subparsers.add_parser("mivolo-predict", help="predict a sample table with a MiVOLO checkpoint")
    parser.add_argument("--checkpoint", required=True, help="MiVOLO checkpoint (official release or trained here)")
    parser.add_argument("--samples", required=True, help="sample table (.parquet or .csv)")
    parser.add_argument(
        "--data-root", required=True, nargs="+", help="the image folder, or DATASET=FOLDER for each data set"
    )
    parser.add_argument("--masked", default=None, help="masked-persons side table (more boxes to black out)")
    parser.add_argument(
        "--inputs", nargs="+", default=["face_body"], choices=list(INPUT_CROPS), help="input kinds (default: face_body)"
    )
    parser.add_argument("--out", required=True, help="prediction table (.parquet or .csv); resumes from <out>.parts/")
    parser.add_argument("--model-name", default="mivolo", help="the `model` column (default: mivolo)")
    parser.add_argument("--split", default="all", help="predict only this split (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default=None, help="torch device: cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--num-workers", type=int, default=0, help="crop worker processes (default: 0, one thread)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard rows in <out>.parts/ that another checkpoint or other settings made (default: refuse to resume)",
    )
    parser.set_defaults(func=mivolo_predict_command)
    return parser
