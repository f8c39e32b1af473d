"""Run the paper's zero-shot protocol over a sample table: plan -> crops -> queries -> store -> answers -> predictions.

Every query of the package takes one path: `plan_queries` (or `model_plan` for a `query_mllms` model) decides which
samples are asked with which crop (split, data sets, `inputs_by_dataset`, shard), and `query_samples` creates or
takes the backend, opens the store, runs `run_queries` once per input kind of the plan, closes both and sums the
outcome. A backend that learns which request fields its endpoint rejects starts from what an earlier run over the
same store learned, and leaves what it learned there (`store.recall_endpoint` / `remember_endpoint`). The
`query_mllms` stage, fine-tuning, checkpoint selection, `agegender query` and `annotate` call it, and
`agegender cost` prices the same plan.

`run_queries` makes one query per sample (the crop of the asked input kind and the paper's prompt), looks each
up in the response store, sends only the misses through the backend (asynchronously, answers taken as they
arrive), records every answer in the store before counting it done, parses it, and returns the prediction
table (one row per sample that has a crop) and a run manifest.

Resuming: a re-run over the same data finds every deterministic answer in the store and sends nothing; failed
requests are not stored and are sent again. A `kill -9` loses only the requests in flight.

Endings (`RunOutcome`, the same for `agegender query` and the `query_mllms` stage): a run with nothing to ask (no
sample selected, or none with a crop) is an `InputError` and writes nothing; a run whose requests all failed writes
nothing either (earlier results stay) and raises `IncompleteRunError` (exit code 3); a run with more `failed` rows
than its budget allows (`--max-failed`, `max_failed` in params: a count or a percentage, default 0) writes the
table and manifest, then raises `IncompleteRunError` with a summary of the errors and how to resume.

Sharding: `--shard i/n` (1-based: `1/4` is the first of four shards) keeps the samples whose
`shard_of(sample_id, n) == i - 1`, a hash of the sample id, so adding samples to a data set never moves the
others to another shard. `merge_predictions` / `merge_manifests` join the shards' outputs.

This module's top level imports only the standard library, so that `agegender --help` stays fast; pandas,
OpenCV and the backends are imported where they are used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.errors import IncompleteRunError, InputError, failure_budget
from agegender.files import write_json, write_table
from agegender.mllm.prompt import PROMPT_VERSION, get_prompt, prompt_hash

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from agegender.data.crops import BadImages
    from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query
    from agegender.mllm.store import ResponseStore
    from agegender.params import Params

#: input kinds an MLLM gets (the paper's): the person crop with the face visible, the face, the masked body.
MLLM_INPUTS: tuple[str, ...] = ("body", "face", "body_wo_face")
#: names of settings that hold secrets: backend.describe() keys that never reach a manifest, whatever a backend
#: puts there, and `--option` names the command line refuses.
SECRET_KEY_NAME = re.compile(r"api[_-]?key|secret|password|passwd|authori[sz]ation|bearer|cookie|credential", re.I)
_EXAMPLES = 20
_log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------------------------
# Crops -> queries


def downscaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The (width, height) `downscale` gives a crop: longer side at most `max_side`, never enlarged."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale)))


def downscale(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink an image so its longer side is at most `max_side` (area interpolation); never enlarges.

    Args:
        image: RGB array (H, W, 3).
        max_side: the limit; None returns the image unchanged (the paper sent ChatGPT original-size crops).
    """
    height, width = image.shape[:2]
    size = downscaled_size(width, height, max_side)
    if size == (width, height):
        return image
    import cv2

    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def request_id(sample_id: str, input_kind: str) -> str:
    """The request id of a sample's query: `f"{sample_id}|{input_kind}"`."""
    return f"{sample_id}|{input_kind}"


def _check_input(input_kind: str) -> None:
    if input_kind not in MLLM_INPUTS:
        raise InputError(f"unknown MLLM input kind {input_kind!r}; known: {list(MLLM_INPUTS)}", field="input")


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise InputError(f"max_side must be a positive integer or None, got {max_side!r}", field="max_side")


def crop_queries(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    input_kind: str,
    *,
    max_side: int | None = None,
    context: pd.DataFrame | None = None,
    prompt: str | None = None,
    stats: dict[str, Any] | None = None,
    bad_images: BadImages | None = None,
) -> Iterator[Query]:
    """Yield one query per sample that has a crop of `input_kind`, in the samples' order.

    Crops follow the official inference rules (`agegender.data.crops`): `body` is the person box with the face
    visible, `face` the face box, `body_wo_face` the person box with every face and overlapping person masked.
    Samples without the crop (no box, or a drop rule of `body_without_face`) make no query; they are counted
    in `stats["no_crop"]` and listed in `stats["no_crop_ids"]`. With `bad_images`, the samples of an image that
    cannot be loaded make no query either: they are recorded there and counted in `stats["bad_image"]`.

    Args:
        samples: sample table (DESIGN.md).
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        input_kind: one of `MLLM_INPUTS`.
        max_side: downscale so the longer side is at most this; None = original size.
        context: a larger sample table whose boxes also count as neighbours for `body_wo_face`.
        prompt: the prompt text (default: the paper's).
        stats: a dict updated as the queries are made: `queries`, `no_crop`, `no_crop_ids`, `bad_image`.
        bad_images: where given, an image that cannot be loaded is recorded there instead of raising.

    Yields:
        `Query(request_id=f"{sample_id}|{input_kind}", image=crop, prompt=prompt)`.

    Raises:
        InputError: unknown input kind, bad `max_side`, a data set missing from `image_roots`, or (without
            `bad_images`) an image that cannot be loaded.
    """
    from agegender.data.crops import iter_crops
    from agegender.mllm.backends.base import Query

    _check_input(input_kind)
    _check_max_side(max_side)
    text = get_prompt(PROMPT_VERSION) if prompt is None else prompt
    if stats is None:
        stats = {}
    stats.setdefault("queries", 0)
    stats.setdefault("no_crop", 0)
    stats.setdefault("no_crop_ids", [])
    stats.setdefault("bad_image", 0)
    crops = iter_crops(samples, masked, image_roots, input_kind, context=context, bad_images=bad_images)
    for sample_id, crop in crops:
        if bad_images is not None and sample_id in bad_images.samples:
            stats["bad_image"] += 1
            continue
        if crop is None:
            stats["no_crop"] += 1
            stats["no_crop_ids"].append(sample_id)
            continue
        stats["queries"] += 1
        yield Query(request_id(sample_id, input_kind), downscale(crop, max_side), text)


# ---------------------------------------------------------------------------------------------------------------
# Sharding


def parse_shard(spec: str) -> tuple[int, int]:
    """Read a shard spec `"i/n"`, 1-based (`"1/4"` is the first of four), into a 0-based `(index, count)`.

    Raises:
        InputError: not of the form i/n with 1 <= i <= n.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if m is None:
        raise InputError(f"shard must look like i/n (e.g. 1/4), got {spec!r}", field="shard")
    i, n = int(m[1]), int(m[2])
    if n < 1 or not 1 <= i <= n:
        raise InputError(
            f"shard {spec!r}: need 1 <= i <= n (shards are 1-based: 1/{max(n, 1)} is the first)", field="shard"
        )
    return i - 1, n


def format_shard(shard: tuple[int, int]) -> str:
    """`(0, 4)` -> `"1/4"` (the spelling `parse_shard` reads)."""
    return f"{shard[0] + 1}/{shard[1]}"


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard must be (index, count), got {shard!r}", field="shard") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard index must lie in [0, {count}) (0-based tuple), got {shard!r}", field="shard")
    return index, count


def shard_of(sample_id: str, count: int) -> int:
    """The 0-based shard of a sample: the first 8 bytes of SHA-256(sample_id) modulo `count` (stable, balanced)."""
    digest = hashlib.sha256(str(sample_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(samples: pd.DataFrame, shard: tuple[int, int]) -> pd.DataFrame:
    """The samples of one shard, in their original order (a copy)."""
    index, count = _check_shard(shard)
    if count == 1:
        return samples.copy()
    mask = [shard_of(s, count) == index for s in samples["sample_id"].astype(str)]
    return samples.loc[mask].copy()


# ---------------------------------------------------------------------------------------------------------------
# Planning: which samples are asked with which crop


@dataclass(frozen=True)
class QueryPlan:
    """Which samples a run asks about, with which crop: what `query_samples` sends and `agegender cost` prices.

    One plan serves both so that a price is the price of the queries a run sends (a crop the stage never sends,
    e.g. `body_wo_face` of a data set that `inputs_by_dataset` limits to `body`, is never priced). Within a
    planned (sample, input kind), the crop rules (`agegender.data.crops`) still decide whether there is a crop to
    send: a sample without one (no box, nothing left after masking) makes no query, and is counted as `no_crop`.

    Attributes:
        samples: input kind -> the samples asked with that crop, every shard (a shard's `body_wo_face` crops mask
            neighbours from every shard), in the table's order.
        datasets: input kind -> the data sets asked with it.
        shard: 0-based (index, count): the shard a run of this plan asks (`asked`).
    """

    samples: dict[str, pd.DataFrame]
    datasets: dict[str, tuple[str, ...]]
    shard: tuple[int, int] = (0, 1)

    def asked(self, input_kind: str) -> pd.DataFrame:
        """The samples of this plan's shard asked with `input_kind`, in order (`select_shard`)."""
        return select_shard(self.samples[input_kind], self.shard)

    def sample_ids(self) -> list[str]:
        """The sample ids of every input kind and shard (a sample asked with two crops appears twice)."""
        return [str(sid) for rows in self.samples.values() for sid in rows["sample_id"]]

    def pairs(self) -> list[tuple[str, str]]:
        """(sample_id, input kind) of this plan's shard, by kind then in order: one query each where the crop
        exists."""
        return [(str(sid), kind) for kind in self.samples for sid in self.asked(kind)["sample_id"]]


def mask_neighbours(samples: pd.DataFrame, context: pd.DataFrame | None) -> pd.DataFrame:
    """The samples whose boxes a run masks in its `body_wo_face` crops: the run's samples of every shard (a
    shard's crops mask its neighbours in the other shards) and the `context` (a stage passes every sample)."""
    import pandas as pd

    return samples if context is None else pd.concat([samples, context], ignore_index=True)


def plan_queries(
    samples: pd.DataFrame,
    inputs: Sequence[str],
    *,
    split: str | None = None,
    datasets: Sequence[str] | None = None,
    inputs_by_dataset: Mapping[str, Sequence[str]] | None = None,
    shard: tuple[int, int] = (0, 1),
    source: str | Path | None = None,
) -> QueryPlan:
    """Plan a run: the samples of `split` in `datasets`, each asked with the crops `inputs` (or its data set's).

    Input kinds come in the order they first appear going through the data sets, each data set's kinds in their
    order (`query_mllms@<model>` writes its manifest's runs in this order).

    Args:
        samples: the sample table (DESIGN.md).
        inputs: the input kinds every data set is asked with (`MLLM_INPUTS`).
        split: the split asked; None = every split.
        datasets: the data sets asked, in order; None or empty = every data set of the table, in order of
            appearance (as `agegender.evaluate.select_samples` reads it).
        inputs_by_dataset: other input kinds for some data sets (e.g. `{"wild104": ["body"]}`).
        shard: 0-based (index, count); see `parse_shard` for the CLI's 1-based spelling.
        source: the sample table's file, named in errors.

    Raises:
        InputError: an unknown input kind or bad shard, or a data set that is not in the table.
    """
    from agegender.evaluate import select_samples

    overrides = {str(name): tuple(kinds) for name, kinds in (inputs_by_dataset or {}).items()}
    for kind in dict.fromkeys([*inputs, *(k for kinds in overrides.values() for k in kinds)]):
        _check_input(kind)
    shard = _check_shard(shard)
    present = list(dict.fromkeys(samples["dataset"].astype(str)))
    names = [str(name) for name in datasets] if datasets else present
    missing = [name for name in names if name not in present]
    if missing:
        raise InputError(
            f"data sets {missing} are not in the sample table: nothing to do; no request was sent and no output was "
            "written",
            file=source,
            field="dataset",
        )
    # an empty table has no data set: each input kind then asks no sample
    by_kind: dict[str, list[str]] = {} if names else {kind: [] for kind in inputs}
    for name in names:
        for kind in overrides.get(name, tuple(inputs)):
            by_kind.setdefault(kind, []).append(name)
    return QueryPlan(
        samples={kind: select_samples(samples, split, kind_datasets) for kind, kind_datasets in by_kind.items()},
        datasets={kind: tuple(kind_datasets) for kind, kind_datasets in by_kind.items()},
        shard=shard,
    )


def model_plan(params: Params, model_key: str, samples: pd.DataFrame, *, source: str | Path | None = None) -> QueryPlan:
    """The plan of stage `query_mllms@<model_key>`: the study split of the model's data sets, with its inputs.

    Raises:
        InputError: a model that is not in `query_mllms.models`, or a data set that is not in the table.
    """
    models = params.query_mllms.models
    if model_key not in models:
        raise InputError(f"unknown model {model_key!r}; query_mllms.models has {sorted(models)}", field="model")
    spec = models[model_key]
    return plan_queries(
        samples, spec.inputs, split=params.study.split, datasets=spec.datasets or params.study.datasets,
        inputs_by_dataset=spec.inputs_by_dataset, source=source,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        predictions: prediction table (schema.PREDICTION_COLUMNS), one row per sample with a crop.
        manifest: the run manifest (JSON-serialisable; no secrets).
        no_crop_ids: samples that had no crop of the input kind (and so no row).
    """

    predictions: pd.DataFrame
    manifest: dict[str, Any]
    no_crop_ids: list[str] = field(default_factory=list)

    @property
    def results_manifest(self) -> dict[str, Any]:
        """The manifest without `RUN_FIELDS`: what was asked and answered, the same bytes for the same results."""
        return {k: v for k, v in self.manifest.items() if k not in RUN_FIELDS}

    @property
    def run_fields(self) -> dict[str, Any]:
        """The manifest's `RUN_FIELDS`: how this run went (for a run log, `agegender.files.RUN_LOG_FILE`)."""
        return {k: self.manifest[k] for k in RUN_FIELDS if k in self.manifest}


#: Manifest keys that describe how one run went rather than what it answered: they depend on what the response
#: store held before the run, on the clock, or on where the store lies. A pipeline stage writes them to its run log,
#: not beside its results (`RunResult.results_manifest`, `RunResult.run_fields`).
RUN_FIELDS: tuple[str, ...] = (
    "backend_activity",
    "requests_sent",
    "cache_hits",
    "shared_requests",
    "tokens",
    "tokens_cached",
    "latency_s",
    "store",
    "started_at",
    "finished_at",
    "duration_s",
    "requests_per_s",
)


def _scrub(value: Any) -> Any:
    """Drop secret-looking keys anywhere in a nested structure (a backend may describe more than it should)."""
    if isinstance(value, Mapping):
        # `*_env` keys hold the NAME of a variable (e.g. api_key_env="OPENAI_API_KEY"), not its value: kept.
        return {
            str(k): _scrub(v) for k, v in value.items() if str(k).endswith("_env") or not SECRET_KEY_NAME.search(str(k))
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _key_options(backend: Backend) -> dict[str, Any]:
    options = getattr(backend, "key_options", None)
    return dict(options()) if callable(options) else {}


def _run_coroutine(factory: Any) -> Any:
    """Run `factory()`'s coroutine to completion, also from inside a running loop (Jupyter, papermill)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="agegender-run") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _chunks(queries: Iterator[Query], size: int) -> Iterator[list[Query]]:
    chunk: list[Query] = []
    for q in queries:
        chunk.append(q)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Tally:
    """Counters of a run, shared by the chunks."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter({s: 0 for s in ("ok", "refused", "unparsed", "failed")})
        self.sent = 0
        self.hits = 0
        self.shared = 0
        self.unexpected = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_prompt_tokens = 0
        self.cached_completion_tokens = 0
        self.fingerprints: set[str] = set()
        self.revisions: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.latencies: list[float] = []


def run_queries(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    input_kind: str,
    backend: Backend,
    store: ResponseStore,
    prompt_version: str = PROMPT_VERSION,
    shard: tuple[int, int] = (0, 1),
    max_side: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
    context: pd.DataFrame | None = None,
    chunk_size: int | None = None,
) -> RunResult:
    """Ask an MLLM about every sample of a shard and build the prediction table.

    Each query is looked up in the store first (a hit sends nothing). Misses go through `backend.astream` in
    chunks; identical crops within a chunk share one request when the parameters are deterministic. Every
    answer is written to the store as it arrives, before it is counted, then parsed (`parse_answer`). Failed
    requests become `failed` rows, are not stored as answers, and are sent again by the next run. While one
    chunk's requests are in flight the next chunk's crops are cut in a worker thread.

    An image that cannot be loaded (missing, empty, truncated, not an image) does not end the run: each of its
    samples gets a `failed` row with no answer (and is tried again by the next run), and the manifest's
    `bad_images` counts the files and samples and names the files with the reason.

    Args:
        samples: the sample table (all shards: a shard's `body_wo_face` crops mask neighbours from every shard).
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        input_kind: `body`, `face` or `body_wo_face`.
        backend: any registered backend.
        store: the response store (also written to).
        prompt_version: a registered prompt version (`agegender.mllm.prompt`).
        shard: 0-based (index, count); see `parse_shard` for the CLI's 1-based spelling.
        max_side: downscale crops so the longer side is at most this (None = original size).
        model_name: the `model` column of the predictions (default: the backend's model).
        progress: show a tqdm bar with counts per status.
        context: extra samples whose boxes are masked in `body_wo_face` crops.
        chunk_size: queries handed to the backend at once (default: max(256, 4 * batch size)).

    Returns:
        The prediction table (one row per sample with a crop or a bad image, in the samples' order) and the manifest.

    Raises:
        InputError: bad input kind, shard, prompt version or image root.
        Exception: whatever the backend raises from `astream` (answers received before are already stored).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from agegender.data.crops import BadImages
    from agegender.data.schema import PREDICTION_COLUMNS, validate_predictions
    from agegender.mllm.backends.base import Answer
    from agegender.mllm.parse import parse_answer
    from agegender.mllm.store import key_fields, make_key

    _check_input(input_kind)
    shard = _check_shard(shard)
    prompt = get_prompt(prompt_version)
    started_at, t0 = _now(), time.perf_counter()
    subset = select_shard(samples, shard)
    neighbours = mask_neighbours(samples, context)
    stats: dict[str, Any] = {}
    bad = BadImages()
    queries = crop_queries(
        subset,
        masked,
        image_roots,
        input_kind,
        max_side=max_side,
        context=neighbours,
        prompt=prompt,
        stats=stats,
        bad_images=bad,
    )
    model = model_name or backend.model
    deterministic = backend.params.deterministic
    base_fields = {
        "backend": backend.name,
        "model": backend.model,
        "model_revision": backend.model_revision,
        "prompt_version": prompt_version,
        "params": backend.params.as_key(),
        "options": _key_options(backend),
    }
    size = chunk_size or max(256, 4 * int(getattr(backend, "batch_size", 1) or 1))
    tally = _Tally()
    rows: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(subset), desc=f"{model} [{input_kind}]", unit="sample", disable=not progress)
    shown_skipped = 0

    def skipped() -> int:
        # samples the crop thread passed over (no crop, or an image that cannot be loaded): counted on the bar
        return stats.get("no_crop", 0) + stats.get("bad_image", 0)

    def empty_row(sample_id: str) -> dict[str, Any]:
        return {
            "sample_id": sample_id,
            "model": model,
            "input": input_kind,
            "age_pred": None,
            "gender_pred": None,
            "gender_score": None,
            "raw_answer": None,
        }

    def add_row(rid: str, answer: Answer) -> None:
        nonlocal shown_skipped
        row = empty_row(rid[: -len(input_kind) - 1])
        if answer.status == "answered":
            parsed = parse_answer(answer.text, finish_reason=answer.finish_reason, refusal=answer.refusal)
            row.update(status=parsed.status, age_pred=parsed.age, gender_pred=parsed.gender)
            row["raw_answer"] = answer.text if answer.text is not None else answer.refusal
            tally.notes[f"{parsed.status}: {_note_kind(parsed.note)}"] += 1
            if answer.system_fingerprint:
                tally.fingerprints.add(answer.system_fingerprint)
            if answer.model_revision:
                tally.revisions.add(answer.model_revision)
        else:
            row["status"] = "failed"
            tally.errors[(answer.error or "unknown error")[:200]] += 1
        tally.status[row["status"]] += 1
        rows[rid] = row
        passed = skipped()
        bar.update(1 + passed - shown_skipped)
        shown_skipped = passed
        bar.set_postfix({**tally.status, "sent": tally.sent, "hits": tally.hits}, refresh=False)

    async def process(chunk: list[Query]) -> None:
        misses: dict[str, list[Query]] = {}
        fields_of: dict[str, dict[str, Any]] = {}
        for q in chunk:
            fields = key_fields(**base_fields, image_hash=q.image_hash)
            key = make_key(**fields)
            stored = store.get(key) if deterministic else None
            if stored is not None:
                tally.hits += 1
                tally.cached_prompt_tokens += stored.answer.prompt_tokens or 0
                tally.cached_completion_tokens += stored.answer.completion_tokens or 0
                add_row(q.request_id, stored.answer)
                continue
            misses.setdefault(key, []).append(q)
            fields_of[key] = fields
        to_send: list[Query] = []
        fanout: dict[str, tuple[str, list[str]]] = {}
        for key, group in misses.items():
            senders = group[:1] if deterministic else group
            for q in senders:
                to_send.append(q)
                fanout[q.request_id] = (key, [q.request_id] if not deterministic else [g.request_id for g in group])
            tally.shared += len(group) - len(senders)
        if not to_send:
            return
        pending = {q.request_id for q in to_send}
        async for answer in backend.astream(to_send):
            if answer.request_id not in pending:
                tally.unexpected += 1
                continue
            pending.discard(answer.request_id)
            key, rids = fanout[answer.request_id]
            store.put(key, fields_of[key], answer, reusable=deterministic)
            tally.sent += 1
            tally.prompt_tokens += answer.prompt_tokens or 0
            tally.completion_tokens += answer.completion_tokens or 0
            if answer.latency_s is not None:
                tally.latencies.append(float(answer.latency_s))
            for rid in rids:
                add_row(rid, answer)
        for rid in sorted(pending):
            # A backend that drops a request must not drop a row: the sample is `failed` and retried next run.
            missing = Answer(rid, "failed", error="the backend returned no answer for this request")
            key, rids = fanout[rid]
            store.put(key, fields_of[key], missing)
            tally.sent += 1
            for shared_rid in rids:
                add_row(shared_rid, missing)

    async def main() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        chunks = _chunks(queries, size)
        # Crops of the next chunk are cut in a worker thread while this chunk's requests are in flight.
        upcoming = loop.run_in_executor(None, next, chunks, None)
        while (chunk := await upcoming) is not None:
            upcoming = loop.run_in_executor(None, next, chunks, None)
            await process(chunk)

    try:
        _run_coroutine(main)
    finally:
        bar.update(max(0, skipped() - shown_skipped))
        bar.close()
        store.sync()

    for sample_id in bad.samples:  # no answer, and nothing stored: the next run tries the image again
        rows[request_id(sample_id, input_kind)] = {**empty_row(sample_id), "status": "failed"}
        tally.status["failed"] += 1
        tally.errors["the image cannot be loaded (see bad_images)"] += 1
    if bad.images:
        _log.warning("%s [%s]: %s", model, input_kind, BadImages.describe(bad.summary(limit=3)))
    # The samples' order (queries follow it; a bad image's samples slot in where they stand).
    ordered = [rid for rid in (request_id(sid, input_kind) for sid in subset["sample_id"].astype(str)) if rid in rows]
    predictions = validate_predictions(pd.DataFrame([rows[rid] for rid in ordered], columns=list(PREDICTION_COLUMNS)))
    duration = time.perf_counter() - t0
    no_crop_ids = list(stats.get("no_crop_ids", []))
    manifest = {
        "kind": "agegender.mllm.run",
        "backend": _scrub(backend.describe()),
        "backend_activity": _scrub(backend.activity()),
        "key_options": _scrub(base_fields["options"]),
        "model_name": model,
        "input": input_kind,
        "prompt": {"version": prompt_version, "sha256": prompt_hash(prompt_version)},
        "max_side": max_side,
        "shard": {"index": shard[0], "count": shard[1], "spec": format_shard(shard)},
        "samples": len(subset),
        "sample_ids_sha256": _ids_digest(subset["sample_id"].astype(str)),
        "queries": stats.get("queries", 0),
        "no_crop": len(no_crop_ids),
        "no_crop_examples": no_crop_ids[:_EXAMPLES],
        "bad_images": bad.summary(_EXAMPLES),
        "rows": len(predictions),
        "counts": dict(tally.status),
        "notes": dict(tally.notes.most_common()),
        "requests_sent": tally.sent,
        "cache_hits": tally.hits,
        "shared_requests": tally.shared,
        "unexpected_answers": tally.unexpected,
        "deterministic": deterministic,
        "tokens": {"prompt": tally.prompt_tokens, "completion": tally.completion_tokens},
        "tokens_cached": {"prompt": tally.cached_prompt_tokens, "completion": tally.cached_completion_tokens},
        "fingerprints": sorted(tally.fingerprints),
        "model_revisions_seen": sorted(tally.revisions),
        "errors": dict(tally.errors.most_common(_EXAMPLES)),
        "latency_s": _latency_summary(tally.latencies),
        "store": {
            "folder": str(store.folder),
            "loaded": store.stats.as_dict(),
            "answers_written": store.written,
            "failures_written": store.failures_written,
        },
        "started_at": started_at,
        "finished_at": _now(),
        "duration_s": round(duration, 3),
        "requests_per_s": round(tally.sent / duration, 3) if duration > 0 else None,
    }
    return RunResult(predictions=predictions, manifest=manifest, no_crop_ids=no_crop_ids)


def _note_kind(note: str) -> str:
    """A parser note without its quoted text and numbers, so the manifest counts kinds, not answers."""
    return re.sub(r"'[^']*'|\d+(?:\.\d+)?", "_", note)


def _ids_digest(ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for sample_id in sorted(ids):
        h.update(sample_id.encode("utf-8") + b"\n")
    return h.hexdigest()


def _latency_summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 4),
        "p50": round(ordered[len(ordered) // 2], 4),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 4),
        "max": round(ordered[-1], 4),
    }


# ---------------------------------------------------------------------------------------------------------------
# How a run ended: nothing to do, rows that stayed failed, the failure budget


def require_samples(samples: Sized, *, source: str | Path | None, selection: str) -> None:
    """Refuse a run that has nothing to ask, before a backend (or a model) is started.

    An empty selection is almost always a mistake (a header-only table, a misspelt split or data set), and a run
    over it would replace the previous predictions with an empty table.

    Args:
        samples: the samples (a table, or their ids) about to be queried, after the split and data-set filters
            and before sharding (one shard of a small data set may be empty; the whole selection may not).
        source: the sample table's file, named in the error.
        selection: the filters, in words (e.g. `"split 'test', data sets ['nanodemo']"`).

    Raises:
        InputError: there are no samples.
    """
    if len(samples) == 0:
        raise InputError(
            f"no samples to query ({selection}): nothing to do; no request was sent and no output was written",
            file=source,
            field="sample_id",
        )


@dataclass(frozen=True)
class RunOutcome:
    """How one or more runs (input kinds, shards) ended, summed: what the CLI and the pipeline stage act on.

    Three endings are not a success, because a user would otherwise take a wrong result for a right one:
    nothing was asked (no sample had a crop), nothing was answered (every request failed: writing would only
    replace earlier results with `failed` rows), and more rows stayed `failed` than `max_failed` allows.

    Attributes:
        samples: samples of the runs' shards.
        rows: prediction rows (samples with a crop).
        failed: rows that stayed `failed` after the backend's retries.
        max_failed: the budget as given (`failure_budget`).
        allowed: failed rows the budget accepts.
        budget_name: where the budget is set, for the messages (`--max-failed`, a params key).
        deterministic: answers are reused from the store (temperature 0), so a re-run sends only the failures.
        errors: the most common error notes of the failed requests, with counts.
    """

    samples: int
    rows: int
    failed: int
    max_failed: int | str
    allowed: int
    budget_name: str
    deterministic: bool
    errors: tuple[tuple[str, int], ...]

    @property
    def answered(self) -> int:
        """Rows that got an answer (`ok`, `refused` or `unparsed`)."""
        return self.rows - self.failed

    def check_answered(self, *, source: str | Path | None, out: str | Path, store: str | Path, rerun: str) -> None:
        """Call before writing: raise when the outputs must not be written because nothing was asked or answered.

        Args:
            source: the sample table, named when no sample had a crop.
            out: the predictions file that is left untouched.
            store: the response store.
            rerun: how to resume, e.g. `"the same command"`.

        Raises:
            InputError: samples were selected but none had a crop of the input kind.
            IncompleteRunError: every request failed (exit code 3).
        """
        if self.rows == 0 and self.samples > 0:
            raise InputError(
                f"none of the {self.samples} samples has a crop of the asked input kind (no box, or nothing left "
                f"after masking): nothing was asked, and {out} is left as it was",
                file=source,
            )
        if self.failed and not self.answered:
            raise IncompleteRunError(self._summary(out=out, store=store, rerun=rerun, written=False))

    def check_failures(self, *, out: str | Path, store: str | Path, rerun: str) -> str | None:
        """Call after writing: raise when more rows stayed `failed` than allowed; else a note on those that did.

        Returns:
            None when no row failed; a one-paragraph note when some did, within the budget.

        Raises:
            IncompleteRunError: more rows failed than `allowed` (exit code 3); the message is the summary.
        """
        if not self.failed:
            return None
        summary = self._summary(out=out, store=store, rerun=rerun, written=True)
        if self.failed > self.allowed:
            raise IncompleteRunError(summary)
        return summary

    def _summary(self, *, out: str | Path, store: str | Path, rerun: str, written: bool) -> str:
        notes = "; ".join(f"{' '.join(e.split())[:160]!r} x{n}" for e, n in self.errors[:3]) or "no error note"
        parts = [f"{self.failed} of {self.rows} rows failed after retries (most common errors: {notes})."]
        budget = f"{self.budget_name} {self.max_failed} allows ({self.allowed} of {self.rows} rows)"
        if not written:
            parts.append(
                f"No request was answered, so nothing was written and {out} is left as it was; a run that answered "
                "nothing is incomplete (exit code 3) whatever the failure budget."
            )
        elif self.failed > self.allowed:
            parts.append(
                f"The {self.answered} answered rows and the failed ones are in {out}, and the answers are kept in "
                f"the response store {store}. That is more failed rows than {budget}, so the run is incomplete "
                "(exit code 3)."
            )
        else:
            parts.append(
                f"The {self.answered} answered rows and the failed ones are in {out}, and the answers are kept in "
                f"the response store {store}. That is within what {budget}."
            )
        if self.deterministic:
            parts.append(
                f"Running {rerun} again resumes: stored answers are reused and only the failed requests are sent again."
            )
        else:
            parts.append(
                f"Running {rerun} again sends every request again (answers at temperature > 0 are never reused)."
            )
        return " ".join(parts)


def run_outcome(manifests: Iterable[Mapping[str, Any]], max_failed: int | str = 0, *, budget_name: str) -> RunOutcome:
    """Sum run manifests (`RunResult.manifest`) into a `RunOutcome` under a failure budget.

    Args:
        manifests: the manifests of the runs that make one output (a stage's input kinds, or one CLI run).
        max_failed: rows allowed to stay `failed`: a count or a percentage of all the runs' rows.
        budget_name: where the budget is set, for the messages.

    Raises:
        InputError: a malformed `max_failed`.
    """
    manifests = list(manifests)
    rows = sum(int(m.get("rows", 0)) for m in manifests)
    errors: Counter[str] = Counter()
    for m in manifests:
        errors.update(m.get("errors", {}))
    return RunOutcome(
        samples=sum(int(m.get("samples", 0)) for m in manifests),
        rows=rows,
        failed=sum(int(m.get("counts", {}).get("failed", 0)) for m in manifests),
        max_failed=max_failed,
        allowed=failure_budget(max_failed, rows),
        budget_name=budget_name,
        deterministic=all(bool(m.get("deterministic", False)) for m in manifests),
        errors=tuple(errors.most_common(3)),
    )


# ---------------------------------------------------------------------------------------------------------------
# The one query path: backend, store, the plan's runs, outcome


@dataclass(frozen=True)
class BackendSpec:
    """A backend for `query_samples` to create (`create_backend`'s arguments), and close when the run ends.

    `options` are the backend's typed options (`agegender.mllm.backend_options.load_backend_options`: what params
    and the CLI hold), or a mapping of keyword arguments (a backend kept outside agegender, code and tests).
    """

    name: str
    model: str
    params: GenerationParams | None = None
    options: Any = field(default_factory=dict)

    def create(self) -> Backend:
        """The backend (`create_backend`: a registered name or an import path)."""
        from agegender.mllm.backends.base import create_backend

        return create_backend(self.name, self.model, params=self.params, options=self.options)


@dataclass
class QueryRun:
    """What `query_samples` did: one `RunResult` per input kind of the plan, and how the runs ended.

    Attributes:
        results: input kind -> its run, in the plan's order.
        outcome: the runs summed under the failure budget; the caller acts on it around writing its outputs
            (`RunOutcome.check_answered` before, `RunOutcome.check_failures` after).
    """

    results: dict[str, RunResult]
    outcome: RunOutcome

    @property
    def predictions(self) -> pd.DataFrame:
        """The prediction tables of every input kind, one after the other."""
        import pandas as pd

        return pd.concat([r.predictions for r in self.results.values()], ignore_index=True)

    @property
    def manifests(self) -> list[dict[str, Any]]:
        """The run manifests, in the plan's order."""
        return [r.manifest for r in self.results.values()]


def query_samples(
    plan: QueryPlan,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    backend: Backend | BackendSpec,
    store: ResponseStore | str | Path,
    store_tag: str = "w",
    context: pd.DataFrame | None = None,
    prompt_version: str = PROMPT_VERSION,
    max_side: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
    max_failed: int | str = 0,
    budget_name: str = "max_failed",
) -> QueryRun:
    """Ask a backend about a plan's samples, one `run_queries` per input kind: the one way every caller queries
    (the `query_mllms` stage, fine-tuning, checkpoint selection, `agegender query` and `annotate`).

    The backend is created here from a `BackendSpec`, or taken as given; either way it is closed when the run ends,
    also on error (every caller's backend serves one run). A store folder is opened here (writer tag `store_tag`)
    and closed likewise; an open `ResponseStore` is the caller's, who may share it between runs (the checkpoints
    of a selection) and closes it.

    Args:
        plan: what to ask (`plan_queries`); its shard is the one asked.
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        backend: the backend, or what to create it from.
        store: the response store, or its folder.
        store_tag: names this writer's files when the store is opened here (e.g. the shard, `s1of4`).
        context: extra samples whose boxes are masked in `body_wo_face` crops (a stage passes every sample).
        prompt_version, max_side, model_name, progress, chunk_size: as for `run_queries`.
        max_failed: rows that may stay `failed` (`failure_budget`): a count or a percentage of all the runs' rows.
        budget_name: where that budget is set, for the outcome's messages.

    Raises:
        InputError: a malformed `max_failed`, and whatever `run_queries` raises (bad input kind, prompt, root).
    """
    import contextlib

    from agegender.mllm.store import ResponseStore, recall_endpoint, remember_endpoint

    failure_budget(max_failed, 0)  # a malformed budget is reported before anything is sent
    with contextlib.ExitStack() as stack:
        runner = backend.create() if isinstance(backend, BackendSpec) else backend
        stack.callback(runner.close)
        if not isinstance(store, ResponseStore):
            store = stack.enter_context(ResponseStore(store, tag=store_tag))
        endpoint = runner.endpoint()
        if endpoint is not None:  # what the endpoint rejected before, kept beside its answers
            folder = store.folder
            runner.start_from(recall_endpoint(folder, endpoint))
            stack.callback(lambda: remember_endpoint(folder, endpoint, runner.learned()))
        results: dict[str, RunResult] = {}
        for kind, rows in plan.samples.items():
            results[kind] = run_queries(
                rows, masked, image_roots, input_kind=kind, backend=runner, store=store,
                prompt_version=prompt_version, shard=plan.shard, max_side=max_side, model_name=model_name,
                progress=progress, context=context, chunk_size=chunk_size,
            )  # fmt: skip
    outcome = run_outcome([r.manifest for r in results.values()], max_failed, budget_name=budget_name)
    return QueryRun(results=results, outcome=outcome)


# ---------------------------------------------------------------------------------------------------------------
# Writing and merging


def default_manifest_path(out_predictions: str | Path) -> Path:
    """`preds/x.parquet` -> `preds/x.manifest.json`."""
    out = Path(out_predictions)
    return out.with_name(out.name[: -len(out.suffix)] + ".manifest.json" if out.suffix else out.name + ".manifest.json")


def write_run(
    result: RunResult, out_predictions: str | Path, out_manifest: str | Path | None = None
) -> tuple[Path, Path]:
    """Write a run's prediction table (parquet/CSV by suffix) and manifest (JSON; default next to the table).

    Returns:
        (predictions path, manifest path).
    """
    preds = write_table(result.predictions, out_predictions)
    manifest = write_json(result.manifest, out_manifest or default_manifest_path(out_predictions))
    return preds, manifest


def prediction_files(paths: Iterable[str | Path]) -> list[Path]:
    """The prediction tables named: files as given, folders replaced by the tables in them (sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.suffix.lower() in {".parquet", ".pq", ".csv"}))
        else:
            out.append(p)
    return out


def merge_predictions(paths: Sequence[str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """Join shard prediction tables into one.

    Args:
        paths: prediction tables (or folders of them).
        out: also write the merged table here (parquet/CSV by suffix).

    Returns:
        The merged table, validated, in file order.

    Raises:
        InputError: an unreadable or invalid file, no files, or a (sample_id, model, input) row present in two
            files (both are named).
    """
    import pandas as pd

    from agegender.data.schema import read_table, validate_predictions

    files = prediction_files(paths)
    if not files:
        raise InputError("no prediction tables to merge", field="predictions")
    frames = []
    first_file: dict[tuple[str, str, str], Path] = {}
    for path in files:
        frame = validate_predictions(read_table(path), source=path)
        keys = zip(frame["sample_id"], frame["model"], frame["input"], strict=True)
        for pos, key in enumerate(keys):
            if key in first_file:
                raise InputError(
                    f"row (sample_id {key[0]!r}, model {key[1]!r}, input {key[2]!r}) is also in {first_file[key]}; "
                    "were shards run twice or with different shard counts?",
                    file=path,
                    row=pos + 1,
                    field="sample_id",
                )
            first_file[key] = path
        frames.append(frame)
    merged = validate_predictions(pd.concat(frames, ignore_index=True))
    if out is not None:
        write_table(merged, out)
    return merged


def merge_manifests(manifests: Sequence[Mapping[str, Any] | str | Path]) -> dict[str, Any]:
    """Join shard manifests: sums of counts, requests and tokens, union of fingerprints, overall time span.

    Args:
        manifests: manifest dicts or JSON files.

    Returns:
        A manifest with `shards` (the shard specs merged), `complete` (every shard of the count is present) and
        the summed fields.

    Raises:
        InputError: unreadable file, or manifests of different backends, models, prompts, inputs or shard counts,
            or the same shard twice.
    """
    loaded: list[tuple[str, Mapping[str, Any]]] = []
    for m in manifests:
        if isinstance(m, Mapping):
            loaded.append(("<manifest>", m))
            continue
        path = Path(m)
        try:
            loaded.append((str(path), json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot be read as a manifest ({type(exc).__name__}: {exc})", file=path) from exc
    if not loaded:
        raise InputError("no manifests to merge", field="manifest")
    ref_src, ref = loaded[0]

    def same(m: Mapping[str, Any]) -> tuple[Any, ...]:
        b = m.get("backend", {})
        return (
            b.get("backend"),
            b.get("model"),
            json.dumps(b.get("params"), sort_keys=True),
            m.get("model_name"),
            m.get("input"),
            json.dumps(m.get("prompt"), sort_keys=True),
            (m.get("shard") or {}).get("count"),
        )

    seen: dict[int, str] = {}
    for src, m in loaded:
        if same(m) != same(ref):
            raise InputError(
                f"manifest differs from {ref_src} in backend, model, params, input, prompt or shard count",
                file=src,
            )
        index = (m.get("shard") or {}).get("index", 0)
        if index in seen:
            raise InputError(f"shard {index + 1} appears twice (also in {seen[index]})", file=src, field="shard")
        seen[index] = src

    def total(*path: str) -> int:
        out = 0
        for _, m in loaded:
            value: Any = m
            for part in path:
                value = value.get(part, {}) if isinstance(value, Mapping) else {}
            out += value if isinstance(value, int | float) else 0
        return out

    count = int((ref.get("shard") or {}).get("count", 1))
    statuses = sorted({s for _, m in loaded for s in m.get("counts", {})})
    merged: dict[str, Any] = {
        "kind": "agegender.mllm.run",
        "backend": ref.get("backend"),
        "key_options": ref.get("key_options"),
        "model_name": ref.get("model_name"),
        "input": ref.get("input"),
        "prompt": ref.get("prompt"),
        "max_side": ref.get("max_side"),
        "shards": sorted(format_shard((i, count)) for i in seen),
        "complete": sorted(seen) == list(range(count)),
        "shard": {"index": None, "count": count, "spec": "merged"},
        "counts": {s: total("counts", s) for s in statuses},
        "fingerprints": sorted({f for _, m in loaded for f in m.get("fingerprints", [])}),
        "model_revisions_seen": sorted({r for _, m in loaded for r in m.get("model_revisions_seen", [])}),
        "tokens": {"prompt": total("tokens", "prompt"), "completion": total("tokens", "completion")},
        "tokens_cached": {
            "prompt": total("tokens_cached", "prompt"),
            "completion": total("tokens_cached", "completion"),
        },
        "started_at": min(str(m.get("started_at", "")) for _, m in loaded),
        "finished_at": max(str(m.get("finished_at", "")) for _, m in loaded),
        "duration_s_sum": round(sum(float(m.get("duration_s") or 0) for _, m in loaded), 3),
        "sources": [src for src, _ in loaded],
    }
    for name in ("samples", "queries", "no_crop", "rows", "requests_sent", "cache_hits", "shared_requests"):
        merged[name] = total(name)
    errors: Counter[str] = Counter()
    for _, m in loaded:
        errors.update(m.get("errors", {}))
    merged["errors"] = dict(errors.most_common(_EXAMPLES))
    examples: dict[str, str] = {}
    for _, m in loaded:
        examples.update((m.get("bad_images") or {}).get("examples", {}))
    merged["bad_images"] = {
        "images": total("bad_images", "images"),
        "samples": total("bad_images", "samples"),
        "examples": dict(list(examples.items())[:_EXAMPLES]),
    }
    return merged
