"""The response store: keys, round trip, crash tolerance, concurrent writers, what is (not) reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agegender.errors import InputError
from agegender.mllm.backends.base import Answer, GenerationParams, image_hash
from agegender.mllm.store import ResponseStore, iter_records, key_fields, make_key

PARAMS = GenerationParams().as_key()


def fields_for(i: int, **overrides: object) -> dict:
    base = {
        "backend": "openai",
        "model": "gpt-4o",
        "model_revision": None,
        "prompt_version": "paper-2024-v1",
        "image_hash": image_hash(np.full((4, 4, 3), i, dtype=np.uint8)),
        "params": PARAMS,
        "options": {},
    }
    base.update(overrides)
    return key_fields(**base)


def answer(i: int, **kw: object) -> Answer:
    values = {
        "text": f"[female; {i}]",
        "finish_reason": "stop",
        "prompt_tokens": 90,
        "completion_tokens": 6,
        "system_fingerprint": "fp_1",
        "latency_s": 0.5,
    }
    values.update(kw)
    return Answer(f"s{i}|body", "answered", **values)


def put(store: ResponseStore, i: int, **kw: object) -> str:
    fields = fields_for(i)
    key = make_key(**fields)
    store.put(key, fields, answer(i, **kw))
    return key


def test_key_is_canonical_and_covers_every_field() -> None:
    f = fields_for(1)
    assert make_key(**f) == make_key(**dict(reversed(list(f.items()))))
    assert make_key(**f) == make_key(**{**f, "params": dict(reversed(list(PARAMS.items())))})
    assert len(make_key(**f)) == 64
    variants = [
        {"backend": "transformers"},
        {"model": "gpt-4o-mini"},
        {"model_revision": "abc"},
        {"prompt_version": "paper-2024-v2"},
        {"image_hash": "0" * 64},
        {"params": {**PARAMS, "seed": 1}},
        {"params": {**PARAMS, "detail": "low"}},
        {"options": {"pad_to_square": False}},
    ]
    keys = {make_key(**{**f, **v}) for v in variants}
    assert len(keys) == len(variants) and make_key(**f) not in keys


def test_round_trip(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "store", tag="s1of2") as store:
        keys = [put(store, i) for i in range(5)]
        assert len(store) == 5 and all(k in store for k in keys)
    files = list((tmp_path / "store").glob("responses-s1of2-*.jsonl"))
    assert len(files) == 1
    again = ResponseStore(tmp_path / "store")
    assert len(again) == 5 and again.stats.records == 5 and again.stats.truncated == 0
    got = again.get(keys[3])
    assert got is not None and got.answer == answer(3) and got.request_id == "s3|body"
    assert got.fields == fields_for(3) and got.created_at.endswith("Z")
    assert again.get("0" * 64) is None


def test_records_hold_hashes_and_answers_only(tmp_path: Path) -> None:
    with ResponseStore(tmp_path) as store:
        put(store, 7)
    [(_, record, _)] = list(iter_records(next(tmp_path.glob("responses-*.jsonl"))))
    assert set(record) == {"v", "key", "fields", "reusable", "request_id", "answer", "created_at"}
    assert set(record["fields"]) == {
        "backend",
        "model",
        "model_revision",
        "prompt_version",
        "image_hash",
        "params",
        "options",
    }
    assert set(record["answer"]) == {
        "text",
        "finish_reason",
        "refusal",
        "prompt_tokens",
        "completion_tokens",
        "system_fingerprint",
        "model_revision",
        "latency_s",
    }


def test_truncated_last_line_is_tolerated_and_counted(tmp_path: Path) -> None:
    with ResponseStore(tmp_path) as store:
        keys = [put(store, i) for i in range(3)]
    path = next(tmp_path.glob("responses-*.jsonl"))
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"key":"abc","fields":{"backend":"op')  # a write cut by kill -9
    store = ResponseStore(tmp_path)
    assert store.stats.truncated == 1 and store.stats.corrupt == 0 and store.stats.records == 3
    assert set(store.keys()) == set(keys)
    # a new writer never appends to the damaged file: its records stay readable
    key = put(store, 9)
    store.close()
    reloaded = ResponseStore(tmp_path)
    assert key in reloaded and reloaded.stats.files == 2 and reloaded.stats.truncated == 1


def test_corrupt_middle_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    with ResponseStore(tmp_path) as store:
        for i in range(3):
            put(store, i)
    path = next(tmp_path.glob("responses-*.jsonl"))
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="unreadable"):
        store = ResponseStore(tmp_path)
    assert store.stats.corrupt == 1 and store.stats.truncated == 0 and len(store) == 2
    assert store.stats.corrupt_files == [f"{path}:2"]


def test_failed_answers_are_logged_but_never_reused(tmp_path: Path) -> None:
    fields = fields_for(1)
    key = make_key(**fields)
    with ResponseStore(tmp_path) as store:
        failed = Answer("s1|body", "failed", error="HTTP 503 after 5 retries")
        assert store.put(key, fields, failed) is False
        assert store.get(key) is None and store.failures_written == 1 and store.written == 0
    assert not list(tmp_path.glob("responses-*.jsonl"))
    [(_, record, _)] = list(iter_records(next(tmp_path.glob("failures-*.jsonl"))))
    assert record["error"] == "HTTP 503 after 5 retries" and record["key"] == key
    assert ResponseStore(tmp_path).get(key) is None
    with ResponseStore(tmp_path / "quiet", log_failures=False) as store:
        store.put(key, fields, failed)
    assert not list((tmp_path / "quiet").glob("*.jsonl"))


def test_non_deterministic_answers_are_kept_for_audit_but_not_reused(tmp_path: Path) -> None:
    fields = fields_for(1, params={**PARAMS, "temperature": 0.7})
    key = make_key(**fields)
    with ResponseStore(tmp_path) as store:
        assert store.put(key, fields, answer(1), reusable=False) is True
        assert store.get(key) is None
    reloaded = ResponseStore(tmp_path)
    assert reloaded.get(key) is None and reloaded.stats.records == 1 and reloaded.stats.reusable == 0


def test_duplicates_keep_the_first_and_compact_merges_files(tmp_path: Path) -> None:
    with ResponseStore(tmp_path, tag="a") as a, ResponseStore(tmp_path, tag="b") as b:
        key = put(a, 1, text="[female; 1]")
        put(b, 1, text="[female; 1]")
        put(b, 2)
    store = ResponseStore(tmp_path)
    assert store.stats.files == 2 and store.stats.duplicates == 1 and len(store) == 2
    target = store.compact()
    assert [p.name for p in tmp_path.glob("responses-*.jsonl")] == [target.name]
    assert store.stats.duplicates == 0 and store.stats.records == 2 and store.get(key).answer.text == "[female; 1]"


def test_fsync_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    with ResponseStore(tmp_path / "every", fsync_interval_s=0) as store:
        for i in range(4):
            put(store, i)
        assert len(calls) == 4
    calls.clear()
    with ResponseStore(tmp_path / "grouped", fsync_interval_s=3600) as store:
        for i in range(4):
            put(store, i)
        assert len(calls) == 1  # the first record, then none until close
    assert len(calls) == 2  # close syncs what is left


def test_store_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="folder"):
        ResponseStore(tmp_path / "file")


WRITER = textwrap.dedent(
    """
    import sys
    from agegender.mllm.backends.base import Answer
    from agegender.mllm.store import ResponseStore, make_key

    folder, tag, start, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with ResponseStore(folder, tag=tag, fsync_interval_s=0.05) as store:
        for i in range(start, start + n):
            fields = dict(backend="b", model="m", model_revision=None, prompt_version="p",
                          image_hash=f"{i:064x}", params={"temperature": 0.0}, options={})
            store.put(make_key(**fields), fields, Answer(f"s{i}|body", "answered", text="[male; %d]" % (i % 100)))
    """
)


def test_concurrent_writers_in_two_processes(tmp_path: Path) -> None:
    n = 300
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag, str(start), str(n)])
        for tag, start in (("s1of2", 0), ("s2of2", n // 2))  # the halves overlap: 150 keys written by both
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    store = ResponseStore(tmp_path)
    assert store.stats.files == 2 and store.stats.records == 2 * n
    assert store.stats.corrupt == 0 and store.stats.truncated == 0
    assert len(store) == n + n // 2 and store.stats.duplicates == n // 2
    for path in store.files():
        for _, record, _ in iter_records(path):
            assert record is not None and json.dumps(record)


def test_what_an_endpoint_rejected_is_kept_per_endpoint_beside_the_answers(tmp_path):
    from agegender.mllm.store import ENDPOINTS_FILE, recall_endpoint, remember_endpoint

    assert recall_endpoint(tmp_path, "https://e/v1 m") == {}
    assert remember_endpoint(tmp_path, "https://e/v1 m", {}) is None  # nothing learned: no file
    assert not (tmp_path / ENDPOINTS_FILE).exists()
    learned = {"rejected_params": ["seed"]}
    assert remember_endpoint(tmp_path, "https://e/v1 m", learned) == tmp_path / ENDPOINTS_FILE
    assert remember_endpoint(tmp_path, "https://e/v1 m", learned) is None  # already known: not rewritten
    remember_endpoint(tmp_path, "https://f/v1 m", {"rejected_params": ["n"]})
    assert recall_endpoint(tmp_path, "https://e/v1 m") == learned  # other endpoints' entries kept
    assert recall_endpoint(tmp_path, "https://f/v1 m") == {"rejected_params": ["n"]}
    (tmp_path / ENDPOINTS_FILE).write_text("{broken", encoding="utf-8")
    assert recall_endpoint(tmp_path, "https://e/v1 m") == {}  # unreadable: relearned, not fatal
    assert remember_endpoint(tmp_path, "https://e/v1 m", learned) is not None
