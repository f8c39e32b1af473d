"""Fake MLLM backends and a tiny image data set for the MLLM store/runner tests.

Imported by tests/unit/test_mllm_runner.py and run as a script by tests/integration/test_mllm_kill.py
(`python tests/mllm_fakes.py run ...`), which SIGKILLs it mid-run. Not a test module itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from agegender.data.schema import validate_samples
from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query, register_backend

IMAGE_SIZE = 96


def canned_text(query: Query) -> str:
    """A valid answer that depends only on the crop (so a cached answer equals a fresh one)."""
    h = query.image_hash
    gender = "female" if int(h[0], 16) % 2 else "male"
    return f"[{gender}; {int(h[1:3], 16) % 90 + 1}]"


def sample_of(request_id: str) -> str:
    return request_id.rsplit("|", 1)[0]


@register_backend
class ScriptedBackend(Backend):
    """Asynchronous fake server: answers as they complete, bounded concurrency, optional latency.

    Args:
        script: sample_id -> answer text, or a dict of Answer fields (e.g. {"refusal": "..."}).
        fail: sample ids whose requests fail (status `failed`).
        drop: sample ids the backend never answers (a buggy backend).
        latency_s: sleep per request.
        concurrency: requests in flight.
        log: a file that gets one line per request when it is sent (for the kill test).
        leak: put an api_key into describe() (the runner must scrub it).
    """

    name = "test-scripted"

    def __init__(
        self,
        model: str,
        *,
        params: GenerationParams | None = None,
        script: Mapping[str, Any] | None = None,
        fail: Sequence[str] = (),
        drop: Sequence[str] = (),
        latency_s: float = 0.0,
        concurrency: int = 4,
        log: str | None = None,
        leak: bool = False,
        revision: str | None = "rev-1",
        **options: Any,
    ) -> None:
        super().__init__(model, params=params, **options)
        self.script = dict(script or {})
        self.fail, self.drop = set(fail), set(drop)
        self.latency_s, self.concurrency = latency_s, concurrency
        self.log, self.leak, self.revision = log, leak, revision
        self.requests: list[str] = []

    @property
    def model_revision(self) -> str | None:
        return self.revision

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.leak:
            out["options"] = {"api_key": "sk-secret-do-not-write", "base_url": "http://127.0.0.1:1"}
        return out

    def answer(self, query: Query) -> Answer:
        sid = sample_of(query.request_id)
        if sid in self.fail:
            return Answer(query.request_id, "failed", error="HTTP 500: injected by the fake", latency_s=0.0)
        spec = self.script.get(sid)
        fields: dict[str, Any] = {
            "text": canned_text(query),
            "finish_reason": "stop",
            "prompt_tokens": 100,
            "completion_tokens": 6,
            "system_fingerprint": "fp_fake",
            "latency_s": self.latency_s,
        }
        if isinstance(spec, str):
            fields["text"] = spec
        elif isinstance(spec, Mapping):
            fields.update(spec)
        return Answer(query.request_id, "answered", **fields)

    async def astream(self, queries: Sequence[Query]) -> AsyncIterator[Answer]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(query: Query) -> Answer | None:
            async with gate:
                self.requests.append(query.request_id)
                if self.log:
                    with open(self.log, "a") as fh:
                        fh.write(query.request_id + "\n")
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                return None if sample_of(query.request_id) in self.drop else self.answer(query)

        for done in asyncio.as_completed([one(q) for q in queries]):
            answer = await done
            if answer is not None:
                yield answer


@register_backend
class BatchBackend(Backend):
    """Synchronous batched fake (a local model): only `generate_batch`; records the batch sizes."""

    name = "test-batch"
    batch_size = 3

    def __init__(self, model: str, *, params: GenerationParams | None = None, **options: Any) -> None:
        super().__init__(model, params=params, **options)
        self.batches: list[int] = []

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        self.batches.append(len(queries))
        return [Answer(q.request_id, "answered", text=canned_text(q), finish_reason="stop") for q in queries]


def make_dataset(root: Path, n_images: int = 12, seed: int = 0) -> pd.DataFrame:
    """Write `n_images` noise PNGs (96 x 96) under root/images and return their validated sample table.

    Every image has person A; every third image also person B, overlapping A (so masking matters). Sample k has
    no face box when k % 5 == 4 and no person box when k % 7 == 6, so every input kind has missing crops.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    people = [((15, 6, 45, 36), (2, 2, 60, 94)), ((55, 8, 85, 38), (40, 4, 94, 94))]
    for i in range(n_images):
        name = f"images/img{i:03d}.png"
        # values from 1: a crop is dropped for being black only where masking made it so
        pixels = rng.integers(1, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
        for j, (face, person) in enumerate(people[: 2 if i % 3 == 0 else 1]):
            k = len(rows)
            row: dict[str, Any] = {
                "sample_id": f"fake/test/img{i:03d}/{j}",
                "dataset": "fake",
                "split": "test",
                "image_path": name,
                "image_width": IMAGE_SIZE,
                "image_height": IMAGE_SIZE,
                "age": float(10 + (7 * k) % 70),
                "gender": "female" if k % 2 else "male",
            }
            if k % 5 != 4:
                row.update(zip(("face_x0", "face_y0", "face_x1", "face_y1"), map(float, face), strict=True))
            if k % 7 != 6:
                row.update(zip(("person_x0", "person_y0", "person_x1", "person_y1"), map(float, person), strict=True))
            rows.append(row)
    return validate_samples(pd.DataFrame(rows))


def _run(argv: Sequence[str]) -> int:
    from agegender.mllm.runner import plan_queries, query_samples, write_run

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--input", default="body")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)
    data = Path(args.data)
    samples = pd.read_parquet(data / "samples.parquet")
    backend = ScriptedBackend("fake-model", latency_s=args.latency, concurrency=args.concurrency, log=args.log)
    plan = plan_queries(samples, [args.input])
    run = query_samples(
        plan,
        None,
        data,
        backend=backend,
        store=args.store,
        store_tag="kill",
        progress=False,
        chunk_size=args.chunk_size,
    )
    result = run.results[args.input]
    write_run(result, args.out)
    print(json.dumps({"requests": len(backend.requests), "rows": len(result.predictions)}))
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"run": _run}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
