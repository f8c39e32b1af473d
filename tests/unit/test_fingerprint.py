"""Fingerprints that resumable caches are keyed by: full file digests (cached safely), state dicts, folders."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import rewrite_keeping_stat  # noqa: E402

import agegender.fingerprint as fp  # noqa: E402


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
    rewrite_keeping_stat(path, b"b" * 1000)
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


def test_file_identities_resolve_links_and_skip_what_is_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real" / "a.jpg"
    real.parent.mkdir()
    real.write_bytes(b"a")
    (tmp_path / "dirlink").symlink_to(real.parent)
    (tmp_path / "filelink.jpg").symlink_to(real)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    asked = [real, tmp_path / "dirlink" / "a.jpg", tmp_path / "filelink.jpg", tmp_path / "dangling.jpg", tmp_path]
    ids = fp.file_identities([*asked, tmp_path / "missing.jpg"])
    assert ids[0] == ids[1] == ids[2] == fp.file_identity(real) and ids[0].path == str(real.resolve())
    assert ids[3:] == [None, None, None]
    monkeypatch.chdir(real.parent)
    assert fp.file_identities(["a.jpg"]) == [ids[0]]  # relative names too


def _settled_file(path: Path, data: bytes) -> fp.FileIdentity:
    path.write_bytes(data)
    return fp.file_identity(path)


def test_file_facts_served_only_for_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fp, "RACY_S", 0.0)
    a, b = _settled_file(tmp_path / "a", b"aa"), _settled_file(tmp_path / "b", b"bb")
    now = time.time_ns()
    with fp.FileFacts("size") as facts, fp.FileFacts("other") as other:
        assert facts.record([(a, "2"), (b, "2")], read_from_ns=now) == 2
        assert facts.lookup([a, b]) == {a: "2", b: "2"} and other.lookup([a, b]) == {}  # kinds kept apart
        facts.forget([b.path])
        assert facts.lookup([a, b]) == {a: "2"}
    rewrite_keeping_stat(tmp_path / "a", b"xx")
    with fp.FileFacts("size") as facts:
        assert facts.lookup([fp.file_identity(tmp_path / "a")]) == {}  # the ctime moved
        assert facts.record([(a, "2")], read_from_ns=now) == 0  # changed since its identity was taken: not kept
        racy = fp.file_identity(tmp_path / "b")
        assert facts.record([(racy, "2")], read_from_ns=max(racy.mtime_ns, racy.ctime_ns) - 1) == 0  # too recent


def test_file_facts_from_many_writers_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several stores (as two checks at once, each with its own connection) write and read one database."""
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fp, "RACY_S", 0.0)
    files = [_settled_file(tmp_path / f"f{k}", bytes(k)) for k in range(400)]
    now = time.time_ns()
    kept: list[int] = []

    def writer(start: int) -> None:
        with fp.FileFacts("n") as facts:
            for at in range(start, len(files), 40):
                kept.append(facts.record([(f, f.path) for f in files[at : at + 10]], read_from_ns=now))
                facts.lookup(files[:50])

    threads = [threading.Thread(target=writer, args=(k * 10,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(kept) == len(files)  # no store gave up (locked or otherwise)
    with fp.FileFacts("n") as facts:
        assert facts.lookup(files) == {f: f.path for f in files}
