"""Parsing shared by several command lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agegender.errors import InputError


def parse_image_roots(values: Sequence[str], option: str = "--data-root") -> Path | dict[str, Path]:
    """The image folder option of a command (`--data-root`, `--image-root`): one folder, or `dataset=folder` pairs.

    A value that names an existing path is a folder even when it holds `=`.

    Args:
        values: the option's values, as given.
        option: the option's name, for messages.

    Returns:
        The folder, or a mapping data set -> folder.

    Raises:
        InputError: no value, a mix of both forms, several bare folders, or an empty name or folder.
    """
    field = option.lstrip("-").replace("-", "_")
    if not values:
        raise InputError(f"{option} needs a folder or dataset=folder pairs", field=field)
    pairs = [v for v in values if "=" in v and not Path(v).exists()]
    if not pairs:
        if len(values) > 1:
            raise InputError(f"give one folder, or dataset=folder pairs, to {option}", field=field)
        return Path(values[0])
    if len(pairs) != len(values):
        raise InputError(f"{option} mixes a bare folder with dataset=folder pairs", field=field)
    roots: dict[str, Path] = {}
    for value in pairs:
        name, _, folder = value.partition("=")
        if not name.strip() or not folder.strip():
            raise InputError(f"{option} {value!r}: expected dataset=folder", field=field)
        roots[name.strip()] = Path(folder.strip())
    return roots
