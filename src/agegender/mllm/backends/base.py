"""The backend interface every MLLM backend implements, and the registry.

A backend turns queries (an image and a prompt) into answers (the model's text plus what the
transport said: finish reason, refusal field, usage, fingerprint). Parsing the text is not the
backend's job (`agegender.mllm.parse`), nor is caching (`agegender.mllm.store`).

Backends implement either `generate_batch` (synchronous, batched: local models) or `astream`
(asynchronous, answers yielded as they complete: servers); the other one has a default.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from agegender.errors import InputError
from agegender.plugins import import_subclass
from agegender.settings import settings_from_kwargs


@dataclass(frozen=True)
class GenerationParams:
    """Generation settings; part of the response store's key.

    Attributes:
        temperature: 0 = greedy (the paper's setting); only deterministic requests are cached for reuse.
        max_new_tokens: answer length limit.
        seed: sent where the endpoint takes it (paper: 1234 for ChatGPT).
        n: completions per request (paper: 1).
        detail: OpenAI image detail (`low`, `high`, `auto`; paper: high); None = not sent.
    """

    temperature: float = 0.0
    max_new_tokens: int = 32
    seed: int | None = 1234
    n: int = 1
    detail: str | None = "high"

    @property
    def deterministic(self) -> bool:
        """Whether the same request always gets the same answer (so a stored answer may be reused)."""
        return self.temperature == 0.0 and self.n == 1

    def as_key(self) -> dict[str, Any]:
        """The fields as a plain dict (for cache keys and manifests)."""
        return asdict(self)


@dataclass(frozen=True)
class Query:
    """One request: an RGB crop and the prompt.

    Attributes:
        request_id: unique within a run (e.g. `f"{sample_id}|{input}"`).
        image: RGB uint8 array (H, W, 3).
        prompt: the text prompt (the paper's, `agegender.mllm.prompt.PROMPT`).
        image_hash: content hash of the image (see `image_hash`); computed when not given.
    """

    request_id: str
    image: np.ndarray = field(repr=False)
    prompt: str
    image_hash: str = ""

    def __post_init__(self) -> None:
        if not self.image_hash:
            object.__setattr__(self, "image_hash", image_hash(self.image))


@dataclass
class Answer:
    """What came back for one query.

    Attributes:
        request_id: the query's id.
        status: `answered` (the model said something, possibly a refusal) or `failed` (no answer:
            network or server error after retries, timeout, malformed response). Failed answers are
            never cached and are retried on the next run.
        text: the model's text (None when failed or when the API returned only a refusal).
        finish_reason: as reported (`stop`, `length`, `content_filter`, ...).
        refusal: the API's refusal field, when present.
        error: what went wrong, for failed answers.
        prompt_tokens, completion_tokens: usage, where reported.
        system_fingerprint: OpenAI's backend fingerprint, where reported.
        model_revision: the served model's revision/version, where known.
        latency_s: wall time of the request.
    """

    request_id: str
    status: Literal["answered", "failed"]
    text: str | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    system_fingerprint: str | None = None
    model_revision: str | None = None
    latency_s: float | None = None


def image_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and pixels: the store keeps this, never the image."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class Backend:
    """An MLLM that answers image + prompt queries.

    Subclasses set `name`, implement `generate_batch` or `astream`, and may override `model_revision`.

    A backend that declares `options_type` takes its options typed (`options=OpenAIOptions(...)`, as params and
    the CLI build them) or as keyword arguments (tests, notebooks), both through `load_options`.

    Args:
        model: model id or local folder (backend-specific).
        params: generation settings.
        **options: backend-specific options (base_url, concurrency, batch_size, device, ...), declared by the
            subclass's `options_type`.
    """

    name: ClassVar[str] = ""
    #: the settings dataclass of this backend's options (`agegender.mllm.backend_options`): params.yaml's options
    #: are loaded into it; None: options are keyword arguments checked by the constructor alone
    options_type: ClassVar[type | None] = None
    #: how many queries the runner hands over at once
    batch_size: int = 8

    def __init__(self, model: str, *, params: GenerationParams | None = None, **options: Any) -> None:
        self.model = model
        self.params = params or GenerationParams()
        self.options = options

    @classmethod
    def load_options(cls, options: Any = None, /, **kwargs: Any) -> Any:
        """This backend's options as one `options_type` value, whichever form the caller gave them in.

        Args:
            options: an instance of `options_type` (already checked), a mapping of keyword arguments, or None.
            **kwargs: keyword arguments (merged over a mapping; not allowed with a typed value).

        Raises:
            InputError: an unknown option (naming the known ones), a wrongly typed or bad value, naming the option.
            TypeError: no `options_type`, a typed value of another class, or a typed value with keyword arguments.
        """
        if cls.options_type is None:
            raise TypeError(f"{cls.__name__} declares no options_type")
        if options is None or isinstance(options, Mapping):
            given = {**(options or {}), **kwargs}
            return settings_from_kwargs(cls.options_type, given, what=f"{cls.name} backend option")
        if not isinstance(options, cls.options_type):
            raise TypeError(f"{cls.__name__} takes {cls.options_type.__name__}, not {type(options).__name__}")
        if kwargs:
            raise TypeError(f"{cls.__name__}: give typed options or keyword arguments, not both ({sorted(kwargs)})")
        return options

    @property
    def model_revision(self) -> str | None:
        """Revision of the model weights (commit hash, file digest, server-reported version), if known."""
        return None

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer a batch synchronously (local models). Default: drive `astream`."""
        if type(self).astream is Backend.astream:
            raise NotImplementedError(f"{type(self).__name__} implements neither generate_batch nor astream")

        async def collect() -> list[Answer]:
            return [a async for a in self.astream(queries)]

        by_id = {a.request_id: a for a in asyncio.run(collect())}
        return [by_id[q.request_id] for q in queries]

    async def astream(self, queries: Sequence[Query]) -> AsyncIterator[Answer]:
        """Yield answers as they complete (any order). Default: `generate_batch` per batch, in a thread."""
        if type(self).generate_batch is Backend.generate_batch:
            raise NotImplementedError(f"{type(self).__name__} implements neither generate_batch nor astream")
        for start in range(0, len(queries), self.batch_size):
            chunk = list(queries[start : start + self.batch_size])
            for answer in await asyncio.to_thread(self.generate_batch, chunk):
                yield answer

    def key_options(self) -> dict[str, Any]:
        """Backend options that change the answer (preprocessing, resolution policy, chat template, ...).

        They join the response store's key, so answers made with other settings are never reused. Options that
        do not change answers (concurrency, timeouts, base_url of the same model, batch size) stay out.
        Default: none. Values must be JSON-serialisable.
        """
        return {}

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about this backend (never secrets)."""
        return {
            "backend": self.name,
            "model": self.model,
            "model_revision": self.model_revision,
            "params": self.params.as_key(),
        }

    def activity(self) -> dict[str, Any]:
        """What this backend did during the run (requests made, what an endpoint answered or refused): how the run
        went, which depends on what the response store already held. The manifest keeps it apart from
        `describe()` (`backend_activity`, one of `runner.RUN_FIELDS`). Default: nothing. JSON-serialisable."""
        return {}

    def endpoint(self) -> str | None:
        """Names the remote endpoint whose accepted request fields this backend learns by trying them (e.g.
        `https://api.openai.com/v1 gpt-4o`), or None for a backend that learns nothing (default). The runner keeps
        what was learned in the response store (`store.remember_endpoint`) so the next run starts from it."""
        return None

    def learned(self) -> dict[str, Any]:
        """What this backend learned about its endpoint during the run (JSON-serialisable, no secrets); {} when
        nothing. Default: nothing."""
        return {}

    def start_from(self, learned: Mapping[str, Any]) -> None:
        """Take what an earlier run learned about the same endpoint (`learned()`), before any request. Default:
        nothing to take."""

    def close(self) -> None:
        """Release resources (models, clients, servers)."""

    def with_params(self, params: GenerationParams) -> Backend:
        """This backend generating with other settings, sharing everything loaded (weights, processor, engine).

        The project's server uses it to honour a request's own token limit without loading the model again.
        The default is a shallow copy with `params` replaced, right for backends that read `self.params` when
        they generate (every built-in one does). A backend that turns its params into state at construction
        must override it. The twin is never closed: closing the original releases what both use.
        """
        if params == self.params:
            return self
        twin = copy.copy(self)
        twin.params = params
        return twin


BACKENDS: dict[str, type[Backend]] = {}

#: backends living in modules that import heavy or optional packages: imported on first use
_LAZY: dict[str, str] = {
    "openai": "agegender.mllm.backends.openai_backend",
    "transformers": "agegender.mllm.backends.transformers_backend",
    "vllm": "agegender.mllm.backends.vllm_backend",
    # torch-free built-in models of the project's own OpenAI-compatible server (benchmarks, plumbing checks)
    "constant": "agegender.mllm.tools.server",
    "echo": "agegender.mllm.tools.server",
}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    BACKENDS[cls.name] = cls
    return cls


def known_backends() -> list[str]:
    """The registered backend names, including those imported on first use."""
    return sorted(set(BACKENDS) | set(_LAZY))


def resolve_backend(spec: str) -> type[Backend]:
    """The backend class named by an import path `"package.module:Class"` (a backend kept outside agegender).

    Raises:
        InputError: the module does not import, has no such attribute, or it is not a `Backend` subclass.
    """
    return import_subclass(spec, Backend, what="backend")


def create_backend(
    name: str, model: str, *, params: GenerationParams | None = None, options: Any = None, **kwargs: Any
) -> Backend:
    """Build a backend by its registered name, or by an import path `"package.module:Class"`.

    Args:
        name: the registered name or import path.
        model: model id or local folder.
        params: generation settings.
        options: the backend's typed options (`agegender.mllm.backend_options.load_backend_options`), or a mapping
            passed on as keyword arguments (what a backend kept outside agegender takes), or None.
        **kwargs: further options as keyword arguments (not with typed `options`).

    Raises:
        InputError: unknown backend name, or bad options (see `Backend.load_options`).
    """
    if name not in BACKENDS and name in _LAZY:
        importlib.import_module(_LAZY[name])
    if name not in BACKENDS and ":" in name:
        cls = resolve_backend(name)
    elif name in BACKENDS:
        cls = BACKENDS[name]
    else:
        raise InputError(f"unknown MLLM backend {name!r}; known: {known_backends()}", field="backend")
    if options is None or isinstance(options, Mapping):
        return cls(model, params=params, **{**(options or {}), **kwargs})
    return cls(model, params=params, options=options, **kwargs)
