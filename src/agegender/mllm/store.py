"""The response store: every MLLM answer, recorded before it counts as done, append-only and crash-safe.

Layout of a store folder::

    responses-<tag>-<pid>-<token>.jsonl   one file per writer (process, shard), never shared, never rewritten
    failures-<tag>-<pid>-<token>.jsonl    failed requests, for audit only (never reused)
    endpoints.json                        optional request fields each endpoint rejected (`remember_endpoint`)

Each line of a responses file is one JSON record::

    {"v": 1, "key": <sha256>, "fields": {backend, model, model_revision, prompt_version, image_hash, params,
     options}, "reusable": bool, "request_id": ..., "answer": {text, finish_reason, refusal, prompt_tokens,
     completion_tokens, system_fingerprint, model_revision, latency_s}, "created_at": ISO-8601 UTC}

Crash safety: a record is written with a single `write` of the whole line and flushed to the kernel at once,
so a `kill -9` loses only requests still in flight, and at worst leaves one truncated last line, which loading
tolerates (counted in `stats`). `os.fsync` (durability against power loss) costs ~4.6 ms per call on this
machine's disk (flush alone ~9 us), which at 64 concurrent requests would throttle the run; it is therefore
done at most every `fsync_interval_s` seconds (0 = after every record) and on `close`.

Writers never append to a file they did not create (the file name carries a random token), so concurrent
shards never interleave, and a new run never glues its first record onto a killed run's truncated line.

Only answered requests are written as answers; failures go to the failures log. Answers to non-deterministic
requests (temperature > 0 or n > 1) are written for audit with `"reusable": false` and never served by `get`.
The store keeps image hashes, never images, and never API keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from agegender.errors import InputError
from agegender.files import atomic_path, write_json
from agegender.mllm.backends.base import Answer

RECORD_VERSION = 1
_ANSWER_FIELDS: tuple[str, ...] = (
    "text",
    "finish_reason",
    "refusal",
    "prompt_tokens",
    "completion_tokens",
    "system_fingerprint",
    "model_revision",
    "latency_s",
)


def key_fields(
    *,
    backend: str,
    model: str,
    model_revision: str | None,
    prompt_version: str,
    image_hash: str,
    params: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields that identify a request's answer (the store's key, spelled out).

    Args:
        backend: registered backend name.
        model: model id or folder, as the backend was given it.
        model_revision: weights revision where known (None otherwise).
        prompt_version: `agegender.mllm.prompt` version.
        image_hash: `agegender.mllm.backends.base.image_hash` of the crop sent.
        params: `GenerationParams.as_key()`.
        options: backend options that change the answer (preprocessing, resolution); `{}` when none.
    """
    return {
        "backend": backend,
        "model": model,
        "model_revision": model_revision,
        "prompt_version": prompt_version,
        "image_hash": image_hash,
        "params": dict(params),
        "options": dict(options or {}),
    }


def make_key(**fields: Any) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of `key_fields(**fields)`.

    Takes the same keyword arguments as `key_fields`.
    """
    canonical = json.dumps(key_fields(**fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class StoredAnswer:
    """An answer read back from the store.

    Attributes:
        key: the record's key.
        request_id: the request that produced it (the first one, when several samples share a crop).
        answer: the answer (status `answered`).
        created_at: when it was written (ISO-8601 UTC).
        fields: the key fields.
    """

    key: str
    request_id: str
    answer: Answer
    created_at: str
    fields: dict[str, Any]


@dataclass
class StoreStats:
    """What loading a store found.

    Attributes:
        files: responses files read.
        records: well-formed records read (reusable or not).
        reusable: distinct keys that `get` serves.
        truncated: last lines cut short (a writer was killed mid-write); harmless.
        corrupt: unreadable lines that were not the last line of their file (should be 0).
        duplicates: records whose key was already indexed (kept: the first).
        corrupt_files: `file:line` of each corrupt line (first 20).
    """

    files: int = 0
    records: int = 0
    reusable: int = 0
    truncated: int = 0
    corrupt: int = 0
    duplicates: int = 0
    corrupt_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The stats as a plain dict (for manifests)."""
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _safe_tag(tag: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in tag) or "w"


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, bool]]:
    """Yield (line number, record or None when unreadable, is_last_line) for a JSON-lines file.

    A last line without its newline is yielded as unreadable unless it parses: a `write` cut by a kill.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            yield number, None, last
            continue
        yield number, record if isinstance(record, dict) else None, last


class ResponseStore:
    """Append-only store of MLLM answers, indexed by request key.

    Args:
        folder: the store's folder (created when missing).
        tag: names this writer's files (e.g. the shard, `s1of4`); the pid and a random token are added.
        fsync_interval_s: seconds between `os.fsync` calls (0 = after every record). Every record is flushed
            to the kernel at once regardless, which is what survives a `kill -9`.
        log_failures: also record failed requests in a failures log (audit only).

    Raises:
        InputError: `folder` exists and is not a folder.
    """

    def __init__(
        self, folder: str | Path, *, tag: str = "w", fsync_interval_s: float = 1.0, log_failures: bool = True
    ) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError("the response store must be a folder", file=self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tag = _safe_tag(tag)
        self.fsync_interval_s = float(fsync_interval_s)
        self.log_failures = log_failures
        self._index: dict[str, StoredAnswer] = {}
        self._file: TextIO | None = None
        self._failures: TextIO | None = None
        self._last_fsync = float("-inf")  # the first record is synced at once
        self._unsynced = False
        self._token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.stats = StoreStats()
        self.written = 0
        self.failures_written = 0
        self.load()

    # -- reading -----------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The responses files of the store, sorted by name."""
        return sorted(self.folder.glob("responses-*.jsonl"))

    def load(self) -> StoreStats:
        """(Re)read every responses file and rebuild the index; returns (and keeps) the stats.

        Unreadable last lines are counted as `truncated`, other unreadable lines as `corrupt` (with a warning);
        neither stops loading: a lost record only means its request is sent again.
        """
        stats = StoreStats()
        index: dict[str, StoredAnswer] = {}
        for path in self.files():
            stats.files += 1
            for number, record, last in iter_records(path):
                stored = _to_stored(record) if record is not None else None
                if stored is None:
                    if last:
                        stats.truncated += 1
                    else:
                        stats.corrupt += 1
                        if len(stats.corrupt_files) < 20:
                            stats.corrupt_files.append(f"{path}:{number}")
                    continue
                stats.records += 1
                if not record.get("reusable", False):
                    continue
                if stored.key in index:
                    stats.duplicates += 1
                    continue
                index[stored.key] = stored
        stats.reusable = len(index)
        if stats.corrupt:
            warnings.warn(
                f"response store {self.folder}: {stats.corrupt} unreadable records skipped "
                f"(first: {stats.corrupt_files[0]}); their requests will be sent again",
                stacklevel=2,
            )
        self._index, self.stats = index, stats
        return stats

    def get(self, key: str) -> StoredAnswer | None:
        """The stored reusable answer for a key, or None."""
        return self._index.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._index))

    def keys(self) -> list[str]:
        """Keys of the reusable answers."""
        return list(self._index)

    def answers(self) -> list[StoredAnswer]:
        """The reusable answers, in the order they were indexed."""
        return list(self._index.values())

    # -- writing -----------------------------------------------------------------------------------------

    def _open(self, prefix: str) -> TextIO:
        path = self.folder / f"{prefix}-{self.tag}-{self._token}.jsonl"
        # "x": never append to a file someone else created (a killed run's truncated line stays its own).
        return open(path, "x", encoding="utf-8")  # noqa: SIM115 - held open for the store's lifetime

    def _write(self, handle: TextIO, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        handle.write(line)
        handle.flush()
        self._unsynced = True
        now = time.monotonic()
        if self.fsync_interval_s <= 0 or now - self._last_fsync >= self.fsync_interval_s:
            self.sync()
            self._last_fsync = now

    def put(self, key: str, fields: Mapping[str, Any], answer: Answer, *, reusable: bool = True) -> bool:
        """Record an answer before it counts as done.

        Args:
            key: `make_key(**fields)`.
            fields: the key fields (`key_fields(...)`), stored beside the answer for audit.
            answer: the backend's answer.
            reusable: whether `get` may serve it later (the request was deterministic).

        Returns:
            True when written as an answer; False for a failed answer (logged to the failures log only).
        """
        if answer.status != "answered":
            self.put_failure(key, fields, answer)
            return False
        if self._file is None:
            self._file = self._open("responses")
        record = {
            "v": RECORD_VERSION,
            "key": key,
            "fields": dict(fields),
            "reusable": bool(reusable),
            "request_id": answer.request_id,
            "answer": {name: getattr(answer, name) for name in _ANSWER_FIELDS},
            "created_at": _now(),
        }
        self._write(self._file, record)
        self.written += 1
        if reusable and key not in self._index:
            stored = _to_stored(record)
            assert stored is not None  # built just above from the same fields
            self._index[key] = stored
        return True

    def put_failure(self, key: str, fields: Mapping[str, Any], answer: Answer) -> None:
        """Log a failed request (audit only; never served by `get`)."""
        if not self.log_failures:
            return
        if self._failures is None:
            self._failures = self._open("failures")
        record = {
            "v": RECORD_VERSION,
            "key": key,
            "fields": dict(fields),
            "request_id": answer.request_id,
            "error": answer.error,
            "latency_s": answer.latency_s,
            "created_at": _now(),
        }
        self._write(self._failures, record)
        self.failures_written += 1

    def sync(self) -> None:
        """fsync the open files (durability against power loss; a kill -9 is already covered by the flush)."""
        if not self._unsynced:
            return
        for handle in (self._file, self._failures):
            if handle is not None:
                os.fsync(handle.fileno())
        self._unsynced = False

    def close(self) -> None:
        """fsync and close this writer's files (the index stays usable)."""
        self.sync()
        for handle in (self._file, self._failures):
            if handle is not None:
                handle.close()
        self._file = self._failures = None

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compact(self) -> Path:
        """Rewrite every record into one file (keys de-duplicated) and delete the old files.

        Only safe while no other process writes to the store. The new file is complete on disk before any
        old file is removed, so a crash in between leaves duplicates (tolerated), never a loss.

        Returns:
            The compacted file.
        """
        self.close()
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        old = self.files()
        for path in old:
            for _, record, _ in iter_records(path):
                if record is None or _to_stored(record) is None:
                    continue
                if record.get("reusable") and record["key"] in seen:
                    continue
                seen.add(record["key"])
                records.append(record)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        target = self.folder / f"responses-compacted-{token}.jsonl"
        with atomic_path(target, fsync=True) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        for path in old:
            path.unlink()
        self.load()
        return target


def _to_stored(record: Mapping[str, Any]) -> StoredAnswer | None:
    """A record as a StoredAnswer, or None when it lacks what a record must hold."""
    try:
        key, request_id, payload = record["key"], record["request_id"], record["answer"]
        if not isinstance(key, str) or not isinstance(payload, dict):
            return None
        answer = Answer(
            request_id=str(request_id), status="answered", **{name: payload.get(name) for name in _ANSWER_FIELDS}
        )
        return StoredAnswer(key, str(request_id), answer, str(record.get("created_at", "")), record.get("fields", {}))
    except (KeyError, TypeError):
        return None


#: the store folder's file of what each endpoint rejected: {endpoint key: {"rejected_params": [...]}}
ENDPOINTS_FILE = "endpoints.json"


def recall_endpoint(folder: str | Path, endpoint: str) -> dict[str, Any]:
    """What an earlier run learned about an endpoint (`Backend.learned`), or {} when nothing was.

    Kept beside the answers because it is learned by the same requests: a later run over the same store starts
    without the fields the endpoint rejected instead of paying one rejected request per field again. An unreadable
    file is ignored (relearning costs a few requests; failing the run would cost more).
    """
    path = Path(folder) / ENDPOINTS_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entry = known.get(endpoint) if isinstance(known, dict) else None
    return dict(entry) if isinstance(entry, dict) else {}


def remember_endpoint(folder: str | Path, endpoint: str, learned: Mapping[str, Any]) -> Path | None:
    """Record what a run learned about an endpoint (atomically; other endpoints' entries kept).

    Nothing is written when nothing was learned or it is already recorded, so a store of an endpoint that takes
    every field holds no such file. `endpoint` and `learned` name URLs (credentials stripped), model ids and
    field names: never a key.

    Returns:
        The file written, or None.
    """
    if not learned or recall_endpoint(folder, endpoint) == dict(learned):
        return None
    path = Path(folder) / ENDPOINTS_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    known[endpoint] = dict(learned)
    return write_json(known, path)
