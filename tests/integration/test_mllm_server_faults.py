"""The `openai` backend against the project's own server, a real process on loopback, with injected faults.

Every query must end with exactly one answer with the right status, and a re-run of the failed ones must
fill them in. Timeouts are short so the whole file runs in seconds.
"""

import asyncio
import http.client
import json
import logging
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from agegender.cli.mllm_server import main
from agegender.errors import InputError
from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query
from agegender.mllm.backends.openai_backend import OpenAIBackend
from agegender.mllm.tools.server import REFUSAL_TEXT, FaultPlan, running_server

SECRET = "sk-integration-SECRET-9876543210"


def image(seed, h=24, w=20):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def client(url, **options):
    options = {"api_key_env": None, "timeout_s": 1.0, "max_retries": 1, "backoff_s": 0.05, "jitter_seed": 0, **options}
    return OpenAIBackend(options.pop("model", "echo"), base_url=url, **options)


def get_json(url, path, method="GET", body=None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


MARKERS = {
    "#429once": ("429", "answered"),
    "#500once": ("500", "answered"),
    "#500always": ("500", "failed"),
    "#timeout": ("timeout", "failed"),
    "#malformed": ("malformed", "failed"),
    "#droponce": ("drop", "answered"),
    "#dropalways": ("drop", "failed"),
    "#refuse": ("refuse", "answered"),
    "#refusalfield": ("refusal_field", "answered"),
    "#contentfilter": ("content_filter", "answered"),
}


def test_every_fault_ends_in_exactly_one_answer_with_the_right_status():
    faults: dict = {}
    for marker, (kind, _) in MARKERS.items():
        trigger = {"marker": marker, "times": 1} if marker.endswith("once") else marker
        faults.setdefault(kind, []).append(trigger)
    qs = [Query(f"plain{i}", image(i), f"How old? plain{i}") for i in range(4)]
    qs += [Query(m, image(100 + k), f"How old? {m}") for k, m in enumerate(MARKERS)]
    with running_server("echo", "echo", faults=faults, retry_after_s=1.0, hang_s=30) as url:
        backend = client(url, concurrency=8)
        start = time.monotonic()
        answers = backend.generate_batch(qs)
        elapsed = time.monotonic() - start
        _, stats = get_json(url, "/stats")
    assert [a.request_id for a in answers] == [q.request_id for q in qs]
    by_id = {a.request_id: a for a in answers}
    for q in qs[:4]:  # the image crossed the wire pixel for pixel
        a = by_id[q.request_id]
        assert a.status == "answered" and a.text.startswith(f"20x24 sha256:{q.image_hash[:16]}")
        assert a.model_revision == "echo" and a.system_fingerprint.startswith("fp_") and a.prompt_tokens > 0
    for marker, (_, status) in MARKERS.items():
        assert by_id[marker].status == status, (marker, by_id[marker])
    assert by_id["#429once"].latency_s >= 1.0  # waited for Retry-After
    assert by_id["#refuse"].text == REFUSAL_TEXT
    assert by_id["#refusalfield"].refusal == REFUSAL_TEXT and by_id["#refusalfield"].text is None
    assert by_id["#contentfilter"].finish_reason == "content_filter"
    assert "500" in by_id["#500always"].error and "after 2 attempts" in by_id["#500always"].error
    assert "timed out" in by_id["#timeout"].error.lower()
    assert by_id["#malformed"].error.startswith("malformed")
    assert "disconnected" in by_id["#dropalways"].error.lower()
    # the malformed body is not retried; the rest of the failures are, once
    assert stats["faults"] == {
        "429": 1,
        "500": 3,
        "timeout": 2,
        "malformed": 1,
        "drop": 3,
        "refuse": 1,
        "refusal_field": 1,
        "content_filter": 1,
    }
    assert elapsed < 60  # generous: this machine is shared


def test_a_rerun_fills_in_the_failed_ones():
    faults = {"500": [2], "malformed": [5], "drop": [7], "timeout": [9], "429": [11]}
    qs = [Query(f"s{i}", image(i), "How old?") for i in range(12)]
    with running_server("constant", "constant", faults=faults, retry_after_s=0.2) as url:
        backend = client(url, model="constant", concurrency=4, max_retries=0, timeout_s=0.5)
        first = backend.generate_batch(qs)
        failed = [q for q, a in zip(qs, first, strict=True) if a.status == "failed"]
        assert len(failed) == 5 and all(a.error for a in first if a.status == "failed")
        second = backend.generate_batch(failed)
        _, stats = get_json(url, "/stats")
    assert [a.status for a in second] == ["answered"] * 5
    final = {a.request_id: a for a in first if a.status == "answered"} | {a.request_id: a for a in second}
    assert sorted(final) == sorted(q.request_id for q in qs)
    assert {a.text for a in final.values()} == {"[female; 40]"}
    assert stats["requests"] == 17


def test_unsupported_params_are_dropped_and_the_key_never_leaks(monkeypatch, caplog):
    monkeypatch.setenv("STUDY_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    qs = [Query(f"a{i}", image(i), "How old?") for i in range(3)] + [Query("auth", image(9), "How old? #auth")]
    with running_server("constant", "constant", reject_params=["seed"], faults={"401": ["#auth"]}) as url:
        backend = client(url, model="constant", api_key_env="STUDY_KEY", concurrency=1)
        answers = backend.generate_batch(qs)
    assert [a.status for a in answers] == ["answered"] * 3 + ["failed"]
    assert "401" in answers[-1].error and "***" in answers[-1].error
    assert backend.activity()["dropped_params"] == ["seed"]
    assert SECRET not in caplog.text + json.dumps(backend.describe()) + repr(answers)


def test_the_server_speaks_the_openai_protocol():
    with running_server("constant", "constant", served_model="tiny-llava", latency_ms=100, max_wait_ms=20) as url:
        status, models = get_json(url, "/v1/models")
        assert status == 200 and models["data"][0]["id"] == "tiny-llava"
        # wrong model: 404, not retried, failed
        wrong = client(url, model="other")
        (a,) = wrong.generate_batch([Query("x", image(0), "p")])
        assert a.status == "failed" and "404" in a.error
        # a URL that is not a data: URL is refused (the server fetches nothing)
        body = {
            "model": "tiny-llava",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "p"},
                        {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                    ],
                }
            ],
        }
        status, err = get_json(url, "/v1/chat/completions", "POST", body)
        assert status == 400 and "data:" in err["error"]["message"]
        # concurrent requests are grouped into batches
        backend = client(url, model="tiny-llava", concurrency=16)
        answers = backend.generate_batch([Query(f"b{i}", image(i), "p") for i in range(32)])
        assert {a.status for a in answers} == {"answered"}
        _, stats = get_json(url, "/stats")
    assert stats["max_batch"] > 1 and stats["batches"] < stats["batched_queries"]


class ScriptedBackend(Backend):
    """A local model that answers from a script keyed by prompt, recording its batch sizes."""

    name = "scripted-test"

    def __init__(self, model="scripted", **kw):
        super().__init__(model, **kw)
        self.batches = []

    def generate_batch(self, queries):
        self.batches.append(len(queries))
        out = []
        for q in queries:
            if "boom" in q.prompt:
                out.append(Answer(q.request_id, "failed", error="scripted model error"))
            else:
                out.append(Answer(q.request_id, "answered", text=f"[male; {len(q.prompt)}]", finish_reason="length"))
        return out


def test_an_in_process_server_wraps_any_backend_instance():
    fake = ScriptedBackend(params=GenerationParams())
    with running_server(fake, batch_size=4, max_wait_ms=50) as url:
        backend = client(url, model="scripted", concurrency=8, max_retries=1)
        answers = backend.generate_batch(
            [Query(f"q{i}", image(i), "x" * (i + 1)) for i in range(8)] + [Query("boom", image(99), "boom")]
        )
    assert [a.text for a in answers[:8]] == [f"[male; {i + 1}]" for i in range(8)]
    assert {a.finish_reason for a in answers[:8]} == {"length"}
    assert answers[8].status == "failed" and "scripted model error" in answers[8].error
    assert max(fake.batches) <= 4 and sum(fake.batches) == 10  # the failing one was tried twice


def test_fault_plans_and_hosts_are_validated():
    with pytest.raises(InputError, match="unknown fault kind"):
        FaultPlan({"418": [1]})
    with pytest.raises(InputError, match="trigger"):
        FaultPlan({"500": [1.5]})
    with pytest.raises(InputError, match="start at 1"):
        FaultPlan({"500": [0]})
    plan = FaultPlan({"500": [2, {"marker": "#x", "times": 1}], "drop": ["#x"]})
    assert [plan.pick(n, t) for n, t in [(1, ""), (2, ""), (3, "#x"), (4, "#x")]] == [None, "500", "500", "drop"]
    with pytest.raises(InputError, match="loopback"), running_server("constant", host="0.0.0.0"):
        pass
    assert main(["--backend", "constant", "--faults", "{not json"]) == 2


def test_astream_yields_answers_as_they_complete():
    faults = {"timeout": ["#slow"]}
    qs = [Query("slow", image(0), "#slow")] + [Query(f"f{i}", image(i), "fast") for i in range(3)]
    with running_server("constant", "constant", faults=faults) as url:
        backend = client(url, model="constant", concurrency=4, max_retries=0, timeout_s=1.0)

        async def collect():
            return [a.request_id async for a in backend.astream(qs)]

        order = asyncio.run(collect())
    assert order[-1] == "slow" and sorted(order) == sorted(q.request_id for q in qs)


@pytest.mark.slow
def test_a_tiny_llava_served_over_the_wire_answers_as_it_does_locally(tmp_path):
    """`python -m agegender.mllm.tools.server --backend transformers --model DIR`: same greedy text as in-process."""
    from agegender.mllm.backends.base import create_backend
    from agegender.mllm.prompt import PROMPT
    from agegender.mllm.tools.tiny import build_tiny_llava

    model_dir = str(build_tiny_llava(tmp_path / "tiny_llava", kind="llava", image_size=56))
    params = GenerationParams(max_new_tokens=6)
    qs = [Query(f"t{i}", image(i, 40 + 3 * i, 30), PROMPT) for i in range(3)]
    local = create_backend("transformers", model_dir, params=params, batch_size=1)
    try:
        expected = local.generate_batch(qs)
    finally:
        local.close()
    with running_server("transformers", model_dir, params=params, backend_options={"batch_size": 1}) as url:
        backend = client(url, model=model_dir, concurrency=1, timeout_s=120)
        answers = backend.generate_batch(qs)
    assert [a.status for a in answers] == ["answered"] * 3
    assert [a.text for a in answers] == [a.text for a in expected]
    assert all(a.completion_tokens and a.prompt_tokens for a in answers)
    assert answers[0].model_revision == model_dir and answers[0].system_fingerprint.startswith("fp_")
