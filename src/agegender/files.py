"""Writing output files so that a reader (or a later run) never finds half of one.

Every writer here writes a temporary file beside the target and renames it into place (`os.replace`, atomic on
one file system): a crash, a `kill -9` or an error while writing leaves the previous file as it was. Callers write
only after everything they write has been computed, so a failed run never replaces a good output with a worse one.

Only the standard library is imported at the top, so that modules the CLI imports for `--help` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

#: table formats `write_table` writes, by suffix.
TABLE_SUFFIXES: tuple[str, ...] = (".parquet", ".pq", ".csv")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without an error.

    For writers that take a path (pandas, torch.save, PIL): `with atomic_path(out) as tmp: frame.to_parquet(tmp)`.
    On an error the temporary file is removed and `path` keeps its previous content. The temporary name is new
    for every call (not only every process), so threads and processes writing one target never share it.

    Args:
        path: the target (its folder is created).
        fsync: flush the file to disk before the rename (for files a crash must not lose, e.g. checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its file is private (0600), and the rename would hand that mode to the output
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | Path, *, fsync: bool = False) -> Path:
    """`torch.save` to `path` atomically, the same bytes for the same object.

    Saved through an open file: given a path, `torch.save` names its zip archive's folder after the (temporary,
    random) file name, so every save of the same weights differed, and with it the DVC hash of every training
    output. `torch.load` reads either form.
    """
    import torch

    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically, creating its folder.

    Returns:
        The path written.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write JSON (indented, sorted keys, UTF-8 as is) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as parquet or CSV (by suffix), atomically (a temporary file renamed into place).

    Raises:
        InputError: a suffix other than .parquet/.pq/.csv.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError("unknown table format (expected .parquet or .csv)", file=path)
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


#: The file beside a stage's outputs that records how one run went (timings, throughput, requests sent, answers
#: found in a response store): facts about the run, not its results. `.dvcignore` names it, so it is kept beside
#: the outputs it describes without entering their hashes: dvc.lock records results only, and a rerun that
#: computes the same results changes no byte of it.
RUN_LOG_FILE = "run-log.json"


def write_run_log(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write `record` as `<folder>/run-log.json` (`RUN_LOG_FILE`), atomically; returns the path."""
    return write_json(record, Path(folder) / RUN_LOG_FILE)
