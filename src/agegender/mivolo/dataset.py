"""A torch Dataset of MiVOLO training/evaluation inputs built from a sample table.

Each item is ``(x, age_target, gender_target)``: `x` is the model input ([3, S, S] face, or [6, S, S]
face then body, letterboxed and ImageNet-normalised by `agegender.mivolo.preprocess.to_tensor`), the age
target is the normalised integer age (NaN when unknown) and the gender target 0 male / 1 female / -1
unknown. The body input is the person crop with every face and every overlapping person blacked out,
made by `crops.body_without_face` with the rules of the MiVOLO training reader (FACTS.md: IoU >= 1e-4,
no edge extension, persons under 100 px dropped); they are fields of `CropRules`.

Crops are cut once per image and kept in memory as uint8 arrays (`cache=True`, the demo) or cut in the
DataLoader workers (`cache=False`, real data sets). Both modes give the same items: a crop is stored with
a margin of context around its box (`CropRules.margin`) so that box jitter can move inside it.

Training augmentations draw from a numpy Generator seeded by (seed, stage, epoch, sample index), so an
item depends only on those, never on the worker that made it or on what ran before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from agegender.data import crops
from agegender.data.schema import FACE_BOX, PERSON_BOX
from agegender.errors import InputError
from agegender.mivolo.preprocess import to_tensor

#: inputs a dataset can make: face+body (6 channels), or one of them with the other black.
INPUT_KINDS: tuple[str, ...] = ("face_body", "face", "body", "body_wo_face")

ImageRoot = str | Path | Mapping[str, str | Path]
#: a crop with context and the (x0, y0, x1, y1) of its box inside it, or None when the input is missing.
Source = tuple[np.ndarray, tuple[int, int, int, int]] | None


@dataclass(frozen=True)
class CropRules:
    """How crops are cut for training (defaults: the MiVOLO training reader, FACTS.md).

    Args:
        min_face_size: a face box whose shorter side is below this (pixels) counts as missing.
        min_person_size: a person box whose shorter side is below this counts as missing (the
            official reader uses 100; small images such as the demo's need less).
        min_person_nonzero: a masked body crop with less than this fraction of non-black pixels
            (inside its box) counts as missing.
        iou_threshold: faces and other persons whose IoU with the (context) crop exceeds this are masked.
        extend_to_edge: other persons near the crop edge are extended to it (0 = off, as in training).
        margin: context kept around each box, as a fraction of its width/height, for box jitter.
    """

    min_face_size: int = 5
    min_person_size: int = 100
    min_person_nonzero: float = 0.4
    iou_threshold: float = 1e-4
    extend_to_edge: float = 0.0
    margin: float = 0.0


@dataclass(frozen=True)
class Augment:
    """Training augmentations; probabilities are per sample.

    Args:
        flip_p: horizontal flip, the same for face and body.
        scale_jitter: box sides are scaled by a factor in [1 - s, 1 + s] about the box centre.
        translate_jitter: the box centre moves by up to this fraction of the box width/height.
        face_blur_p: probability of a Gaussian blur of the face crop (the paper, section 3.3: 0.05 in stage 1,
            "up to a 70% probability" in stage 2: `TrainConfig.face_blur_p1`, `face_blur_p2`).
        blur_sigma: blur sigma range as a fraction of the face crop's shorter side (ours: the paper gives no
            strength).
        drop_face_p: black out the face input (only when the body input exists; 6-channel inputs).
        drop_body_p: black out the body input (only when the face input exists; 6-channel inputs).
    """

    flip_p: float = 0.5
    scale_jitter: float = 0.1
    translate_jitter: float = 0.05
    face_blur_p: float = 0.05
    blur_sigma: tuple[float, float] = (0.02, 0.08)
    drop_face_p: float = 0.0
    drop_body_p: float = 0.0

    def margin(self) -> float:
        """Context (fraction of the box side) a cached crop needs so that any jittered box fits in it."""
        return self.scale_jitter / 2 + self.translate_jitter


def _expand(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    dx, dy = math.ceil(margin * (x1 - x0)), math.ceil(margin * (y1 - y0))
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def _inner(box: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1]


def face_source(image: np.ndarray, face_box: np.ndarray | None, rules: CropRules) -> Source:
    """Cut a face crop with context.

    Args:
        image: RGB uint8 (H, W, 3).
        face_box: (x0, y0, x1, y1) or None.
        rules: size rule and context margin.

    Returns:
        (crop with context, box inside it) or None when the face is missing or too small.
    """
    height, width = image.shape[:2]
    box = crops.clamp_box(face_box, width, height)
    if box is None or min(box[2] - box[0], box[3] - box[1]) < rules.min_face_size:
        return None
    outer = _expand(box, rules.margin, width, height)
    return image[outer[1] : outer[3], outer[0] : outer[2]].copy(), _inner(box, outer)


def body_source(
    image: np.ndarray,
    person_box: np.ndarray | None,
    neighbours: crops.ImageBoxes | None,
    rules: CropRules,
    *,
    masked: bool = True,
) -> Source:
    """Cut a body crop with context, faces and other persons blacked out (`masked`) by `crops.body_without_face`.

    The context crop is masked as a whole, so a neighbour that only touches the margin is masked too;
    the size and non-black rules are applied to the person's own box, as without a margin.

    Args:
        image: RGB uint8 (H, W, 3).
        person_box: (x0, y0, x1, y1) or None.
        neighbours: every face and person box of the image (None: only the person's own box is known).
        rules: masking and drop rules, context margin.
        masked: False gives the plain person crop (the `body` input kind).

    Returns:
        (crop with context, box inside it) or None when the person is missing or a drop rule applies.
    """
    height, width = image.shape[:2]
    box = crops.clamp_box(person_box, width, height)
    if box is None or min(box[2] - box[0], box[3] - box[1]) < rules.min_person_size:
        return None
    outer = _expand(box, rules.margin, width, height)
    inner = _inner(box, outer)
    if not masked:
        return image[outer[1] : outer[3], outer[0] : outer[2]].copy(), inner
    if neighbours is None:
        neighbours = crops.ImageBoxes(np.zeros((0, 4)), np.asarray(person_box, dtype=np.float64).reshape(1, 4))
    persons = np.asarray(neighbours.persons, dtype=np.float64).reshape(-1, 4)
    own = np.asarray(person_box, dtype=np.float64).reshape(1, 4)
    # body_without_face recognises the person's own box by its coordinates: give it the context box instead.
    persons = np.concatenate([persons[~np.isclose(persons, own).all(axis=1)], np.array([outer], dtype=np.float64)])
    out = crops.body_without_face(
        image,
        np.array(outer, dtype=np.float64),
        neighbours.faces,
        persons,
        min_size=0,
        min_nonzero=0.0,
        iou_threshold=rules.iou_threshold,
        extend_to_edge=rules.extend_to_edge,
    )
    if out is None:
        return None
    region = out[inner[1] : inner[3], inner[0] : inner[2]]
    lit = np.count_nonzero(region[..., 0] | region[..., 1] | region[..., 2])
    nonzero = lit / max(1, region.shape[0] * region.shape[1])
    if nonzero < rules.min_person_nonzero:
        return None
    return out, inner


def _cut(source: Source, rng: np.random.Generator | None, aug: Augment | None) -> np.ndarray | None:
    """The crop of a source's box, jittered inside its context when `rng` is given."""
    # Draw before looking at the source: the stream then has the same layout for every sample.
    s, tx, ty = rng.uniform(-1.0, 1.0, size=3) if rng is not None else (0.0, 0.0, 0.0)
    if source is None:
        return None
    image, (x0, y0, x1, y1) = source
    if rng is not None and aug is not None:
        w, h = x1 - x0, y1 - y0
        cx = (x0 + x1) / 2 + tx * aug.translate_jitter * w
        cy = (y0 + y1) / 2 + ty * aug.translate_jitter * h
        scale = 1.0 + s * aug.scale_jitter
        nx0, nx1 = round(cx - scale * w / 2), round(cx + scale * w / 2)
        ny0, ny1 = round(cy - scale * h / 2), round(cy + scale * h / 2)
        nx0, ny0 = max(0, nx0), max(0, ny0)
        nx1, ny1 = min(image.shape[1], nx1), min(image.shape[0], ny1)
        if nx1 - nx0 >= 2 and ny1 - ny0 >= 2:
            x0, y0, x1, y1 = nx0, ny0, nx1, ny1
    return image[y0:y1, x0:x1]


def _labels(samples: pd.DataFrame, age_range: tuple[float, float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    age = samples["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    # Integer targets as in the MiVOLO training reader (round half to even, as Python's round).
    age = np.round(age)
    if age_range is not None:
        lo, hi, avg = age_range
        age = (age - avg) / (hi - lo)
    gender = samples["gender"].astype("string")
    male = (gender == "male").fillna(False).to_numpy(dtype=bool)
    female = (gender == "female").fillna(False).to_numpy(dtype=bool)
    codes = np.where(male, 0, np.where(female, 1, -1)).astype(np.int64)
    return age.astype(np.float32), codes


class MiVOLODataset(Dataset):
    """MiVOLO inputs and targets for every row of a sample table.

    Args:
        samples: a sample table (schema.SAMPLE_COLUMNS); rows are kept in order.
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        size: input side S (the model's img_size).
        with_persons: 6 channels (face then body) when True, else 3 (face only).
        input_kind: one of `INPUT_KINDS`; for a face-only model only `face`. `body_wo_face` and `body`
            black out the face input (the masked and the plain person crop in the body channels).
        augment: training augmentations, or None for evaluation.
        rules: crop rules; with `augment` their margin is raised to what the jitter needs.
        age_range: (min, max, avg) for the age target; None leaves the target in (rounded) years.
        seed: root seed of the augmentations.
        stage: mixed into the augmentation seed, so that the two training stages see different draws.
        cache: cut every crop once now (True) or in `__getitem__` (False, for real data sets).
        context: a larger sample table whose boxes are also masked (pass the full table for a subset).
        progress: show a progress bar while caching.
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        masked: pd.DataFrame | None,
        image_roots: ImageRoot,
        *,
        size: int,
        with_persons: bool = True,
        input_kind: str = "face_body",
        augment: Augment | None = None,
        rules: CropRules | None = None,
        age_range: tuple[float, float, float] | None = None,
        seed: int = 0,
        stage: int = 0,
        cache: bool = True,
        context: pd.DataFrame | None = None,
        progress: bool = False,
    ) -> None:
        if input_kind not in INPUT_KINDS:
            raise InputError(f"unknown input kind {input_kind!r}; known: {list(INPUT_KINDS)}", field="input_kind")
        if not with_persons and input_kind != "face":
            raise InputError(f"a face-only model takes only the 'face' input, not {input_kind!r}", field="input_kind")
        for col in ("sample_id", "dataset", "image_path", "age", "gender", *FACE_BOX, *PERSON_BOX):
            if col not in samples.columns:
                raise InputError("required column is missing from the sample table", field=col)
        rules = rules or CropRules()
        if augment is not None and rules.margin < augment.margin():
            rules = CropRules(**{**rules.__dict__, "margin": augment.margin()})
        self.samples = samples.reset_index(drop=True)
        self.size, self.with_persons, self.input_kind = int(size), bool(with_persons), input_kind
        self.augment, self.rules, self.seed, self.stage = augment, rules, int(seed), int(stage)
        self.epoch = 0
        self.sample_ids = self.samples["sample_id"].astype(str).tolist()
        self.ages, self.genders = _labels(self.samples, age_range)
        self._faces = crops._box_array(self.samples, FACE_BOX)
        self._persons = crops._box_array(self.samples, PERSON_BOX)
        self._files: list[Path] = []
        pairs = zip(self.samples["dataset"].astype(str), self.samples["image_path"].astype(str), strict=True)
        for pos, (dataset, image_path) in enumerate(pairs):
            path = crops.image_file(image_roots, dataset, image_path)
            if path is None:
                raise InputError(
                    f"no image folder given for data set {dataset!r}",
                    row=f"{pos + 1} (sample_id {self.sample_ids[pos]})",
                    field="dataset",
                )
            self._files.append(path)
        self._neighbours: dict[Path, crops.ImageBoxes] = {}
        if self._needs_body:
            tables = [t for t in (self.samples, context, masked) if t is not None]
            self._neighbours = crops._image_boxes(tables, image_roots, set(self._files))
        self._cache: list[tuple[Source, Source]] | None = self._extract_all(progress) if cache else None

    @property
    def _needs_face(self) -> bool:
        return self.input_kind in ("face_body", "face")

    @property
    def _needs_body(self) -> bool:
        return self.with_persons and self.input_kind != "face"

    def __len__(self) -> int:
        return len(self.sample_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of an epoch (call before iterating; workers get a copy)."""
        self.epoch = int(epoch)

    def usable(self) -> np.ndarray:
        """Bool mask of the rows whose boxes give at least one of the inputs this dataset needs.

        Decided from the boxes and size rules only (not from the masked crop's non-black share), so it is
        the same with and without the crop cache.
        """

        def ok(boxes: np.ndarray, min_size: int) -> np.ndarray:
            finite = np.isfinite(boxes).all(axis=1)
            side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            return finite & (np.nan_to_num(side, nan=-1.0) >= min_size)

        mask = np.zeros(len(self), dtype=bool)
        if self._needs_face:
            mask |= ok(self._faces, self.rules.min_face_size)
        if self._needs_body:
            mask |= ok(self._persons, self.rules.min_person_size)
        return mask

    def _box(self, boxes: np.ndarray, i: int) -> np.ndarray | None:
        return boxes[i] if np.isfinite(boxes[i]).all() else None

    def _sources(self, image: np.ndarray, i: int) -> tuple[Source, Source]:
        face = face_source(image, self._box(self._faces, i), self.rules) if self._needs_face else None
        body = None
        if self._needs_body:
            body = body_source(
                image,
                self._box(self._persons, i),
                self._neighbours.get(self._files[i]),
                self.rules,
                masked=self.input_kind != "body",
            )
        return face, body

    def _extract_all(self, progress: bool) -> list[tuple[Source, Source]]:
        groups: dict[Path, list[int]] = {}
        for i, path in enumerate(self._files):
            groups.setdefault(path, []).append(i)
        out: list[tuple[Source, Source]] = [(None, None)] * len(self)
        with tqdm(total=len(self), desc="crops", unit="sample", disable=not progress) as bar:
            for path, rows in groups.items():
                image = crops.load_image(path)
                for i in rows:
                    out[i] = self._sources(image, i)
                bar.update(len(rows))
        return out

    def _rng(self, index: int) -> np.random.Generator | None:
        if self.augment is None:
            return None
        return np.random.default_rng([self.seed, self.stage, self.epoch, index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (input [C, S, S] float32, normalised age or NaN, gender 0/1/-1)."""
        if self._cache is not None:
            face_src, body_src = self._cache[index]
        else:
            face_src, body_src = self._sources(crops.load_image(self._files[index]), index)
        rng, aug = self._rng(index), self.augment
        face, body = _cut(face_src, rng, aug), _cut(body_src, rng, aug)
        if rng is not None and aug is not None:
            flip, blur, sigma, drop = rng.random(4)
            if flip < aug.flip_p:
                face = None if face is None else face[:, ::-1]
                body = None if body is None else body[:, ::-1]
            if face is not None and blur < aug.face_blur_p:
                lo, hi = aug.blur_sigma
                s = (lo + sigma * (hi - lo)) * min(face.shape[:2])
                face = cv2.GaussianBlur(np.ascontiguousarray(face), (0, 0), sigmaX=max(s, 0.3))
            if self.with_persons and face is not None and body is not None:
                # One draw decides both so that face and body are never dropped together.
                if drop < aug.drop_face_p:
                    face = None
                elif drop < aug.drop_face_p + aug.drop_body_p:
                    body = None
        if self.input_kind in ("body", "body_wo_face"):
            face = None
        parts = [to_tensor(None if face is None else np.ascontiguousarray(face), self.size)]
        if self.with_persons:
            parts.append(to_tensor(None if body is None else np.ascontiguousarray(body), self.size))
        x = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        return x, torch.tensor(self.ages[index]), torch.tensor(self.genders[index])

    def describe(self) -> dict[str, Any]:
        """Counts of the inputs this dataset can make (with the cache; box rules only without it)."""
        info: dict[str, Any] = {"samples": len(self), "usable": int(self.usable().sum())}
        if self._cache is not None:
            info["faces"] = sum(f is not None for f, _ in self._cache)
            info["bodies"] = sum(b is not None for _, b in self._cache)
        return info
