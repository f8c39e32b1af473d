"""Image loading and the three crops every model sees: face, body, and body without faces.

Images are RGB uint8 arrays of shape (H, W, 3) everywhere. PIL decodes (and applies the EXIF
orientation, as OpenCV's `imread` does in the MiVOLO code, so boxes drawn on the displayed photo
fit); OpenCV is used only to resize. The rules follow FACTS.md "Eval preprocessing" and
"Body-without-face at inference".
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile
from tqdm.auto import tqdm

from agegender.data.schema import FACE_BOX, PERSON_BOX
from agegender.errors import InputError
from agegender.fingerprint import FileFacts, FileIdentity, file_identities

CROP_KINDS: tuple[str, ...] = ("face", "body", "body_wo_face")
#: input kind (`agegender.data.schema.INPUT_KINDS`) -> (crop kind a model sees as the face, crop kind it sees as the
#: body); None = no such crop. `face_body` is MiVOLO's official inference: the face and the body without faces.
INPUT_CROPS: dict[str, tuple[str | None, str | None]] = {
    "face_body": ("face", "body_wo_face"),
    "face": ("face", None),
    "body": (None, "body"),
    "body_wo_face": (None, "body_wo_face"),
}

# EXIF orientations 5-8 rotate by 90 degrees, so the displayed photo has width and height swapped.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

Box = Sequence[float] | np.ndarray


class ImageBoxes(NamedTuple):
    """All boxes of one image, used to mask neighbours out of a body crop.

    Attributes:
        faces: float array (N, 4), xyxy, every face box in the image (labelled and masked-only).
        persons: float array (M, 4), xyxy, every person box in the image, the cropped person's included.
    """

    faces: np.ndarray
    persons: np.ndarray


@dataclass
class BadImages:
    """Images a run could not load, and the samples on them: what a runner skips, counts and names.

    Handed to `iter_crops` (and the runners built on it), it turns an image that cannot be loaded from an error
    that ends the run into a note here, so one bad file among 67k costs its own samples, not the run: each of its
    samples yields no crop, and the runner marks it (status `failed`) and reports `summary()`.

    Attributes:
        images: image file -> why it cannot be loaded (the `InputError` message), in the order met.
        samples: sample id -> its image file.
    """

    images: dict[str, str] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)

    def add(self, path: str | Path, reason: str, sample_ids: Iterable[str]) -> None:
        """Record an image that cannot be loaded and the samples on it."""
        self.images.setdefault(str(path), reason)
        for sample_id in sample_ids:
            self.samples[str(sample_id)] = str(path)

    def update(self, other: BadImages) -> None:
        """Add what another collector recorded (e.g. one per input kind of a run)."""
        for path, reason in other.images.items():
            self.images.setdefault(path, reason)
        self.samples.update(other.samples)

    def summary(self, limit: int = 20) -> dict[str, Any]:
        """`{"images": n, "samples": n, "examples": {file: reason}}` for a manifest, the first `limit` files named."""
        examples = dict(list(self.images.items())[:limit])
        return {"images": len(self.images), "samples": len(self.samples), "examples": examples}

    @staticmethod
    def describe(summary: Mapping[str, Any]) -> str:
        """One line for people from a `summary()` (or summed ones): how many, and each named file with why."""
        examples = summary.get("examples", {})
        named = "; ".join(f"{path}: {reason}" for path, reason in examples.items())
        more = summary["images"] - len(examples)
        named += f"; and {more} more" if more > 0 else ""
        return f"{summary['samples']} samples marked failed: {summary['images']} images cannot be loaded ({named})"


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


#: what PIL raises for a file it cannot identify or decode (a decompression bomb included): turned into InputError
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _image_file(path: str | Path) -> Path:
    """The path, once it is known to be a non-empty file; else the InputError that says which of the two it is not."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image file not found", file=path)
    if path.stat().st_size == 0:  # say so plainly: PIL's "cannot identify image file" hides why
        raise InputError("image file is empty (0 bytes)", file=path)
    return path


def image_size(path: str | Path, *, decode: bool = False) -> tuple[int, int]:
    """Return (width, height) of an image as displayed, from its header; with `decode`, also prove it decodes.

    The EXIF orientation is honoured (a 90-degree rotation swaps width and height) so that the size
    matches the array `load_image` returns.

    `decode=True` is the check that an image `load_image` will take, at a fraction of its cost: a JPEG is
    decoded at 1/8 scale in grey (libjpeg still reads and Huffman-decodes every byte of the entropy-coded
    stream, so a truncated file or a corrupt stream fails exactly as in a full decode, but it skips most of the
    inverse DCT, the upsampling and the colour conversion: about half the time of a full decode); any other
    format is fully decoded.

    Args:
        path: the image file.
        decode: also decode the pixel data (cheaply, see above), not only the header.

    Returns:
        (width, height) in pixels.

    Raises:
        InputError: when the file is missing, is not an image PIL can identify, or (with `decode`) cannot be
            decoded to its end.
    """
    path = _image_file(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            if decode:
                if isinstance(img, JpegImageFile):
                    img.draft("L", (1, 1))  # the smallest scale libjpeg offers (1/8); grey where the file is YCbCr
                img.load()
    except _DECODE_ERRORS as exc:
        what = "decoded" if decode else "read"
        raise InputError(f"cannot be {what} as an image ({type(exc).__name__}: {exc})", file=path) from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return int(width), int(height)


#: the kind of `agegender.fingerprint.FileFacts` that `image_sizes` keeps: "this file decodes, and is W x H as
#: displayed". Bump the number when what `image_size(decode=True)` checks changes; a new Pillow may judge a file
#: otherwise, so its version is part of the kind too.
DECODE_FACTS = f"image-decode/1/pillow-{PIL.__version__}"
#: successes kept per write to the cache (an interrupted check keeps what it verified)
_RECORD_EVERY = 4096


def image_sizes(
    paths: Iterable[str | Path],
    *,
    decode: bool = False,
    workers: int | None = None,
    progress: bool = False,
    cache: bool = True,
) -> dict[Path, tuple[int, int] | InputError]:
    """`image_size` of many images at once, in threads, every failure kept rather than raised.

    With `decode`, an image already found to decode is not decoded again while it stays the same file: its size is
    kept in the cache of file facts (`agegender.fingerprint.FileFacts`, kind `DECODE_FACTS`), keyed by the file's
    identity (real path, device, inode, size, mtime, ctime: a rewrite in place or a copy is looked at afresh), so a
    re-check of an unchanged data set costs a `stat` and a lookup per image. Only successes are kept: a bad image is
    examined every time, and one mended is seen. The cache is best effort (an unwritable folder: all is decoded).

    Threads, not processes: PIL releases the GIL while it decodes, so they use every core, with no start-up, no
    pickling and no fork of a process that may hold other threads (a notebook kernel). The price, measured on 2
    idle cores (`benchmarks/bench_check_images.py`), is ~10 %: 0.74 against 0.66 ms per image for a 2-process
    forkserver pool, as the GIL is held while PIL parses a header; on the busy shared machine the pool was slower
    as often as not, and with the cache only a data set's first check pays it. Twice as many threads as cores lets
    some read while others wait for the disk.

    Args:
        paths: image files (duplicates are looked at once).
        decode: decode each image cheaply as well (`image_size(decode=True)`), not only its header.
        workers: threads (default: twice the usable CPU cores, at most 32).
        progress: show a tqdm bar (shown only once the work has taken over a second).
        cache: with `decode`, use and fill the cache of images known to decode (False: decode every image).

    Returns:
        path -> (width, height), or the `InputError` that names what is wrong with it; in the order given.
    """
    unique = list(dict.fromkeys(Path(p) for p in paths))
    if workers is None:
        workers = min(32, 2 * _usable_cpus())

    def one(path: Path) -> tuple[int, int] | InputError:
        try:
            return image_size(path, decode=decode)
        except InputError as exc:
            return exc

    found: dict[Path, tuple[int, int] | InputError] = {}
    facts = FileFacts(DECODE_FACTS) if decode and cache else None
    with tqdm(total=len(unique), desc="images", unit="img", disable=not progress, delay=1.0) as bar:
        if facts is None:
            for path, result in zip(unique, _ordered_map(one, unique, workers), strict=True):
                found[path] = result
                bar.update(1)
            return found
        with facts:
            read_from = time.time_ns()  # before any identity is taken: `FileIdentity.settled`
            identities = dict(zip(unique, file_identities(unique), strict=True))
            known = facts.lookup(i for i in identities.values() if i is not None)
            for path, identity in identities.items():
                size = _parse_size(known[identity]) if identity in known else None
                if size is not None:
                    found[path] = size
            bar.update(len(found))
            todo = [path for path in unique if path not in found]
            verified: list[tuple[FileIdentity, str]] = []
            failed: list[str] = []  # real paths: what was known of an earlier version of them is dropped
            try:
                for path, result in zip(todo, _ordered_map(one, todo, workers), strict=True):
                    found[path] = result
                    bar.update(1)
                    identity = identities[path]
                    if identity is None:
                        continue
                    if isinstance(result, InputError):
                        failed.append(identity.path)
                        continue
                    verified.append((identity, f"{result[0]}x{result[1]}"))
                    if len(verified) >= _RECORD_EVERY:
                        facts.record(verified, read_from_ns=read_from)
                        verified.clear()
            finally:  # what was verified is kept, also when the check is interrupted
                facts.record(verified, read_from_ns=read_from)
                facts.forget(failed)
    return {path: found[path] for path in unique}


def _parse_size(fact: str) -> tuple[int, int] | None:
    """(width, height) from a `DECODE_FACTS` fact ("640x480"); None for one that is not well-formed."""
    width, _, height = fact.partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        return None
    return size if min(size) > 0 else None


def _ordered_map(func: Callable[[Path], Any], items: Sequence[Path], workers: int) -> Iterator[Any]:
    """`map(func, items)` in a thread pool, in order, with at most a few items per thread queued at any time.

    `Executor.map` would queue every item at once (a future each, for 67k images) and, on an interruption, wait for
    all of them; here the queue stays short and what is queued is cancelled when the caller stops.
    """
    if workers <= 1 or len(items) < 2:
        yield from map(func, items)
        return
    window: deque[Future[Any]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="images")
    try:
        for item in items:
            window.append(pool.submit(func, item))
            if len(window) >= 4 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_image(path: str | Path) -> np.ndarray:
    """Load an image as an RGB uint8 array (H, W, 3), EXIF orientation applied.

    Args:
        path: the image file.

    Returns:
        The decoded image.

    Raises:
        InputError: naming the file when it is missing or cannot be decoded.
    """
    path = _image_file(path)
    try:
        with Image.open(path) as img:
            # exif_transpose copies even when there is nothing to turn: only call it when needed.
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
            return np.array(img, dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise InputError(f"cannot be decoded as an image ({type(exc).__name__}: {exc})", file=path) from exc


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even; half-up keeps 0.5 and 1.5 treated alike.
    return int(math.floor(value + 0.5))


def clamp_box(box: Box | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Round a box to whole pixels and clamp it to the image.

    Args:
        box: (x0, y0, x1, y1) in absolute pixels, or None.
        width: image width.
        height: image height.

    Returns:
        The integer box inside [0, width] x [0, height], or None when the box is None, has a
        missing (NaN) coordinate, or is empty after clamping.
    """
    if box is None:
        return None
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape[0] != 4 or not np.isfinite(values).all():
        return None
    x0, y0, x1, y1 = (_round_half_up(v) for v in values)
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def crop(image: np.ndarray, box: Box | None) -> np.ndarray | None:
    """Cut a box out of an image, clamped to the image and without margin.

    Args:
        image: RGB array (H, W, 3).
        box: (x0, y0, x1, y1) in absolute pixels, or None / NaN for a missing box.

    Returns:
        A new array (a copy, so callers may draw on it), or None when the box is missing or empty.
    """
    clamped = clamp_box(box, image.shape[1], image.shape[0])
    if clamped is None:
        return None
    x0, y0, x1, y1 = clamped
    return image[y0:y1, x0:x1].copy()


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to fit a size x size square keeping the aspect ratio, centred on black padding.

    The longer side becomes `size` (up- or down-scaling, bilinear); an odd padding puts the extra
    pixel at the bottom / right, as the official MiVOLO preprocessing does.

    Args:
        image: RGB array (H, W, 3) with H, W > 0.
        size: side of the output square.

    Returns:
        uint8 array (size, size, 3).
    """
    if size <= 0:
        raise ValueError(f"letterbox size must be positive, got {size}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("cannot letterbox an empty image")
    scale = min(size / height, size / width)
    # Python's round (half to even), as the official MiVOLO letterbox: a .5 size must match it bit for bit.
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = image
    return out


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each row of `boxes` (N, 4) with one `box` (4,)."""
    ix0 = np.maximum(boxes[:, 0], box[0])
    iy0 = np.maximum(boxes[:, 1], box[1])
    ix1 = np.minimum(boxes[:, 2], box[2])
    iy1 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _as_boxes(boxes: np.ndarray | Sequence[Box] | None) -> np.ndarray:
    if boxes is None:
        return _empty_boxes()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return _empty_boxes()
    arr = arr.reshape(-1, 4)
    return arr[np.isfinite(arr).all(axis=1)]


def body_without_face(
    image: np.ndarray,
    person_box: Box | None,
    face_boxes: np.ndarray | Sequence[Box] | None,
    person_boxes: np.ndarray | Sequence[Box] | None,
    *,
    min_size: int = 50,
    min_nonzero: float = 0.4,
    iou_threshold: float = 1e-6,
    extend_to_edge: float = 0.3,
) -> np.ndarray | None:
    """Crop a person and black out every face and every other person inside the crop.

    Faces (the person's own included) and other persons' boxes whose IoU with the crop exceeds
    `iou_threshold` are zeroed. Another person's box that comes closer than `extend_to_edge` times
    the crop's width (height) to a left/right (top/bottom) edge is extended to that edge, so a
    neighbour cut by the crop does not leave a sliver of them behind.

    Args:
        image: RGB array (H, W, 3).
        person_box: the person's box (x0, y0, x1, y1).
        face_boxes: (N, 4) every face box of the image (labelled and masked-only persons).
        person_boxes: (M, 4) every person box of the image; the person's own box is recognised by
            equal coordinates and not masked.
        min_size: the crop is dropped when its shorter side is below this many pixels.
        min_nonzero: the crop is dropped when less than this fraction of its pixels are non-black
            (any channel non-zero) after masking.
        iou_threshold: boxes with IoU above this with the crop are masked.
        extend_to_edge: fraction of the crop size within which another person's box is snapped to the edge.

    Returns:
        The masked crop, or None when there is no person box or a drop rule applies.
    """
    clamped = clamp_box(person_box, image.shape[1], image.shape[0])
    if clamped is None:
        return None
    cx0, cy0, cx1, cy1 = clamped
    crop_w, crop_h = cx1 - cx0, cy1 - cy0
    if min(crop_w, crop_h) < min_size:
        return None
    out = image[cy0:cy1, cx0:cx1].copy()
    crop_box = np.array(clamped, dtype=np.float64)

    def masked_regions(boxes: np.ndarray) -> np.ndarray:
        # Boxes that overlap the crop, in crop coordinates, clipped to it.
        if len(boxes) == 0:
            return boxes
        boxes = boxes[_iou(boxes, crop_box) > iou_threshold]
        rel = boxes - np.array([cx0, cy0, cx0, cy0], dtype=np.float64)
        rel[:, [0, 2]] = np.clip(rel[:, [0, 2]], 0, crop_w)
        rel[:, [1, 3]] = np.clip(rel[:, [1, 3]], 0, crop_h)
        return rel

    faces = masked_regions(_as_boxes(face_boxes))
    others = _as_boxes(person_boxes)
    own = np.asarray(person_box, dtype=np.float64).reshape(1, 4)
    others = masked_regions(others[~np.isclose(others, own).all(axis=1)])
    if len(others):
        dx, dy = extend_to_edge * crop_w, extend_to_edge * crop_h
        others[others[:, 0] < dx, 0] = 0
        others[others[:, 1] < dy, 1] = 0
        others[others[:, 2] > crop_w - dx, 2] = crop_w
        others[others[:, 3] > crop_h - dy, 3] = crop_h
    for x0, y0, x1, y1 in np.concatenate([faces, others]):
        # Cover every pixel the box touches: floor the start, ceil the end.
        out[int(math.floor(y0)) : int(math.ceil(y1)), int(math.floor(x0)) : int(math.ceil(x1))] = 0
    # Bitwise OR of the channels: several times faster than any(axis=2) on uint8 images.
    nonzero = np.count_nonzero(out[..., 0] | out[..., 1] | out[..., 2]) / (crop_w * crop_h)
    if nonzero < min_nonzero:
        return None
    return out


def _row_box(row: Mapping[str, Any] | pd.Series, cols: tuple[str, ...]) -> np.ndarray | None:
    values = []
    for col in cols:
        value = row.get(col) if hasattr(row, "get") else row[col]
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None
        values.append(float(value))
    return np.array(values, dtype=np.float64)


def _check_kind(kind: str) -> None:
    if kind not in CROP_KINDS:
        raise InputError(f"unknown crop kind {kind!r}; known: {list(CROP_KINDS)}", field="kind")


def _crop_boxes(
    image: np.ndarray, face: np.ndarray | None, person: np.ndarray | None, kind: str, neighbours: ImageBoxes | None
) -> np.ndarray | None:
    if kind == "face":
        return crop(image, face)
    if kind == "body":
        return crop(image, person)
    if neighbours is None:
        # Without the image's other boxes only the person's own face can be masked.
        neighbours = ImageBoxes(_as_boxes(face), _as_boxes(person))
    return body_without_face(image, person, neighbours.faces, neighbours.persons)


def crop_sample(
    image: np.ndarray, row: Mapping[str, Any] | pd.Series, kind: str, neighbours: ImageBoxes | None = None
) -> np.ndarray | None:
    """Make one crop of one sample-table row.

    Args:
        image: the sample's image, RGB (H, W, 3).
        row: a row with the sample table's box columns (`face_x0`.. and `person_x0`..; null = missing).
        kind: one of `CROP_KINDS`.
        neighbours: every face and person box of the image (needed for `body_wo_face`; when None
            only the row's own face is masked).

    Returns:
        The crop, or None when the box it needs is missing or a drop rule applies.
    """
    _check_kind(kind)
    return _crop_boxes(image, _row_box(row, FACE_BOX), _row_box(row, PERSON_BOX), kind, neighbours)


def _box_array(frame: pd.DataFrame, cols: tuple[str, ...]) -> np.ndarray:
    if len(frame) == 0:
        return _empty_boxes()
    if not set(cols) <= set(frame.columns):
        return np.full((len(frame), 4), np.nan)
    return frame[list(cols)].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def image_file(image_root: str | Path | Mapping[str, str | Path], dataset: str, image_path: str) -> Path | None:
    """The image file of a sample-table row, or None when `image_root` names no folder for its data set.

    Args:
        image_root: one folder for every data set, or data set -> folder.
        dataset: the row's data set.
        image_path: the row's image path, relative to its data set's folder.
    """
    if isinstance(image_root, Mapping):
        if dataset not in image_root:
            return None
        return Path(image_root[dataset]) / image_path
    return Path(image_root) / image_path


def _image_boxes(
    tables: list[pd.DataFrame], image_root: str | Path | Mapping[str, str | Path], wanted: set[Path]
) -> dict[Path, ImageBoxes]:
    """Group every face/person box of the given tables by image file.

    Keyed by file, not by data set name, so a subset (a new data set over the same images) still
    sees the boxes of its source data set and of the masked side table.
    """
    faces: dict[Path, list[np.ndarray]] = {}
    persons: dict[Path, list[np.ndarray]] = {}
    for table in tables:
        if table is None or len(table) == 0:
            continue
        face_arr, person_arr = _box_array(table, FACE_BOX), _box_array(table, PERSON_BOX)
        pairs = zip(table["dataset"].astype(str), table["image_path"].astype(str), strict=True)
        for i, (dataset, image_path) in enumerate(pairs):
            key = image_file(image_root, dataset, image_path)
            if key not in wanted:
                continue
            if np.isfinite(face_arr[i]).all():
                faces.setdefault(key, []).append(face_arr[i])
            if np.isfinite(person_arr[i]).all():
                persons.setdefault(key, []).append(person_arr[i])
    out = {}
    for key in wanted:
        f, p = faces.get(key), persons.get(key)
        # The context table usually repeats the samples being cropped; np.unique drops the copies.
        out[key] = ImageBoxes(
            np.unique(np.stack(f), axis=0) if f else _empty_boxes(),
            np.unique(np.stack(p), axis=0) if p else _empty_boxes(),
        )
    return out


def iter_crops(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_root: str | Path | Mapping[str, str | Path],
    kind: str,
    *,
    size: int | None = None,
    progress: bool = False,
    context: pd.DataFrame | None = None,
    bad_images: BadImages | None = None,
) -> Iterator[tuple[str, np.ndarray | None]]:
    """Yield (sample_id, crop) for every sample, in the samples' order, loading each image once.

    Rows are grouped by image file; crops of one image are made from a single decode. Images are
    visited in the order of their first sample, and crops wait in a buffer until every earlier sample
    has been yielded, so a table sorted by image (e.g. by sample_id) keeps the buffer to one image.
    For `body_wo_face` the neighbours of a person are every box, in `samples`, `context` and `masked`,
    whose row resolves to the same image file (rows of data sets missing from an `image_root`
    mapping are ignored there).

    Args:
        samples: a sample table (DESIGN.md): sample_id, dataset, image_path and the box columns.
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_root: the folder image paths are relative to, or a mapping dataset -> folder.
        kind: one of `CROP_KINDS`.
        size: letterbox every crop to size x size; None keeps the raw crop.
        progress: show a tqdm progress bar.
        context: a larger sample table whose boxes also count as neighbours for `body_wo_face`
            (pass the full table when `samples` is a subset, such as a NanoLAGENDA-style sample).
        bad_images: where given, an image that cannot be loaded (missing, truncated, not an image) does not
            raise: it is recorded there with its samples that have the box `kind` needs, and each of its samples
            yields None.

    Yields:
        (sample_id, crop), where crop is None when the sample has no box for this kind, a drop rule
        of `body_without_face` applies, or (with `bad_images`) its image cannot be loaded.

    Raises:
        InputError: for an unknown kind, a sample whose data set is missing from `image_root`, or (without
            `bad_images`) an image that cannot be loaded.
    """
    _check_kind(kind)
    for col in ("sample_id", "dataset", "image_path"):
        if col not in samples.columns:
            raise InputError("required column is missing from the sample table", field=col)
    ids = samples["sample_id"].astype(str).tolist()
    groups: dict[Path, list[int]] = {}
    pairs = zip(samples["dataset"].astype(str), samples["image_path"].astype(str), strict=True)
    for pos, (dataset, image_path) in enumerate(pairs):
        path = image_file(image_root, dataset, image_path)
        if path is None:
            raise InputError(
                f"no image folder given for data set {dataset!r}",
                row=f"{pos + 1} (sample_id {ids[pos]})",
                field="dataset",
            )
        groups.setdefault(path, []).append(pos)
    faces, persons = _box_array(samples, FACE_BOX), _box_array(samples, PERSON_BOX)
    neighbours: dict[Path, ImageBoxes] = {}
    if kind == "body_wo_face":
        tables = [samples] if context is None else [samples, context]
        if masked is not None:
            tables.append(masked)
        neighbours = _image_boxes(tables, image_root, set(groups))

    def finite_or_none(box: np.ndarray) -> np.ndarray | None:
        return box if np.isfinite(box).all() else None

    bar = tqdm(total=len(ids), desc=f"crops ({kind})", disable=not progress, unit="crop")
    pending: dict[int, np.ndarray | None] = {}
    next_pos = 0
    try:
        for path, positions in groups.items():
            try:
                image = load_image(path)
            except InputError as exc:
                if bad_images is None:
                    raise
                # Only samples with the box this kind needs lose their crop to the file; the others had none anyway.
                needed = faces if kind == "face" else persons
                hit = [ids[pos] for pos in positions if np.isfinite(needed[pos]).all()]
                if hit:
                    bad_images.add(path, exc.message, hit)
                pending.update(dict.fromkeys(positions))
            else:
                for pos in positions:
                    face, person = finite_or_none(faces[pos]), finite_or_none(persons[pos])
                    out = _crop_boxes(image, face, person, kind, neighbours.get(path))
                    if out is not None and size is not None:
                        out = letterbox(out, size)
                    pending[pos] = out
            while next_pos in pending:
                yield ids[next_pos], pending.pop(next_pos)
                next_pos += 1
                bar.update(1)
    finally:
        bar.close()
