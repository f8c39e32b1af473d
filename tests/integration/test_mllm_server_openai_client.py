"""The project's server called with the official `openai` Python client, as other people's code calls it.

A request's token limit (`max_tokens`, `max_completion_tokens`) must reach generation, `finish_reason` must say
`length` only when that limit cut the answer, and `stream=True` must give OpenAI's chunk stream. The model is
a tiny LLaVA (real tokens from a real `generate`), checked against the same model run locally with the same
limit; the toy `constant` model checks the finish reasons on an answer of known length.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
from urllib.parse import urlsplit

import numpy as np
import pytest

openai = pytest.importorskip("openai")

from agegender.mllm.backends.base import GenerationParams, Query, create_backend  # noqa: E402
from agegender.mllm.backends.openai_backend import encode_image  # noqa: E402
from agegender.mllm.prompt import PROMPT  # noqa: E402
from agegender.mllm.tools.server import running_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the server's own limit (the wrapped backend's params): requests may ask for less, never for more
SERVER_LIMIT = 32


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 32, 3), dtype=np.uint8)


def messages(seed: int = 0, prompt: str = PROMPT) -> list[dict]:
    # PNG: lossless, so the server decodes exactly the pixels the local reference sees
    url = encode_image(image(seed), "png")
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """A tiny LLaVA folder and its local greedy answers to image 0 at the limits the tests ask for."""
    from agegender.mllm.tools.tiny import build_tiny_llava

    folder = str(build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", kind="llava", image_size=56))
    query = Query("ref", image(0), PROMPT)
    expected = {}
    for n in (3, 5, 8, SERVER_LIMIT):  # a backend loaded for each limit: independent of the server's code path
        local = create_backend("transformers", folder, params=GenerationParams(max_new_tokens=n), batch_size=1)
        try:
            (expected[n],) = local.generate_batch([query])
        finally:
            local.close()
    # what makes the limit observable: this seeded model does not stop by itself within the server's limit
    assert expected[SERVER_LIMIT].finish_reason == "length"
    assert expected[SERVER_LIMIT].completion_tokens == SERVER_LIMIT
    return folder, expected


@pytest.fixture(scope="module")
def tiny_server(tiny: tuple[str, dict]) -> str:
    folder, _ = tiny
    backend = create_backend("transformers", folder, params=GenerationParams(max_new_tokens=SERVER_LIMIT), batch_size=4)
    with running_server(backend, served_model="tiny") as url:
        yield url


@pytest.mark.parametrize(
    ("limits", "expected_n"),
    [
        ({"max_tokens": 8}, 8),
        ({"max_completion_tokens": 5}, 5),
        ({"max_tokens": 8, "max_completion_tokens": 3}, 3),  # both are caps: the smaller wins
        ({"max_tokens": 1000}, SERVER_LIMIT),  # capped at the server's own limit
        ({}, SERVER_LIMIT),
    ],
)
def test_the_request_token_limit_reaches_generation(tiny, tiny_server, limits, expected_n):
    _, expected = tiny
    out = client(tiny_server).chat.completions.create(model="tiny", messages=messages(0), **limits)
    want = expected[expected_n]
    assert out.usage.completion_tokens <= expected_n
    # exactly what the same model generates locally with that limit
    assert (out.choices[0].message.content, out.choices[0].finish_reason, out.usage.completion_tokens) == (
        want.text,
        want.finish_reason,
        want.completion_tokens,
    )
    assert out.choices[0].finish_reason == "length"  # the limit cut this model's answer (see the fixture)


def test_streaming_gives_the_same_answer_in_chunks(tiny_server):
    api = client(tiny_server)
    whole = api.chat.completions.create(model="tiny", messages=messages(0), max_tokens=8)
    stream = api.chat.completions.create(
        model="tiny", messages=messages(0), max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 8
    # without include_usage, no usage chunk
    plain = list(api.chat.completions.create(model="tiny", messages=messages(0), max_tokens=8, stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == text


@pytest.mark.parametrize(
    ("param", "value"),
    [("max_tokens", 0), ("max_tokens", -4), ("max_completion_tokens", 0), ("max_tokens", "8"), ("max_tokens", 2.5)],
)
def test_invalid_limits_are_400s_naming_the_param(tiny_server, param, value):
    with pytest.raises(openai.BadRequestError) as info:
        client(tiny_server).chat.completions.create(model="tiny", messages=messages(0), **{param: value})
    assert info.value.status_code == 400 and info.value.param == param and param in info.value.message


def test_invalid_stream_settings_are_400s(tiny_server):
    api = client(tiny_server)
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="tiny", messages=messages(0), stream_options={"include_usage": True})
    assert info.value.param == "stream_options"
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="tiny", messages=messages(0), extra_body={"stream": "yes"})
    assert info.value.param == "stream"


def test_finish_reason_is_length_only_when_the_limit_cut_the_answer():
    # the constant model's answer "[female; 40]" is two tokens (a toy token is a word)
    with running_server("constant", "constant", in_process=True) as url:
        api = client(url)
        outs = {
            n: api.chat.completions.create(model="constant", messages=messages(0, "p"), max_tokens=n) for n in (1, 2, 3)
        }
        unlimited = api.chat.completions.create(model="constant", messages=messages(0, "p"))
    got = {
        n: (o.choices[0].message.content, o.choices[0].finish_reason, o.usage.completion_tokens)
        for n, o in outs.items()
    }
    assert got == {1: ("[female;", "length", 1), 2: ("[female; 40]", "stop", 2), 3: ("[female; 40]", "stop", 2)}
    assert unlimited.choices[0].finish_reason == "stop"


def test_requests_batched_together_each_get_their_own_limit():
    # a slow batch makes concurrent requests share batches; the limits differ within a batch
    with running_server(
        "constant", "constant", in_process=True, backend_options={"batch_latency_ms": 300}, max_wait_ms=200
    ) as url:
        api = client(url)

        def ask(i: int):
            limit = {"max_tokens": 1} if i % 2 else {}
            return i, api.chat.completions.create(model="constant", messages=messages(i, "p"), **limit)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = dict(pool.map(ask, range(8)))
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
        finally:
            conn.close()
    for i, out in results.items():
        want = ("[female;", "length", 1) if i % 2 else ("[female; 40]", "stop", 2)
        assert (out.choices[0].message.content, out.choices[0].finish_reason, out.usage.completion_tokens) == want
    assert stats["max_batch"] > 1  # limits were mixed inside one batch, and each was honoured
