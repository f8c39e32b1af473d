"""What a zero-shot run costs through OpenAI's API, and about how long it takes, from the real crop sizes.

An OpenAI vision request is billed as input tokens (the prompt's text, a few tokens of chat framing and the
image's tokens) plus output tokens. For the tile-based vision models (GPT-4o, GPT-4o mini, GPT-4 Turbo,
GPT-4V) an image's tokens follow OpenAI's published rule (the "Images and vision" guide, section "Calculating
costs"):

- `detail: low`: a fixed `base` number of tokens, whatever the size;
- `detail: high`: the image is scaled to fit within 2048 x 2048, then scaled so that its shortest side is
  768 px; the 512-px tiles that cover it cost `per_tile` tokens each, plus `base`.

GPT-4.1 mini / nano and o4-mini bill by 32-px patches instead (`PatchRule`, the same guide): the patches that
cover the image, at most 1,536 (a larger image is first shrunk, aspect kept, so that whole patches cover it within
that cap), times the model's multiplier; `detail` changes nothing. GPT-4.1 itself bills tiles as GPT-4o does.
For an image over the cap the documented shrink is followed (it matches OpenAI's own calculator), although one
measurement on the API billed the whole cap for such an image (4000 x 1474: 2,488 tokens on gpt-4.1-mini, not
2,347): for crops of more than 1,536 patches (about 1.5 megapixels) the estimate may be up to ~6% low.

Decisions (documented here because they change the figures):

- **Small images are not enlarged** (`upscale=False`, the default): the guide's words ("scaled such that the
  shortest side is 768px") read as if a 256 x 512 crop were enlarged to 768 x 1536 (6 tiles), but usage reported
  by the API for small images is one tile per 512 px (a 128 x 64 image bills 1 tile on gpt-4o and gpt-4o-mini;
  forum measurements of 2025, see `VISION_TOKEN_SOURCE`), i.e. the second step only shrinks. `upscale=True` gives
  the literal reading, an upper bound; the two agree for every crop whose shortest side is at least 768 px.
- **`detail: auto` (or no detail sent) counts as `high`**: the API picks, and high is the upper bound; the
  paper sent full-size crops with `high`.
- **Text tokens**: the prompt is counted with tiktoken when it is installed *and* its encoding file is already in
  its cache (tiktoken downloads missing encodings; here that is refused, nothing is fetched); otherwise
  ceil(characters / 4), OpenAI's rule of thumb for English. Either way 7 tokens of chat framing are added per
  request (3 per message, 1 for the role, 3 priming the reply: OpenAI's cookbook "How to count tokens"). The
  method used is in every result (`text_method`); `text_tokens=` sets an exact count instead (e.g. a run's
  `usage.prompt_tokens` minus its image tokens).
- **Prices are not facts of this code**: `PRICES` is read from a dated table, `prices.csv` beside this module
  (standard tier, USD per million tokens, one `as_of` date and source per model: the paper's models and today's
  OpenAI and Gemini models), to be checked against the current list and overridden by arguments; the printed
  table says the date of the price it used. A model without a checked image-token rule (`unverified`: GPT-5, whose
  documented multipliers disagree with the usage the API reports, and Gemini) is priced only with its image
  tokens known (`VISION_RULES`); its price alone is no estimate.
  The Batch API (half price, answers within 24 h) is not what the runner uses.
- **Which crops** are priced is the run's own plan (`agegender.mllm.runner.plan_queries`; for a params file the
  stage's `model_plan`, `inputs_by_dataset` included): a crop the stage never sends is never priced.
- **Crop sizes** come from the runner's own crop rules (`agegender.data.crops`) and its `max_side` downscale,
  without encoding any image: `face` and `body` crops are their clamped boxes (only image headers are read),
  `body_wo_face` crops are cut as the runner cuts them (its drop rules look at the masked pixels).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.errors import InputError
from agegender.mllm.prompt import PROMPT_VERSION, get_prompt
from agegender.mllm.runner import (
    QueryPlan,
    _check_input,
    _check_max_side,
    downscaled_size,
    mask_neighbours,
    model_plan,
)

if TYPE_CHECKING:
    import pandas as pd

    from agegender.params import Params
    from agegender.paths import ProjectPaths

# ---------------------------------------------------------------------------------------------------------------
# Image tokens

#: the tile rule's geometry (the same for every tile-based model)
FIT_SIDE = 2048
SHORT_SIDE = 768
TILE = 512


@dataclass(frozen=True)
class VisionRule:
    """Image-token constants of a tile-based OpenAI vision model: `base` (also the whole low-detail cost)
    and `per_tile` (each 512-px tile of a high-detail image)."""

    base: int
    per_tile: int


#: the patch rule's geometry: 32-px patches, at most 1,536 of them
PATCH = 32
MAX_PATCHES = 1536


@dataclass(frozen=True)
class PatchRule:
    """Image-token rule of a patch-based OpenAI vision model: `multiplier` tokens per 32-px patch (`detail` aside)."""

    multiplier: float


#: model id prefix -> its rule; the longest matching prefix wins (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`).
VISION_RULES: dict[str, VisionRule | PatchRule] = {
    "gpt-4o": VisionRule(85, 170),
    # gpt-4o-mini bills ~33x the tokens at 1/16.7 of the price: an image costs about the same as on gpt-4o
    "gpt-4o-mini": VisionRule(2833, 5667),
    "gpt-4-turbo": VisionRule(85, 170),
    "gpt-4-vision-preview": VisionRule(85, 170),
    "gpt-4-1106-vision-preview": VisionRule(85, 170),
    "gpt-4.1": VisionRule(85, 170),
    "gpt-4.1-mini": PatchRule(1.62),
    "gpt-4.1-nano": PatchRule(2.46),
    "o4-mini": PatchRule(1.72),
}
VISION_TOKEN_SOURCE = (
    "OpenAI API docs, guide 'Images and vision', section 'Calculating costs' (platform.openai.com/docs/guides/vision, "
    "worked examples 1024x1024 high = 765, 2048x4096 high = 1105, low = 85; gpt-4o-mini base 2833, tile 5667; "
    "patch models: 1024x1024 = 1024 patches, 1800x2400 = 1452 patches, multipliers gpt-4.1-mini 1.62, gpt-4.1-nano "
    "2.46, o4-mini 1.72); "
    "no enlargement of small images, and gpt-4.1 billed as tiles like gpt-4o: usage measured on the API (OpenAI "
    "developer forum, 'Vision: more than one way to send a request', 2025: 128x64 high = 1 tile on gpt-4o, "
    "gpt-4o-mini and gpt-4.1; 'Vision pricing calculator: inaccurate resizing', 2025: gpt-4.1-mini bills at most "
    "1536 x 1.62); read 2026-11-26 (tiles) and 2026-12-07 (patches)"
)


def _lookup(table: Mapping[str, Any], model: str, what: str) -> tuple[str, Any]:
    name = model.strip().lower().removeprefix("openai/")
    matches = [key for key in table if name == key or name.startswith(key + "-")]
    if not matches:
        raise InputError(f"no {what} known for model {model!r}; known: {sorted(table)}", field="model")
    key = max(matches, key=len)
    return key, table[key]


def vision_rule(model: str) -> VisionRule | PatchRule:
    """The image-token rule of an OpenAI model id (a snapshot id finds its family).

    Raises:
        InputError: a model that is not an OpenAI vision model of `VISION_RULES`.
    """
    return _lookup(VISION_RULES, model, "image-token rule")[1]


def _check_size(width: int, height: int) -> tuple[int, int]:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise InputError(f"image size must be two integers, got {width!r} x {height!r}", field="size") from None
    if w < 1 or h < 1 or w != width or h != height:
        raise InputError(f"image size must be positive whole pixels, got {width!r} x {height!r}", field="size")
    return w, h


def high_detail_size(width: int, height: int, *, upscale: bool = False) -> tuple[int, int]:
    """The size a high-detail image is tiled at: fitted within 2048 x 2048, then its shortest side to 768 px.

    Args:
        width, height: the image as sent, in pixels.
        upscale: also enlarge images whose shortest side is below 768 px (the guide's literal wording; see the
            module notes: the API does not).

    Returns:
        (width, height), truncated to whole pixels.
    """
    w, h = _check_size(width, height)
    fw, fh = float(w), float(h)
    if max(fw, fh) > FIT_SIDE:
        scale = FIT_SIDE / max(fw, fh)
        fw, fh = fw * scale, fh * scale
    short = min(fw, fh)
    if short > SHORT_SIDE or (upscale and short < SHORT_SIDE):
        scale = SHORT_SIDE / short
        fw, fh = fw * scale, fh * scale
    # a side scaled to exactly 768 or 2048 must stay there; floats may land a hair below
    return max(1, math.floor(fw + 1e-6)), max(1, math.floor(fh + 1e-6))


def image_tiles(width: int, height: int, *, upscale: bool = False) -> int:
    """512-px tiles that cover a high-detail image (after `high_detail_size`)."""
    w, h = high_detail_size(width, height, upscale=upscale)
    return math.ceil(w / TILE) * math.ceil(h / TILE)


def image_patches(width: int, height: int) -> int:
    """32-px patches that cover an image for the patch-based models: at most `MAX_PATCHES`.

    An image that needs more is shrunk (aspect kept) to the largest size whose whole patches fit the cap: scaled to
    the cap's area, then down until one side is a whole number of patches, its sides cut to whole pixels (the
    guide's 1800 x 2400 -> 1056 x 1408 = 33 x 44 = 1,452 patches).
    """
    w, h = _check_size(width, height)
    patches = math.ceil(w / PATCH) * math.ceil(h / PATCH)
    if patches <= MAX_PATCHES:
        return patches
    scale = math.sqrt(PATCH * PATCH * MAX_PATCHES / (w * h))
    scale *= min(
        math.floor(w * scale / PATCH) / (w * scale / PATCH), math.floor(h * scale / PATCH) / (h * scale / PATCH)
    )
    sw, sh = max(1, math.floor(w * scale + 1e-6)), max(1, math.floor(h * scale + 1e-6))
    return min(MAX_PATCHES, math.ceil(sw / PATCH) * math.ceil(sh / PATCH))


def _check_detail(detail: str | None) -> str:
    value = "auto" if detail is None else str(detail).lower()
    if value not in ("low", "high", "auto"):
        raise InputError(f"detail must be 'low', 'high' or 'auto', got {detail!r}", field="detail")
    return value


def image_tokens(
    width: int, height: int, *, detail: str | None = "high", model: str = "gpt-4o", upscale: bool = False
) -> int:
    """Input tokens OpenAI bills for one image.

    Args:
        width, height: the image as sent, in pixels.
        detail: `low`, `high`, or `auto` / None (counted as `high`, the upper bound); patch models ignore it.
        model: an OpenAI model id of `VISION_RULES` (snapshots such as `gpt-4o-2024-05-13` find their family).
        upscale: enlarge small images to a 768-px shortest side (tile models; see the module notes; default: no).

    Returns:
        Tile models: `base` for low detail, `base + per_tile * tiles` otherwise (1024 x 1024 high on gpt-4o: 765).
        Patch models: patches times the multiplier, rounded to a whole token (the rounding is not documented: +-1).

    Raises:
        InputError: unknown model or detail, or a size that is not positive whole pixels.
    """
    rule = vision_rule(model)
    w, h = _check_size(width, height)
    detail = _check_detail(detail)
    if isinstance(rule, PatchRule):
        return round(image_patches(w, h) * rule.multiplier)
    if detail == "low":
        return rule.base
    return rule.base + rule.per_tile * image_tiles(w, h, upscale=upscale)


# ---------------------------------------------------------------------------------------------------------------
# Text tokens and prices

#: tokens of chat framing per one-message request: 3 per message + 1 for the role + 3 priming the reply
MESSAGE_OVERHEAD_TOKENS = 7
#: output tokens per answer: "[female; 40]" is about 7 tokens, plus the end of the message
DEFAULT_OUTPUT_TOKENS = 8


class _NoDownload(Exception):
    """tiktoken wanted to download an encoding."""


def _tiktoken_count(text: str, model: str) -> int | None:
    """The text's token count with tiktoken, or None when tiktoken or its encoding file is not here offline."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    original = tiktoken.load.read_file

    def local_only(blobpath: str) -> bytes:
        # tiktoken reads its cache first and calls read_file only for a missing file: refuse URLs there
        if "://" in str(blobpath):
            raise _NoDownload(blobpath)
        return original(blobpath)

    tiktoken.load.read_file = local_only
    try:
        encoding = tiktoken.encoding_for_model(model.removeprefix("openai/"))
        return len(encoding.encode(text))
    except (_NoDownload, KeyError, ValueError, OSError):
        return None
    finally:
        tiktoken.load.read_file = original


def prompt_tokens(prompt: str, model: str) -> tuple[int, str]:
    """Input text tokens of one request: the prompt plus `MESSAGE_OVERHEAD_TOKENS`.

    Returns:
        (tokens, method): method says `tiktoken <encoding-for-model>` or `estimate ceil(chars/4)`.
    """
    counted = _tiktoken_count(prompt, model)
    if counted is not None:
        return counted + MESSAGE_OVERHEAD_TOKENS, f"tiktoken ({model}) + {MESSAGE_OVERHEAD_TOKENS} framing"
    estimate = math.ceil(len(prompt) / 4)
    return estimate + MESSAGE_OVERHEAD_TOKENS, (
        f"estimate: ceil({len(prompt)} chars / 4) + {MESSAGE_OVERHEAD_TOKENS} framing (no offline tiktoken encoding)"
    )


@dataclass(frozen=True)
class Price:
    """USD per million tokens, standard tier; `as_of` and `source` say where a table's figure comes from (not part
    of equality: the same price read on another day is the same price)."""

    input: float
    output: float
    as_of: str = field(default="", compare=False)
    source: str = field(default="", compare=False)


#: the dated price table, as data: provider, model (id prefix), input / output USD per 1M tokens, image-token rule
#: (`tile base+per_tile` for the tile models of `VISION_RULES`, `unverified` where no rule was checked), as_of, source
PRICE_TABLE = Path(__file__).with_name("prices.csv")
_PRICE_COLUMNS = ("provider", "model", "input_usd_per_1m", "output_usd_per_1m", "image_token_rule", "as_of", "source")


def read_price_table(path: str | Path = PRICE_TABLE) -> dict[str, Price]:
    """A price table (model id prefix -> `Price`) from its CSV.

    Prices change and are not facts of this code: they live in a dated table that a user can update or replace
    without touching the code, each row with the day it was read and where.

    Raises:
        InputError: a missing column, a price that is not a finite number >= 0, a date that is not YYYY-MM-DD, or a
            model listed twice (named by file, row and field).
    """
    import csv
    from datetime import date

    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    except OSError as exc:
        raise InputError(f"cannot read the price table: {exc}", file=path) from None
    missing = [c for c in _PRICE_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise InputError(f"price table lacks columns {missing}", file=path)
    table: dict[str, Price] = {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        model = (row["model"] or "").strip().lower()
        for name in ("input_usd_per_1m", "output_usd_per_1m"):
            try:
                value = float(row[name])
            except (TypeError, ValueError):
                value = float("nan")
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"not a price in USD >= 0: {row[name]!r}", file=path, row=number, field=name)
        try:
            date.fromisoformat(row["as_of"])
        except (TypeError, ValueError):
            raise InputError(
                f"not a date (YYYY-MM-DD): {row['as_of']!r}", file=path, row=number, field="as_of"
            ) from None
        if not model or model in table:
            raise InputError(f"empty or repeated model {model!r}", file=path, row=number, field="model")
        table[model] = Price(
            float(row["input_usd_per_1m"]), float(row["output_usd_per_1m"]), as_of=row["as_of"], source=row["source"]
        )
    return table


#: model id prefix -> price; the longest matching prefix wins. A dated copy (`PRICE_TABLE`): check the current list.
PRICES: dict[str, Price] = read_price_table()
PRICES_SOURCE = (
    f"price table {PRICE_TABLE.name} (one date and source per model, newest {max(p.as_of for p in PRICES.values())}). "
    "Check the current price list; override with price_in/price_out"
)


def model_price(model: str, prices: Mapping[str, Price] | None = None) -> Price:
    """The price of a model id (longest prefix of `prices`, default `PRICES`).

    Raises:
        InputError: no price known; give one explicitly.
    """
    return _lookup(PRICES if prices is None else prices, model, "price (give --price-in/--price-out)")[1]


# ---------------------------------------------------------------------------------------------------------------
# Estimates


@dataclass
class KindCost:
    """Counts of one input kind (or of one list of sizes).

    Attributes:
        requests: requests sent (one per crop).
        no_crop: samples without this crop (no request).
        image_tokens, text_tokens, output_tokens: totals over the requests.
        tiles: 512-px tiles over the requests (high detail).
    """

    requests: int = 0
    no_crop: int = 0
    image_tokens: int = 0
    text_tokens: int = 0
    output_tokens: int = 0
    tiles: int = 0

    @property
    def input_tokens(self) -> int:
        return self.image_tokens + self.text_tokens


@dataclass
class CostEstimate:
    """Token counts and USD of a run, in total and per input kind.

    Attributes:
        model: the priced model id.
        detail: the image detail counted (`low`, `high`, `auto` counted as high).
        price: USD per million input and output tokens used.
        by_input: input kind -> its counts.
        text_method: how the prompt's tokens were counted.
        text_tokens_per_request: text tokens of one request (prompt + framing).
        output_tokens_per_request: the assumed answer length.
        max_side, upscale: the crop downscale and the tile-rule reading applied.
        sources: where the rule and the prices come from.
    """

    model: str
    detail: str
    price: Price
    by_input: dict[str, KindCost] = field(default_factory=dict)
    text_method: str = ""
    text_tokens_per_request: int = 0
    output_tokens_per_request: int = DEFAULT_OUTPUT_TOKENS
    max_side: int | None = None
    upscale: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def _sum(self, name: str) -> int:
        return sum(int(getattr(k, name)) for k in self.by_input.values())

    @property
    def requests(self) -> int:
        return self._sum("requests")

    @property
    def image_tokens(self) -> int:
        return self._sum("image_tokens")

    @property
    def text_tokens(self) -> int:
        return self._sum("text_tokens")

    @property
    def input_tokens(self) -> int:
        return self._sum("input_tokens")

    @property
    def output_tokens(self) -> int:
        return self._sum("output_tokens")

    def usd(self, kind: str | None = None) -> float:
        """USD of the whole run (or of one input kind) at `price`."""
        part = self.by_input[kind] if kind is not None else self
        return (part.input_tokens * self.price.input + part.output_tokens * self.price.output) / 1e6

    def duration_s(
        self, *, concurrency: int = 8, latency_s: float = 3.0, rpm: float | None = None, tpm: float | None = None
    ) -> float:
        """Wall time of the run, roughly: the slowest of the concurrency, requests-per-minute and tokens-per-minute
        bounds (an account's limits are on its limits page; latency is an assumption, a run's manifest measures it).

        Raises:
            InputError: a non-positive concurrency, latency or limit.
        """
        if concurrency < 1 or latency_s <= 0 or (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
            raise InputError("concurrency, latency and rate limits must be positive", field="concurrency")
        bounds = [self.requests * latency_s / concurrency]
        if rpm is not None:
            bounds.append(self.requests / rpm * 60.0)
        if tpm is not None:
            bounds.append((self.input_tokens + self.output_tokens) / tpm * 60.0)
        return max(bounds)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (totals, per input kind, the assumptions and sources)."""
        kinds = {
            kind: {
                "requests": k.requests,
                "no_crop": k.no_crop,
                "tiles": k.tiles,
                "image_tokens": k.image_tokens,
                "text_tokens": k.text_tokens,
                "output_tokens": k.output_tokens,
                "usd": round(self.usd(kind), 6),
            }
            for kind, k in self.by_input.items()
        }
        return {
            "model": self.model,
            "detail": self.detail,
            "max_side": self.max_side,
            "upscale": self.upscale,
            "price_per_million": {"input": self.price.input, "output": self.price.output},
            "price_as_of": self.price.as_of or None,
            "requests": self.requests,
            "image_tokens": self.image_tokens,
            "text_tokens": self.text_tokens,
            "output_tokens": self.output_tokens,
            "usd": round(self.usd(), 6),
            "text_method": self.text_method,
            "text_tokens_per_request": self.text_tokens_per_request,
            "output_tokens_per_request": self.output_tokens_per_request,
            "by_input": kinds,
            "sources": dict(self.sources),
        }

    def table(self, title: str | None = None) -> str:
        """A Markdown table: one row per input kind and a total."""
        head = "| input | requests | no crop | image tokens (mean) | text tokens | output tokens | USD |"
        lines = [f"**{title}**", ""] if title else []
        lines += [head, "|---|---:|---:|---:|---:|---:|---:|"]

        def row(name: str, k: KindCost | CostEstimate, no_crop: int, usd: float) -> str:
            mean = k.image_tokens / k.requests if k.requests else 0.0
            return (
                f"| {name} | {k.requests:,} | {no_crop:,} | {k.image_tokens:,} ({mean:,.0f}) | {k.text_tokens:,} "
                f"| {k.output_tokens:,} | {usd:,.2f} |"
            )

        for kind, k in self.by_input.items():
            lines.append(row(kind, k, k.no_crop, self.usd(kind)))
        if len(self.by_input) > 1:
            lines.append(row("total", self, self._sum("no_crop"), self.usd()))
        lines.append("")
        lines.append(
            f"{self.model}, detail {self.detail}, max_side {self.max_side}, "
            f"USD {self.price.input:g} / {self.price.output:g} per million input / output tokens "
            f"({f'price table as of {self.price.as_of}' if self.price.as_of else 'prices given'}; check the current "
            f"price list); text: {self.text_method}; "
            f"output: {self.output_tokens_per_request} tokens per answer (assumed)."
        )
        return "\n".join(lines)


def _resolve(
    model: str,
    detail: str | None,
    prices: Mapping[str, Price] | Price | None,
    price_in: float | None,
    price_out: float | None,
) -> tuple[str, Price]:
    det = _check_detail(detail)
    vision_rule(model)  # fail early on an unknown model
    if price_in is not None and price_out is not None:
        price = Price(float(price_in), float(price_out))
    else:
        base = prices if isinstance(prices, Price) else model_price(model, prices)
        given = price_in is not None or price_out is not None
        price = Price(
            float(price_in) if price_in is not None else base.input,
            float(price_out) if price_out is not None else base.output,
            as_of="" if given else base.as_of,  # a price partly given is no longer the table's
            source="" if given else base.source,
        )
    if price.input < 0 or price.output < 0 or not (math.isfinite(price.input) and math.isfinite(price.output)):
        raise InputError(f"prices must be finite and >= 0, got {price}", field="price")
    return det, price


def _new_estimate(
    model: str,
    detail: str | None,
    *,
    prices: Mapping[str, Price] | Price | None,
    price_in: float | None,
    price_out: float | None,
    prompt_version: str,
    output_tokens: int,
    text_tokens: int | None,
    max_side: int | None,
    upscale: bool,
) -> CostEstimate:
    det, price = _resolve(model, detail, prices, price_in, price_out)
    if output_tokens < 0:
        raise InputError(f"output_tokens must be >= 0, got {output_tokens}", field="output_tokens")
    if text_tokens is not None:
        if text_tokens < 0:
            raise InputError(f"text_tokens must be >= 0, got {text_tokens}", field="text_tokens")
        per_request, method = int(text_tokens), "given"
    else:
        per_request, method = prompt_tokens(get_prompt(prompt_version), model)
    return CostEstimate(
        model=model,
        detail=det,
        price=price,
        text_method=method,
        text_tokens_per_request=per_request,
        output_tokens_per_request=int(output_tokens),
        max_side=max_side,
        upscale=upscale,
        sources={"image_tokens": VISION_TOKEN_SOURCE, "prices": PRICES_SOURCE},
    )


def _add(estimate: CostEstimate, kind: str, size: tuple[int, int] | None) -> None:
    k = estimate.by_input.setdefault(kind, KindCost())
    if size is None:
        k.no_crop += 1
        return
    k.requests += 1
    k.image_tokens += image_tokens(*size, detail=estimate.detail, model=estimate.model, upscale=estimate.upscale)
    if estimate.detail != "low" and isinstance(vision_rule(estimate.model), VisionRule):
        k.tiles += image_tiles(*size, upscale=estimate.upscale)
    k.text_tokens += estimate.text_tokens_per_request
    k.output_tokens += estimate.output_tokens_per_request


def estimate_from_sizes(
    sizes: Iterable[tuple[int, int]],
    *,
    model: str = "gpt-4o",
    detail: str | None = "high",
    input_kind: str = "image",
    prices: Mapping[str, Price] | Price | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    prompt_version: str = PROMPT_VERSION,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    text_tokens: int | None = None,
    max_side: int | None = None,
    upscale: bool = False,
) -> CostEstimate:
    """The cost of one request per image size, without any image (paper-scale what-ifs).

    Args:
        sizes: (width, height) of each image as cropped (before `max_side`).
        model: OpenAI model id (image-token rule and default price).
        detail: `low`, `high` or `auto`/None (counted as high).
        input_kind: the name of the row in `by_input`.
        prices: a price table (model prefix -> `Price`) or one `Price`; default `PRICES`.
        price_in, price_out: USD per million input / output tokens, overriding the table.
        prompt_version: the registered prompt whose text is counted.
        output_tokens: tokens per answer.
        text_tokens: exact text tokens per request (prompt + framing) instead of counting them.
        max_side: the runner's downscale (longer side at most this), applied before the tile rule.
        upscale: the tile rule's literal reading (see the module notes).

    Raises:
        InputError: unknown model or prompt, no price, bad sizes or counts.
    """
    estimate = _new_estimate(
        model, detail, prices=prices, price_in=price_in, price_out=price_out, prompt_version=prompt_version,
        output_tokens=output_tokens, text_tokens=text_tokens, max_side=max_side, upscale=upscale,
    )  # fmt: skip
    estimate.by_input[input_kind] = KindCost()
    for size in sizes:
        width, height = _check_size(*size)
        _add(estimate, input_kind, downscaled_size(width, height, max_side))
    return estimate


def crop_sizes(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    input_kind: str,
    *,
    max_side: int | None = None,
    context: pd.DataFrame | None = None,
    progress: bool = False,
) -> Iterator[tuple[str, tuple[int, int] | None]]:
    """Yield (sample_id, (width, height) as sent) for every sample, or None where the runner makes no query.

    `face` and `body` crops are their boxes clamped to the image (`agegender.data.crops.clamp_box`, the rule
    `crop` applies), so only image headers are read; `body_wo_face` crops are cut by `iter_crops` as the runner
    cuts them, since its drop rules look at the masked pixels. `max_side` is the runner's downscale.

    Raises:
        InputError: unknown input kind, a data set missing from `image_roots`, an unreadable image.
    """
    from tqdm.auto import tqdm

    from agegender.data.crops import clamp_box, image_file, image_size, iter_crops
    from agegender.data.schema import FACE_BOX, PERSON_BOX

    _check_input(input_kind)
    _check_max_side(max_side)
    if input_kind == "body_wo_face":
        for sample_id, crop in iter_crops(samples, masked, image_roots, input_kind, context=context, progress=progress):
            yield sample_id, None if crop is None else downscaled_size(crop.shape[1], crop.shape[0], max_side)
        return
    for col in ("sample_id", "dataset", "image_path"):
        if col not in samples.columns:
            raise InputError("required column is missing from the sample table", field=col)
    cols = list(FACE_BOX if input_kind == "face" else PERSON_BOX)
    boxes = samples.reindex(columns=cols).astype("Float64").to_numpy(dtype=float, na_value=math.nan)
    sizes: dict[Path, tuple[int, int]] = {}
    ids, datasets = samples["sample_id"].astype(str), samples["dataset"].astype(str)
    rows = zip(ids, datasets, samples["image_path"].astype(str), strict=True)
    for pos, (sample_id, dataset, image_path) in enumerate(
        tqdm(rows, total=len(samples), desc=f"crop sizes ({input_kind})", disable=not progress, unit="crop")
    ):
        path = image_file(image_roots, dataset, image_path)
        if path is None:
            raise InputError(
                f"no image folder given for data set {dataset!r}", row=f"{pos + 1} (sample_id {sample_id})",
                field="dataset",
            )  # fmt: skip
        box = boxes[pos]
        if not all(math.isfinite(v) for v in box):
            yield sample_id, None
            continue
        if path not in sizes:
            sizes[path] = image_size(path)
        clamped = clamp_box(box, *sizes[path])
        if clamped is None:
            yield sample_id, None
            continue
        x0, y0, x1, y1 = clamped
        yield sample_id, downscaled_size(x1 - x0, y1 - y0, max_side)


def estimate_cost(
    plan: QueryPlan,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    model: str = "gpt-4o",
    detail: str | None = "high",
    max_side: int | None = None,
    prices: Mapping[str, Price] | Price | None = None,
    price_in: float | None = None,
    price_out: float | None = None,
    prompt_version: str = PROMPT_VERSION,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    text_tokens: int | None = None,
    upscale: bool = False,
    context: pd.DataFrame | None = None,
    progress: bool = False,
) -> CostEstimate:
    """The cost of asking `model` the queries of a plan, with the crops the runner sends.

    The plan (`agegender.mllm.runner.plan_queries`) is the one `query_samples` runs, so every planned (sample,
    input kind) with a crop is one request, and nothing else is priced.

    Args:
        plan: the run's plan (its shard's samples are priced).
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        model: OpenAI model id (image-token rule and default price).
        detail: the `detail` sent (`low`, `high`, `auto`/None counted as high).
        max_side: the runner's downscale (None: original size, the paper's setting).
        prices, price_in, price_out: see `estimate_from_sizes`.
        prompt_version: the registered prompt whose text is counted.
        output_tokens: tokens per answer.
        text_tokens: exact text tokens per request instead of counting them.
        upscale: the tile rule's literal reading (see the module notes).
        context: a larger sample table whose boxes are masked in `body_wo_face` crops (the pipeline passes
            every sample, as it does to `query_samples`).
        progress: show tqdm bars.

    Returns:
        The estimate: requests, token totals and USD, per input kind of the plan and in total.

    Raises:
        InputError: unknown model or prompt, no price, a data set without an image root, unreadable images.
    """
    estimate = _new_estimate(
        model, detail, prices=prices, price_in=price_in, price_out=price_out, prompt_version=prompt_version,
        output_tokens=output_tokens, text_tokens=text_tokens, max_side=max_side, upscale=upscale,
    )  # fmt: skip
    for kind in plan.samples:
        estimate.by_input[kind] = KindCost()
        neighbours = mask_neighbours(plan.samples[kind], context)
        for _, size in crop_sizes(
            plan.asked(kind), masked, image_roots, kind, max_side=max_side, context=neighbours, progress=progress
        ):
            _add(estimate, kind, size)
    return estimate


def estimate_params(
    params: Params,
    paths: ProjectPaths,
    *,
    model_key: str | None = None,
    model: str | None = None,
    **options: Any,
) -> dict[str, CostEstimate]:
    """Estimates for the `query_mllms.models` of a params file: the queries the stage would send.

    Each model is priced over its stage's plan (`agegender.mllm.runner.model_plan`: the study split of its data
    sets, each with its inputs or its `inputs_by_dataset`), with its `max_side`, the section's `detail` and prompt
    version, and the prepared data (`agegender.data.prepare.load_prepared`).

    Args:
        params, paths: as loaded by `agegender.stages.common.setup`.
        model_key: one entry of `query_mllms.models` (default: every entry whose backend is `openai`).
        model: the OpenAI model id to price instead of each entry's `model` (e.g. to price a local model's
            workload as if sent to gpt-4o).
        **options: `estimate_cost` arguments (`prices`, `price_in`, `price_out`, `output_tokens`, `text_tokens`,
            `upscale`, `progress`).

    Raises:
        InputError: an unknown key, no `openai` entry, an entry that is not an OpenAI model without `model`.
    """
    from agegender.data.prepare import SAMPLES_FILE, load_prepared

    cfg = params.query_mllms
    keys = [model_key] if model_key is not None else [k for k, spec in cfg.models.items() if spec.backend == "openai"]
    if not keys:
        raise InputError(
            "query_mllms.models has no entry with backend 'openai'; name one with --model-key and price it "
            "with --model",
            field="query_mllms.models",
        )
    data = load_prepared(params, paths)
    roots = data.image_roots(paths)
    out: dict[str, CostEstimate] = {}
    for key in keys:
        plan = model_plan(params, key, data.samples, source=paths(params.prepare_data.out) / SAMPLES_FILE)
        spec = cfg.models[key]
        priced = model or (spec.model if spec.backend == "openai" else None)
        if not priced:
            raise InputError(
                f"query_mllms.models.{key} is a {spec.backend} model; give the OpenAI model to price (--model)",
                field="model",
            )
        out[key] = estimate_cost(
            plan, data.masked, roots, model=priced, detail=cfg.generation.detail, max_side=spec.max_side,
            prompt_version=cfg.prompt_version, context=data.samples, **options,
        )  # fmt: skip
    return out
