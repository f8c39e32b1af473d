"""kill -9 in the middle of an MLLM run: the store stays consistent and a re-run sends only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # tests/mllm_fakes.py

from mllm_fakes import ScriptedBackend, make_dataset  # noqa: E402

from agegender.mllm.runner import crop_queries, plan_queries, query_samples  # noqa: E402
from agegender.mllm.store import ResponseStore, iter_records  # noqa: E402


def stored_lines(folder: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in folder.glob("responses-*.jsonl"))


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    data = tmp_path / "data"
    samples = make_dataset(data, n_images=30)
    samples.to_parquet(data / "samples.parquet", index=False)
    expected = [q.request_id for q in crop_queries(samples, None, data, "body")]
    store_dir, log = tmp_path / "store", tmp_path / "sent.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(TESTS / "mllm_fakes.py"), "run", "--data", str(data), "--store", str(store_dir)]
    cmd += ["--out", str(tmp_path / "killed.parquet"), "--latency", "0.05", "--concurrency", "2", "--log", str(log)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while stored_lines(store_dir) < 8:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.parquet").exists()  # it died before writing its table

    # the store: whole records only (at most a cut last line), no key twice
    for path in store_dir.glob("responses-*.jsonl"):
        records = list(iter_records(path))
        assert all(record is not None for _, record, last in records if not last)
    store = ResponseStore(store_dir)
    assert store.stats.corrupt == 0 and store.stats.truncated <= 1 and store.stats.duplicates == 0
    done = {s.request_id for s in store.answers()}
    assert 8 <= len(done) < len(expected), "kill came too late to test anything"
    sent_before = log.read_text().split()
    assert done <= set(sent_before)

    # resume: only the requests without a stored answer are sent, and the table is whole
    backend = ScriptedBackend("fake-model")
    plan = plan_queries(samples, ["body"])
    result = query_samples(plan, None, data, backend=backend, store=store, progress=False).results["body"]
    assert sorted(backend.requests) == sorted(set(expected) - done)
    assert result.manifest["cache_hits"] == len(done) and result.manifest["requests_sent"] == len(expected) - len(done)
    preds = result.predictions
    assert preds["sample_id"].is_unique and len(preds) == len(expected)
    assert (preds["status"] == "ok").all()
    # and a third run sends nothing
    final = ScriptedBackend("fake-model")
    query_samples(plan, None, data, backend=final, store=store_dir, progress=False)
    assert final.requests == []
