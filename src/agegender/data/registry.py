"""The reader registry: which reader params.yaml's `reader` names, checking a data set, reading it.

The built-in readers are registered here, in one table: `mivolo` and `folder` (`agegender.data.readers`) and the
native formats `utkface`, `fgnet`, `fairface` (`agegender.data.native`). `register_reader` adds one under a new
name; params.yaml may also name a reader by import path (`package.module:attr`, `resolve_reader`), so a new data
set format needs no change here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agegender.data.native import read_fairface, read_fgnet, read_utkface
from agegender.data.readers import ReadResult, read_folder, read_mivolo
from agegender.errors import InputError

#: name -> reader: `reader(root, dataset, **options) -> ReadResult`, optionally with `.check(root, **options)`.
READERS: dict[str, Callable[..., ReadResult]] = {}


def register_reader(name: str) -> Callable[[Callable[..., ReadResult]], Callable[..., ReadResult]]:
    """Decorator: make a reader available to params.yaml under `name`.

    A reader is called as `reader(root, dataset, **options)` and returns a `ReadResult`. It may carry a
    `check(root, **options) -> list[str]` attribute (a method of a reader object, or set on a function) that
    `check_dataset` runs before any work starts; without one only the root folder is checked.

    Args:
        name: the name params.yaml's `reader` gives.

    Returns:
        The decorator (it returns the reader unchanged).
    """

    def decorate(reader: Callable[..., ReadResult]) -> Callable[..., ReadResult]:
        READERS[name] = reader
        return reader

    return decorate


for _name, _reader in {
    "mivolo": read_mivolo,
    "folder": read_folder,
    "utkface": read_utkface,
    "fgnet": read_fgnet,
    "fairface": read_fairface,
}.items():
    register_reader(_name)(_reader)


def resolve_reader(name: str) -> Callable[..., ReadResult]:
    """The reader of a registered name or of an import path `package.module:attr`.

    Raises:
        InputError: an unknown name (listing the known ones) or an import path that does not import.
    """
    if name in READERS:
        return READERS[name]
    if ":" not in name:
        raise InputError(
            f"unknown reader {name!r}; known readers: {sorted(READERS)} (or an import path 'package.module:attr')",
            field="reader",
        )
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"cannot import reader {name!r} ({type(exc).__name__}: {exc})", field="reader") from exc
    if not callable(obj):
        raise InputError(f"reader {name!r} is a {type(obj).__name__}, not callable", field="reader")
    return obj


def check_dataset(reader: str | Callable[..., ReadResult], root: str | Path, **options: Any) -> list[str]:
    """Check a data set's files before reading it: the reader is known, the root exists, then the reader's own check.

    Args:
        reader: a registered name, an import path `package.module:attr`, or the reader itself.
        root: the data set's folder.
        **options: the reader's options (as params.yaml gives them); a misspelt one is reported.

    Returns:
        One line per problem (naming the file where there is one), empty when all is well.
    """
    root = Path(root)
    try:
        func = resolve_reader(reader) if isinstance(reader, str) else reader
    except InputError as exc:
        return [exc.message]
    if not root.exists():
        return [str(InputError("data set folder not found", file=root))]
    check = getattr(func, "check", None)
    if check is None:
        return []
    try:
        return [str(line) for line in check(root, **options)]
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):  # a misspelt option of params.yaml
            return [f"reader {reader!r}: {exc}"]
        raise
    except InputError as exc:  # a third-party check that raises instead of returning its problems
        return [str(exc)]


def read_dataset(dataset: str, reader: str, root: str | Path, **options: Any) -> ReadResult:
    """Read a data set with a registered reader (or one given by import path).

    Args:
        dataset: the data set name.
        reader: a key of `READERS` (`mivolo`, `folder`, `utkface`, `fgnet`, `fairface`) or an import path
            `package.module:attr`.
        root: the data set's folder.
        **options: keyword options of that reader (e.g. `splits`, `on_bad_row`).

    Returns:
        The reader's `ReadResult`.

    Raises:
        InputError: for an unknown reader name (listing the known ones) or an option the reader lacks.
    """
    func = resolve_reader(reader)
    try:
        return func(root, dataset, **options)
    except TypeError as exc:
        # A misspelt option from params.yaml should read as a config error, not a traceback.
        if "unexpected keyword argument" in str(exc):
            raise InputError(f"reader {reader!r}: {exc}", field="reader options") from exc
        raise


__all__ = ["READERS", "check_dataset", "read_dataset", "register_reader", "resolve_reader"]
