"""Speed of the local `transformers` backend: samples/s at batch size 1 vs batched.

Shapes:
- `tiny` (default, CPU): the tiny LLaVA-1.5 / LLaVA-NeXT of `agegender.mllm.tiny` at 336 (576 image
  tokens), built in a temporary folder and loaded through the backend like any checkpoint.
- `7b` (CUDA): a LLaVA-1.5-7B-shaped model (Vicuna-7B Llama: 4096 wide, 32 layers, 11008 MLP, vocab
  32064; CLIP ViT-L/14-336: 1024 wide, 24 layers) with RANDOM weights in bf16, built in memory on the GPU
  and wrapped with `TransformersBackend.from_loaded`; 576 image tokens + the paper's prompt per query.
- `mini`: the 7b code path at toy sizes, to check the script on a CPU before spending GPU time.

Queries are crops of different sizes and aspect ratios (random pixels) with the paper's prompt; answers
are short (`--max-new-tokens`, default 8, about the length of "[female; 40]</s>"). Random weights never
emit EOS, so every query generates exactly max-new-tokens tokens: a fair worst case for short answers.
Prints samples/s per batch size, whether batched answers equal batch-size-1 answers, peak GPU memory,
and the time the LAGENDA test set (84,192 people, one query each) would take on this device
(the paper: 2.5 h on 8 A6000). Asserts nothing.

    .venv/bin/python benchmarks/bench_mllm_local.py --kind llava --batch-sizes 1,8,16 --samples 32
    .venv/bin/python benchmarks/bench_mllm_local.py --shape 7b --batch-sizes 1,8,32,64 --samples 128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agegender.mllm.backends import GenerationParams, Query
from agegender.mllm.backends.transformers_backend import TransformersBackend, resolve_device
from agegender.mllm.tiny import IMAGE_TOKEN, build_tiny_llava, default_corpus, tiny_processor, train_tokenizer

LAGENDA_TEST_PEOPLE = 84_192

#: LLaVA-1.5-7B: Vicuna-7B text tower, CLIP ViT-L/14-336 vision tower
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "7b": {
        "text": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
        },
        "vision": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 336,
            "projection_dim": 768,
        },
    },
    "mini": {
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
        },
        "vision": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 14,
            "image_size": 336,
            "projection_dim": 64,
        },
    },
}


def paper_prompt() -> str:
    """The paper's prompt (the prompt module's constant when present)."""
    try:
        from agegender.mllm.prompt import PROMPT

        return str(PROMPT)
    except ImportError:
        return default_corpus()[0]


def make_queries(n: int, seed: int = 0) -> list[Query]:
    """n body/face-like crops of different sizes and aspect ratios, with the paper's prompt."""
    rng = np.random.default_rng(seed)
    prompt = paper_prompt()
    queries = []
    for i in range(n):
        h = int(rng.integers(80, 400))
        w = int(h * rng.uniform(0.3, 1.2))  # mostly tall body crops, some square faces
        queries.append(Query(f"q{i}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), prompt))
    return queries


def build_shaped(shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> TransformersBackend:
    """A LLaVA-1.5 of the given shape with random weights, built in memory on `device`."""
    from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = train_tokenizer(default_corpus(), vocab_size=1000)  # ids < 1000 are valid in the 32064 vocab
    dims = SHAPES[shape]
    text = LlamaConfig(
        **dims["text"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(**dims["vision"])
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    processor = tiny_processor("llava", tokenizer, config)
    return TransformersBackend.from_loaded(model.eval(), processor, name=f"random-llava-1.5-{shape}")


def run(
    backend: TransformersBackend, queries: list[Query], batch_size: int, repeat: int = 1
) -> tuple[float, list[str], float]:
    """Best of `repeat` passes over the queries at a batch size: (samples/s, answer texts, peak GPU memory in GiB)."""
    backend.batch_size = batch_size
    backend.generate_batch(queries[:batch_size])  # warm-up: kernels, allocator, first-call lazy imports
    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    elapsed = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        answers = backend.generate_batch(queries)
        if cuda:
            torch.cuda.synchronize()
        elapsed = min(elapsed, time.perf_counter() - start)
    failed = [a for a in answers if a.status != "answered"]
    if failed:
        print(f"  {len(failed)} failed, e.g. {failed[0].error}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return len(queries) / elapsed, [a.text or "" for a in answers], peak


def main() -> None:
    """Run the benchmark and print one line per measurement (and optionally a JSON file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "7b", "mini"], default="tiny")
    parser.add_argument("--kind", choices=["llava", "llava_next", "both"], default="both", help="tiny shape only")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="passes per batch size; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    queries = make_queries(args.samples)
    device = resolve_device(args.device)
    if args.shape == "7b" and device.type != "cuda":
        raise SystemExit("--shape 7b needs a CUDA GPU (about 15 GB of weights in bf16); try --shape mini on a CPU")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape == "tiny":
            kinds = ["llava", "llava_next"] if args.kind == "both" else [args.kind]
            backends = {}
            for kind in kinds:
                folder = build_tiny_llava(Path(tmp) / kind, kind=kind)
                backends[f"tiny-{kind}"] = TransformersBackend(str(folder), params=params, device=str(device))
        else:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            backend = build_shaped(args.shape, device, dtype)
            backend.params = params
            backends = {backend.model: backend}
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
        setup = f"{args.samples} queries, {params.max_new_tokens} new tokens, best of {args.repeat}"
        print(f"device: {device_name}; torch {torch.__version__}; {setup}")
        for name, backend in backends.items():
            n_params = sum(p.numel() for p in backend.hf_model.parameters())
            tokens = backend.build_inputs(queries[:1])["attention_mask"].sum().item()
            print(f"{name}: {n_params / 1e6:.1f} M params, {backend.dtype}, ~{tokens} prompt tokens per query")
            reference: list[str] | None = None
            for bs in batch_sizes:
                rate, texts, peak = run(backend, queries, bs, args.repeat)
                same = None if reference is None else texts == reference
                reference = texts if reference is None else reference
                hours = LAGENDA_TEST_PEOPLE / rate / 3600
                mem = f", peak {peak:.1f} GiB" if peak == peak else ""
                same_txt = "" if same is None else f", answers == batch 1: {same}"
                print(f"  batch {bs:3d}: {rate:8.2f} samples/s{mem}{same_txt}; LAGENDA test ~{hours:.1f} h")
                results.append(
                    {
                        "model": name,
                        "device": device_name,
                        "batch_size": bs,
                        "samples_per_s": round(rate, 3),
                        "peak_gib": None if peak != peak else round(peak, 2),
                        "same_as_batch1": same,
                        "lagenda_test_hours": round(hours, 2),
                    }
                )
            best = max((r for r in results if r["model"] == name), key=lambda r: r["samples_per_s"])
            caveat = "" if args.shape == "7b" else " [toy model: plumbing only, says nothing about a 7B]"
            print(
                f"  => LAGENDA test ({LAGENDA_TEST_PEOPLE:,} people) would take {best['lagenda_test_hours']:.1f} h "
                f"on this device at batch {best['batch_size']} (paper: 2.5 h on 8 A6000){caveat}"
            )
            backend.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
