"""The options of every built-in MLLM backend, one typed settings class per backend, and where requests may go.

A backend's options are what params.yaml gives under `query_mllms.models.<key>.options` (and
`finetune_mllm.backend_options`), what `agegender query --option name=value` gives, and the keyword arguments a
backend takes in code. All three go through the backend's class here: params and the CLI load what they were given
once (`load_backend_options`) and hand the typed value on (`BackendSpec`, `create_backend(options=...)`); code
that passes keyword arguments gets the same class (`Backend.load_options`). Names, types, defaults and value checks
live in one place, so a misspelt or ill-typed option is reported when params.yaml is loaded
(`query_mllms.models.gpt4o.options.concurency: unknown key (known: ...)`), not when the stage builds the backend
hours later, and never ignored.

This module imports no backend (no torch, no HTTP client): params validation runs in every stage.
Backends kept outside agegender (`"package.module:Class"`) may declare their own class as `Backend.options_type`.

Where requests may go (`OpenAIOptions.base_url`): plain `http://` only to this machine's loopback interface
unless `allow_insecure_http` says the user accepts unencrypted traffic; see `insecure_http_problem`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agegender.errors import InputError
from agegender.settings import build_settings

#: OpenAI's public API, used when no base_url is configured
OPENAI_BASE_URL = "https://api.openai.com/v1"
#: the backend option (params) and the `agegender query` flag that allow plain http to another host
INSECURE_HTTP_OPTION = "allow_insecure_http"
INSECURE_HTTP_FLAG = "--allow-insecure-http"
#: options of a model served by agegender's own server (`serve: true`) that go to the openai client, not the model
SERVED_CLIENT_OPTIONS: tuple[str, ...] = ("concurrency",)
#: `field(metadata=CODE_ONLY)`: an option that code passes (objects, test hooks), never a YAML file or command line
CODE_ONLY = {"settable": False}


def is_loopback_host(host: str | None) -> bool:
    """Whether a host name or address is this machine's loopback interface (127.0.0.0/8, ::1, `localhost`).

    Only what cannot leave the machine counts. A literal address counts when it is a loopback address; a
    non-loopback address of this machine itself (its eth0 address, `0.0.0.0`) does not: a server there is
    reachable from other machines, and the same setting pointed at another host would go over the wire.
    The one name that counts is `localhost`, and only when every address it resolves to is a loopback address
    (it comes from /etc/hosts, but a resolver without that entry may ask DNS). Other names, `*.localhost`
    included, are not resolved here: DNS could answer differently at connection time.
    """
    host = (host or "").strip("[]").lower()
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback  # an IPv6 zone (%eth0) is no address part
    except ValueError:
        pass
    if host != "localhost":
        return False
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in infos)


def is_loopback_url(url: str | None) -> bool:
    """Whether a base URL points at this machine's loopback interface (see `is_loopback_host`)."""
    if not url:
        return False
    try:
        return is_loopback_host(urlsplit(url).hostname)
    except ValueError:  # a malformed URL (e.g. a bad IPv6 literal) is nobody's loopback
        return False


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be a base_url (not an http(s) URL with a host), or None; the message never shows secrets."""
    try:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            return None
        shown = safe_url(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        shown = "an unparseable URL"
    return f"base_url must be an http(s) URL, got {shown!r}"


def insecure_http_problem(url: str | None) -> str | None:
    """Why requests to `url` would travel unencrypted to another host, or None when they would not.

    Plain `http://` is fine to this machine's loopback interface (nothing leaves the machine) and nowhere else:
    the bearer key and every photo would cross the network in clear text. The one check used by the backend
    (which refuses such a URL unless `allow_insecure_http` is set) and by `agegender check`.
    """
    if not url:
        return None  # OpenAI's API, over https
    parts = urlsplit(url)
    if parts.scheme != "http" or is_loopback_url(url):
        return None
    return (
        f"plain http:// to {parts.hostname}, which is not this machine's loopback interface: the API key and every "
        "photo would travel unencrypted. Use https:// (or an SSH tunnel to 127.0.0.1), or accept that explicitly "
        f"with the backend option {INSECURE_HTTP_OPTION}: true (agegender query: {INSECURE_HTTP_FLAG})"
    )


def safe_url(url: str) -> str:
    """A URL without user info or query string (either could hold a secret), for manifests and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:  # a malformed port must not stop the redaction (the checker reports such URLs)
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _require(ok: bool, name: str, message: str) -> None:
    """Raise the `InputError` naming option `name` unless `ok` (the settings converter adds the key path)."""
    if not ok:
        raise InputError(message, field=name)


@dataclass(frozen=True)
class OpenAIOptions:
    """Options of the `openai` backend (`agegender.mllm.backends.openai_backend`; its module notes say why).

    Attributes:
        base_url: the endpoint, e.g. `http://127.0.0.1:8000/v1`; None = OpenAI's API.
        api_key_env: name of the environment variable holding the key; None/"" = send the placeholder.
        concurrency: requests in flight at most.
        timeout_s: per-attempt timeout (seconds).
        max_retries: further attempts after a retryable failure.
        backoff_s: first backoff delay; doubles per retry, with jitter (x0.5-1.0), capped at `max_backoff_s`.
        max_backoff_s: cap of the computed backoff (a server's Retry-After may ask for more).
        max_retry_after_s: longest Retry-After we wait for; longer = give up on that query for this run.
        send_seed, send_detail, send_n: whether to send `seed`, image `detail` and `n` at all.
        max_tokens_param: `auto`, `max_tokens` or `max_completion_tokens`.
        image_format: `png` (default, lossless) or `jpeg`.
        jpeg_quality, png_compress_level: encoder settings.
        http_backend: `aiohttp` (about half the CPU per request of httpx's pool at high concurrency), `httpx`,
            or `auto` (aiohttp when installed).
        jitter_seed: seed of the backoff jitter (tests); None = random.
        batch_size: queries a chunking runner hands over at once (None: max(64, 4 * concurrency)).
        allow_insecure_http: accept a plain `http://` base_url that is not this machine's loopback interface
            (the key and the photos travel unencrypted); off by default.
        http_transport: code only: an `httpx2` async transport to use instead of the network (tests).
        served_identity: code only: what the endpoint serves when it is this project's server
            (`agegender.mllm.tools.server.served_identity`); it joins the response store's key.

    Raises:
        InputError: a bad value, naming the option; a base_url that is not http(s), or plain http to another host
            without `allow_insecure_http`.
    """

    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0
    send_seed: bool = True
    send_detail: bool = True
    send_n: bool = True
    max_tokens_param: str = "auto"
    image_format: str = "png"
    jpeg_quality: int = 95
    png_compress_level: int = 1
    http_backend: str = "auto"
    jitter_seed: int | None = None
    batch_size: int | None = None
    allow_insecure_http: bool = False
    http_transport: Any = field(default=None, metadata=CODE_ONLY)
    served_identity: dict[str, Any] | None = field(default=None, metadata=CODE_ONLY)

    def __post_init__(self) -> None:
        _require(self.concurrency >= 1, "concurrency", f"must be >= 1, not {self.concurrency}")
        _require(self.timeout_s > 0, "timeout_s", f"must be > 0, not {self.timeout_s}")
        _require(self.max_retries >= 0, "max_retries", f"must be >= 0, not {self.max_retries}")
        _require(
            self.max_tokens_param in ("auto", "max_tokens", "max_completion_tokens"),
            "max_tokens_param",
            f"must be auto, max_tokens or max_completion_tokens, not {self.max_tokens_param!r}",
        )
        _require(
            self.image_format.lower() in ("png", "jpeg", "jpg"),
            "image_format",
            f"unknown image format {self.image_format!r}; use 'png' or 'jpeg'",
        )
        _require(
            self.http_backend in ("auto", "aiohttp", "httpx"),
            "http_backend",
            f"must be auto, aiohttp or httpx, not {self.http_backend!r}",
        )
        _require(self.batch_size is None or self.batch_size >= 1, "batch_size", f"must be >= 1, not {self.batch_size}")
        _require(
            isinstance(self.allow_insecure_http, bool),  # the string "false" from a YAML typo would be truthy
            INSECURE_HTTP_OPTION,
            f"must be true or false, not {self.allow_insecure_http!r}",
        )
        if self.base_url is not None:
            problem = base_url_problem(self.base_url)
            _require(problem is None, "base_url", problem or "")
            problem = insecure_http_problem(self.base_url)
            _require(problem is None or self.allow_insecure_http, "base_url", problem or "")


def _local_model_checks(batch_size: int) -> None:
    _require(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")


@dataclass(frozen=True)
class TransformersOptions:
    """Options of the `transformers` backend (`agegender.mllm.backends.transformers_backend`).

    Attributes:
        device: `auto` (cuda if available), `cpu`, `cuda`, `cuda:1`, ...
        batch_size: queries per `generate` call.
        dtype: `auto` (bf16 on CUDA, float32 on CPU), `bfloat16`, `float16`, `float32`.
        pad_to_square: LLaVA-1.5's mean-colour pad-to-square before the resize; None = on for
            `model_type == "llava"`, off otherwise.
        local_files_only: never download (default); False lets from_pretrained fetch a hub id.
        model_revision: override the computed revision (e.g. a release tag).
        attn_implementation: passed to from_pretrained (`sdpa`, `eager`, `flash_attention_2`); None = default.
        system_prompt: a system turn before each query (None = the template's default, if any).
        image_grid_pinpoints: the any-res grid of LLaVA-NeXT (and LLaVA-OneVision), `[[height, width], ...]` in pixels,
            set on the image processor and the model config (which counts the image tiles from it); None = the
            checkpoint's grid.
            It bounds the resolution an image is tiled at: the paper (section 4.2) ran LLaVA-NeXT "restricted to
            672x448 or 448x672", below the llava-v1.6 checkpoints' grid (up to 672x672 and 1008x336). Each side
            must be a multiple of the vision tower's tile (`vision_config.image_size`, 336), checked when the
            model is loaded; a model without any-res tiling refuses the option.
        min_pixels, max_pixels: Qwen-VL's pixel budget: the image is resized (aspect kept, sides multiples of 28) so
            that its area lies between them, and every 28x28 pixels cost one image token, so the budget decides
            whether a crop costs a handful of tokens or thousands. None = the checkpoint's processor default. A study
            setting: the paper predates these models; its rule (section 4.2: "For all models, we attempted to use the
            maximum possible resolution") is one choice of budget, a speed-bounded one another. Set on the image
            processor (`size`); a model whose image processor has no pixel budget refuses them.
        do_pan_and_scan: Gemma 3's pan-and-scan: off = one 896x896 view of the crop; on = that view plus up to
            `pan_and_scan_max_num_crops` crops of a long image, each costing `mm_tokens_per_image` tokens. Still one
            crop per request (section 4.3: "employing a single crop as the input image"): the extra views are the
            processor's of that one image. None = the checkpoint's default; a model whose image processor has no
            pan-and-scan refuses it.
        crop_to_patches, max_patches: InternVL's tiling: whether the crop is cut into tiles (plus a thumbnail) and
            into at most how many, each tile costing `image_seq_length` tokens (256 in InternVL3). None = the
            processor's default (tiles on, up to 12 in InternVL3); models without such tiling refuse them.
        image_longest_edge, do_image_splitting: SmolVLM's tile budget: the crop is resized so that its longest side is
            `image_longest_edge` pixels (then up to a multiple of the tile, the image processor's `max_image_size`),
            and with splitting on it is cut into tiles plus a global view, each costing `image_seq_len` tokens (64 in
            SmolVLM-256M/500M); off = the global view alone. The checkpoints ship 4 tiles a side (2048 with 512-pixel
            tiles): up to 17 views of one crop, still one crop per request (section 4.3). None = the checkpoint's
            processor default; a model whose image processor has no such tiling refuses them.
    """

    device: str = "auto"
    batch_size: int = 8
    dtype: str = "auto"
    pad_to_square: bool | None = None
    local_files_only: bool = True
    model_revision: str | None = None
    attn_implementation: str | None = None
    system_prompt: str | None = None
    image_grid_pinpoints: tuple[tuple[int, ...], ...] | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    do_pan_and_scan: bool | None = None
    crop_to_patches: bool | None = None
    max_patches: int | None = None
    image_longest_edge: int | None = None
    do_image_splitting: bool | None = None

    def __post_init__(self) -> None:
        _local_model_checks(self.batch_size)
        for name in ("min_pixels", "max_pixels", "max_patches", "image_longest_edge"):
            value = getattr(self, name)
            _require(
                value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                name,
                f"must be a positive count, got {value!r}",
            )
        _require(
            self.min_pixels is None or self.max_pixels is None or self.min_pixels <= self.max_pixels,
            "min_pixels",
            f"must not exceed max_pixels ({self.min_pixels} > {self.max_pixels})",
        )
        for name in ("do_pan_and_scan", "crop_to_patches", "do_image_splitting"):
            value = getattr(self, name)
            _require(value is None or isinstance(value, bool), name, f"must be true or false, not {value!r}")
        pinpoints = self.image_grid_pinpoints
        _require(
            pinpoints is None or (len(pinpoints) > 0 and all(len(p) == 2 and min(p) >= 1 for p in pinpoints)),
            "image_grid_pinpoints",
            f"must be a non-empty list of [height, width] pairs of positive pixel counts, got {pinpoints!r}",
        )


@dataclass(frozen=True)
class VLLMOptions:
    """Options of the `vllm` backend (`agegender.mllm.backends.vllm_backend`).

    Attributes:
        batch_size: queries handed to one `LLM.generate` call (vLLM batches continuously inside it).
        tensor_parallel_size: GPUs per model replica.
        dtype: vLLM dtype (`auto` = the checkpoint's, bf16 for llava-hf).
        max_model_len: context limit (None = the model's; lower it to save KV-cache memory).
        gpu_memory_utilization: fraction of GPU memory vLLM may take.
        pad_to_square: LLaVA-1.5's mean-colour padding; None = on for `model_type == "llava"`.
        local_files_only: never download (default).
        model_revision: override the computed revision.
        engine_options: further keyword arguments for `vllm.LLM` (e.g. `enforce_eager: true`).
        system_prompt: a system turn before each query (as in the transformers backend).
    """

    batch_size: int = 256
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    pad_to_square: bool | None = None
    local_files_only: bool = True
    model_revision: str | None = None
    engine_options: dict[str, Any] | None = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        _local_model_checks(self.batch_size)
        _require(
            self.tensor_parallel_size >= 1,
            "tensor_parallel_size",
            f"must be >= 1, got {self.tensor_parallel_size}",
        )


@dataclass(frozen=True)
class ConstantOptions:
    """Options of the `constant` model of agegender's own server (`agegender.mllm.tools.server.ConstantBackend`).

    Attributes:
        text: the answer.
        batch_latency_ms: time each batch takes (simulates a model whose batch costs about as much as one query).
        batch_size: queries per batch.
    """

    text: str = "[female; 40]"
    batch_latency_ms: float = 0.0
    batch_size: int = 64


@dataclass(frozen=True)
class EchoOptions:
    """The `echo` model of agegender's own server has no options (`agegender.mllm.tools.server.EchoBackend`)."""


@dataclass(frozen=True)
class ServedClientOptions:
    """Options of a model served by agegender's server (`serve: true`) that the openai client takes."""

    concurrency: int = 8

    def __post_init__(self) -> None:
        _require(self.concurrency >= 1, "concurrency", f"must be >= 1, not {self.concurrency}")


@dataclass(frozen=True)
class ServedOptions:
    """The options of a local model served by agegender's own server (`serve: true`), split by who takes them.

    params.yaml gives one `options` mapping; the server's backend and the openai client that queries it take
    different parts of it (`SERVED_CLIENT_OPTIONS` go to the client).

    Attributes:
        server: the served backend's options (e.g. `TransformersOptions`; a mapping for a backend kept outside
            agegender, checked when the server builds it).
        client: what the openai client takes.
    """

    server: Any
    client: ServedClientOptions = field(default_factory=ServedClientOptions)


#: registered backend name -> its options class (backends kept outside agegender declare `Backend.options_type`)
BACKEND_OPTIONS: dict[str, type] = {
    "openai": OpenAIOptions,
    "transformers": TransformersOptions,
    "vllm": VLLMOptions,
    "constant": ConstantOptions,
    "echo": EchoOptions,
}


def load_backend_options(
    backend: str, options: Mapping[str, Any] | None, *, where: str = "", serve: bool = False
) -> Any:
    """A backend's options as written (params.yaml, `agegender query --option`) -> its typed options, once.

    Every later reader (the stage, `create_backend`, the backend) takes the returned value, so names, types,
    defaults and checks are the options class's alone, and a misspelt option is reported before anything runs.

    Args:
        backend: the backend's registered name; an import path (a backend kept outside agegender) is not imported
            here, so its options stay a mapping that its class checks when it is built.
        options: the options as written (None: all defaults).
        where: their key path, e.g. `options` within `query_mllms.models.gpt4o`; "" for a command line.
        serve: the model is served by agegender's server: `SERVED_CLIENT_OPTIONS` go to the openai client.

    Returns:
        The instance of the backend's options class (`BACKEND_OPTIONS`), or a copy of the mapping for a backend
        kept outside agegender; with `serve`, a `ServedOptions` holding either one and the client's options.

    Raises:
        InputError: `field` is the option's key path below `where` (`options.concurency`), the message says what
            is wrong (an unknown option lists the known ones); `build_settings` of a section adds the section's
            path in front, so params.yaml's errors read `query_mllms.models.gpt4o.options.concurency: unknown key`.
    """
    written = dict(options or {})
    cls = BACKEND_OPTIONS.get(backend)
    try:
        if serve:
            client = {k: v for k, v in written.items() if k in SERVED_CLIENT_OPTIONS}
            served = {k: v for k, v in written.items() if k not in SERVED_CLIENT_OPTIONS}
            client = build_settings(ServedClientOptions, client, where)
            return ServedOptions(served if cls is None else build_settings(cls, served, where), client)
        return written if cls is None else build_settings(cls, written, where)
    except ValueError as exc:  # `<path>: <problem>`; key paths hold no ": "
        path, _, problem = str(exc).partition(": ")
        raise InputError(problem, field=path) from None


def options_mapping(options: Any) -> dict[str, Any]:
    """Typed options back to the mapping one would write in params.yaml: the settable fields that differ from
    their defaults (a mapping is copied; None gives {}). For boundaries that carry plain data only, such as the
    JSON command line of the server's subprocess, which builds the same typed value from it again.

    Raises:
        TypeError: a code-only option (an object such as an HTTP transport) is set: it cannot become plain data.
    """
    if options is None or isinstance(options, Mapping):
        return dict(options or {})
    out: dict[str, Any] = {}
    for f in fields(options):
        value = getattr(options, f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if value == default:
            continue
        if not f.metadata.get("settable", True):
            raise TypeError(f"the code-only option {f.name} of {type(options).__name__} cannot be passed as data")
        out[f.name] = value
    return out
