"""The project's own OpenAI-compatible chat-completions server, with batching and fault injection.

It wraps any registered local backend (the `transformers` backend with a model folder, or the built-in
`constant` and `echo` models that need no torch) behind `POST /v1/chat/completions` and `GET /v1/models`, so
the `openai` backend can be tested, benchmarked and run in the demo against a real server process on
loopback. Concurrent requests are grouped into batches for the wrapped backend (a small async micro-batcher:
up to `batch_size` queries, or whatever arrived within `max_wait_ms` of the first), which is what makes
concurrency pay off for a local model.

Fault injection (tests and benchmarks): `latency_ms` adds a fixed delay to every request, and `faults` is a
deterministic plan `{kind: [trigger, ...]}`. A trigger is an int (the server's n-th chat request, 1-based,
retries included), a str (every request whose prompt text contains that marker) or
`{"marker": str, "times": k}` (the first k such requests). Kinds (`FAULT_KINDS`): `429` (with `Retry-After:
retry_after_s`), `500`, `401` (echoes the bearer token in the error, as OpenAI does: a redaction test),
`timeout` (no answer until the client gives up), `malformed` (200 with a truncated JSON body), `drop` (the
socket is closed without a response), `refuse` (prose refusal), `refusal_field` (the API's `refusal` field,
no content) and `content_filter` (finish reason `content_filter`, no content). `reject_params` makes the
server answer 400 "Unsupported parameter" for the named request fields, as some endpoints do for `seed`.

The server never fetches anything: images must arrive as `data:` URLs. It binds to 127.0.0.1 by default.

What it honours of a request (checked with the official `openai` client): `max_tokens` and
`max_completion_tokens` (both are caps, the smaller wins, and neither can exceed the server's own limit,
`--max-new-tokens` / the backend's `params.max_new_tokens`; a value that is not an integer >= 1 is a 400 naming
the param); each request is generated with its own limit (`MicroBatcher`), and `finish_reason` is `length` only
when that limit cut the answer. `stream: true` is answered with server-sent `chat.completion.chunk`s and
`data: [DONE]` (`stream_options.include_usage` adds the usage chunk); the answer is generated whole, in a batch,
so it arrives as one content delta when it is complete. Single-turn, one image, `n=1` only; `temperature` and
`seed` are the server's (its backend's params), not the request's.

Run it: `python -m agegender.mllm.tools.server --backend transformers --model DIR --port 8000 [--latency-ms 200]`.
"""

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agegender.errors import InputError
from agegender.mllm.backend_options import ConstantOptions, EchoOptions, is_loopback_host, options_mapping
from agegender.mllm.backends.base import (
    Answer,
    Backend,
    GenerationParams,
    Query,
    create_backend,
    register_backend,
)

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "401", "timeout", "malformed", "drop", "refuse", "refusal_field", "content_filter")
#: the refusal text the `refuse` fault answers with (what OpenAI models typically write)
REFUSAL_TEXT = "I'm sorry, I can't help with that."
#: the line a server started with `--announce` prints once its socket is bound
ANNOUNCE_PREFIX = "AGEGENDER_SERVER_PORT="
#: field of a `/v1/models` entry with what decides the answers: backend, model revision, key options
IDENTITY_FIELD = "agegender_identity"
_INLINE_DECODE_BYTES = 64 * 1024


# --- built-in models (no torch): for benchmarks, tests and plumbing checks ---------------------------------


def _limit_words(text: str, max_new_tokens: int) -> tuple[str, int, str]:
    """A toy model's answer under a token limit, its token is a whitespace-separated word.

    Returns:
        (text, completion tokens, finish reason): `length` only when the limit cut the answer.
    """
    words = text.split()
    if len(words) <= max_new_tokens:
        return text, len(words), "stop"
    return " ".join(words[:max_new_tokens]), max_new_tokens, "length"


@register_backend
class ConstantBackend(Backend):
    """A model that always answers the same text (default `[female; 40]`), cut to `params.max_new_tokens` words.

    Options: `ConstantOptions` (the answer `text`, `batch_latency_ms`, `batch_size`).
    """

    name = "constant"
    options_type = ConstantOptions
    batch_size = 64

    def __init__(
        self,
        model: str = "constant",
        *,
        params: GenerationParams | None = None,
        options: ConstantOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model or "constant", params=params)
        o = self.load_options(options, **kwargs)
        self.text = o.text
        self.batch_latency_s = o.batch_latency_ms / 1000.0
        self.batch_size = o.batch_size
        #: answers without blocking (the server may call it on its event loop)
        self.nonblocking = self.batch_latency_s == 0.0

    @property
    def model_revision(self) -> str | None:
        """A digest of the answer text: a different constant is a different model."""
        return "constant-" + hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer every query with the constant text."""
        if self.batch_latency_s:
            time.sleep(self.batch_latency_s)
        text, n_completion, finish = _limit_words(self.text, self.params.max_new_tokens)
        return [
            Answer(
                q.request_id,
                "answered",
                text=text,
                finish_reason=finish,
                prompt_tokens=len(q.prompt.split()),
                completion_tokens=n_completion,
                model_revision=self.model_revision,
            )
            for q in queries
        ]


@register_backend
class EchoBackend(Backend):
    """A model that answers what it received: image size and content hash, and the prompt's last words.

    Lets tests check that the image crossed the wire pixel for pixel (`WxH sha256:<hash16>`). Cut to
    `params.max_new_tokens` words.
    """

    name = "echo"
    options_type = EchoOptions
    batch_size = 64
    #: answers without blocking (the server may call it on its event loop)
    nonblocking = True

    def __init__(
        self,
        model: str = "echo",
        *,
        params: GenerationParams | None = None,
        options: EchoOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model or "echo", params=params)
        self.load_options(options, **kwargs)

    @property
    def model_revision(self) -> str | None:
        """Fixed: the echo has no weights."""
        return "echo-1"

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Echo each query."""
        out = []
        for q in queries:
            h, w = q.image.shape[:2]
            tail = " ".join(q.prompt.split()[-4:])
            text, n_completion, finish = _limit_words(
                f"{w}x{h} sha256:{q.image_hash[:16]} prompt:{tail}", self.params.max_new_tokens
            )
            out.append(
                Answer(
                    q.request_id,
                    "answered",
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=len(q.prompt.split()),
                    completion_tokens=n_completion,
                    model_revision="echo-1",
                )
            )
        return out


# --- fault plan --------------------------------------------------------------------------------------------


@dataclass
class _Trigger:
    number: int | None = None
    marker: str | None = None
    times: int | None = None
    used: int = 0

    def fires(self, n: int, text: str) -> bool:
        if self.number is not None:
            return n == self.number
        if self.marker is None or self.marker not in text:
            return False
        if self.times is not None and self.used >= self.times:
            return False
        self.used += 1
        return True


@dataclass
class FaultPlan:
    """A deterministic fault plan: which request gets which fault (see the module docstring).

    Args:
        faults: `{kind: [int | str | {"marker": str, "times": int}, ...]}`.

    Raises:
        InputError: unknown kind or malformed trigger.
    """

    faults: Mapping[str, Sequence[Any]] | None = None
    triggers: dict[str, list[_Trigger]] = field(init=False, default_factory=dict)
    fired: collections.Counter[str] = field(init=False, default_factory=collections.Counter)

    def __post_init__(self) -> None:
        for kind, items in (self.faults or {}).items():
            kind = str(kind)
            if kind not in FAULT_KINDS:
                raise InputError(f"unknown fault kind {kind!r}; known: {list(FAULT_KINDS)}", field="faults")
            if isinstance(items, str | int | Mapping):
                items = [items]
            parsed = []
            for item in items:
                if isinstance(item, bool):
                    raise InputError(f"fault {kind}: bad trigger {item!r}", field="faults")
                if isinstance(item, int):
                    if item < 1:
                        raise InputError(f"fault {kind}: request numbers start at 1, got {item}", field="faults")
                    parsed.append(_Trigger(number=item))
                elif isinstance(item, str) and item:
                    parsed.append(_Trigger(marker=item))
                elif isinstance(item, Mapping) and isinstance(item.get("marker"), str) and item["marker"]:
                    times = item.get("times")
                    if times is not None and (not isinstance(times, int) or times < 1):
                        raise InputError(f"fault {kind}: 'times' must be a positive int, got {times!r}", field="faults")
                    parsed.append(_Trigger(marker=item["marker"], times=times))
                else:
                    raise InputError(
                        f"fault {kind}: a trigger is a request number, a marker string or "
                        f"{{'marker': str, 'times': int}}, got {item!r}",
                        field="faults",
                    )
            self.triggers[kind] = parsed

    def pick(self, number: int, text: str) -> str | None:
        """The fault for the `number`-th request with this prompt text, or None (first kind that fires wins)."""
        for kind in FAULT_KINDS:
            for trigger in self.triggers.get(kind, ()):
                if trigger.fires(number, text):
                    self.fired[kind] += 1
                    return kind
        return None


# --- micro-batcher -----------------------------------------------------------------------------------------


class MicroBatcher:
    """Group concurrent queries into batches for a synchronous backend (one batch at a time).

    Each query may carry its own token limit (a request's `max_tokens`). A batch is generated in groups of
    equal limit, each group with the backend's `with_params` twin for that limit, so every query gets exactly
    its limit: no request is generated to a longer limit and cut afterwards (the text a backend returns is
    not token-exact, so a cut could not be made honestly here). Clients normally all send the same limit,
    and then a batch is one group.

    Args:
        backend: the wrapped backend (its `generate_batch` runs in a worker thread).
        batch_size: most queries per batch.
        max_wait_s: how long the first query of a batch waits for company.
    """

    def __init__(self, backend: Backend, batch_size: int, max_wait_s: float) -> None:
        self.backend = backend
        self.batch_size = max(1, int(batch_size))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.queue: asyncio.Queue[tuple[Query, int | None, asyncio.Future[Answer]]] = asyncio.Queue()
        self.batches = 0
        self.queries = 0
        self.max_batch = 0
        self._task: asyncio.Task[None] | None = None
        self._twins: dict[int, Backend] = {}

    def _backend_for(self, max_new_tokens: int | None) -> Backend:
        """The backend generating with this token limit (None: the backend's own)."""
        if max_new_tokens is None or max_new_tokens == self.backend.params.max_new_tokens:
            return self.backend
        if max_new_tokens not in self._twins:
            params = replace(self.backend.params, max_new_tokens=max_new_tokens)
            self._twins[max_new_tokens] = self.backend.with_params(params)
        return self._twins[max_new_tokens]

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the loop; queries still waiting get an error."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self.queue.empty():
            *_, fut = self.queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("server shutting down"))
        self._twins.clear()  # they hold the model too: closing the backend must be able to free it

    async def submit(self, query: Query, max_new_tokens: int | None = None) -> Answer:
        """Queue one query (with its own token limit; None = the backend's) and wait for its answer."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self.queue.put((query, max_new_tokens, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # no extra task per wait; a get cut short leaves its item in the queue
                    async with asyncio.timeout(remaining):
                        batch.append(await self.queue.get())
                except TimeoutError:
                    break
            batch = [item for item in batch if not item[2].done()]
            if not batch:
                continue
            self.batches += 1
            self.queries += len(batch)
            self.max_batch = max(self.max_batch, len(batch))
            groups: dict[int | None, list[tuple[Query, asyncio.Future[Answer]]]] = {}
            for q, limit, fut in batch:
                groups.setdefault(limit, []).append((q, fut))
            for limit, group in groups.items():
                await self._generate(self._backend_for(limit), group)

    async def _generate(self, backend: Backend, group: list[tuple[Query, asyncio.Future[Answer]]]) -> None:
        """Answer one group of queries that share a token limit; a model error fails this group, not the server."""
        try:
            if getattr(backend, "nonblocking", False):  # built-in toy models: no thread hop needed
                answers = backend.generate_batch([q for q, _ in group])
            else:  # a real model computes for a while: keep the event loop serving requests meanwhile
                answers = await asyncio.to_thread(backend.generate_batch, [q for q, _ in group])
            by_id = {a.request_id: a for a in answers}
            for q, fut in group:
                if not fut.done():
                    answer = by_id.get(q.request_id)
                    if answer is None:
                        fut.set_exception(RuntimeError(f"the backend returned no answer for {q.request_id}"))
                    else:
                        fut.set_result(answer)
        except Exception as exc:
            log.exception("batch of %d failed", len(group))
            for _, fut in group:
                if not fut.done():
                    fut.set_exception(exc)


# --- the app -----------------------------------------------------------------------------------------------


class _RequestError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def _error(
    status: int,
    message: str,
    *,
    etype: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def decode_data_url(url: str) -> np.ndarray:
    """Decode a `data:image/...;base64,...` URL to an RGB uint8 array.

    Raises:
        ValueError: not a base64 image data URL, or not a decodable image.
    """
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValueError("only data: URLs are accepted (this server fetches nothing)")
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header or not header[5:].startswith("image/"):
        raise ValueError("expected data:image/<type>;base64,<data>")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 image data: {exc}") from exc
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise ValueError(f"not a decodable image: {exc}") from exc


#: the request fields that limit the answer's length (`max_tokens` is deprecated by OpenAI but what most send)
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completions request.

    Attributes:
        prompt: the user turn's text parts, joined by newlines.
        image_url: the one image, as a data URL.
        detail: the image's `detail`, if sent.
        max_tokens: the tighter of `max_tokens` and `max_completion_tokens`; None = neither was sent.
        stream: answer as server-sent events (`chat.completion.chunk`s).
        include_usage: with `stream`, end with a chunk that carries the usage (`stream_options.include_usage`).
    """

    prompt: str
    image_url: str
    detail: str | None = None
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False


def _token_limit(body: dict[str, Any]) -> int | None:
    """The request's answer-length limit: both fields are caps, so both are honoured (the smaller wins)."""
    limits = []
    for name in TOKEN_LIMIT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _RequestError(400, f"'{name}' must be an integer >= 1, got {value!r}", param=name)
        limits.append(value)
    return min(limits) if limits else None


def _stream_settings(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage), validated as OpenAI does."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _RequestError(400, f"'stream' must be a boolean, got {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise _RequestError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if not isinstance(options, dict):
        raise _RequestError(400, "'stream_options' must be an object", param="stream_options")
    include_usage = options.get("include_usage", False)
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _RequestError(400, "'include_usage' must be a boolean", param="stream_options.include_usage")
    return True, bool(include_usage)


def _extract(body: Any, served_model: str, reject_params: Sequence[str]) -> ChatRequest:
    """Validate a chat request (400/404 `_RequestError`s name the offending param)."""
    if not isinstance(body, dict):
        raise _RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _RequestError(400, "you must provide a model parameter", param="model")
    if model != served_model:
        raise _RequestError(
            404,
            f"The model `{model}` does not exist; this server serves `{served_model}`.",
            param="model",
            code="model_not_found",
        )
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise _RequestError(400, "only n=1 is supported (the answers are greedy)", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        raise _RequestError(400, "this server answers single-turn requests: one user message", param="messages")
    message = messages[0]
    if message.get("role") != "user":
        raise _RequestError(400, "the message must have role 'user'", param="messages[0].role")
    content = message.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict | str):
                iu = part["image_url"]
                images.append(iu if isinstance(iu, dict) else {"url": iu})
            else:
                raise _RequestError(400, f"unsupported content part {kind!r}", param="messages[0].content")
    else:
        raise _RequestError(400, "message content must be a string or a list of parts", param="messages[0].content")
    if len(images) != 1:
        raise _RequestError(400, f"expected exactly one image_url part, got {len(images)}", param="messages[0].content")
    detail = images[0].get("detail")
    for p in reject_params:
        if (p == "detail" and detail is not None) or (p != "detail" and p in body):
            raise _RequestError(
                400,
                f"Unsupported parameter: '{p}' is not supported with this model.",
                param=p,
                code="unsupported_parameter",
            )
    stream, include_usage = _stream_settings(body)
    return ChatRequest(
        prompt="\n".join(texts),
        image_url=str(images[0].get("url", "")),
        detail=detail,
        max_tokens=_token_limit(body),
        stream=stream,
        include_usage=include_usage,
    )


def create_app(
    backend: Backend,
    *,
    served_model: str | None = None,
    latency_ms: float = 0.0,
    faults: Mapping[str, Sequence[Any]] | FaultPlan | None = None,
    retry_after_s: float = 1.0,
    hang_s: float = 300.0,
    batch_size: int | None = None,
    max_wait_ms: float = 5.0,
    reject_params: Sequence[str] = (),
) -> Any:
    """Build the FastAPI app that serves `backend` as an OpenAI-compatible endpoint.

    Args:
        backend: a local backend (closed when the app shuts down).
        served_model: the model id clients must send and responses report; default `backend.model`.
        latency_ms: fixed delay added to every chat request.
        faults: a fault plan (see `FaultPlan`).
        retry_after_s: the `Retry-After` the 429 fault sends.
        hang_s: how long the `timeout` fault holds a request when the client does not give up.
        batch_size: most queries per backend batch (default: the backend's).
        max_wait_ms: how long a batch waits to fill.
        reject_params: request fields answered with 400 "Unsupported parameter" (`seed`, `n`, `detail`, ...).

    Returns:
        An ASGI app.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    served = served_model or backend.model
    server_limit = int(backend.params.max_new_tokens)
    plan = faults if isinstance(faults, FaultPlan) else FaultPlan(faults)
    revision = backend.model_revision
    fingerprint = "fp_" + hashlib.sha256(f"{backend.name}|{backend.model}|{revision}".encode()).hexdigest()[:10]
    # what decides the answers, for a client's response store (see `served_identity`)
    identity = {"backend": backend.name, "model_revision": revision, "key_options": backend.key_options()}
    created = int(time.time())
    batcher = MicroBatcher(backend, batch_size or backend.batch_size, max_wait_ms / 1000.0)
    counter = {"requests": 0}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            backend.close()

    app = FastAPI(title="agegender MLLM server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": served,
                    "object": "model",
                    "created": created,
                    "owned_by": "agegender",
                    "root": revision,
                    IDENTITY_FIELD: identity,
                }
            ],
        }

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return {
            "requests": counter["requests"],
            "batches": batcher.batches,
            "batched_queries": batcher.queries,
            "max_batch": batcher.max_batch,
            "faults": dict(plan.fired),
            "cpu_s": time.process_time(),  # this server process's CPU time (benchmarks: CPU per request)
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        counter["requests"] += 1
        number = counter["requests"]
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the request body is not valid JSON")
        try:
            chat_request = _extract(body, served, reject_params)
        except _RequestError as exc:
            return _error(exc.status, exc.message, param=exc.param, code=exc.code)
        prompt, url = chat_request.prompt, chat_request.image_url
        # the request's limit, capped at the server's own (what the wrapped backend was configured with)
        limit = min(chat_request.max_tokens or server_limit, server_limit)

        def respond(answer: Answer) -> Any:
            if chat_request.stream:
                return StreamingResponse(
                    _completion_chunks(answer, served, fingerprint, include_usage=chat_request.include_usage),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            return JSONResponse(_completion(answer, served, fingerprint))

        fault = plan.pick(number, prompt)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000.0)
        if fault == "429":
            return _error(
                429,
                "Rate limit reached (injected).",
                etype="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": f"{retry_after_s:g}"},
            )
        if fault == "500":
            return _error(
                500, "The server had an error while processing your request (injected).", etype="server_error"
            )
        if fault == "401":
            auth = request.headers.get("authorization", "")
            token = auth.split(" ", 1)[1] if " " in auth else auth
            return _error(401, f"Incorrect API key provided: {token}. (injected)", code="invalid_api_key")
        if fault == "timeout":
            deadline = time.monotonic() + hang_s
            while time.monotonic() < deadline and not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=504)
        if fault == "malformed":
            broken = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "message": {"ro'
            return Response(broken, status_code=200, media_type="application/json")
        if fault == "drop":
            return await _drop(request)
        if fault in ("refuse", "refusal_field", "content_filter"):
            answer = Answer(f"req-{number}", "answered", finish_reason="stop", prompt_tokens=0, completion_tokens=0)
            if fault == "refuse":
                answer.text, answer.completion_tokens, answer.finish_reason = _limit_words(REFUSAL_TEXT, limit)
            elif fault == "refusal_field":
                answer.refusal = REFUSAL_TEXT
            else:
                answer.finish_reason = "content_filter"
            return respond(answer)
        try:
            if len(url) > _INLINE_DECODE_BYTES:
                image = await asyncio.to_thread(decode_data_url, url)
            else:
                image = decode_data_url(url)
        except ValueError as exc:
            return _error(400, f"image_url: {exc}", param="messages[0].content")
        try:
            answer = await batcher.submit(Query(f"req-{number}", image, prompt), limit)
        except Exception as exc:
            return _error(500, f"model error: {type(exc).__name__}: {exc}", etype="server_error")
        if answer.status != "answered":
            return _error(500, f"model error: {answer.error}", etype="server_error")
        # the stream starts once the answer is complete, so a model error still gets its HTTP status
        return respond(answer)

    return _RawSendMiddleware(app)


def _usage(answer: Answer) -> dict[str, int]:
    prompt_tokens = answer.prompt_tokens or 0
    completion_tokens = answer.completion_tokens or 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion(answer: Answer, served: str, fingerprint: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": answer.refusal},
                "finish_reason": answer.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(answer),
    }


def _completion_chunks(answer: Answer, served: str, fingerprint: str, *, include_usage: bool) -> Iterator[bytes]:
    """A finished answer as OpenAI's server-sent events: `chat.completion.chunk`s, then `data: [DONE]`.

    The wrapped backends generate whole answers in batches, so the text arrives in one content delta once it
    is complete (a stream here saves a client nothing in latency; it is served because streaming is what many
    clients send). The chunks follow OpenAI's: the role first, the content (or refusal), then an empty delta
    with the finish reason, then, with `include_usage`, a chunk without choices that carries the usage (the
    others then carry `"usage": null`).
    """
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": served,
        "system_fingerprint": fingerprint,
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def event(choices: list[dict[str, Any]], **fields: Any) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra, **fields}).encode() + b"\n\n"

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    yield event([choice({"role": "assistant", "content": ""})])
    if answer.text:
        yield event([choice({"content": answer.text})])
    if answer.refusal:
        yield event([choice({"refusal": answer.refusal})])
    yield event([choice({}, answer.finish_reason or "stop")])
    if include_usage:
        yield event([], usage=_usage(answer))
    yield b"data: [DONE]\n\n"


class _RawSendMiddleware:
    """Outermost ASGI layer: keeps the server's own `send` in the scope so `drop` can reach the socket."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            scope["agegender.raw_send"] = send
        await self.app(scope, receive, send)


async def _drop(request: Any) -> Any:
    """Close the connection without a response (the `drop` fault)."""
    from fastapi.responses import Response

    raw_send = request.scope.get("agegender.raw_send")
    cycle = getattr(raw_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None:  # uvicorn's h11 cycle: close the socket itself
        transport.close()
        for _ in range(100):  # uvicorn ignores our response once it has seen the connection go
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0.01)
        return Response(status_code=499)
    # another server: start a response and abort it, so the client sees the connection end mid-response
    await raw_send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
    raise ConnectionAbortedError("injected drop")


# --- running it ----------------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit this: without it every response waits ~40 ms for a delayed ACK (Nagle), which
    # capped a single connection at ~23 requests/s here
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc}", field="port") from exc
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        http="h11",  # the `drop` fault reaches the socket through h11's request cycle
        lifespan="on",
        timeout_graceful_shutdown=2,  # a hanging `timeout` request must not hold the shutdown
        backlog=2048,
    )
    return uvicorn.Server(config)


def serve(
    backend: str | Backend,
    model: str = "",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    params: GenerationParams | None = None,
    backend_options: Any = None,
    announce: bool = False,
    log_level: str = "warning",
    **app_options: Any,
) -> None:
    """Serve a backend until interrupted (blocking; the module entry point calls this).

    Args:
        backend: a registered backend name (built here with `model`, `params`, `backend_options`) or an instance.
        model: the model id or folder for a backend given by name.
        host: interface to listen on; 127.0.0.1 unless you mean to expose the model.
        port: TCP port; 0 = any free port.
        params: generation settings for a backend given by name (greedy by default).
        backend_options: options of a backend given by name: typed (`TransformersOptions`, ...) or a mapping.
        announce: print `AGEGENDER_SERVER_PORT=<port>` once the socket is bound (for a parent process).
        log_level: uvicorn's log level.
        **app_options: `create_app` options (latency_ms, faults, retry_after_s, batch_size, ...).
    """
    if not is_loopback_host(host):
        log.warning("listening on %s: the model is reachable from other machines", host)
    sock = _bind(host, port)
    if isinstance(backend, str):
        backend = create_backend(backend, model, params=params or GenerationParams(), options=backend_options)
    app = create_app(backend, **app_options)
    bound = sock.getsockname()[1]
    if announce:
        print(f"{ANNOUNCE_PREFIX}{bound}", flush=True)
    print(f"serving {backend.name} model {backend.model!r} on http://{_url_host(host)}:{bound}/v1", file=sys.stderr)
    server = _uvicorn_server(app, log_level)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _wait_ready(host: str, port: int, timeout_s: float, alive: Any) -> None:
    """Poll GET /health (plain http.client: no proxy from the environment can intercept loopback)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server stopped during start-up")
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise TimeoutError(f"the server on {host}:{port} was not ready within {timeout_s:.0f} s")


#: how long a server whose parent died gets for its graceful shutdown before it exits hard
PARENT_GONE_GRACE_S = 5.0


def exit_with_parent(parent_pid: int, grace_s: float = PARENT_GONE_GRACE_S) -> None:
    """Make this process end when the process that started it ends, however that one ends (SIGKILL included).

    A server started by a pipeline stage holds a model (gigabytes) and a port; when the stage is killed, nothing
    else would ever stop it. Three signs of a dead parent, because each covers a gap of another:

    - **stdin at EOF** (portable, Windows included): the parent holds the write end of our stdin pipe and never
      writes. The kernel closes it when the parent dies, whatever killed it, and a thread here sees EOF.
      Alone it can be fooled if the parent forks (without exec) after starting us: the fork inherits the write
      end and keeps the pipe open.
    - **getppid() changes** (POSIX): an orphan is adopted by init or a subreaper. The same thread checks once a
      second, which also catches a parent that died before this function ran.
    - **PR_SET_PDEATHSIG** (Linux): the kernel sends SIGTERM the moment the parent goes, even while this
      process's Python threads are busy. It is set here, after exec, rather than in a `preexec_fn` (not safe in
      a parent with threads). It fires when the parent *thread* that started us ends; `running_server` starts
      and stops us in the same thread, so that is the parent's lifetime.

    The stop is SIGTERM to ourselves (uvicorn's graceful shutdown closes the backend, which for vLLM also ends
    its engine processes), then a hard exit after `grace_s` if that hangs (a long generation in a worker
    thread, a model still loading).

    Args:
        parent_pid: the pid of the process that started this one.
        grace_s: seconds between the graceful stop and the hard exit.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); watching stdin only", ctypes.get_errno())

    def stdin_closed(timeout_s: float) -> bool:
        """Wait up to timeout_s for input; True at EOF (whatever the parent might write is ignored)."""
        if os.name == "posix":
            import select

            ready, _, _ = select.select([0], [], [], timeout_s)
            if not ready:
                return False
        try:
            return not os.read(0, 4096)
        except OSError:
            return True  # a broken stdin means the same as EOF

    def watch() -> None:
        while True:
            if os.name == "posix" and os.getppid() != parent_pid:
                reason = f"parent process {parent_pid} is gone (adopted by {os.getppid()})"
                break
            if stdin_closed(1.0):
                reason = f"parent process {parent_pid} is gone (stdin closed)"
                break
        log.warning("%s: shutting the server down", reason)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="agegender-parent-watch", daemon=True).start()


def served_identity(base_url: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """What a server of this project serves, as its response store key needs it: backend, revision, options.

    A client of the server keys its store by the served model's name; the weights behind that name (a folder
    retrained in place) and the wrapped backend's preprocessing must join the key, or a rerun would reuse the
    old model's answers (`OpenAIBackend(served_identity=...)`).

    Args:
        base_url: the server's base URL on loopback, e.g. `http://127.0.0.1:51234/v1`.
        timeout_s: how long to wait for the answer.

    Returns:
        `{"backend", "model_revision", "key_options"}` of the wrapped backend.

    Raises:
        InputError: a non-loopback URL, or a server that does not report its identity (not this project's).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname or not is_loopback_host(parts.hostname):
        raise InputError("served_identity asks servers on loopback only", field="base_url")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path.rstrip("/") + "/models")
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise InputError(f"cannot ask the server what it serves ({exc})", field="base_url") from exc
    finally:
        conn.close()
    try:
        entries = json.loads(body)["data"]
        identity = entries[0][IDENTITY_FIELD]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(
            f"the server's /models (HTTP {response.status}) does not say what it serves: not an agegender server",
            field="base_url",
        ) from exc
    return dict(identity)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def running_server(
    backend: str | Backend,
    model: str = "",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    in_process: bool | None = None,
    params: GenerationParams | None = None,
    backend_options: Any = None,
    startup_timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    **app_options: Any,
) -> Iterator[str]:
    """Start a server on a free loopback port, wait until it answers, yield its base URL, stop it afterwards.

    By default a backend given by name runs in a subprocess (`python -m agegender.mllm.tools.server`: a real server
    process, its own GIL), a backend instance in a thread of this process.

    Args:
        backend: a registered backend name or an instance.
        model: model id or folder (backend by name).
        host: a loopback address (this helper never listens on other interfaces).
        port: 0 = a free port.
        in_process: force thread (True) or subprocess (False) mode.
        params: generation settings of the wrapped backend.
        backend_options: options of the wrapped backend, typed (`TransformersOptions`, ...) or a mapping; in
            subprocess mode they cross as JSON (`options_mapping`), so typed values may hold no code-only option.
        startup_timeout_s: how long to wait for the server to answer (a large model loads slowly).
        env: environment of the subprocess (default: this process's).
        **app_options: `create_app` options (latency_ms, faults, retry_after_s, hang_s, batch_size, max_wait_ms,
            reject_params, served_model).

    Yields:
        The base URL, e.g. `http://127.0.0.1:51234/v1`.

    Raises:
        InputError: a non-loopback host, or a backend instance with in_process=False.
        RuntimeError / TimeoutError: the server did not start (its last output lines are in the message).
    """
    if not is_loopback_host(host):
        raise InputError(f"running_server listens on loopback only, not {host!r}", field="host")
    if in_process is None:
        in_process = isinstance(backend, Backend)
    if isinstance(backend, Backend) and not in_process:
        raise InputError("a backend instance can only be served in-process", field="in_process")
    if in_process:
        with _thread_server(backend, model, host, port, params, backend_options, startup_timeout_s, app_options) as url:
            yield url
        return
    with _process_server(
        backend, model, host, port, params, backend_options, startup_timeout_s, env, app_options
    ) as url:
        yield url


@contextlib.contextmanager
def _thread_server(
    backend: str | Backend,
    model: str,
    host: str,
    port: int,
    params: GenerationParams | None,
    backend_options: Any,
    startup_timeout_s: float,
    app_options: Mapping[str, Any],
) -> Iterator[str]:
    if isinstance(backend, str):
        backend = create_backend(backend, model, params=params or GenerationParams(), options=backend_options)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = _uvicorn_server(create_app(backend, **app_options), "warning")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported by the waiting thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"agegender-server-{bound_port}", daemon=True)
    thread.start()
    try:
        try:
            _wait_ready(host, bound_port, startup_timeout_s, thread.is_alive)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"in-process server failed to start: {errors[0] if errors else exc}") from exc
        yield f"http://{_url_host(host)}:{bound_port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _cli_args(
    model: str,
    host: str,
    port: int,
    params: GenerationParams | None,
    backend_options: Any,
    app_options: Mapping[str, Any],
) -> list[str]:
    args = ["--model", model, "--host", host, "--port", str(port), "--announce"]
    if params is not None:
        args += ["--params", json.dumps(params.as_key())]
    written = options_mapping(backend_options)
    if written:
        args += ["--backend-options", json.dumps(written)]
    flags = {
        "served_model": "--served-model-name",
        "latency_ms": "--latency-ms",
        "retry_after_s": "--retry-after-s",
        "hang_s": "--hang-s",
        "batch_size": "--batch-size",
        "max_wait_ms": "--max-wait-ms",
    }
    for name, value in app_options.items():
        if value is None:
            continue
        if name == "faults":
            args += ["--faults", json.dumps(value)]
        elif name == "reject_params":
            args += ["--reject-params", ",".join(value)]
        elif name in flags:
            args += [flags[name], str(value)]
        else:
            raise InputError(f"unknown server option {name!r}", field=name)
    return args


@contextlib.contextmanager
def _process_server(
    backend: str,
    model: str,
    host: str,
    port: int,
    params: GenerationParams | None,
    backend_options: Any,
    startup_timeout_s: float,
    env: Mapping[str, str] | None,
    app_options: Mapping[str, Any],
) -> Iterator[str]:
    cmd = [sys.executable, "-m", "agegender.mllm.tools.server", "--backend", backend]
    cmd += _cli_args(model, host, port, params, backend_options, app_options)
    cmd += ["--exit-with-parent", str(os.getpid())]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.PIPE,  # never written: the server exits when it sees EOF, i.e. when we are gone
        text=True,
        env=dict(env) if env is not None else None,
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)
    port_box: list[int] = []
    announced = threading.Event()

    def drain() -> None:  # keeps the pipe empty for the server's whole life (a full pipe would block it)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(ANNOUNCE_PREFIX) and not port_box:
                port_box.append(int(line[len(ANNOUNCE_PREFIX) :].strip()))
                announced.set()
            else:
                tail.append(line.rstrip())
        announced.set()

    reader = threading.Thread(target=drain, name="agegender-server-output", daemon=True)
    reader.start()
    try:
        start = time.monotonic()
        announced.wait(startup_timeout_s)
        if not port_box:
            raise RuntimeError("the server process did not start:\n" + "\n".join(tail))
        remaining = max(1.0, startup_timeout_s - (time.monotonic() - start))
        try:
            _wait_ready(host, port_box[0], remaining, lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; server output:\n" + "\n".join(tail)) from exc
        yield f"http://{_url_host(host)}:{port_box[0]}/v1"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if proc.stdin is not None:
            proc.stdin.close()
        reader.join(timeout=5)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from agegender.cli.mllm_server import main

    sys.exit(main())
