"""Fingerprints that resumable caches are keyed by: full file digests (cached safely), state dicts, folders."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch

import agegender.fingerprint as fp


def _rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Rewrite a file in place with as much of its old stat as a user can restore (size, atime, mtime).

    Waits until the change time has moved, which the file system sets on every write and no tool can set back:
    a rewrite within one timestamp tick keeps it, and that is what `RACY_S` guards against.
    """
    before = path.stat()
    for _ in range(500):
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            return
        time.sleep(0.01)
    pytest.skip("this file system does not move a file's change time on a rewrite")


def test_file_digest_is_cached_by_file_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fp, "CACHE_MIN_BYTES", 0)
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    truth = hashlib.sha256(b"a" * 1000).hexdigest()
    assert fp.file_sha256(path) == truth
    # written just now: hashed but not cached (a second write within the same tick could keep every stat field)
    assert not list((tmp_path / "cache").rglob("*.json"))
    monkeypatch.setattr(fp, "RACY_S", 0.0)
    assert fp.file_sha256(path) == truth
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1
    calls = []
    real = fp._hash_file
    monkeypatch.setattr(fp, "_hash_file", lambda p: calls.append(p) or "0" * 64)
    assert fp.file_sha256(path) == truth and not calls  # served from the cache, the file not read
    monkeypatch.setattr(fp, "_hash_file", real)
    # the same size and mtime, other contents: the cache must not answer for it
    _rewrite_keeping_stat(path, b"b" * 1000)
    assert fp.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
    # a copy with the old mtime is another file: hashed afresh
    copy = tmp_path / "copy.bin"
    copy.write_bytes(b"c" * 1000)
    os.utime(copy, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    assert fp.file_sha256(copy) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_cache_folder_that_cannot_be_written_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(fp.CACHE_ENV, str(blocker))
    monkeypatch.setattr(fp, "CACHE_MIN_BYTES", 0)
    monkeypatch.setattr(fp, "RACY_S", 0.0)
    path = tmp_path / "w.bin"
    path.write_bytes(b"z" * 10)
    assert fp.file_sha256(path) == hashlib.sha256(b"z" * 10).hexdigest()


def test_tensors_digest_is_values_not_layout() -> None:
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(4, 3, 2, 2), "scale": torch.tensor(2.0), "bf": torch.randn(3).bfloat16()}
    base = fp.tensors_sha256(state)
    assert fp.tensors_sha256({k: v.clone() for k, v in reversed(state.items())}) == base
    assert (
        fp.tensors_sha256({**state, "conv.weight": state["conv.weight"].to(memory_format=torch.channels_last)}) == base
    )
    changed = state["conv.weight"].clone()
    changed[1, 2, 1, 0] += 1e-3
    assert fp.tensors_sha256({**state, "conv.weight": changed}) != base
    assert fp.tensors_sha256({**state, "scale": torch.tensor(2.0, dtype=torch.float64)}) != base
    assert fp.tensors_sha256({**state, "conv.weight": state["conv.weight"].reshape(4, 12)}) != base


def test_describe_changes_names_the_entries() -> None:
    old = {"model": {"weights": "a" * 64, "age_range": [0, 100]}, "numerics": "float32"}
    new = {"model": {"weights": "b" * 64, "age_range": [0, 100]}, "numerics": "bf16-autocast", "extra": 1}
    lines = fp.describe_changes(old, new)
    assert lines[0] == "extra: <absent> -> 1"
    assert lines[1].startswith("model.weights: aaaaaaaa") and "-> bbbbbbbb" in lines[1]
    assert lines[2] == "numerics: float32 -> bf16-autocast"
    assert fp.describe_changes(old, json.loads(json.dumps(old))) == []
