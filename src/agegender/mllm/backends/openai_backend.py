"""The `openai` backend: any OpenAI-compatible chat-completions endpoint.

Works against OpenAI itself and the local servers that speak its protocol (vLLM, SGLang, Ollama, llama.cpp,
`transformers serve`, and this project's own `agegender.mllm.tools.server`). One query is one chat-completions
request: the paper's prompt as a text part and the crop as a base64 data URL (`image_url`), temperature 0 and,
where the endpoint takes them, `seed`, `n=1` and `detail`.

Decisions (documented here because they change what is sent):

- **Where requests go.** Only to `base_url`; None means OpenAI's public API (`https://api.openai.com/v1`),
  passed explicitly so that an `OPENAI_BASE_URL` in the environment cannot redirect the study's images.
  Redirects are not followed, and HTTP proxies from the environment are ignored for loopback servers.
- **No clear text to other hosts.** A plain `http://` base_url is accepted for this machine's loopback
  interface only (`is_loopback_host`: 127.0.0.0/8, ::1, `localhost`; not the machine's own eth0 address):
  anywhere else the key and every photo would cross the network unencrypted, so the options refuse it
  unless `allow_insecure_http=True` says the user accepts that (params option `allow_insecure_http: true`,
  `agegender query --allow-insecure-http`). The check lives in `agegender.mllm.backend_options.OpenAIOptions`,
  which every path goes through: params.yaml when loaded, the CLI, and this constructor (the client the pipeline
  points at a server it started).
- **The key.** Read from the environment variable named by `api_key_env` (default `OPENAI_API_KEY`) and
  kept only inside the HTTP client: it is never logged, returned, stored or put in `describe()`, and any
  echo of it in a server's error text is redacted. When that variable is unset, a loopback `base_url`
  (localhost, 127.0.0.0/8, ::1) gets the placeholder `EMPTY` (local servers usually run without auth); any
  other endpoint raises `InputError`. `api_key_env=None` (or "") always sends `EMPTY` (a server without auth).
- **Retries are ours** (the client's own are switched off): exponential backoff with jitter, that honours
  `Retry-After` / `retry-after-ms` (never retrying sooner than the server asked; giving up when it asks for
  more than `max_retry_after_s`). Retried: connection errors, dropped connections, timeouts, 408, 409, 429
  and 5xx. Not retried: other 4xx and malformed bodies (a server that sends broken JSON does so again; the
  query is `failed` and the next run retries it).
- **Parameters an endpoint rejects.** When a 400 names an optional parameter we sent (`seed`, `n`,
  `detail`, the max-token field), the request is sent again at once without it and the backend remembers it
  for the rest of the run; `describe()` lists what was dropped (a dropped seed matters for reproducibility).
  The max-token field is `max_completion_tokens` for OpenAI (where `max_tokens` is deprecated and rejected by
  reasoning models) and `max_tokens` for other servers (the field every OpenAI-compatible server takes);
  a 400 about one switches to the other. What was dropped is kept per endpoint (base_url and model) in the
  response store's `endpoints.json` (`endpoint`, `learned`, `start_from`; the runner reads and writes it), so a
  later run over the same store starts without those fields, logs that it does, and lists them under
  `recalled_params` in its activity. Only URLs (credentials stripped), model ids and field names are kept.
- **One completion per query.** `n` must be 1: an `Answer` holds one text.
- **Transport.** `openai.AsyncOpenAI` with its aiohttp transport when aiohttp is installed, and the request
  sent with the client's own `post("/chat/completions")` rather than `chat.completions.create`: the same
  request, auth, headers and error classes (`RateLimitError`, `APITimeoutError`, ...), without `create`'s walk
  over the typed parameters and the pydantic response model, which measured here as the largest CPU costs of
  a request (client CPU at concurrency 64 on this 2-core machine: 5.4 ms per request with `create` + httpx,
  1.9 ms with `post` + aiohttp). The JSON body is read into a plain dict (`answer_from_completion`).
- **Concurrency.** A pool of `concurrency` workers (the same bound as a semaphore, without a task per query,
  so an 84k-query run holds 8 tasks, not 84k).

Every query ends with exactly one `Answer`; one bad request never raises and never stops the run.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import importlib.util
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from agegender.errors import InputError
from agegender.mllm.backend_options import (
    INSECURE_HTTP_OPTION,
    OPENAI_BASE_URL,
    OpenAIOptions,
    insecure_http_problem,
    is_loopback_url,
    safe_url,
)
from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query, register_backend

log = logging.getLogger(__name__)

#: what a server without authentication gets as the bearer token
PLACEHOLDER_KEY = "EMPTY"
#: HTTP statuses worth another try (rate limits, lock/request timeouts, server errors)
RETRY_STATUSES = frozenset({408, 409, 429})
#: optional request fields that an endpoint may refuse, and how a 400 names them
_OPTIONAL_FIELDS = ("seed", "n", "detail", "max_tokens", "max_completion_tokens")
_UNSUPPORTED_HINTS = ("unsupported", "not supported", "unrecognized", "unknown", "not permitted", "extra", "invalid")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{2,}[A-Za-z0-9_\-*.]*)")
_MAX_ERROR_CHARS = 500
#: images up to this many values (128 x 128 x 3) are encoded on the event loop, bigger ones in a thread
_INLINE_ENCODE_VALUES = 128 * 128 * 3


_SSL_CONTEXTS: dict[bool, Any] = {}
_SSL_LOCK = threading.Lock()


def _ssl_context(trust_env: bool) -> Any:
    """A verifying SSL context, built once: loading the CA bundle costs ~0.1 s and each astream makes a client."""
    with _SSL_LOCK:
        if trust_env not in _SSL_CONTEXTS:
            import httpx2

            _SSL_CONTEXTS[trust_env] = httpx2.create_ssl_context(verify=True, trust_env=trust_env)
        return _SSL_CONTEXTS[trust_env]


def is_openai_url(url: str | None) -> bool:
    """Whether a base URL is OpenAI's own API (None = the default)."""
    return url is None or (urlsplit(url).hostname or "").lower() == "api.openai.com"


def encode_image(image: np.ndarray, fmt: str = "png", *, jpeg_quality: int = 95, png_compress_level: int = 1) -> str:
    """Encode an RGB uint8 image as a base64 data URL.

    Args:
        image: (H, W, 3) uint8 RGB array.
        fmt: `png` (lossless: the model sees exactly the crop) or `jpeg` (smaller uploads).
        jpeg_quality: JPEG quality (1-100).
        png_compress_level: zlib level 0-9; lossless either way, 1 is the fastest.

    Returns:
        `data:image/png;base64,...` or `data:image/jpeg;base64,...`.

    Raises:
        InputError: not an (H, W, 3) uint8 array, or an unknown format.
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"expected an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}", field="image")
    fmt = fmt.lower()
    if fmt == "png":
        import cv2

        # lossless, so the encoder cannot change the pixels; OpenCV's is ~1.5x faster than Pillow's here
        ok, encoded = cv2.imencode(
            ".png", np.ascontiguousarray(arr[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, png_compress_level]
        )
        if not ok:
            raise InputError(f"PNG encoding failed for an image of shape {arr.shape}", field="image")
        data, mime = encoded.tobytes(), "image/png"
    elif fmt in ("jpeg", "jpg"):
        buf = io.BytesIO()  # Pillow's encoder: JPEG pixels depend on the encoder, so it must not change silently
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=jpeg_quality)
        data, mime = buf.getvalue(), "image/jpeg"
    else:
        raise InputError(f"unknown image format {fmt!r}; use 'png' or 'jpeg'", field="image_format")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def build_messages(prompt: str, data_url: str, detail: str | None) -> list[dict[str, Any]]:
    """The chat messages for one query: a user turn with the prompt text and the image.

    Args:
        prompt: the text prompt.
        data_url: the image as a data URL (see `encode_image`).
        detail: OpenAI image detail (`low`, `high`, `auto`); None = not sent.
    """
    image_url: dict[str, Any] = {"url": data_url}
    if detail is not None:
        image_url["detail"] = detail
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": image_url}],
        }
    ]


def parse_retry_after(headers: Any) -> float | None:
    """Seconds a server asked us to wait (`retry-after-ms`, `retry-after` as seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
        return None
    return None


def answer_from_completion(request_id: str, completion: Any, latency_s: float | None = None) -> Answer:
    """Turn a chat-completions response (the client's object or a plain dict) into an `Answer`.

    A refusal is an answer, not a failure: prose in `content`, the `refusal` field or a `content_filter`
    finish reason all come back `answered` (the parser decides they are refusals). A body without choices
    is `failed` (malformed).
    """

    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)

    choices = get(completion, "choices")
    if not choices:
        return Answer(request_id, "failed", error="malformed response: no choices", latency_s=latency_s)
    choice = choices[0]
    message = get(choice, "message")
    if message is None:
        return Answer(request_id, "failed", error="malformed response: choice without a message", latency_s=latency_s)
    usage = get(completion, "usage")
    content = get(message, "content")
    if content is not None and not isinstance(content, str):
        # a few servers return content parts even for assistant turns
        content = "".join(str(get(p, "text") or "") for p in content) if isinstance(content, list) else str(content)
    return Answer(
        request_id=request_id,
        status="answered",
        text=content,
        finish_reason=get(choice, "finish_reason"),
        refusal=get(message, "refusal"),
        prompt_tokens=get(usage, "prompt_tokens") if usage is not None else None,
        completion_tokens=get(usage, "completion_tokens") if usage is not None else None,
        system_fingerprint=get(completion, "system_fingerprint"),
        model_revision=get(completion, "model"),
        latency_s=latency_s,
    )


class _Malformed(Exception):
    """The server answered 2xx with a body that is not a chat completion."""


@register_backend
class OpenAIBackend(Backend):
    """Query an OpenAI-compatible chat-completions endpoint (async, bounded concurrency, retries).

    Args:
        model: the model id the endpoint serves (e.g. `gpt-4o-2024-08-06`, `llava-hf/llava-1.5-7b-hf`).
        params: generation settings (temperature, max_new_tokens, seed, n, detail).
        options: `OpenAIOptions` (base_url, api_key_env, concurrency, timeouts, retries, allow_insecure_http,
            ...), which names, types, defaults and checks them.
        **kwargs: the same options as keyword arguments, instead of `options`.

    Raises:
        InputError: bad or unknown options; no key for a non-loopback endpoint; plain http to another host
            without `allow_insecure_http`.
    """

    name = "openai"
    options_type = OpenAIOptions

    def __init__(
        self, model: str, *, params: GenerationParams | None = None, options: OpenAIOptions | None = None, **kwargs: Any
    ) -> None:
        super().__init__(model, params=params)
        if not model:
            raise InputError("the openai backend needs a model id", field="model")
        if self.params.n != 1:
            raise InputError(f"the openai backend returns one completion per query; n must be 1, not {self.params.n}")
        o = self.load_options(options, **kwargs)
        if o.base_url is not None and insecure_http_problem(o.base_url) is not None:
            log.warning(
                "sending to %s over plain http (%s): key and photos unencrypted",
                safe_url(o.base_url),
                INSECURE_HTTP_OPTION,
            )
        self.allow_insecure_http = o.allow_insecure_http
        self.base_url = o.base_url.rstrip("/") if o.base_url else OPENAI_BASE_URL
        self.api_key_env = o.api_key_env or None
        self.concurrency = o.concurrency
        self.timeout_s = o.timeout_s
        self.max_retries = o.max_retries
        self.backoff_s = o.backoff_s
        self.max_backoff_s = o.max_backoff_s
        self.max_retry_after_s = o.max_retry_after_s
        self.image_format = o.image_format.lower()
        self.jpeg_quality = o.jpeg_quality
        self.png_compress_level = o.png_compress_level
        http_backend = o.http_backend
        if http_backend == "auto":
            http_backend = "aiohttp" if importlib.util.find_spec("aiohttp") is not None else "httpx"
        self.http_backend = http_backend
        self._transport = o.http_transport
        self._rng = random.Random(o.jitter_seed)
        self.served_identity = dict(o.served_identity) if o.served_identity is not None else None
        self._loopback = is_loopback_url(self.base_url)
        self._api_key = self._read_key()
        max_tokens_param = o.max_tokens_param
        if max_tokens_param == "auto":
            max_tokens_param = "max_completion_tokens" if is_openai_url(o.base_url) else "max_tokens"
        self.max_tokens_param = max_tokens_param
        self._send = {"seed": o.send_seed, "detail": o.send_detail, "n": o.send_n}
        #: optional fields the endpoint rejected during this backend's life (not sent again)
        self.dropped_params: list[str] = []
        #: of those, the ones an earlier run learned (`start_from`): dropped before the first request
        self.recalled_params: list[str] = []
        self._lock = threading.Lock()
        self._served_models: Counter[str] = Counter()
        self._fingerprints: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        # a runner that hands over chunks (generate_batch) should keep every worker busy
        self.batch_size = o.batch_size or max(64, 4 * self.concurrency)

    # --- configuration -------------------------------------------------------------------------------

    def _read_key(self) -> str:
        if self.api_key_env is None:
            return PLACEHOLDER_KEY
        key = os.environ.get(self.api_key_env, "")
        if key:
            return key
        if self._loopback:
            return PLACEHOLDER_KEY
        raise InputError(
            f"environment variable {self.api_key_env} is not set; the key for {safe_url(self.base_url)} is read "
            "from the environment only (set api_key_env to None for a server without authentication)",
            field="api_key_env",
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={safe_url(self.base_url)!r})"

    @property
    def model_revision(self) -> str | None:
        """The served model's revision from `served_identity` (this project's server), else None.

        Other endpoints: an endpoint's revision is only known from its answers, and a cache key must not change
        mid-run. Each `Answer.model_revision` carries the model id the endpoint reported serving (OpenAI: the
        dated snapshot behind an alias such as `gpt-4o`); `activity()["served_models"]` counts them. To pin a
        revision, ask for a dated model id.
        """
        if self.served_identity is not None:
            return self.served_identity.get("model_revision")
        return None

    @property
    def served_models(self) -> dict[str, int]:
        """Model ids the endpoint reported serving so far, with counts."""
        with self._lock:
            return dict(self._served_models)

    def key_options(self) -> dict[str, Any]:
        """Options that change what the model sees, for the response store's key.

        The endpoint URL is not one: a local server gets a new port every run.
        """
        key: dict[str, Any] = (
            {"image_format": "png"}  # lossless: the compression level does not change the pixels
            if self.image_format == "png"
            else {"image_format": "jpeg", "jpeg_quality": self.jpeg_quality}
        )
        if self.served_identity is not None:
            key["served"] = {k: v for k, v in self.served_identity.items() if k != "model_revision"}
        return key

    def describe(self) -> dict[str, Any]:
        """What the run manifest records: the endpoint and settings (never the key)."""
        return {
            **super().describe(),
            "base_url": safe_url(self.base_url),
            # recorded only when set, so that manifests of ordinary runs stay as they were
            **({INSECURE_HTTP_OPTION: True} if self.allow_insecure_http else {}),
            "api_key_env": self.api_key_env,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "image_format": self.image_format,
            "http_backend": self.http_backend,
        }

    def activity(self) -> dict[str, Any]:
        """The request fields sent and those the endpoint rejected, the models and system fingerprints that
        answered, and the requests by outcome."""
        with self._lock:
            fingerprints = dict(self._fingerprints)
            counts = dict(self._counts)
        return {
            "sent_params": self.sent_params(),
            "dropped_params": list(self.dropped_params),
            # only when an earlier run's findings were used, so that other run logs stay as they were
            **({"recalled_params": list(self.recalled_params)} if self.recalled_params else {}),
            "served_models": self.served_models,
            "system_fingerprints": fingerprints,
            "request_counts": counts,
        }

    def endpoint(self) -> str:
        """`<base_url> <model>`: what the endpoint accepts can differ by model (reasoning models reject more)."""
        return f"{safe_url(self.base_url)} {self.model}"

    def learned(self) -> dict[str, Any]:
        """`{"rejected_params": [...]}` when the endpoint rejected optional fields, else {}."""
        with self._lock:
            return {"rejected_params": sorted(self.dropped_params)} if self.dropped_params else {}

    def start_from(self, learned: Mapping[str, Any]) -> None:
        """Drop, before the first request, the fields an earlier run found this endpoint rejects.

        Unknown names are ignored (a hand-edited or newer file must not break a run).
        """
        rejected = [f for f in learned.get("rejected_params") or () if f in _OPTIONAL_FIELDS]
        if not rejected:
            return
        log.warning("%s rejected %s in an earlier run: not sending them", safe_url(self.base_url), rejected)
        for field in rejected:
            if field not in self.dropped_params and self._drop(field):
                self.recalled_params.append(field)

    def sent_params(self) -> list[str]:
        """The optional request fields currently sent (after any the endpoint rejected were dropped)."""
        out = ["temperature", self.max_tokens_param]
        if self._send["seed"] and self.params.seed is not None:
            out.append("seed")
        if self._send["n"]:
            out.append("n")
        if self._send["detail"] and self.params.detail is not None:
            out.append("detail")
        return out

    def build_request(self, query: Query, data_url: str | None = None) -> dict[str, Any]:
        """The keyword arguments of `chat.completions.create` for one query.

        Args:
            query: the query.
            data_url: the image already encoded (encoded here when None).
        """
        if data_url is None:
            data_url = self.encode(query.image)
        detail = self.params.detail if self._send["detail"] else None
        request: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(query.prompt, data_url, detail),
            "temperature": self.params.temperature,
            self.max_tokens_param: self.params.max_new_tokens,
        }
        if self._send["seed"] and self.params.seed is not None:
            request["seed"] = self.params.seed
        if self._send["n"]:
            request["n"] = self.params.n
        return request

    def encode(self, image: np.ndarray) -> str:
        """The image as a data URL in this backend's format."""
        return encode_image(
            image, self.image_format, jpeg_quality=self.jpeg_quality, png_compress_level=self.png_compress_level
        )

    # --- transport ------------------------------------------------------------------------------------

    def _make_client(self) -> Any:
        import httpx2
        import openai

        timeout = httpx2.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        client_cls = httpx2.AsyncClient
        if self._transport is None and self.http_backend == "aiohttp":
            client_cls = openai.DefaultAioHttpClient
        http_client = client_cls(
            verify=_ssl_context(not self._loopback),
            timeout=timeout,
            limits=limits,
            follow_redirects=False,  # a redirect would send the image (and key) somewhere not configured
            trust_env=not self._loopback,  # a proxy must not see loopback traffic
            transport=self._transport,
        )
        return openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            timeout=timeout,
            max_retries=0,  # retries are ours (see the module notes)
            http_client=http_client,
        )

    def redact(self, text: str) -> str:
        """Remove the key (and anything that looks like an OpenAI key) from a message."""
        if self._api_key and self._api_key != PLACEHOLDER_KEY and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "***")
        return _KEYLIKE.sub("sk-***", text)

    def _describe_error(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        text = f"{type(exc).__name__}" + (f" (HTTP {status})" if status is not None else "") + f": {message}"
        return self.redact(text)[:_MAX_ERROR_CHARS]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.backoff_s * (2.0**attempt), self.max_backoff_s)
        delay = base * (0.5 + 0.5 * self._rng.random())
        if retry_after is not None:
            # never sooner than the server asked; a little jitter on top spreads the herd
            delay = max(retry_after, 0.0) + 0.1 * delay
        return delay

    def _rejected_field(self, exc: Any, request: dict[str, Any]) -> str | None:
        """If a 400 names an optional field we sent, which one."""
        if getattr(exc, "status_code", None) not in (400, 422):
            return None
        sent = [f for f in _OPTIONAL_FIELDS if f in request]
        if request["messages"][0]["content"][1]["image_url"].get("detail") is not None:
            sent.append("detail")
        param = str(getattr(exc, "param", None) or "")
        for f in sent:
            if param == f or param.endswith("." + f):
                return f
        message = str(getattr(exc, "message", "") or "").lower()
        body = getattr(exc, "body", None)
        if isinstance(body, dict | str):
            message += " " + str(body).lower()
        if not any(h in message for h in _UNSUPPORTED_HINTS):
            return None
        for f in sent:
            quoted = re.search(rf"['\"`]{re.escape(f)}['\"`]", message)
            if quoted or (len(f) > 1 and re.search(rf"\b{re.escape(f)}\b", message)):
                # "Use 'max_completion_tokens' instead" names both: the one we sent first is the culprit
                return f
        return None

    def _drop(self, field: str) -> bool:
        """Stop sending a rejected field; False when there is nothing left to change (a real client error)."""
        with self._lock:
            if field in self.dropped_params and field != self.max_tokens_param:
                return True  # another worker dropped it meanwhile: just send again
            if field in ("max_tokens", "max_completion_tokens"):
                other = "max_completion_tokens" if field == "max_tokens" else "max_tokens"
                if other in self.dropped_params:
                    return False  # both spellings rejected: the value itself is the problem
                self.max_tokens_param = other
                self.dropped_params.append(field)
                log.warning("endpoint rejects %r; sending %r instead", field, other)
                return True
            if not self._send.get(field):
                return False
            self._send[field] = False
            self.dropped_params.append(field)
            log.warning("endpoint rejects %r; not sending it for the rest of the run", field)
            return True

    async def _answer(self, client: Any, query: Query) -> Answer:
        """One query through retries to exactly one Answer; never raises (except cancellation)."""
        import httpx2
        import openai

        start = time.perf_counter()
        try:
            if np.asarray(query.image).size <= _INLINE_ENCODE_VALUES:
                data_url = self.encode(query.image)  # sub-millisecond: a thread hop would cost more
            else:  # zlib releases the GIL: big crops encode beside the event loop
                data_url = await asyncio.to_thread(self.encode, query.image)
        except Exception as exc:  # a bad image is this query's failure, not the run's
            return Answer(query.request_id, "failed", error=self._describe_error(exc), latency_s=0.0)
        attempt = 0
        rejections = 0
        last_error = "no attempt made"
        while True:
            request = self.build_request(query, data_url)
            retry_after: float | None = None
            try:
                with self._lock:
                    self._counts["requests"] += 1
                # the client's own POST (auth, headers, error classes) without `create`'s typed-params walk and
                # the response model: both cost more CPU than the rest of a request (see the module notes)
                raw = await client.post("/chat/completions", body=request, cast_to=httpx2.Response)
                completion = json.loads(raw.content)
                if not isinstance(completion, dict) or not completion.get("choices"):
                    raise _Malformed("response body is not a chat completion")
                answer = answer_from_completion(query.request_id, completion, time.perf_counter() - start)
                if answer.status == "answered":
                    with self._lock:
                        if answer.model_revision:
                            self._served_models[answer.model_revision] += 1
                        if answer.system_fingerprint:
                            self._fingerprints[answer.system_fingerprint] += 1
                        self._counts["answered"] += 1
                    return answer
                last_error = answer.error or "malformed response"
                break
            except asyncio.CancelledError:
                raise
            except openai.APIStatusError as exc:
                last_error = self._describe_error(exc)
                field = self._rejected_field(exc, request)
                if field is not None and rejections < len(_OPTIONAL_FIELDS) and self._drop(field):
                    rejections += 1
                    continue  # at once, and not counted as a retry: the request itself changed
                status = exc.status_code
                if status not in RETRY_STATUSES and status < 500:
                    break
                retry_after = parse_retry_after(exc.response.headers)
                if retry_after is not None and retry_after > self.max_retry_after_s:
                    last_error += f" (server asked to wait {retry_after:.0f} s > max_retry_after_s)"
                    break
            except (openai.APIResponseValidationError, _Malformed, ValueError) as exc:
                # JSON that does not parse, or parses into something that is not a completion
                last_error = "malformed response: " + self._describe_error(exc)
                break
            except openai.APIConnectionError as exc:  # includes timeouts and dropped connections
                cause = exc.__cause__
                if cause is not None:
                    detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
                    last_error = self._describe_error(exc) + self.redact(f" ({detail})")[:200]
                else:
                    last_error = self._describe_error(exc)
            except Exception as exc:  # anything else the client raises is this query's failure
                last_error = self._describe_error(exc)
            if attempt >= self.max_retries:
                last_error += f" (after {attempt + 1} attempts)"
                break
            delay = self._backoff(attempt, retry_after)
            log.info("request %s: %s; retry %d in %.2f s", query.request_id, last_error, attempt + 1, delay)
            with self._lock:
                self._counts["retries"] += 1
            await asyncio.sleep(delay)
            attempt += 1
        with self._lock:
            self._counts["failed"] += 1
        log.warning("request %s failed: %s", query.request_id, last_error)
        return Answer(query.request_id, "failed", error=last_error, latency_s=time.perf_counter() - start)

    # --- the Backend interface -----------------------------------------------------------------------

    async def astream(self, queries: Sequence[Query] | Iterable[Query]) -> AsyncIterator[Answer]:
        """Yield one answer per query as they complete, with at most `concurrency` requests in flight."""
        pending = iter(queries)
        out: asyncio.Queue[Answer | None] = asyncio.Queue()
        client = self._make_client()

        async def worker() -> None:
            try:
                for query in pending:  # a shared iterator: next() is synchronous, so workers never collide
                    await out.put(await self._answer(client, query))
            finally:
                await out.put(None)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            running = len(workers)
            while running:
                item = await out.get()
                if item is None:
                    running -= 1
                else:
                    yield item
            for w in workers:
                w.result()  # surface a worker bug instead of losing answers silently
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await client.close()

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer queries synchronously, in order; works inside a running event loop (Jupyter) too."""

        async def collect() -> list[Answer]:
            return [a async for a in self.astream(queries)]

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            answers = asyncio.run(collect())
        else:  # a notebook's loop is running in this thread: run ours in another one
            box: list[list[Answer]] = []
            thread = threading.Thread(target=lambda: box.append(asyncio.run(collect())), daemon=True)
            thread.start()
            thread.join()
            if not box:
                raise RuntimeError("the openai backend's worker thread ended without answers")
            answers = box[0]
        by_id = {a.request_id: a for a in answers}
        return [by_id[q.request_id] for q in queries]
