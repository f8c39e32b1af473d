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

Cache: one small JSON file per (real path, device, inode, size, mtime, ctime) under `AGEGENDER_CACHE_DIR`
(default `$XDG_CACHE_HOME/agegender`, else `~/.cache/agegender`). A rewrite in place changes the ctime, which no
tool can set back (unlike the mtime that `cp -p`, `rsync -a` or `touch -d` restore), and a copy is another
inode, so a cached digest is only served for the very file it was computed from. A file changed less than
`RACY_S` seconds before it was hashed is not cached: a second write within the file system's timestamp
granularity could otherwise keep every stat field (git's "racy" rule). The cache is best effort: when its
folder cannot be written, digests are computed every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _cache_entry(path: Path, st: os.stat_result) -> Path:
    identity = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    name = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()
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
    path = Path(path).resolve()
    st = path.stat()
    if not cache or st.st_size < CACHE_MIN_BYTES:
        return _hash_file(path)
    entry = _cache_entry(path, st)
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if isinstance(cached, dict) and isinstance(cached.get("sha256"), str) and len(cached["sha256"]) == 64:
            return cached["sha256"]
    except (OSError, ValueError):
        pass
    digest = _hash_file(path)
    after = path.stat()
    unchanged = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_S * 1e9
    if unchanged and settled:
        try:
            write_json({"path": str(path), "size": st.st_size, "sha256": digest}, entry)
        except OSError as exc:  # a read-only home or a full disk: the digest is still right, only not kept
            _log.debug("file digest cache not written (%s): %s", entry, exc)
    return digest


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
