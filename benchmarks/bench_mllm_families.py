"""Speed of today's tiny model families through the `transformers` backend on the CPU: queries/s at batch 1 and 8.

Each family's tiny model (`agegender.mllm.tools.tiny.build_tiny_family`, plus the tiny LLaVA-1.5 for scale) is
built in a temporary folder and loaded through `TransformersBackend` like a checkpoint; the queries are crops of
different sizes (random pixels) with the paper's prompt, answered greedily for `--max-new-tokens` tokens (random
weights seldom stop early). Prints queries/s per family and batch size, the image tokens of one crop at the
family's default resolution, and whether batched answers equal batch-1 answers. Asserts nothing: what the tests
check, this only times.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mllm_families.py --samples 16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_mllm_families.py --families llava,smolvlm  # some families
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from agegender.mllm.backends.base import GenerationParams, Query
from agegender.mllm.backends.transformers_backend import TransformersBackend
from agegender.mllm.prompt import PROMPT
from agegender.mllm.tools.tiny import FAMILY_TOKENS, build_tiny_family, build_tiny_llava


def _queries(n: int) -> list[Query]:
    rng = np.random.default_rng(0)
    sizes = [(112, 84), (84, 112), (96, 96), (160, 80)]
    return [
        Query(request_id=str(i), image=rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8), prompt=PROMPT)
        for i in range(n)
    ]


def _build(family: str, folder: Path) -> Path:
    if family == "llava":
        return build_tiny_llava(folder, image_size=112)
    return build_tiny_family(folder, family)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--families", default=",".join(["llava", *FAMILY_TOKENS]))
    args = parser.parse_args()
    queries = _queries(args.samples)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    print(f"{'family':16} {'batch':>5} {'queries/s':>10} {'image tokens':>12} batched==batch-1")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            folder = _build(family, Path(tmp) / family)
            texts: list[str] | None = None
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                backend = TransformersBackend(str(folder), params=params, device="cpu", batch_size=batch_size)
                ids = backend.build_inputs(queries[:1])["input_ids"][0]
                image_id = backend.hf_model.config.image_token_id
                start = time.perf_counter()
                answers = backend.generate_batch(queries)
                rate = len(queries) / (time.perf_counter() - start)
                same = "" if texts is None else str([a.text for a in answers] == texts)
                texts = texts or [a.text for a in answers]
                print(f"{family:16} {batch_size:>5} {rate:>10.1f} {int((ids == image_id).sum()):>12} {same}")


if __name__ == "__main__":
    main()
