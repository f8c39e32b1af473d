"""Broken image files for the tests of what `check`, the readers and the runners do with them, and files changed
behind a cache's back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
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


def rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Rewrite a file in place with as much of its old stat as a user can restore (size, atime, mtime).

    Waits until the change time has moved, which the file system sets on every write and no tool can set back:
    a rewrite within one timestamp tick keeps it, and that is what `agegender.fingerprint.RACY_S` guards against.
    """
    before = path.stat()
    for _ in range(500):
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)
    pytest.skip("this file system does not move a file's change time on a rewrite")
