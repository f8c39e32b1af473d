"""Broken image files for the tests of what `check`, the readers and the runners do with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_truncated_jpeg(path: Path, width: int = 96, height: int = 96, keep: float = 0.6, seed: int = 0) -> Path:
    """A JPEG of noise cut after `keep` of its bytes: its header still reads (asserted), its pixels do not.

    Noise, so that the entropy-coded data is most of the file and the cut lands in it, not in the header.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with Image.open(path) as img:  # the header is intact: only decoding finds the damage
        assert img.size == (width, height)
    return path


def write_empty(path: Path) -> Path:
    """A zero-byte file (an interrupted copy, a failed download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path
