"""Folders of unlabelled photos: what `agegender annotate` reads, with a specialized model or an MLLM.

One home for both annotation paths (`agegender.annotate`, `agegender.mllm.tools.annotate`), so that neither imports the
other.
"""

from __future__ import annotations

from pathlib import Path

from agegender.errors import InputError

#: suffixes (any case) of the photos `list_images` finds
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")


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
