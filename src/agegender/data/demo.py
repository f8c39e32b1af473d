"""A demo data set the project generates itself: stylised people whose age and gender show in face and body.

No labelled photos of people can be fetched offline, so the demo profile draws its own. Every person has a
face and a body; age and gender are carried by noisy visual cues in both, the face cues stronger than the
body cues (as in the paper, body-only is worse than face+body):

- face: hair greyness (and dye), wrinkles, age spots, child proportions (big low-set eyes, round head),
  beard/stubble for adult males, long hair and lipstick/earrings more likely for females, glasses;
- body: head-to-body ratio and leg length (children), shoulder/hip widths (gender after puberty),
  middle-age waist, stoop and walking stick for the old, clothing palette and skirts (gender, noisy),
  bright colours for children, muted ones for the old, handbags.

Some people are turned away or hide their face (no face box), some are cut by the image border (person
box clipped) or have no person box, some images hold two labelled people (half of them overlapping, so
that masking matters) and some an unlabelled bystander that exists only to be masked (age and gender -1).

The set is written as PNG files plus annotation CSVs in the MiVOLO authors' format, so it goes through the
same reader as real data::

    root/images/<split>/<id>.png
    root/annotations/demo_<split>.csv
    root/annotations_adience/demoadience_test.csv     (test split with Adience class labels "25;32")
    root/demo_info.json                               (config and counts; marks the folder as demo data)

Everything is drawn from numpy Generators seeded per image (seed, split, image index), so a split does
not depend on the other splits' sizes and the same config gives byte-identical files.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from agegender.errors import InputError

#: the words every table and figure made from this set carries in its caption.
DEMO_CAPTION = "demo data"

SPLITS: tuple[str, ...] = ("train", "val", "test")
CSV_HEADER: tuple[str, ...] = (
    "img_name",
    "age",
    "gender",
    "face_x0",
    "face_y0",
    "face_x1",
    "face_y1",
    "person_x0",
    "person_y0",
    "person_x1",
    "person_y1",
)
#: Adience's eight age classes; ages in the gaps between them (3, 7, 13-14, ...) have no class.
ADIENCE_CLASSES: tuple[tuple[int, int], ...] = (
    (0, 2),
    (4, 6),
    (8, 12),
    (15, 20),
    (25, 32),
    (38, 43),
    (48, 53),
    (60, 100),
)
MAX_AGE = 95
INFO_FILE = "demo_info.json"
_OWN_ENTRIES = frozenset({"images", "annotations", "annotations_adience", INFO_FILE})
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_POOL_MIN_IMAGES = 100  # fewer images are drawn in this process: a process pool takes ~0.5 s to start


@dataclass(frozen=True)
class DemoConfig:
    """Size and make-up of the generated demo set.

    Args:
        n_train: labelled people in the train split.
        n_val: labelled people in the val split.
        n_test: labelled people in the test split.
        image_size: width and height of every (square) image, in pixels.
        seed: root seed; each image draws from its own Generator seeded with (seed, split, index).
        p_two_people: fraction of images with two labelled people.
        p_overlap: fraction of two-people images where the two overlap (so that masking matters).
        p_no_face: fraction of labelled people whose face is not visible (turned away or hidden).
        p_body_cut: fraction of labelled people whose body is cut by the image border.
        p_no_person_box: fraction of labelled people with a visible face but no person box.
        p_masked_bystander: fraction of images with an unlabelled bystander (age and gender -1).
    """

    n_train: int = 600
    n_val: int = 100
    n_test: int = 300
    image_size: int = 256
    seed: int = 1234
    p_two_people: float = 0.25
    p_overlap: float = 0.5
    p_no_face: float = 0.05
    p_body_cut: float = 0.08
    p_no_person_box: float = 0.03
    p_masked_bystander: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_"):
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                    raise ValueError(f"demo setting {f.name!r} must be a number in [0, 1], got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"demo setting {f.name!r} must be an integer, got {value!r}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"demo setting {name!r} must be >= 0, got {getattr(self, name)}")
        if not 64 <= self.image_size <= 4096:
            raise ValueError(f"demo setting 'image_size' must be in [64, 4096], got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"demo setting 'seed' must be >= 0, got {self.seed}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DemoConfig:
        """Build a config from a mapping (e.g. the `demo` section of params.yaml, minus its `root`).

        Args:
            d: setting name -> value; missing settings keep their defaults.

        Returns:
            The validated config.

        Raises:
            ValueError: for an unknown key (a typo would otherwise be ignored) or a bad value.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown demo setting(s) {unknown}; known settings are {known}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict (the inverse of `from_dict`)."""
        return asdict(self)

    def n_people(self, split: str) -> int:
        """Return the number of labelled people configured for `split` (train, val or test)."""
        if split not in _SPLIT_CODE:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return int(getattr(self, f"n_{split}"))


def adience_class(age: int) -> str | None:
    """Return the Adience class label ("25;32") holding `age`, or None for an age in a gap between classes.

    Args:
        age: age in whole years.

    Returns:
        The label "a;b" of the class with a <= age <= b, or None.
    """
    for lo, hi in ADIENCE_CLASSES:
        if lo <= age <= hi:
            return f"{lo};{hi}"
    return None


# ----------------------------------------------------------------------------------------------------------
# Colours and per-person appearance


Color = tuple[int, int, int]

_SKIN: tuple[Color, ...] = (
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 125),
    (198, 140, 90),
    (150, 98, 60),
    (100, 66, 46),
)
_HAIR: tuple[Color, ...] = ((28, 24, 22), (60, 40, 28), (95, 64, 40), (140, 100, 60), (205, 170, 110), (150, 70, 35))
_HAIR_P = np.array([0.3, 0.25, 0.18, 0.1, 0.1, 0.07])
_GREY_HAIR: Color = (178, 178, 182)
_WHITE_HAIR: Color = (236, 236, 232)
# Clothing palettes: the gender palettes overlap on purpose (navy, teal, white, beige) so colour is a weak cue.
_MALE_CLOTHES: tuple[Color, ...] = (
    (40, 60, 110), (70, 90, 130), (90, 90, 95), (50, 50, 55), (60, 90, 60), (110, 80, 50), (30, 110, 140),
    (150, 150, 150), (20, 40, 70), (220, 220, 215),
)  # fmt: skip
_FEMALE_CLOTHES: tuple[Color, ...] = (
    (200, 40, 70), (230, 120, 160), (150, 60, 150), (240, 180, 200), (180, 30, 40), (250, 200, 80),
    (120, 40, 90), (30, 110, 140), (220, 220, 215), (40, 60, 110),
)  # fmt: skip
_KID_CLOTHES: tuple[Color, ...] = (
    (255, 60, 40),
    (40, 120, 255),
    (255, 210, 0),
    (60, 200, 80),
    (255, 120, 0),
    (0, 190, 200),
)
_OLD_CLOTHES: tuple[Color, ...] = (
    (150, 130, 100),
    (110, 100, 90),
    (170, 160, 140),
    (90, 80, 70),
    (120, 120, 125),
    (80, 70, 90),
)
_BACKGROUNDS: tuple[tuple[Color, Color], ...] = (  # (upper part, floor)
    ((200, 205, 210), (120, 110, 100)),
    ((225, 215, 195), (150, 120, 90)),
    ((170, 200, 230), (100, 140, 80)),
    ((160, 190, 220), (130, 130, 130)),
    ((215, 210, 225), (90, 90, 100)),
    ((190, 210, 185), (110, 95, 70)),
)


def _mix(a: Color, b: Color, t: float) -> Color:
    t = min(max(t, 0.0), 1.0)
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _shade(c: Color, f: float) -> Color:
    return (min(255, round(c[0] * f)), min(255, round(c[1] * f)), min(255, round(c[2] * f)))


def _pick(rng: np.random.Generator, palette: tuple[Color, ...]) -> Color:
    return palette[int(rng.integers(len(palette)))]


def _ramp(x: float, x0: float, x1: float) -> float:
    """0 below x0, 1 above x1, linear between."""
    return float(min(max((x - x0) / (x1 - x0), 0.0), 1.0))


@dataclass
class _Look:
    """Every random choice about one person; the geometry is built from it deterministically."""

    age: int
    gender: str  # "M" / "F"
    view: str = "front"  # front, back (turned away), hidden (face covered by an object)
    stature: float = 1.7
    heads: float = 6.0
    head_aspect: float = 0.8
    head_dx: float = 0.0
    shoulder: float = 0.22
    hip: float = 0.19
    waist: float = 0.18
    leg_frac: float = 0.47
    arm_len: float = 0.4
    arms: tuple[float, float, float, float] = (0.2, 0.1, 0.2, 0.1)
    leg_spread: float = 0.03
    stoop: float = 0.0
    stick: bool = False
    stick_side: int = 1
    skin: Color = (224, 172, 125)
    hair: Color = (60, 40, 28)
    brow: Color = (60, 40, 28)
    long_hair: bool = False
    hair_len: float = 1.0
    bald: float = 0.0
    eye_pos: float = 0.47
    eye_size: float = 0.07
    iris: Color = (70, 45, 30)
    brow_w: float = 0.05
    wrinkles: list[tuple[float, float, float, float]] = field(default_factory=list)
    spots: list[tuple[float, float]] = field(default_factory=list)
    stubble: list[tuple[float, float]] = field(default_factory=list)
    beard: bool = False
    moustache: bool = False
    lipstick: bool = False
    earrings: bool = False
    glasses: bool = False
    cheeks: bool = False
    top: Color = (90, 90, 95)
    bottom: Color = (40, 60, 110)
    shoes: Color = (30, 30, 30)
    skirt: bool = False
    shorts: bool = False
    bag: Color | None = None
    occluder: Color = (240, 240, 240)


def _sample_age(rng: np.random.Generator) -> int:
    # Uniform over 0..89, a thinner tail 90..95: every 5-year group is populated, the oldest less so.
    if rng.random() < 0.04:
        return int(rng.integers(90, MAX_AGE + 1))
    return int(rng.integers(0, 90))


def _stature(age: float, gender: str) -> float:
    ages = [0, 1, 3, 6, 10, 13, 16, 20, 60, 95]
    male = [0.55, 0.75, 0.95, 1.16, 1.38, 1.56, 1.72, 1.77, 1.75, 1.67]
    female = [0.54, 0.74, 0.94, 1.15, 1.38, 1.56, 1.62, 1.63, 1.61, 1.54]
    return float(np.interp(age, ages, male if gender == "M" else female))


def _clothes(rng: np.random.Generator, age: int, gender: str) -> Color:
    if age < 10 and rng.random() < 0.6:
        return _pick(rng, _KID_CLOTHES)
    if age >= 65 and rng.random() < 0.5:
        return _pick(rng, _OLD_CLOTHES)
    own = rng.random() < 0.72  # the rest dress from the other palette: colour is a noisy cue
    male = (gender == "M") == own
    return _pick(rng, _MALE_CLOTHES if male else _FEMALE_CLOTHES)


def _sample_look(rng: np.random.Generator, age: int, gender: str, view: str) -> _Look:
    """Draw the appearance of a person of the given age and gender; all cues are graded and noisy."""
    male = gender == "M"
    grown = _ramp(age, 0, 16)  # 0 for a newborn, 1 from 16 on: child proportions
    puberty = _ramp(age, 10, 18)  # gender differences in the body appear with puberty
    look = _Look(age=age, gender=gender, view=view)
    look.stature = _stature(age, gender) * float(rng.normal(1.0, 0.04))
    look.heads = float(np.interp(age, [0, 2, 6, 12, 17, 25], [3.5, 3.9, 4.6, 5.3, 5.8, 6.1])) + float(
        rng.normal(0, 0.22)
    )
    look.head_aspect = 0.89 - 0.09 * grown + float(rng.normal(0, 0.025))
    look.head_dx = float(rng.normal(0, 0.04))
    look.shoulder = 0.215 + puberty * (0.035 if male else -0.005) + float(rng.normal(0, 0.014))
    look.hip = 0.19 + puberty * (-0.01 if male else 0.03) + float(rng.normal(0, 0.012))
    spread = _ramp(age, 30, 55) * (1.0 - _ramp(age, 75, 90)) * float(rng.uniform(0.0, 0.05))
    look.waist = min(look.shoulder, look.hip) * float(rng.uniform(0.85, 0.98)) + spread
    look.leg_frac = float(np.interp(age, [0, 2, 6, 12, 18], [0.33, 0.37, 0.42, 0.46, 0.47])) + float(
        rng.normal(0, 0.012)
    )
    look.arm_len = float(np.interp(age, [0, 6, 18], [0.34, 0.38, 0.41]))
    raised = rng.random() < 0.08
    look.arms = (
        float(rng.uniform(0.05, 0.45)),
        float(rng.uniform(-0.2, 0.35)),
        float(rng.uniform(2.2, 2.8)) if raised else float(rng.uniform(0.05, 0.45)),
        float(rng.uniform(-0.2, 0.35)),
    )
    look.leg_spread = float(rng.uniform(0.0, 0.07))
    old = _ramp(age, 62, 90)
    look.stoop = old * float(rng.uniform(0.0, 1.0)) if rng.random() < 0.75 else 0.0
    look.stick = age >= 68 and rng.random() < 0.15 + 0.4 * old
    look.stick_side = 1 if rng.random() < 0.5 else -1
    if look.stick:
        look.arms = (look.arms[0], look.arms[1], 0.12, -0.05) if look.stick_side > 0 else (0.12, -0.05, *look.arms[2:])

    # Skin: the tone is independent of age and gender; pallor, cheeks and spots are graded by age.
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    look.skin = _mix(skin, (200, 200, 200), 0.12 * old * float(rng.uniform(0.5, 1.5)))
    look.cheeks = age < 10 and rng.random() < 0.75
    n_spots = int(rng.poisson(4 * old)) if age > 55 else 0
    look.spots = [(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.3, 0.8))) for _ in range(n_spots)]

    # Hair: greys with an onset that varies by person; some dye it (no cue is perfect).
    base = _HAIR[int(rng.choice(len(_HAIR), p=_HAIR_P))]
    onset = float(rng.normal(47, 8))
    grey = _ramp(age, onset, onset + 28)
    if age > 45 and rng.random() < 0.12:
        grey *= 0.2
    hair = _mix(base, _GREY_HAIR, min(1.0, 2 * grey))
    look.hair = _mix(hair, _WHITE_HAIR, max(0.0, 2 * grey - 1))
    look.brow = _mix(base, _GREY_HAIR, 0.7 * grey)
    look.long_hair = age >= 3 and rng.random() < (0.8 if not male else 0.08)
    look.hair_len = float(rng.uniform(0.6, 1.4))
    if male and age > 25 and rng.random() < 0.55 * _ramp(age, 25, 75):
        look.bald = float(rng.uniform(0.5, 1.0))
    if age < 2:
        look.bald = max(look.bald, float(rng.uniform(0.3, 0.9)))  # babies have little hair

    # Face proportions: children have big, low-set eyes.
    look.eye_pos = 0.58 - 0.1 * grown + float(rng.normal(0, 0.02))
    look.eye_size = 0.115 - 0.045 * grown + float(rng.normal(0, 0.008))
    look.iris = _pick(rng, ((70, 45, 30), (40, 30, 25), (60, 110, 160), (80, 120, 70)))
    look.brow_w = (0.07 if male else 0.045) * (0.6 + 0.4 * grown) * float(rng.uniform(0.8, 1.25))
    # Wrinkles: forehead lines, crow's feet and smile lines, more and darker with age.
    n_wrinkles = min(9, int(rng.poisson(max(0.0, (age - 26) / 7.5)))) if age > 26 else 0
    kinds = rng.integers(0, 3, n_wrinkles)
    look.wrinkles = [
        (float(k), float(rng.uniform(0, 1)), float(rng.uniform(0, 1)), 0.4 + 0.6 * _ramp(age, 30, 80)) for k in kinds
    ]

    # Facial hair for adult males (a few women get dark down, as noise).
    if male and age >= 15:
        adult = _ramp(age, 15, 30)
        look.beard = rng.random() < 0.35 * adult
        look.moustache = look.beard or rng.random() < 0.15 * adult
        if not look.beard and rng.random() < 0.45 * adult:
            density = float(rng.uniform(30, 80))
            look.stubble = [
                (float(rng.uniform(0.18, 0.82)), float(rng.uniform(0.66, 0.97))) for _ in range(int(density))
            ]
    elif not male and age >= 40 and rng.random() < 0.03:
        look.moustache = True
    look.lipstick = (not male and 15 <= age <= 80 and rng.random() < 0.4) or (male and rng.random() < 0.01)
    look.earrings = (not male and age >= 6 and rng.random() < 0.35) or (male and age >= 15 and rng.random() < 0.05)
    look.glasses = rng.random() < 0.05 + 0.55 * _ramp(age, 40, 80)

    # Clothes.
    look.top = _clothes(rng, age, gender)
    look.bottom = (
        _clothes(rng, age, gender) if rng.random() < 0.5 else _pick(rng, ((40, 60, 110), (50, 50, 55), (110, 100, 90)))
    )
    look.skirt = age >= 3 and rng.random() < (0.45 if not male else 0.02)
    look.shorts = not look.skirt and rng.random() < (0.35 if age < 12 else 0.12)
    look.shoes = _pick(rng, ((30, 30, 30), (80, 50, 30), (230, 230, 230), (120, 30, 30)))
    if age >= 14 and rng.random() < (0.3 if not male else 0.07):
        look.bag = _pick(rng, ((120, 60, 30), (30, 30, 30), (180, 30, 60), (200, 170, 120)))
    look.occluder = _pick(rng, ((240, 240, 240), (40, 40, 40), (200, 60, 60), (60, 100, 200)))
    return look


# ----------------------------------------------------------------------------------------------------------
# Geometry: a person is a list of drawing operations in local coordinates (feet centre at the origin)


@dataclass
class _Op:
    kind: str  # ellipse, polygon, line, pieslice, chord, rectangle
    xy: np.ndarray  # (k, 2) points; boxes are two points
    fill: Color | None
    width: int = 0
    outline: Color | None = None
    angles: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Figure:
    ops: list[_Op]
    face: np.ndarray  # (2, 2): the face box (hair top to chin), local coordinates
    head_box: np.ndarray  # (2, 2)

    _extent: np.ndarray | None = None

    def extent(self) -> np.ndarray:
        """Bounding box (x0, y0, x1, y1) of everything drawn, line widths included."""
        if self._extent is None:
            pts = np.concatenate([op.xy for op in self.ops])
            pad = np.concatenate([np.full(len(op.xy), op.width / 2 if op.kind == "line" else 0.0) for op in self.ops])
            lo = (pts - pad[:, None]).min(axis=0)
            hi = (pts + pad[:, None]).max(axis=0)
            self._extent = np.concatenate([lo, hi])
        return self._extent.copy()


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]], dtype=float)


def _build(look: _Look, height: float) -> _Figure:
    """Lay out one person `height` pixels tall (head top to soles) with the feet centred at (0, 0)."""
    H = height
    ops: list[_Op] = []

    def add(kind: str, pts: Any, fill: Color | None, width: int = 0, **kw: Any) -> None:
        ops.append(_Op(kind, np.asarray(pts, dtype=float).reshape(-1, 2), fill, width, **kw))

    head_h = H / look.heads
    head_w = head_h * look.head_aspect
    drop = look.stoop * 0.3 * head_h  # the old stoop: the head sinks towards the shoulders and leans forward
    hx = look.head_dx * head_w + look.stoop * 0.12 * head_w
    top = -H + drop
    hx0, hy0, hx1, hy1 = hx - head_w / 2, top, hx + head_w / 2, top + head_h
    sh_y = hy1 + 0.12 * head_h - 0.5 * drop
    hip_y = -look.leg_frac * H
    sw, hw, ww = look.shoulder * H * (1 - 0.1 * look.stoop), look.hip * H, look.waist * H
    waist_y = sh_y + 0.62 * (hip_y - sh_y)
    limb = max(2.0, 0.062 * H * (0.85 if look.gender == "F" else 1.0) * (1.15 if look.age < 6 else 1.0))
    lw = int(round(limb))

    # Long hair hangs behind the head and shoulders.
    if look.long_hair:
        length = head_h * (0.5 + 0.9 * look.hair_len)
        add("polygon", [(hx0 - 0.08 * head_w, hy0 + 0.35 * head_h), (hx1 + 0.08 * head_w, hy0 + 0.35 * head_h),
                        (hx1 + 0.12 * head_w, hy1 + length - head_h), (hx0 - 0.12 * head_w, hy1 + length - head_h)],
            look.hair)  # fmt: skip
        add("ellipse", _box(hx0 - 0.1 * head_w, hy0 - 0.06 * head_h, hx1 + 0.1 * head_w, hy0 + 0.8 * head_h), look.hair)

    # Legs (skin under skirts and shorts), shoes.
    knee_y = hip_y * 0.5
    leg_color = look.bottom if not (look.skirt or look.shorts) else look.skin
    foot_x = hw / 4 + look.leg_spread * H
    for side in (-1, 1):
        add("line", [(side * hw / 4, hip_y), (side * foot_x, -0.02 * H)], leg_color, lw + 1)
        if look.shorts:
            add(
                "line",
                [(side * hw / 4, hip_y), (side * (hw / 4 + (foot_x - hw / 4) * 0.4), knee_y)],
                look.bottom,
                lw + 2,
            )
        add("ellipse", _box(side * foot_x - 0.045 * H, -0.035 * H, side * foot_x + 0.045 * H, 0.0), look.shoes)
    if not (look.skirt or look.shorts):
        add("polygon", [(-hw / 2, hip_y), (hw / 2, hip_y), (hw / 4 + lw / 2, hip_y + 0.1 * H),
                        (-hw / 4 - lw / 2, hip_y + 0.1 * H)], look.bottom)  # fmt: skip

    # Torso (a dress continues into a skirt), arms, hands.
    sd = 0.22 * head_h
    add("polygon", [(-0.3 * sw, sh_y), (0.3 * sw, sh_y), (sw / 2, sh_y + sd), (ww / 2, waist_y), (hw / 2, hip_y),
                    (-hw / 2, hip_y), (-ww / 2, waist_y), (-sw / 2, sh_y + sd)], look.top)  # fmt: skip
    if look.skirt:
        hem = hip_y + (0.35 + 0.25 * look.hair_len / 1.4) * (-hip_y)
        add("polygon", [(-hw / 2, hip_y - 0.04 * H), (hw / 2, hip_y - 0.04 * H), (hw * 0.8, hem), (-hw * 0.8, hem)],
            look.bottom if look.bottom != look.top else _shade(look.top, 0.8))  # fmt: skip
    hands = []
    for side, (upper, fore) in ((-1, look.arms[:2]), (1, look.arms[2:])):
        jx, jy = side * (sw / 2 - lw / 2), sh_y + sd
        ex, ey = jx + side * math.sin(upper) * look.arm_len * H * 0.5, jy + math.cos(upper) * look.arm_len * H * 0.5
        ang = upper + fore
        hx_, hy_ = ex + side * math.sin(ang) * look.arm_len * H * 0.5, ey + math.cos(ang) * look.arm_len * H * 0.5
        add("line", [(jx, jy), (ex, ey), (hx_, hy_)], look.top, lw)
        add("ellipse", _box(jx - lw / 2, jy - lw / 2, jx + lw / 2, jy + lw / 2), look.top)
        add("ellipse", _box(hx_ - 0.55 * lw, hy_ - 0.55 * lw, hx_ + 0.55 * lw, hy_ + 0.55 * lw), look.skin)
        hands.append((hx_, hy_))
    if look.stick:
        sx, sy = hands[0 if look.stick_side < 0 else 1]
        add("line", [(sx, sy - 0.02 * H), (sx + look.stick_side * 0.03 * H, 0.0)], (90, 60, 30), max(2, int(0.018 * H)))
        add(
            "line",
            [(sx - 0.025 * H, sy - 0.02 * H), (sx + 0.025 * H, sy - 0.02 * H)],
            (90, 60, 30),
            max(2, int(0.015 * H)),
        )
    if look.bag is not None:
        bx = sw / 2 + lw
        add("line", [(0.25 * sw, sh_y), (bx, hip_y - 0.02 * H)], _shade(look.bag, 0.7), max(1, int(0.008 * H)))
        add("rectangle", _box(bx - 0.05 * H, hip_y - 0.04 * H, bx + 0.05 * H, hip_y + 0.04 * H), look.bag)

    # Neck and head.
    add("rectangle", _box(hx - 0.17 * head_w, hy1 - 0.15 * head_h, hx + 0.17 * head_w, sh_y + 0.05 * head_h), look.skin)
    ear_y0, ear_y1 = hy0 + 0.4 * head_h, hy0 + 0.62 * head_h
    add("ellipse", _box(hx0 - 0.07 * head_w, ear_y0, hx0 + 0.1 * head_w, ear_y1), look.skin)
    add("ellipse", _box(hx1 - 0.1 * head_w, ear_y0, hx1 + 0.07 * head_w, ear_y1), look.skin)
    hair_top = hy0 - 0.06 * head_h if look.bald < 0.5 and look.view != "back" else hy0  # the cap's top
    face = _box(hx0, hair_top, hx1, hy1)
    head_box = _box(hx0, hy0, hx1, hy1)
    if look.view == "back":
        # Seen from behind: the whole head is hair (skin where bald), still showing greyness and length.
        add("ellipse", head_box, look.hair if look.bald < 0.5 else look.skin)
        if look.bald >= 0.5:
            add("chord", _box(hx0, hy0, hx1, hy1), look.hair, angles=(20.0, 160.0))
        return _Figure(ops, face, head_box)

    add("ellipse", head_box, look.skin)
    _face_features(add, look, hx0, hy0, hx1, hy1)
    if look.view == "hidden":
        # Something held in front of the face (a sign, a camera, a hand fan): the face is not visible.
        pad = 0.12 * head_w
        add("rectangle", _box(hx0 - pad, hy0 + 0.15 * head_h, hx1 + pad, hy1 + 0.1 * head_h), look.occluder,
            outline=_shade(look.occluder, 0.6), width=1)  # fmt: skip
    return _Figure(ops, face, head_box)


def _face_features(add: Any, look: _Look, x0: float, y0: float, x1: float, y1: float) -> None:
    """Draw hair cap, eyes, brows, nose, mouth, wrinkles, beard, glasses... on the head box."""
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2

    def at(u: float, v: float) -> tuple[float, float]:
        return (x0 + u * w, y0 + v * h)

    line = max(1, int(round(w * 0.04)))
    # Hair cap; baldness leaves only a fringe above the ears.
    if look.bald < 0.5:
        cap_bottom = y0 + h * (0.62 + 0.08 * look.bald)
        add("pieslice", _box(x0 - 0.05 * w, y0 - 0.06 * h, x1 + 0.05 * w, cap_bottom), look.hair, angles=(180.0, 360.0))
        if look.bald > 0:
            add(
                "ellipse",
                _box(cx - 0.3 * w * look.bald, y0 + 0.02 * h, cx + 0.3 * w * look.bald, y0 + 0.25 * h),
                look.skin,
            )
    else:
        for side in (-1, 1):
            ex = cx + side * 0.45 * w
            add("ellipse", _box(ex - 0.1 * w, y0 + 0.25 * h, ex + 0.1 * w, y0 + 0.48 * h), look.hair)
    if look.cheeks:
        for u in (0.25, 0.75):
            cx_, cy_ = at(u, 0.72)
            add("ellipse", _box(cx_ - 0.08 * w, cy_ - 0.05 * h, cx_ + 0.08 * w, cy_ + 0.05 * h), (240, 150, 150))
    for u, v in look.spots:
        px, py = at(u, v)
        add("ellipse", _box(px - 0.025 * w, py - 0.02 * h, px + 0.025 * w, py + 0.02 * h), _shade(look.skin, 0.75))
    # Wrinkles: kind 0 forehead line, 1 crow's foot, 2 smile line; darker with age.
    wrinkle = _shade(look.skin, 1.0 - 0.35 * max(p[3] for p in look.wrinkles)) if look.wrinkles else look.skin
    for kind, a, b, _ in look.wrinkles:
        if kind == 0:
            yy = y0 + h * (0.27 + 0.1 * b)
            add("line", [(x0 + w * (0.25 + 0.1 * a), yy), (x1 - w * (0.25 + 0.1 * (1 - a)), yy)], wrinkle, 1)
        elif kind == 1:
            side = 1 if a > 0.5 else -1
            px, py = cx + side * 0.37 * w, y0 + h * (look.eye_pos + 0.03 * (b - 0.5))
            add("line", [(px, py), (px + side * 0.1 * w, py + h * 0.06 * (b - 0.5))], wrinkle, 1)
        else:
            side = 1 if a > 0.5 else -1
            px, py = cx + side * 0.17 * w, y0 + h * 0.68
            add("line", [(px, py), (px + side * 0.05 * w, py + h * 0.14)], wrinkle, 1)
    # Eyes and brows.
    er = look.eye_size * w
    ey = y0 + look.eye_pos * h
    for side in (-1, 1):
        ex = cx + side * 0.2 * w
        add("ellipse", _box(ex - 1.3 * er, ey - er, ex + 1.3 * er, ey + er), (250, 250, 250))
        add("ellipse", _box(ex - 0.65 * er, ey - 0.65 * er, ex + 0.65 * er, ey + 0.65 * er), look.iris)
        by = ey - er - 0.05 * h
        add(
            "line",
            [(ex - 1.4 * er, by + 0.01 * h), (ex + 1.4 * er, by)],
            look.brow,
            max(1, int(round(look.brow_w * w))),
        )
        if look.glasses:
            r = max(er * 1.7, 0.12 * w)
            add("ellipse", _box(ex - r, ey - r, ex + r, ey + r), None, width=1, outline=(40, 40, 40))
    if look.glasses:
        add("line", [(cx - 0.08 * w, ey), (cx + 0.08 * w, ey)], (40, 40, 40), 1)
    # Nose and mouth; beard and stubble cover the jaw.
    add(
        "line",
        [(cx, y0 + (look.eye_pos + 0.08) * h), (cx + 0.03 * w, y0 + (look.eye_pos + 0.19) * h)],
        _shade(look.skin, 0.8),
        line,
    )
    if look.beard:
        add("chord", _box(x0, y0 + 0.1 * h, x1, y1 + 0.04 * h), look.hair, angles=(15.0, 165.0))
    for u, v in look.stubble:
        px, py = at(u, v)
        add("rectangle", _box(px, py, px + 0.5, py + 0.5), _shade(look.hair, 0.9))
    mouth_y = y0 + (look.eye_pos + 0.28) * h
    lips = (200, 30, 50) if look.lipstick else _mix(_shade(look.skin, 0.75), (170, 60, 60), 0.3)
    add("line", [(cx - 0.13 * w, mouth_y), (cx + 0.13 * w, mouth_y)], lips, max(line, 2 if look.lipstick else 1))
    if look.moustache:
        add(
            "line",
            [(cx - 0.15 * w, mouth_y - 0.05 * h), (cx + 0.15 * w, mouth_y - 0.05 * h)],
            look.hair,
            max(2, line + 1),
        )
    if look.earrings:
        for side in (-1, 1):
            px, py = cx + side * 0.52 * w, y0 + 0.66 * h
            add("ellipse", _box(px - 0.04 * w, py - 0.04 * w, px + 0.04 * w, py + 0.04 * w), (230, 190, 40))


# ----------------------------------------------------------------------------------------------------------
# Scenes


@dataclass
class _Person:
    look: _Look
    labelled: bool
    cut: str = ""  # "", "bottom" or "side": planned cut by the image border
    person_box: bool = True
    fig: _Figure | None = None
    dx: float = 0.0
    dy: float = 0.0
    depth: float = 0.0
    face_visible: bool = True

    def extent(self) -> np.ndarray:
        assert self.fig is not None
        return self.fig.extent() + np.array([self.dx, self.dy, self.dx, self.dy])

    def face(self) -> np.ndarray:
        assert self.fig is not None
        return self.fig.face.reshape(-1) + np.array([self.dx, self.dy, self.dx, self.dy])


def _int_box(box: np.ndarray, size: int, min_side: int = 2) -> tuple[int, int, int, int] | None:
    """Clip a float xyxy box to the image and round outwards; None when too little of it is left."""
    x0 = max(0, math.floor(box[0]))
    y0 = max(0, math.floor(box[1]))
    x1 = min(size, math.ceil(box[2]) + 1)  # PIL draws the end pixel too
    y1 = min(size, math.ceil(box[3]) + 1)
    if x1 - x0 < min_side or y1 - y0 < min_side:
        return None
    return (x0, y0, x1, y1)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A wall or sky over a floor, with a low-frequency texture and a few plain shapes."""
    upper, floor = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    jitter = rng.normal(0, 12, 3)
    horizon = int(size * rng.uniform(0.55, 0.82))
    # Built at a quarter of the size and upsampled: the wall, floor and texture are all low-frequency
    # (the horizon comes out softly blurred), and this is 10x cheaper than full-size float maths.
    small = max(16, size // 4)
    scale = small / size
    ys = np.arange(small, dtype=np.float32)[:, None, None]
    h = horizon * scale
    wall = np.asarray(upper, np.float32) + jitter.astype(np.float32) - 25 * (1 - ys / h)
    ground = np.asarray(floor, np.float32) + jitter.astype(np.float32) + 25 * (ys - h) / max(1.0, small - h)
    column = np.where(ys < h, wall, ground)  # (small, 1, 3)
    coarse = rng.normal(0, 9, (6, 6)).astype(np.float32)
    tex = np.asarray(Image.fromarray(coarse, mode="F").resize((small, small), Image.Resampling.BILINEAR))
    img = np.clip(column + tex[:, :, None], 0, 255).astype(np.uint8)
    image = Image.fromarray(img, mode="RGB").resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):  # windows, posts, bushes
        x = float(rng.uniform(0, size))
        w = float(rng.uniform(0.05, 0.25)) * size
        y = float(rng.uniform(0.05, 0.6)) * horizon
        hgt = float(rng.uniform(0.1, 0.5)) * horizon
        color = tuple(int(v) for v in np.clip(np.array(upper) * rng.uniform(0.6, 1.1, 3), 0, 255))
        if rng.random() < 0.5:
            draw.rectangle([x, y, x + w, min(y + hgt, horizon)], fill=color)
        else:
            draw.ellipse([x, y, x + w, y + hgt], fill=color)
    return image


def _render_op(draw: ImageDraw.ImageDraw, op: _Op, dx: float, dy: float, ink: int | None = None) -> None:
    """Draw one op shifted by (dx, dy); `ink` replaces every colour (to paint a silhouette mask)."""
    xy = op.xy + np.array([dx, dy])
    pts = [(float(x), float(y)) for x, y in xy]
    if ink is not None:
        op = _Op(
            op.kind, op.xy, None if op.fill is None else ink, op.width, None if op.outline is None else ink, op.angles
        )  # type: ignore[arg-type]
    if op.kind == "line":
        draw.line(pts, fill=op.fill, width=max(1, op.width), joint="curve")
    elif op.kind == "polygon":
        draw.polygon(pts, fill=op.fill)
    else:
        box = [pts[0][0], pts[0][1], max(pts[1][0], pts[0][0]), max(pts[1][1], pts[0][1])]
        if op.kind == "ellipse":
            draw.ellipse(box, fill=op.fill, outline=op.outline, width=max(op.width, 1))
        elif op.kind == "rectangle":
            draw.rectangle(box, fill=op.fill, outline=op.outline, width=max(op.width, 1))
        elif op.kind == "pieslice":
            draw.pieslice(box, op.angles[0], op.angles[1], fill=op.fill)
        elif op.kind == "chord":
            draw.chord(box, op.angles[0], op.angles[1], fill=op.fill)
        else:  # pragma: no cover - every kind above is produced by _build
            raise ValueError(f"unknown drawing op {op.kind!r}")


def _fit(p: _Person, height: float, size: int) -> None:
    """Build the figure at `height` px, shrinking it until it fits the frame it has to fit."""
    margin = 2.0
    for _ in range(8):
        p.fig = _build(p.look, height)
        ext = p.fig.extent()
        width, tall = ext[2] - ext[0], ext[3] - ext[1]
        limit_h = size - 2 * margin if p.cut != "bottom" else (size - 2 * margin) / 0.6
        scale = min(1.0, (size - 2 * margin) / width, limit_h / tall)
        if scale >= 1.0:
            return
        height *= scale * 0.98


def _place_x(p: _Person, rng: np.random.Generator, size: int, lo: float | None = None, hi: float | None = None) -> None:
    """Choose p.dx so the person lies inside [lo, hi] (default: the image, with a margin)."""
    ext = p.fig.extent() if p.fig is not None else np.zeros(4)
    lo = 2.0 if lo is None else lo
    hi = size - 2.0 if hi is None else hi
    a, b = lo - ext[0], hi - ext[2]
    p.dx = float(rng.uniform(a, b)) if b > a else (a + b) / 2


def _place_y(p: _Person, rng: np.random.Generator, size: int) -> None:
    """Choose p.dy (the feet line); a bottom cut drops the feet below the image, keeping the head inside."""
    assert p.fig is not None
    ext = p.fig.extent()
    tall = ext[3] - ext[1]
    if p.cut == "bottom":
        cut = float(rng.uniform(0.15, 0.45)) * tall
        p.dy = size + cut - ext[3]
    else:
        p.dy = size - 2.0 - ext[3] - float(rng.uniform(0.0, 0.1)) * size
    p.dy = max(p.dy, 2.0 - ext[1])  # never push the head above the image


def _cut_side(p: _Person, rng: np.random.Generator, size: int) -> None:
    """Push a person over the left or right border, keeping the head (and its face box) inside."""
    assert p.fig is not None
    ext = p.fig.extent()
    head = p.fig.face.reshape(-1)
    width = ext[2] - ext[0]
    out = float(rng.uniform(0.15, 0.4)) * width
    if rng.random() < 0.5:  # over the left border: keep the face's left edge at >= 2
        p.dx = min(-ext[0] - out, 2.0 - head[0] + float(rng.uniform(0, 3)))
        p.dx = max(p.dx, 2.0 - head[0])
    else:
        p.dx = max(size - ext[2] + out, size - 2.0 - head[2] - float(rng.uniform(0, 3)))
        p.dx = min(p.dx, size - 2.0 - head[2])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]))


def _covered(face: np.ndarray, other: np.ndarray) -> float:
    """Fraction of the face box's area inside another person's extent."""
    iw = min(face[2], other[2]) - max(face[0], other[0])
    ih = min(face[3], other[3]) - max(face[1], other[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return float(iw * ih / max(1e-9, (face[2] - face[0]) * (face[3] - face[1])))


def _face_hidden_by(face: np.ndarray, front: _Person) -> float:
    """Fraction of the face box's pixels that the person in front actually paints over."""
    if front.fig is None or _covered(face, front.extent()) == 0.0:
        return 0.0
    x0, y0 = math.floor(face[0]), math.floor(face[1])
    w, h = max(1, math.ceil(face[2]) - x0), max(1, math.ceil(face[3]) - y0)
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for op in front.fig.ops:
        _render_op(draw, op, front.dx - x0, front.dy - y0, ink=255)
    return float(np.count_nonzero(np.asarray(mask))) / (w * h)


def _plan_image(seed: int, split: str, index: int, remaining: int, config: DemoConfig) -> tuple[int, bool]:
    """Labelled people in image `index` (1 or 2, never more than `remaining`) and whether a bystander appears."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 0])
    two = rng.random() < config.p_two_people and remaining >= 2
    bystander = rng.random() < config.p_masked_bystander
    return (2 if two else 1), bool(bystander)


def _render_image(
    seed: int, split: str, index: int, n_labelled: int, bystander: bool, config: DemoConfig
) -> tuple[Image.Image, list[_Person], dict[str, int]]:
    """Draw one image; returns it, its people in annotation order and counts of what happened."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    size = config.image_size
    people: list[_Person] = []
    for i in range(n_labelled + int(bystander)):
        labelled = i < n_labelled
        age, gender = _sample_age(rng), ("M" if rng.random() < 0.5 else "F")
        hidden = rng.random() < (config.p_no_face if labelled else 0.3)
        view = ("back" if rng.random() < 0.6 else "hidden") if hidden else "front"
        look = _sample_look(rng, age, gender, view)
        p = _Person(look, labelled, face_visible=not hidden)
        if labelled and rng.random() < config.p_body_cut:
            p.cut = "bottom" if (n_labelled == 2 or rng.random() < 0.6) else "side"
        if labelled and not hidden and not p.cut:
            # Conditional on a visible face and an uncut body, so the overall fraction is about p_no_person_box.
            p.person_box = rng.random() < 1 - config.p_no_person_box / max(
                1e-9, 1 - config.p_no_face - config.p_body_cut
            )
        people.append(p)

    # Scale: a lone person is framed by the photographer; people together share one camera scale.
    framed = size * float(rng.uniform(0.5, 0.92))
    adult_px = size * float(rng.uniform(0.5, 0.85))
    for i, p in enumerate(people):
        if not p.labelled:
            height = adult_px * p.look.stature / 1.75 * float(rng.uniform(0.6, 0.95))
        elif n_labelled == 1:
            height = framed
        else:
            height = adult_px * p.look.stature / 1.75 * float(rng.uniform(0.93, 1.07))
        _fit(p, height, size)
        _place_y(p, rng, size)
        p.depth = float(i)

    overlapping = 0
    if n_labelled == 1:
        a = people[0]
        if a.cut == "side":
            _cut_side(a, rng, size)
        else:
            _place_x(a, rng, size)
    else:
        a, b = people[0], people[1]
        wa = a.fig.extent()[2] - a.fig.extent()[0]  # type: ignore[union-attr]
        wb = b.fig.extent()[2] - b.fig.extent()[0]  # type: ignore[union-attr]
        if rng.random() < config.p_overlap:
            _place_x(a, rng, size)
            ea = a.extent()
            shift = float(rng.uniform(0.25, 0.85)) * (wa + wb) / 2
            centre = (ea[0] + ea[2]) / 2 + (shift if rng.random() < 0.5 else -shift)
            eb = b.fig.extent()  # type: ignore[union-attr]
            b.dx = min(max(centre - (eb[0] + eb[2]) / 2, 2.0 - eb[0]), size - 2.0 - eb[2])
            if rng.random() < 0.5:  # who stands in front
                a.depth, b.depth = b.depth, a.depth
        else:
            gap = 3.0
            room = size - 4.0 - gap - wa - wb
            if room < 0:  # too wide side by side: shrink both to fit
                for p in (a, b):
                    h = float(-p.fig.extent()[1]) * (size - 4.0 - gap) / (wa + wb) * 0.97  # type: ignore[union-attr]
                    _fit(p, h, size)
                    _place_y(p, rng, size)
                wa = a.fig.extent()[2] - a.fig.extent()[0]  # type: ignore[union-attr]
                wb = b.fig.extent()[2] - b.fig.extent()[0]  # type: ignore[union-attr]
                room = max(0.0, size - 4.0 - gap - wa - wb)
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            o1 = float(rng.uniform(0, room))
            o2 = float(rng.uniform(0, room - o1))
            left.dx = 2.0 + o1 - left.fig.extent()[0]  # type: ignore[union-attr]
            x_right = 2.0 + o1 + (left.fig.extent()[2] - left.fig.extent()[0]) + gap + o2  # type: ignore[union-attr]
            right.dx = x_right - right.fig.extent()[0]  # type: ignore[union-attr]
        overlapping = int(_overlap(a.extent(), b.extent()))
    if bystander:
        s = people[-1]
        s.depth = -1.0  # always behind the labelled people
        if rng.random() < 0.6:
            target = people[int(rng.integers(n_labelled))].extent()
            width = s.fig.extent()[2] - s.fig.extent()[0]  # type: ignore[union-attr]
            side = 1.0 if rng.random() < 0.5 else -1.0  # partly behind the other: masking must matter
            centre = (target[0] + target[2]) / 2 + side * float(rng.uniform(0.3, 0.8)) * width
            centre = min(max(centre, 0.1 * size), 0.9 * size)  # keep most of them in the picture
            s.dx = centre - (s.fig.extent()[0] + s.fig.extent()[2]) / 2  # type: ignore[union-attr]
            s.dy -= float(rng.uniform(0.0, 0.12)) * size
        else:
            s.cut = "side"
            _cut_side(s, rng, size)

    # A face hidden behind someone standing in front is not visible, like an annotator would see it.
    order = sorted(range(len(people)), key=lambda k: people[k].depth)
    for rank, k in enumerate(order):
        p = people[k]
        if not p.face_visible:
            continue
        for other in order[rank + 1 :]:
            if _face_hidden_by(p.face(), people[other]) > 0.25:
                p.face_visible = False

    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    for k in order:
        for op in people[k].fig.ops:  # type: ignore[union-attr]
            _render_op(draw, op, people[k].dx, people[k].dy)
    # Lighting and colour cast per image, so that no colour is exactly the palette's. (Pixel noise is left
    # out on purpose: it made the PNGs 5x larger and 4x slower to write.)
    gain = rng.uniform(0.88, 1.08) * rng.uniform(0.96, 1.04, 3)
    levels = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.minimum(255, np.floor(levels * g + 0.5)) for g in gain]).astype(np.int64)
    image = image.point(lut.tolist())
    return image, people, {"overlapping_pairs": overlapping}


def _rows_for(people: list[_Person], img_name: str, size: int) -> tuple[list[list[Any]], dict[str, int]]:
    """Annotation rows (labelled people first, in order) and what each row has or lacks."""
    rows, counts = [], {"no_face": 0, "body_cut": 0, "no_person_box": 0, "bystanders": 0}
    for p in people:
        face = _int_box(p.face(), size, min_side=4) if p.face_visible else None
        ext = p.extent()
        body = _int_box(ext, size, min_side=4) if p.person_box else None
        clipped = bool(ext[0] < 0 or ext[1] < 0 or math.ceil(ext[2]) + 1 > size or math.ceil(ext[3]) + 1 > size)
        if face is None and body is None:  # nothing left to annotate: keep the body box so masking sees them
            body = _int_box(ext, size, min_side=1)
        if p.labelled:
            counts["no_face"] += face is None
            counts["no_person_box"] += body is None
            counts["body_cut"] += clipped and body is not None
            age, gender = p.look.age, p.look.gender
        else:
            counts["bystanders"] += 1
            age, gender = -1, -1
        rows.append([img_name, age, gender, *(face or (-1, -1, -1, -1)), *(body or (-1, -1, -1, -1))])
    return rows, counts


def _check_root(root: Path) -> None:
    """Refuse a `root` that holds anything but a previous demo set (it is deleted when the new one is done)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError("the demo root exists and is not a folder", file=root)
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWN_ENTRIES)
    if foreign:
        raise InputError(
            f"the demo root holds entries a demo set does not write ({', '.join(foreign[:5])}); "
            "refusing to delete it - choose an empty or demo-only folder",
            file=root,
        )


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)


def _make_image(task: tuple[str, DemoConfig, str, int, int, bool]) -> tuple[list[list[Any]], dict[str, int]]:
    """Render and write one image; return its annotation rows and counts (runs in a worker process too)."""
    out, config, split, index, n_labelled, bystander = task
    image, people, extra = _render_image(config.seed, split, index, n_labelled, bystander, config)
    img_name = f"images/{split}/{index:06d}.png"
    # Level 3: a quarter of level 6's time for a third more bytes (~20 KB an image at 256 px).
    image.save(Path(out) / img_name, format="PNG", compress_level=3)
    rows, counts = _rows_for(people, img_name, config.image_size)
    counts["overlapping_pairs"] = extra["overlapping_pairs"]
    return rows, counts


def generate_demo(
    root: Path, config: DemoConfig, *, progress: bool = False, workers: int | None = None
) -> dict[str, int]:
    """Generate the demo data set under `root`, replacing whatever a previous run left there.

    Writes `images/<split>/<id>.png` and `annotations/demo_<split>.csv` for train, val and test, the test
    split again with Adience class labels in `annotations_adience/demoadience_test.csv`, and `demo_info.json`.
    People whose age lies in a gap between Adience classes are not labelled in the Adience copy; their boxes
    stay as unlabelled rows (age and gender -1), so masking sees the same people as in the age copy. The set
    is built in a sibling temporary folder (`.<name>.generating`) that replaces `root` at the end, so a
    failed run leaves the previous set untouched.

    Args:
        root: the folder to (re)create; it must be absent, empty or hold only a previous demo set.
        config: sizes, seed and fractions.
        progress: show a tqdm bar per split.
        workers: processes drawing images; None uses up to 4 of the machine's cores. The output does not
            depend on it (every image has its own seeded Generator).

    Returns:
        Counts, flat: `<split>_images`, `<split>_people` (labelled), `<split>_bystanders`, `<split>_no_face`,
        `<split>_body_cut`, `<split>_no_person_box`, `<split>_two_people_images`, `<split>_overlapping_pairs`,
        the totals `images`, `people`, `bystanders`, and `adience_test_people`, `adience_test_gap_ages`.

    Raises:
        InputError: when `root` holds files that are not part of a demo set (nothing is deleted then).
    """
    root = Path(root)
    _check_root(root)
    tmp = root.with_name(f".{root.name}.generating")
    if tmp.exists():
        shutil.rmtree(tmp)
    plans = {split: _plan_split(config, split) for split in SPLITS}
    n_images = sum(len(p) for p in plans.values())
    n_workers = max(1, min(4, os.cpu_count() or 1)) if workers is None else max(1, int(workers))
    # Spawned workers (not forked) are safe inside Jupyter kernels and threaded callers.
    pool = None
    if n_workers > 1 and n_images >= _POOL_MIN_IMAGES:
        pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
    counts: dict[str, int] = {}
    adience_rows: list[list[Any]] = []
    adience_people = adience_gap = 0
    try:
        for split in SPLITS:
            plan = plans[split]
            (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
            split_counts = dict.fromkeys(
                ("images", "people", "bystanders", "no_face", "body_cut", "no_person_box", "two_people_images",
                 "overlapping_pairs"),
                0,
            )  # fmt: skip
            rows: list[list[Any]] = []
            tasks = [(str(tmp), config, split, index, k, bystander) for index, (k, bystander) in enumerate(plan)]
            results: Any
            if pool is not None:
                results = pool.map(_make_image, tasks, chunksize=max(1, min(32, len(tasks) // (4 * n_workers))))
            else:
                results = map(_make_image, tasks)
            if progress:
                from tqdm.auto import tqdm

                results = tqdm(results, total=len(tasks), desc=f"demo {split}", unit="img")
            for (_, _, _, _, k, _), (image_rows, c) in zip(tasks, results, strict=True):
                rows.extend(image_rows)
                for key, value in c.items():
                    split_counts[key] += value
                split_counts["images"] += 1
                split_counts["people"] += k
                split_counts["two_people_images"] += k == 2
                if split == "test":
                    adience, n_lab, n_gap = _adience_rows(image_rows)
                    if n_lab:  # an image left with nobody labelled is not part of the Adience copy
                        adience_rows.extend(adience)
                    adience_people += n_lab
                    adience_gap += n_gap
            _write_csv(tmp / "annotations" / f"demo_{split}.csv", rows)
            counts.update({f"{split}_{key}": value for key, value in split_counts.items()})
    finally:
        if pool is not None:
            pool.shutdown()
    _write_csv(tmp / "annotations_adience" / "demoadience_test.csv", adience_rows)
    for key in ("images", "people", "bystanders"):
        counts[key] = sum(counts[f"{s}_{key}"] for s in SPLITS)
    counts["adience_test_people"] = adience_people
    counts["adience_test_gap_ages"] = adience_gap
    info = {
        "description": f"synthetic {DEMO_CAPTION} generated by agegender.data.demo",
        "config": config.to_dict(),
        "counts": counts,
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _check_root(root)  # again: something may have been written there while we drew
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return counts


def _plan_split(config: DemoConfig, split: str) -> list[tuple[int, bool]]:
    """(labelled people, bystander?) per image, until the split's labelled people are all placed."""
    plan: list[tuple[int, bool]] = []
    remaining = config.n_people(split)
    while remaining > 0:
        k, bystander = _plan_image(config.seed, split, len(plan), remaining, config)
        plan.append((k, bystander))
        remaining -= k
    return plan


def _adience_rows(rows: list[list[Any]]) -> tuple[list[list[Any]], int, int]:
    """The Adience copy of one image's rows: class labels, gap ages turned into unlabelled rows."""
    out, labelled, gap = [], 0, 0
    for row in rows:
        age = row[1]
        if age == -1:
            out.append(list(row))
            continue
        label = adience_class(int(age))
        if label is None:
            gap += 1
            out.append([row[0], -1, -1, *row[3:]])
        else:
            labelled += 1
            out.append([row[0], label, row[2], *row[3:]])
    return out, labelled, gap
