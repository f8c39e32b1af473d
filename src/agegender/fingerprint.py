"""Fingerprints of what produced a result, for every cache that a later run resumes from.

A resumable cache (MiVOLO prediction parts, the MLLM response store, training checkpoints) may only hand a
result back to a run made by the same producer: the same weights, preprocessing and settings. This module is
the one home of the digests those caches are keyed by:

- `file_sha256`: SHA-256 of a file's full contents. Sizes, modification times or a file's first and last
  megabytes are not enough: a model retrained into the same folder keeps its sizes and its safetensors header,
  and a LoRA or partly frozen fine-tune may leave the first and last tensors of every shard untouched. Reading a
  7B model's ~15 GB costs about 10 s at this machine's 1.6 GB/s SHA-256 (`benchmarks/bench_fingerprint.py`), so
  the digests of files of at least `CACHE_MIN_BYTES` are cached (see "Cache" below);
- `tensors_sha256`: SHA-256 of a state dict (names, dtypes, shapes, bytes), for models already in memory;
- `json_sha256`: SHA-256 of canonical JSON, for settings;
- `describe_changes`: which entries of two fingerprints differ, in words a user can act on.

Cache: what a cache knows about a file is keyed by the file's identity (`FileIdentity`: real path, device, inode,
size, mtime, ctime). A rewrite in place changes the ctime, which no tool can set back (unlike the mtime that `cp -p`,
`rsync -a` or `touch -d` restore), and a copy is another inode, so a cached fact is only served for the very file it
was learnt from. A file changed less than `RACY_S` seconds before it was read is not cached: a second write within
the file system's timestamp granularity could otherwise keep every stat field (git's "racy" rule); nor is one whose
stat changed while it was read. Caches live under `AGEGENDER_CACHE_DIR` (default `$XDG_CACHE_HOME/agegender`, else
`~/.cache/agegender`) and are best effort: when their folder cannot be written, everything is computed every time.
Two stores:

- file digests: one small JSON file per identity (`file-sha256/`), for the few large files that are hashed;
- `FileFacts`: short facts about many files ("this image decodes, 640x480": `agegender.data.crops.image_sizes`), one
  row per (kind of fact, real path) in one SQLite database (`file-facts.sqlite3`, WAL: two checks at once, or
  processes reading while another writes, are safe), so that hundreds of thousands of images cost one file and a
  re-check of unchanged files costs a `stat` and an indexed lookup each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from agegender.files import write_json

_log = logging.getLogger(__name__)

#: environment variable naming the cache folder of file digests
CACHE_ENV = "AGEGENDER_CACHE_DIR"
#: files smaller than this are hashed every time (cheaper than a cache lookup)
CACHE_MIN_BYTES = 1 << 20
#: a file modified this recently (seconds) is hashed but its digest is not cached
RACY_S = 2.0
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The folder of cached file digests: `$AGEGENDER_CACHE_DIR`, else `$XDG_CACHE_HOME/agegender`, else ~/.cache."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agegender"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb") as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


class FileIdentity(NamedTuple):
    """A file as the caches know it (module docstring, "Cache"): equal identities, same contents.

    Attributes:
        path: the real path (symbolic links resolved).
        dev: device.
        ino: inode.
        size: bytes.
        mtime_ns: modification time.
        ctime_ns: change time (set by every write and rename, and by no tool to a chosen value).
    """

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, real_path: str, st: os.stat_result) -> FileIdentity:
        """The identity of a file from its real path and its `os.stat` result."""
        return cls(real_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def stat_key(self) -> str:
        """The stat fields as one string (`dev:ino:size:mtime:ctime`), what a store compares."""
        return f"{self.dev}:{self.ino}:{self.size}:{self.mtime_ns}:{self.ctime_ns}"

    def settled(self, read_from_ns: int) -> bool:
        """True when the file was last changed at least `RACY_S` before `read_from_ns` (`time.time_ns()` taken
        before the file was stat-ed and read): a later write cannot have kept its timestamps."""
        return read_from_ns - max(self.mtime_ns, self.ctime_ns) >= RACY_S * 1e9

    def unchanged(self) -> bool:
        """True when the file still has this identity (stat again now); False when it changed or is gone."""
        try:
            return FileIdentity.of(self.path, os.stat(self.path)) == self
        except OSError:
            return False


def file_identity(path: str | Path) -> FileIdentity:
    """The identity of one file (symbolic links followed).

    Raises:
        OSError: the file cannot be stat-ed.
    """
    real = Path(path).resolve()
    return FileIdentity.of(str(real), real.stat())


def file_identities(paths: Sequence[str | Path]) -> list[FileIdentity | None]:
    """The identities of many files, at about one `lstat` each; None for what is not a regular file (or is gone).

    A real path costs an `lstat` per component of the path (`os.path.realpath`), so each folder is resolved once
    and a file that is not itself a symbolic link is that folder plus its name.
    """
    real_dirs: dict[str, str] = {}
    out: list[FileIdentity | None] = []
    for path in paths:
        name = os.fspath(path)
        try:
            st = os.lstat(name)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(name)
                st = os.stat(real)
            else:
                head, tail = os.path.split(name)
                real_dir = real_dirs.get(head)
                if real_dir is None:
                    real_dir = real_dirs[head] = os.path.realpath(head or os.curdir)
                real = os.path.join(real_dir, tail)
        except OSError:
            out.append(None)
            continue
        out.append(FileIdentity.of(real, st) if stat.S_ISREG(st.st_mode) else None)
    return out


def _cache_entry(identity: FileIdentity) -> Path:
    key = "\0".join(str(v) for v in identity)  # the key of every digest cached so far: keep it
    name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return cache_dir() / "file-sha256" / name[:2] / f"{name}.json"


def file_sha256(path: str | Path, *, cache: bool = True) -> str:
    """SHA-256 (hex) of a file's full contents, cached by the file's identity (module docstring).

    Args:
        path: the file (symlinks are followed: a Hugging Face snapshot links into its blobs).
        cache: use and fill the digest cache for files of at least `CACHE_MIN_BYTES`.

    Returns:
        64 hex digits.

    Raises:
        OSError: the file cannot be read.
    """
    read_from = time.time_ns()
    identity = file_identity(path)
    real = Path(identity.path)
    if not cache or identity.size < CACHE_MIN_BYTES:
        return _hash_file(real)
    entry = _cache_entry(identity)
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and isinstance(cached.get("sha256"), str) and len(cached["sha256"]) == 64:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = _hash_file(real)
    if identity.settled(read_from) and identity.unchanged():
        try:
            write_json({"path": identity.path, "size": identity.size, "sha256": digest}, entry)
        except OSError as exc:  # a read-only home or a full disk: the digest is still right, only not kept
            _log.debug("file digest cache not written (%s): %s", entry, exc)
    return digest


#: the database of `FileFacts`, under `cache_dir()`
FACTS_DB = "file-facts.sqlite3"
#: identities looked up per query (SQLite allows 999 parameters in its oldest builds)
_LOOKUP_CHUNK = 500
_FACTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    stat TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, path)
) WITHOUT ROWID
"""


def _storable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: SQLite text cannot hold it; it is just not cached
        return False
    return True


class FileFacts:
    """Facts learnt about files, keyed by their identity, in one SQLite database (module docstring, "Cache").

    A fact is a short string of one `kind` (name the kind so that it changes with whatever the fact depends on,
    e.g. the decoder's version). Each (kind, real path) has one row, the fact about the file's latest identity
    seen; a lookup serves it only while the file keeps that identity. Best effort: the database is opened lazily,
    and any error of SQLite or of the file system (unwritable folder, database locked for longer than
    `timeout_s`, a corrupt file) turns the store off for this instance, logged, never raised: the caller computes.

    Use it from one thread and open it where it is used (`with FileFacts(kind) as facts:`); a connection must not
    cross a `fork`, so a process (a DataLoader worker) opens its own.

    Args:
        kind: what the facts are (e.g. `"image-decode/1/pillow-12.3.0"`).
        timeout_s: how long to wait for another process's write.
    """

    def __init__(self, kind: str, *, timeout_s: float = 10.0) -> None:
        self.kind = kind
        self.timeout_s = timeout_s
        self._db: sqlite3.Connection | None = None
        self._off = False

    def __enter__(self) -> FileFacts:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database (the store can be opened again by the next call)."""
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _give_up(self, exc: BaseException) -> None:
        # a corrupt database would turn the cache off for good: say where it is, so it can be deleted
        corrupt = isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc)
        _log.log(
            logging.WARNING if corrupt else logging.DEBUG,
            "file facts cache %s not used (%s: %s)",
            cache_dir() / FACTS_DB,
            type(exc).__name__,
            exc,
        )
        self.close()
        self._off = True

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is None and not self._off:
            try:
                folder = cache_dir()
                folder.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(folder / FACTS_DB, timeout=self.timeout_s, isolation_level=None)
                try:
                    db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer, nor block one
                    db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last facts, never corrupt
                    db.execute(_FACTS_SCHEMA)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            except (sqlite3.Error, OSError) as exc:
                self._give_up(exc)
        return self._db

    def lookup(self, identities: Iterable[FileIdentity]) -> dict[FileIdentity, str]:
        """The facts known about these files, for those whose identity is still the one the fact was learnt from.

        Args:
            identities: the files, as they are now (`file_identities`).

        Returns:
            identity -> fact, for the files known; empty when the store is off.
        """
        wanted: dict[str, FileIdentity] = {i.path: i for i in identities if _storable(i.path)}
        found: dict[FileIdentity, str] = {}
        db = self._connection()
        if db is None or not wanted:
            return found
        paths = list(wanted)
        try:
            for at in range(0, len(paths), _LOOKUP_CHUNK):
                chunk = paths[at : at + _LOOKUP_CHUNK]
                rows = db.execute(
                    f"SELECT path, stat, value FROM facts WHERE kind = ? AND path IN ({','.join('?' * len(chunk))})",
                    (self.kind, *chunk),
                )
                for path, stat_key, value in rows:
                    identity = wanted[path]
                    if stat_key == identity.stat_key():
                        found[identity] = value
        except sqlite3.Error as exc:
            self._give_up(exc)
            return {}
        return found

    def record(self, facts: Iterable[tuple[FileIdentity, str]], *, read_from_ns: int) -> int:
        """Keep facts learnt about files; only those of files settled before they were read and unchanged since.

        Each file is stat-ed again here: one that changed after its identity was taken (or whose change is too
        recent to tell a later write from it, `FileIdentity.settled`) is left out, and is looked at afresh next time.

        Args:
            facts: (the file's identity taken before it was read, what was learnt from reading it).
            read_from_ns: `time.time_ns()` taken before those identities were.

        Returns:
            How many facts were kept (0 when the store is off).
        """
        rows = [
            (self.kind, identity.path, identity.stat_key(), value)
            for identity, value in facts
            if _storable(identity.path) and identity.settled(read_from_ns) and identity.unchanged()
        ]
        db = self._connection() if rows else None
        if db is None:
            return 0
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO facts (kind, path, stat, value) VALUES (?, ?, ?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._give_up(exc)
            return 0
        return len(rows)

    def forget(self, paths: Iterable[str]) -> None:
        """Drop what is known about these files (real paths): a fact that no longer holds is not kept at all.

        A lookup would not serve it anyway once the file's identity has changed; this keeps the store to facts that
        are true of some version of a file still there (e.g. only images that decode).
        """
        rows = [(self.kind, path) for path in paths if _storable(path)]
        db = self._connection() if rows else None
        if db is None:
            return
        try:
            db.executemany("DELETE FROM facts WHERE kind = ? AND path = ?", rows)
        except sqlite3.Error as exc:
            self._give_up(exc)


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state dict: every tensor's name, dtype, shape and bytes, in name order.

    The memory layout (channels-last, a GPU) does not change the digest: each tensor is made contiguous on the
    CPU first; its values are what count.

    Args:
        tensors: name -> torch tensor (a model's `state_dict()`).

    Returns:
        64 hex digits.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{value.dtype}\0{tuple(tensors[name].shape)}\0".encode())
        # bytes through a uint8 view: also for dtypes numpy does not know (bfloat16)
        digest.update(value.view(torch.uint8).numpy())
    return digest.hexdigest()


def json_sha256(data: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of `data` (sorted keys, no spaces, ASCII)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else f"{text[:16]}...{text[-8:]}"


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The entries (dotted paths into nested mappings) whose values differ between two fingerprints.

    Args:
        old: the fingerprint a cache was made with.
        new: the fingerprint of this run.
        prefix: path of `old` / `new` inside a larger fingerprint.

    Returns:
        One `path: old -> new` line per difference (long values shortened), in key order; empty when equal.
    """
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        where = f"{prefix}{key}"
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(describe_changes(a, b, f"{where}."))
        elif a != b:
            out.append(f"{where}: {_short(a)} -> {_short(b)}")
    return out
