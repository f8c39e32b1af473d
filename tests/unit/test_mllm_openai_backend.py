"""The `openai` backend: request building, answer extraction, key handling, retries, concurrency.

The network is replaced by a scripted `httpx2.MockTransport`, so every status, header and body is exact.
"""

import asyncio
import base64
import io
import json
import logging
import time

import httpx2
import numpy as np
import pytest
from PIL import Image

from agegender.errors import InputError
from agegender.mllm.backend_options import (
    OpenAIOptions,
    TransformersOptions,
    insecure_http_problem,
    is_loopback_host,
    is_loopback_url,
    load_backend_options,
    options_mapping,
    safe_url,
)
from agegender.mllm.backends.base import Answer, GenerationParams, Query, create_backend
from agegender.mllm.backends.openai_backend import (
    OpenAIBackend,
    answer_from_completion,
    encode_image,
    parse_retry_after,
)

LOCAL = "http://127.0.0.1:9/v1"  # never contacted: the transport is mocked
SECRET = "sk-test-SECRET-0123456789abcdef"


def completion(text="[female; 40]", *, refusal=None, finish_reason="stop", model="served-model-2024-01-01"):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "system_fingerprint": "fp_test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": refusal},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }


def image(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def queries(n, prompt="p"):
    return [Query(f"q{i}", image(seed=i), prompt) for i in range(n)]


class Script:
    """A mock server: `handler(request, call_number) -> httpx2.Response` (or raise), recording what it saw."""

    def __init__(self, handler):
        self.handler = handler
        self.requests = []
        self.times = []

    def __call__(self, request):
        self.requests.append(request)
        self.times.append(time.monotonic())
        return self.handler(request, len(self.requests))

    def bodies(self):
        return [json.loads(r.content) for r in self.requests]

    @property
    def transport(self):
        return httpx2.MockTransport(self)


def backend(script, **options):
    options = {"base_url": LOCAL, "backoff_s": 0.01, "jitter_seed": 0, "http_transport": script.transport, **options}
    return OpenAIBackend("served-model", **options)


# --- request building ----------------------------------------------------------------------------------------


def test_png_data_url_round_trips_the_pixels():
    img = image(20, 30)
    url = encode_image(img)
    assert url.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    np.testing.assert_array_equal(decoded, img)
    assert encode_image(img, "jpeg").startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3))])
def test_bad_images_raise_input_error(bad):
    with pytest.raises(InputError, match="image"):
        encode_image(bad)


def test_request_has_the_paper_settings():
    b = OpenAIBackend("gpt-4o", base_url=LOCAL)
    q = Query("a", image(), "the prompt")
    req = b.build_request(q)
    assert req["model"] == "gpt-4o"
    assert req["temperature"] == 0.0 and req["seed"] == 1234 and req["n"] == 1
    assert req["max_tokens"] == 32 and "max_completion_tokens" not in req  # a non-OpenAI server
    (msg,) = req["messages"]
    assert msg["role"] == "user"
    text, img = msg["content"]
    assert text == {"type": "text", "text": "the prompt"}
    assert img["type"] == "image_url" and img["image_url"]["detail"] == "high"
    assert img["image_url"]["url"].startswith("data:image/png;base64,")


def test_openai_itself_gets_max_completion_tokens(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    req = OpenAIBackend("gpt-4o").build_request(Query("a", image(), "p"))
    assert req["max_completion_tokens"] == 32 and "max_tokens" not in req


def test_toggles_and_unset_params_are_not_sent():
    params = GenerationParams(seed=None, detail=None, max_new_tokens=7)
    req = OpenAIBackend("m", base_url=LOCAL, params=params).build_request(Query("a", image(), "p"))
    assert "seed" not in req and "detail" not in req["messages"][0]["content"][1]["image_url"]
    b = OpenAIBackend("m", base_url=LOCAL, send_seed=False, send_detail=False, send_n=False, image_format="jpeg")
    req = b.build_request(Query("a", image(), "p"))
    assert not {"seed", "n"} & set(req)
    assert "detail" not in req["messages"][0]["content"][1]["image_url"]
    assert req["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg")
    assert b.sent_params() == ["temperature", "max_tokens"]


def test_bad_options_raise_input_error():
    with pytest.raises(InputError, match="n must be 1"):
        OpenAIBackend("m", base_url=LOCAL, params=GenerationParams(n=2))
    with pytest.raises(InputError, match="base_url"):
        OpenAIBackend("m", base_url="ftp://x")
    with pytest.raises(InputError, match="concurrency"):
        OpenAIBackend("m", base_url=LOCAL, concurrency=0)


def test_registered_under_openai():
    assert isinstance(create_backend("openai", "m", base_url=LOCAL), OpenAIBackend)


def test_create_backend_takes_typed_options():
    options = load_backend_options("openai", {"base_url": LOCAL, "concurrency": 3, "api_key_env": None})
    backend = create_backend("openai", "m", options=options)
    assert isinstance(backend, OpenAIBackend)
    assert (backend.base_url, backend.concurrency, backend.api_key_env) == (LOCAL, 3, None)
    # the same backend from keyword arguments: one options class decides both
    assert (
        backend.describe() == create_backend("openai", "m", base_url=LOCAL, concurrency=3, api_key_env=None).describe()
    )
    assert create_backend("openai", "m", options={"base_url": LOCAL, "concurrency": 3}).concurrency == 3  # a mapping
    with pytest.raises(TypeError, match="OpenAIOptions, not TransformersOptions"):
        create_backend("openai", "m", options=TransformersOptions())
    with pytest.raises(TypeError, match="not both"):
        create_backend("openai", "m", options=options, concurrency=4)


def test_load_backend_options_names_the_option_below_its_key_path():
    with pytest.raises(InputError) as info:
        load_backend_options("openai", {"concurency": 4})
    assert info.value.field == "concurency" and info.value.message.startswith("unknown key (known: base_url, ")
    with pytest.raises(InputError) as info:
        load_backend_options("openai", {"concurrency": 0}, where="options")
    assert (info.value.field, info.value.message) == ("options.concurrency", "must be >= 1, not 0")
    assert load_backend_options("mypkg:Backend", {"x": 1}) == {"x": 1}  # checked by its class when built


def test_options_mapping_gives_back_what_one_would_write():
    typed = load_backend_options("transformers", {"batch_size": 2, "device": "auto", "system_prompt": "Hi."})
    assert options_mapping(typed) == {"batch_size": 2, "system_prompt": "Hi."}  # defaults left out
    assert load_backend_options("transformers", options_mapping(typed)) == typed
    assert options_mapping(None) == {} and options_mapping({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="code-only option http_transport"):
        options_mapping(OpenAIOptions(http_transport=object()))


# --- answer extraction ---------------------------------------------------------------------------------------


def test_answer_carries_text_usage_fingerprint_and_served_model():
    a = answer_from_completion("r", completion("[male; 31]"), 0.5)
    assert a == Answer(
        "r",
        "answered",
        text="[male; 31]",
        finish_reason="stop",
        prompt_tokens=11,
        completion_tokens=4,
        system_fingerprint="fp_test",
        model_revision="served-model-2024-01-01",
        latency_s=0.5,
    )


def test_refusals_are_answers_not_failures():
    a = answer_from_completion("r", completion(None, refusal="I can't help with that."))
    assert a.status == "answered" and a.text is None and a.refusal == "I can't help with that."
    a = answer_from_completion("r", completion(None, finish_reason="content_filter"))
    assert a.status == "answered" and a.finish_reason == "content_filter"
    a = answer_from_completion("r", completion("I'm sorry, I can't help with that."))
    assert a.status == "answered" and a.text.startswith("I'm sorry")


def test_a_body_without_choices_is_failed():
    assert answer_from_completion("r", {"id": "x"}).status == "failed"


# --- where requests go, and the key --------------------------------------------------------------------------


def test_missing_key_for_a_remote_endpoint_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_KEY_VAR", raising=False)
    with pytest.raises(InputError, match="MY_KEY_VAR"):
        OpenAIBackend("m", base_url="https://example.invalid/v1", api_key_env="MY_KEY_VAR")


def test_loopback_and_no_auth_get_the_placeholder(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    script = Script(lambda r, i: httpx2.Response(200, json=completion()))
    backend(script).generate_batch(queries(1))
    remote = Script(lambda r, i: httpx2.Response(200, json=completion()))
    backend(remote, base_url="https://example.invalid/v1", api_key_env=None).generate_batch(queries(1))
    assert [s.requests[0].headers["authorization"] for s in (script, remote)] == ["Bearer EMPTY"] * 2
    assert is_loopback_url("http://localhost:8000/v1") and is_loopback_url("http://[::1]:80/v1")
    assert not is_loopback_url("https://api.openai.com/v1")


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.2:8000/v1",  # a non-loopback address (the hostile run used the machine's own eth0 address)
        "http://example.com/v1",
        "http://0.0.0.0:8000/v1",  # every interface of this machine, not its loopback
        "http://10.0.0.1/v1",
        "http://[fd00::2]:8000/v1",
        "http://app.localhost:8000/v1",  # a name DNS may answer for: not resolved, not trusted
        "http://[::ffff:127.0.0.1]:8000/v1",  # an IPv4-mapped address: not taken as loopback
    ],
)
def test_plain_http_to_another_host_is_refused_at_construction(url, monkeypatch):
    monkeypatch.setenv("STUDY_KEY", SECRET)
    with pytest.raises(InputError) as info:
        OpenAIBackend("m", base_url=url, api_key_env="STUDY_KEY")
    message = str(info.value)
    assert info.value.field == "base_url" and "\n" not in message
    for needle in ("plain http://", "unencrypted", "API key", "photo", "https://", "allow_insecure_http: true"):
        assert needle in message, (needle, message)
    assert "--allow-insecure-http" in message and SECRET not in message
    # the explicit opt-in lets it through, and the run manifest records it
    accepted = OpenAIBackend("m", base_url=url, api_key_env="STUDY_KEY", allow_insecure_http=True)
    assert accepted.describe()["allow_insecure_http"] is True


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/v1", "http://127.4.5.6/v1", "http://[::1]:8000/v1", "http://localhost:8000/v1",
     "https://example.com/v1", "https://192.0.2.2/v1", None],
)  # fmt: skip
def test_loopback_and_https_need_no_opt_in(url, monkeypatch):
    monkeypatch.setenv("STUDY_KEY", SECRET)
    assert insecure_http_problem(url) is None
    b = OpenAIBackend("m", base_url=url, api_key_env="STUDY_KEY")
    assert "allow_insecure_http" not in b.describe()  # manifests of ordinary runs are unchanged


def test_localhost_counts_only_when_it_resolves_to_loopback(monkeypatch):
    import socket

    def resolves_to(*addresses):
        def fake(host, *args, **kwargs):
            assert host == "localhost"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses]

        return fake

    monkeypatch.setattr(socket, "getaddrinfo", resolves_to("127.0.0.1", "::1"))
    assert is_loopback_host("localhost") and is_loopback_host("LOCALHOST")
    monkeypatch.setattr(socket, "getaddrinfo", resolves_to("127.0.0.1", "192.0.2.2"))
    assert not is_loopback_host("localhost")
    with pytest.raises(InputError, match="unencrypted"):
        OpenAIBackend("m", base_url="http://localhost:8000/v1", api_key_env=None)

    def unresolvable(*args, **kwargs):
        raise socket.gaierror("no such name")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    assert not is_loopback_host("localhost")
    assert is_loopback_host("127.0.0.1") and is_loopback_host("[::1]") and not is_loopback_host("")


@pytest.mark.parametrize("value", ["true", "false", 1, None])
def test_the_opt_in_must_be_a_boolean(value):
    # a YAML string "false" would be truthy: only a real boolean decides about clear text
    with pytest.raises(InputError) as info:
        OpenAIBackend("m", base_url="http://192.0.2.2/v1", api_key_env=None, allow_insecure_http=value)
    assert info.value.field == "allow_insecure_http"


def test_malformed_base_urls_are_input_errors():
    for url in ("ftp://example.com/v1", "http://[::1/v1", "127.0.0.1:8000"):
        with pytest.raises(InputError) as info:
            OpenAIBackend("m", base_url=url, api_key_env=None)
        assert info.value.field == "base_url" and "http(s) URL" in str(info.value)


def test_requests_go_only_to_the_configured_url(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://attacker.invalid/v1")
    script = Script(lambda r, i: httpx2.Response(200, json=completion()))
    OpenAIBackend("m", http_transport=script.transport).generate_batch(queries(1))
    assert str(script.requests[0].url) == "https://api.openai.com/v1/chat/completions"
    script = Script(lambda r, i: httpx2.Response(200, json=completion()))
    backend(script, base_url="http://127.0.0.1:8123/prefix/v1/").generate_batch(queries(1))
    assert str(script.requests[0].url) == "http://127.0.0.1:8123/prefix/v1/chat/completions"


def test_redirects_are_not_followed():
    def handler(request, i):
        return httpx2.Response(307, headers={"location": "http://elsewhere.invalid/v1/chat/completions"})

    script = Script(handler)
    (a,) = backend(script).generate_batch(queries(1))
    assert a.status == "failed" and len(script.requests) == 1


def test_the_key_is_never_logged_returned_or_described(monkeypatch, caplog):
    monkeypatch.setenv("STUDY_KEY", SECRET)

    def handler(request, i):  # OpenAI echoes the (masked) key in a 401; this one echoes all of it
        token = request.headers["authorization"].split()[1]
        assert token == SECRET
        return httpx2.Response(401, json={"error": {"message": f"Incorrect API key provided: {token}."}})

    caplog.set_level(logging.DEBUG)
    script = Script(handler)
    b = backend(script, base_url="https://example.invalid/v1", api_key_env="STUDY_KEY")
    (a,) = b.generate_batch(queries(1))
    assert a.status == "failed" and "401" in a.error and "***" in a.error
    everything = " ".join([repr(b), json.dumps(b.describe()), repr(a), caplog.text, repr(vars(a))])
    assert SECRET not in everything and SECRET[:12] not in everything
    assert b.describe()["api_key_env"] == "STUDY_KEY"
    assert safe_url("https://user:pw@host:8/v1?key=abc") == "https://host:8/v1"


# --- retries, timeouts, malformed bodies ---------------------------------------------------------------------


def test_retry_after_is_honoured():
    def handler(request, i):
        if i == 1:
            return httpx2.Response(429, headers={"retry-after": "1"}, json={"error": {"message": "slow down"}})
        return httpx2.Response(200, json=completion())

    script = Script(handler)
    (a,) = backend(script).generate_batch(queries(1))
    assert a.status == "answered"
    gap = script.times[1] - script.times[0]
    assert 1.0 <= gap < 3.0, gap  # no sooner than asked; the upper bound only catches a runaway wait


def test_retry_after_forms():
    assert parse_retry_after(httpx2.Headers({"retry-after-ms": "250"})) == 0.25
    assert parse_retry_after(httpx2.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx2.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # past
    assert parse_retry_after(httpx2.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx2.Headers({})) is None


def test_a_retry_after_beyond_the_limit_gives_up_at_once():
    script = Script(lambda r, i: httpx2.Response(429, headers={"retry-after": "3600"}, json={}))
    (a,) = backend(script, max_retry_after_s=60).generate_batch(queries(1))
    assert a.status == "failed" and "3600" in a.error and len(script.requests) == 1


def test_server_errors_are_retried_with_backoff_then_fail():
    flaky = Script(lambda r, i: httpx2.Response(500 if i < 3 else 200, json=completion()))
    (a,) = backend(flaky, max_retries=3).generate_batch(queries(1))
    assert a.status == "answered" and len(flaky.requests) == 3
    down = Script(lambda r, i: httpx2.Response(503, json={"error": {"message": "overloaded"}}))
    (a,) = backend(down, max_retries=2).generate_batch(queries(1))
    assert a.status == "failed" and "503" in a.error and "after 3 attempts" in a.error
    assert len(down.requests) == 3


def test_backoff_grows_and_has_jitter():
    b = OpenAIBackend("m", base_url=LOCAL, backoff_s=1.0, max_backoff_s=5.0, jitter_seed=1)
    delays = [b._backoff(k, None) for k in range(5)]
    assert all(0.5 * min(2**k, 5) <= d <= min(2**k, 5) for k, d in enumerate(delays))
    assert b._backoff(0, 2.0) >= 2.0


def test_timeouts_and_dropped_connections_fail_after_retries():
    def timeout(request, i):
        raise httpx2.ReadTimeout("timed out", request=request)

    script = Script(timeout)
    (a,) = backend(script, max_retries=2).generate_batch(queries(1))
    assert a.status == "failed" and "timed out" in a.error.lower() and len(script.requests) == 3

    def drop_once(request, i):
        if i == 1:
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx2.Response(200, json=completion())

    script = Script(drop_once)
    (a,) = backend(script).generate_batch(queries(1))
    assert a.status == "answered" and len(script.requests) == 2


@pytest.mark.parametrize(
    "response",
    [
        httpx2.Response(200, content=b'{"choices": [{"mess', headers={"content-type": "application/json"}),
        httpx2.Response(200, content=b"<html>gateway</html>", headers={"content-type": "text/html"}),
        httpx2.Response(200, json={"id": "x", "object": "chat.completion"}),
    ],
)
def test_malformed_bodies_fail_without_retry(response):
    script = Script(lambda r, i: response)
    (a,) = backend(script).generate_batch(queries(1))
    assert a.status == "failed" and a.error.startswith("malformed") and len(script.requests) == 1


def test_client_errors_are_not_retried():
    script = Script(lambda r, i: httpx2.Response(404, json={"error": {"message": "The model `x` does not exist"}}))
    (a,) = backend(script).generate_batch(queries(1))
    assert a.status == "failed" and "404" in a.error and len(script.requests) == 1


def test_an_unsupported_seed_is_dropped_once_and_remembered():
    def handler(request, i):
        if "seed" in json.loads(request.content):
            msg = "Unsupported parameter: 'seed' is not supported with this model."
            return httpx2.Response(400, json={"error": {"message": msg, "param": "seed"}})
        return httpx2.Response(200, json=completion())

    script = Script(handler)
    b = backend(script, concurrency=1)
    answers = b.generate_batch(queries(3))
    assert [a.status for a in answers] == ["answered"] * 3
    assert [("seed" in body) for body in script.bodies()] == [True, False, False, False]
    assert b.activity()["dropped_params"] == ["seed"] and "seed" not in b.activity()["sent_params"]


def test_max_tokens_switches_to_max_completion_tokens_when_rejected():
    def handler(request, i):
        if "max_tokens" in json.loads(request.content):
            msg = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'."
            return httpx2.Response(400, json={"error": {"message": msg, "type": "invalid_request_error"}})
        return httpx2.Response(200, json=completion())

    script = Script(handler)
    b = backend(script, concurrency=1)
    assert [a.status for a in b.generate_batch(queries(2))] == ["answered"] * 2
    assert script.bodies()[-1]["max_completion_tokens"] == 32
    assert b.max_tokens_param == "max_completion_tokens"


def test_an_unrelated_400_fails_without_dropping_anything():
    bad = httpx2.Response(400, json={"error": {"message": "Invalid image: could not decode", "param": "messages"}})
    script = Script(lambda r, i: bad)
    b = backend(script)
    (a,) = b.generate_batch(queries(1))
    assert a.status == "failed" and len(script.requests) == 1 and b.dropped_params == []


# --- concurrency and the Backend interface -------------------------------------------------------------------


def test_concurrency_is_bounded_and_every_query_gets_one_answer():
    state = {"now": 0, "max": 0}

    async def handler(request):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.03)
        state["now"] -= 1
        return httpx2.Response(200, json=completion())

    b = OpenAIBackend("m", base_url=LOCAL, concurrency=3, http_transport=httpx2.MockTransport(handler))
    qs = queries(12)

    async def run():
        return [a async for a in b.astream(qs)]

    answers = asyncio.run(run())
    assert sorted(a.request_id for a in answers) == sorted(q.request_id for q in qs)
    assert state["max"] == 3
    assert b.activity()["request_counts"]["answered"] == 12
    assert b.model_revision is None  # a cache key must not change once answers arrive
    assert b.activity()["served_models"] == {"served-model-2024-01-01": 12}
    assert b.key_options() == {"image_format": "png"}


def test_generate_batch_keeps_order_and_works_inside_a_running_loop():
    def handler(request, i):
        prompt = json.loads(request.content)["messages"][0]["content"][0]["text"]
        return httpx2.Response(200, json=completion(prompt))

    b = backend(Script(handler), concurrency=4)
    qs = [Query(f"q{i}", image(seed=i), f"prompt {i}") for i in range(9)]

    async def inside_a_notebook():
        return b.generate_batch(qs)

    for answers in (b.generate_batch(qs), asyncio.run(inside_a_notebook())):
        assert [a.text for a in answers] == [f"prompt {i}" for i in range(9)]


def test_a_bad_image_fails_its_query_only():
    script = Script(lambda r, i: httpx2.Response(200, json=completion()))
    good = Query("good", image(), "p")
    bad = Query("bad", np.zeros((4, 4, 3), np.float32), "p", image_hash="x")
    answers = backend(script).generate_batch([good, bad])
    assert [a.status for a in answers] == ["answered", "failed"] and "image" in answers[1].error


def test_unknown_options_are_rejected():
    with pytest.raises(InputError, match="concurency"):
        OpenAIBackend("m", base_url=LOCAL, concurency=4)
    assert OpenAIBackend("m", base_url=LOCAL, batch_size=5).batch_size == 5


def test_what_an_endpoint_rejected_is_learned_and_a_later_backend_starts_from_it():
    def handler(request, i):
        body = json.loads(request.content)
        if "seed" in body or "max_tokens" in body:
            name = "seed" if "seed" in body else "max_tokens"
            return httpx2.Response(400, json={"error": {"message": f"Unsupported parameter: '{name}'", "param": name}})
        return httpx2.Response(200, json=completion())

    first = backend(Script(handler), concurrency=1)
    assert first.endpoint() == f"{LOCAL} served-model" and first.learned() == {}
    assert [a.status for a in first.generate_batch(queries(2))] == ["answered"] * 2
    learned = first.learned()
    assert learned == {"rejected_params": ["max_tokens", "seed"]} and "recalled_params" not in first.activity()
    assert "key" not in json.dumps(learned).lower()  # field names only, never a key

    script = Script(handler)
    later = backend(script, concurrency=1)
    later.start_from({**learned, "rejected_params": [*learned["rejected_params"], "not-a-field"]})
    assert [a.status for a in later.generate_batch(queries(2))] == ["answered"] * 2
    assert len(script.requests) == 2  # no request was rejected: it started without the fields
    assert "seed" not in script.bodies()[0] and "max_completion_tokens" in script.bodies()[0]
    assert sorted(later.activity()["recalled_params"]) == ["max_tokens", "seed"]
    assert later.learned() == learned
    later.start_from({})  # nothing learned: nothing changes
    assert sorted(later.recalled_params) == ["max_tokens", "seed"]
