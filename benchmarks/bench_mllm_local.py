"""Speed of the local `transformers` backend: samples/s at batch size 1 vs batched.

Shapes:
- `tiny` (default, CPU): the tiny LLaVA-1.5 / LLaVA-NeXT of `agegender.mllm.tools.tiny` at 336 (576 image
  tokens), built in a temporary folder and loaded through the backend like any checkpoint.
- `7b` (CUDA): a LLaVA-1.5-7B-shaped model (Vicuna-7B Llama: 4096 wide, 32 layers, 11008 MLP, vocab
  32064; CLIP ViT-L/14-336: 1024 wide, 24 layers) with RANDOM weights in bf16, built in memory on the GPU
  and wrapped with `TransformersBackend.from_loaded`; 576 image tokens + the paper's prompt per query.
- `34b` (CUDA): a LLaVA-NeXT-34B-shaped model (llava-v1.6-34b: Yi-34B text tower, 7168 wide, 60 layers,
  20480 MLP, 56 heads, 8 KV heads, vocab 64000; the same CLIP ViT-L/14-336; any-res grid pinpoints
  336x672 ... 1008x336, i.e. 576 base tokens + up to ~2,300 tile tokens per crop), random bf16 weights,
  about 64 GiB of weights: fits one 141 GB H200, not an 80 GB H100. `--text-layers N` (or `auto`: as many as
  fit in free GPU memory) builds a reduced-depth text tower; the output then gives the measured numbers AND
  per-layer-scaled full-depth estimates, marked as such (an upper bound on time: the vision tower,
  projector, lm_head and preprocessing are scaled too). Our tokenizer and the vicuna template stand in for
  Yi's tokenizer and ChatML: the prompt's length differs by a few tokens, the image tokens are the same.
- `qwen2.5-vl-7b` (CUDA): a Qwen2.5-VL-7B-Instruct-shaped model (Qwen2 text tower: 3584 wide, 28 layers, 18944
  MLP, 28 heads, 4 KV heads, vocab 152064; its windowed ViT: 1280 wide, 32 layers, 2x2 patch merging into the
  text width), random bf16 weights, one of today's families (issue 14) beside LLaVA-1.5 7B. The image processor
  has the modern profile's pixel budget (`profiles/modern.yaml`: 3,136 to 1,003,520 pixels, one token per 28x28),
  so a crop costs its own area / 784 tokens; our tokenizer and the Qwen ChatML template of the tiny builder stand
  in for Qwen's (the prompt's length differs by a few tokens, the image tokens are the same).
- `mini` / `mini-next` / `mini-qwen`: the 7b / 34b / qwen2.5-vl-7b code paths at toy sizes (same image tokens),
  to check the script on a CPU before spending GPU time.

Queries are crops of different sizes and aspect ratios (random pixels) with the paper's prompt; answers
are short (`--max-new-tokens`, default 8, about the length of "[female; 40]</s>"). Random weights never
emit EOS, so every query generates exactly max-new-tokens tokens: a fair worst case for short answers.
Prints samples/s per batch size, whether batched answers equal batch-size-1 answers, peak GPU memory,
and the time the LAGENDA test set (84,192 people, one query each) would take on this device
(the paper: 2.5 h on 8 A6000). With `--json`, the rows are (re)written after every batch size, so a run
cut short keeps what it measured. Asserts nothing.

    .venv/bin/python benchmarks/bench_mllm_local.py --kind llava --batch-sizes 1,8,16 --samples 32
    .venv/bin/python benchmarks/bench_mllm_local.py --shape 7b --batch-sizes 1,8,32,64 --samples 128
    .venv/bin/python benchmarks/bench_mllm_local.py --shape 34b --batch-sizes 1,8,16 --samples 16 --text-layers auto
    .venv/bin/python benchmarks/bench_mllm_local.py --shape qwen2.5-vl-7b --batch-sizes 1,8,32 --samples 64
    .venv/bin/python benchmarks/bench_mllm_local.py --shape mini-next --batch-sizes 1,4 --samples 4 --text-layers 1
    .venv/bin/python benchmarks/bench_mllm_local.py --shape mini-qwen --batch-sizes 1,2 --samples 2
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

from agegender.device import resolve_device
from agegender.mllm.backends import GenerationParams, Query
from agegender.mllm.backends.transformers_backend import TransformersBackend
from agegender.mllm.tools.tiny import (
    FAMILY_TOKENS,
    IMAGE_TOKEN,
    build_tiny_llava,
    default_corpus,
    mrope_section,
    tiny_processor,
    train_tokenizer,
)

LAGENDA_TEST_PEOPLE = 84_192

#: CLIP ViT-L/14 at 336: the vision tower of LLaVA-1.5 and LLaVA-NeXT
VIT_L_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
}
#: a toy CLIP at 336/14: the same number of image tokens as ViT-L/14-336
TOY_VIT_336: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 64,
}
#: llava-v1.6's any-res resolutions (height, width), also transformers' LlavaNextConfig default
LLAVA_NEXT_PINPOINTS: list[list[int]] = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

#: Qwen2.5-VL-7B's vision tower (Qwen2_5_VLVisionConfig of Qwen/Qwen2.5-VL-7B-Instruct); `out_hidden_size` is set
#: to the text width when built
QWEN25_VIT: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
#: the modern profile's pixel budget for Qwen2.5-VL (query_mllms.models.qwen2.5-vl-7b.options)
QWEN25_PIXELS: dict[str, int] = {"min_pixels": 3136, "max_pixels": 1003520}

#: model shapes: `kind` picks LLaVA-1.5 (`llava`), LLaVA-NeXT (`llava_next`) or Qwen2.5-VL (`qwen2_5_vl`); `text`
#: is the text tower's config (a LlamaConfig for the LLaVAs, Qwen2's text config for Qwen2.5-VL)
SHAPES: dict[str, dict[str, Any]] = {
    # LLaVA-1.5-7B: Vicuna-7B text tower
    "7b": {
        "kind": "llava",
        "text": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
        },
        "vision": VIT_L_336,
    },
    # LLaVA-NeXT-34B (llava-v1.6-34b): Yi-34B text tower (a Llama with grouped-query attention). Yi's
    # rope_theta (5e6) is left at the default: it changes no shape and no timing.
    "34b": {
        "kind": "llava_next",
        "text": {
            "hidden_size": 7168,
            "intermediate_size": 20480,
            "num_hidden_layers": 60,
            "num_attention_heads": 56,
            "num_key_value_heads": 8,
            "vocab_size": 64000,
            "max_position_embeddings": 4096,
        },
        "vision": VIT_L_336,
        "grid_pinpoints": LLAVA_NEXT_PINPOINTS,
    },
    "mini": {
        "kind": "llava",
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
        },
        "vision": TOY_VIT_336,
    },
    "mini-next": {
        "kind": "llava_next",
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 64000,
            "max_position_embeddings": 4096,
        },
        "vision": TOY_VIT_336,
        "grid_pinpoints": LLAVA_NEXT_PINPOINTS,
    },
    # Qwen2.5-VL-7B-Instruct: Qwen2-7B text tower (grouped-query attention, M-RoPE 16/24/24 of 64 frequencies)
    "qwen2.5-vl-7b": {
        "kind": "qwen2_5_vl",
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "max_position_embeddings": 128000,
        },
        "vision": QWEN25_VIT,
    },
    "mini-qwen": {
        "kind": "qwen2_5_vl",
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 152064,
            "max_position_embeddings": 128000,
        },
        "vision": {
            **QWEN25_VIT,
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "fullatt_block_indexes": [1],
        },
    },
}
#: shapes whose numbers mean something (the others are plumbing checks)
REAL_SHAPES = ("7b", "34b", "qwen2.5-vl-7b")
#: the toy shape that checks each real shape's code path on a CPU
TOY_SHAPES = {"7b": "mini", "34b": "mini-next", "qwen2.5-vl-7b": "mini-qwen"}


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


def text_layer_params(text: dict[str, Any]) -> int:
    """Parameters of one Llama decoder layer of a text config (attention with GQA, gated MLP, two norms)."""
    h, inter = int(text["hidden_size"]), int(text["intermediate_size"])
    kv = int(text["num_key_value_heads"]) * (h // int(text["num_attention_heads"]))
    return 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h


def other_params(shape: str) -> int:
    """Approximate parameters outside the text layers: embeddings, lm_head, vision tower, projector."""
    dims = SHAPES[shape]
    text, vision = dims["text"], dims["vision"]
    h, v = int(text["hidden_size"]), int(text["vocab_size"])
    vh, vi = int(vision["hidden_size"]), int(vision["intermediate_size"])
    depth = int(vision.get("num_hidden_layers", vision.get("depth", 0)))
    vit = depth * (4 * vh * vh + 2 * vh * vi)
    return 2 * v * h + vit + vh * h + h * h


def resolve_text_layers(shape: str, requested: str | None, device: torch.device, max_batch: int) -> int:
    """The text tower's depth to build: the shape's own, a number, or `auto` (as many as fit on the GPU).

    `auto` keeps 8 GiB + 1 GiB per sample of the largest batch free for the KV cache and activations (a
    34B sequence of ~2,900 tokens holds ~0.7 GiB of KV cache at full depth).

    Raises:
        SystemExit: a bad value, or `auto` when not even one layer fits.
    """
    full = int(SHAPES[shape]["text"]["num_hidden_layers"])
    if requested is None:
        return full
    if requested != "auto":
        try:
            layers = int(requested)
        except ValueError:
            raise SystemExit(f"--text-layers must be a positive integer or 'auto', got {requested!r}") from None
        if not 1 <= layers <= full:
            raise SystemExit(f"--text-layers must be between 1 and {full} for --shape {shape}, got {layers}")
        return layers
    if device.type != "cuda":
        return full
    free, _ = torch.cuda.mem_get_info(device)
    spare = free - (8 + max_batch) * 2**30 - 2 * other_params(shape)  # 2 bytes per bf16 weight
    layers = min(full, int(spare // (2 * text_layer_params(SHAPES[shape]["text"]))))
    if layers < 1:
        raise SystemExit(f"--text-layers auto: {free / 2**30:.0f} GiB free on the GPU is not enough for one layer")
    return layers


def build_shaped(
    shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0, text_layers: int | None = None
) -> TransformersBackend:
    """A LLaVA-1.5 or LLaVA-NeXT of the given shape with random weights, built in memory on `device`.

    Args:
        shape: a key of `SHAPES`.
        device: where the weights are created (directly: no copy from the CPU).
        dtype: the weights' dtype (the default dtype while building, so no float32 copy is ever made).
        seed: seeds the weights.
        text_layers: the text tower's depth; None = the shape's own.

    Returns:
        The backend wrapping the model and a processor with our tokenizer.
    """
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    dims = SHAPES[shape]
    if dims["kind"] == "qwen2_5_vl":
        return build_shaped_qwen(shape, device, dtype, seed, text_layers)
    tokenizer = train_tokenizer(default_corpus(), vocab_size=1000)  # ids < 1000 are valid in every vocab here
    text_dims = dict(dims["text"])
    if text_layers is not None:
        text_dims["num_hidden_layers"] = int(text_layers)
    text = LlamaConfig(
        **text_dims,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(**dims["vision"])
    common: dict[str, Any] = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "image_seq_length": (vision.image_size // vision.patch_size) ** 2,
    }
    if dims["kind"] == "llava":
        config, model_cls = LlavaConfig(**common), LlavaForConditionalGeneration
    else:
        config = LlavaNextConfig(**common, image_grid_pinpoints=dims["grid_pinpoints"])
        model_cls = LlavaNextForConditionalGeneration
    model = _random_weights(model_cls, config, device, dtype, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    processor = tiny_processor(dims["kind"], tokenizer, config)
    name = "llava-1.5" if dims["kind"] == "llava" else "llava-next"
    depth = "" if text_layers is None else f"-{text_layers}layers"
    return TransformersBackend.from_loaded(model.eval(), processor, name=f"random-{name}-{shape}{depth}")


def _random_weights(model_cls: Any, config: Any, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """`model_cls(config)` with seeded random weights created in `dtype` directly on `device` (no float32 copy)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return model_cls(config)
    finally:
        torch.set_default_dtype(previous)


def build_shaped_qwen(
    shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0, text_layers: int | None = None
) -> TransformersBackend:
    """A Qwen2.5-VL of the given shape with random weights, built in memory on `device` (as `build_shaped`).

    The processor is the tiny builder's Qwen family (its tokenizer's special tokens and ChatML template) with the
    modern profile's pixel budget, so the image tokens per crop are those of the real checkpoint at that budget.
    """
    import transformers as tf

    tokenizer = train_tokenizer(default_corpus(), vocab_size=1000, family=FAMILY_TOKENS["qwen2_5_vl"])
    ids = tokenizer.convert_tokens_to_ids
    dims = SHAPES[shape]
    text = dict(dims["text"])
    if text_layers is not None:
        text["num_hidden_layers"] = int(text_layers)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section(head_dim)}
    config = tf.Qwen2_5_VLConfig(
        text_config={
            **text,
            "rope_parameters": rope,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
        vision_config={**dims["vision"], "out_hidden_size": text["hidden_size"]},
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
    )
    model = _random_weights(tf.Qwen2_5_VLForConditionalGeneration, config, device, dtype, seed)
    model.generation_config = tf.GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    budget = {"shortest_edge": QWEN25_PIXELS["min_pixels"], "longest_edge": QWEN25_PIXELS["max_pixels"]}
    processor = tf.Qwen2_5_VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(size=budget),
        tokenizer=tokenizer,
        video_processor=tf.Qwen2VLVideoProcessor(),
        chat_template=tokenizer.chat_template,
    )
    depth = "" if text_layers is None else f"-{text_layers}layers"
    return TransformersBackend.from_loaded(model.eval(), processor, name=f"random-qwen2.5-vl-{shape}{depth}")


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


def prompt_token_stats(backend: TransformersBackend, queries: list[Query], n: int = 16) -> dict[str, int]:
    """Prompt tokens (image tokens included) of the first n queries: min, mean, max."""
    counts = [int(backend.build_inputs([q])["attention_mask"].sum().item()) for q in queries[:n]]
    return {"min": min(counts), "mean": round(sum(counts) / len(counts)), "max": max(counts)}


def _write_json(path: Path | None, results: list[dict[str, Any]]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    """Run the benchmark and print one line per measurement (and optionally a JSON file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny")
    parser.add_argument("--kind", choices=["llava", "llava_next", "both"], default="both", help="tiny shape only")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2, help="passes per batch size; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--text-layers",
        default=None,
        help="shaped models: build this many text layers (or 'auto': as many as fit on the GPU) and also print "
        "per-layer-scaled full-depth estimates; default: the shape's full depth",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    queries = make_queries(args.samples)
    device = resolve_device(args.device)
    if args.shape in REAL_SHAPES and device.type != "cuda":
        toy = TOY_SHAPES[args.shape]
        raise SystemExit(f"--shape {args.shape} needs a CUDA GPU (bf16 weights); try --shape {toy} on a CPU")
    if args.shape == "tiny" and args.text_layers is not None:
        raise SystemExit(f"--text-layers applies to the shaped models ({', '.join(SHAPES)}), not to tiny")

    results: list[dict[str, Any]] = []
    full_layers = layers = 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape == "tiny":
            kinds = ["llava", "llava_next"] if args.kind == "both" else [args.kind]
            backends = {}
            for kind in kinds:
                folder = build_tiny_llava(Path(tmp) / kind, kind=kind)
                backends[f"tiny-{kind}"] = TransformersBackend(str(folder), params=params, device=str(device))
        else:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            full_layers = int(SHAPES[args.shape]["text"]["num_hidden_layers"])
            layers = resolve_text_layers(args.shape, args.text_layers, device, max(batch_sizes))
            t0 = time.perf_counter()
            backend = build_shaped(args.shape, device, dtype, text_layers=None if layers == full_layers else layers)
            print(f"built {backend.model} in {time.perf_counter() - t0:.1f} s")
            backend.params = params
            backends = {backend.model: backend}
        scale = full_layers / layers if layers and layers < full_layers else None
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
        setup = f"{args.samples} queries, {params.max_new_tokens} new tokens, best of {args.repeat}"
        print(f"device: {device_name}; torch {torch.__version__}; {setup}")
        for name, backend in backends.items():
            n_params = sum(p.numel() for p in backend.hf_model.parameters())
            tokens = prompt_token_stats(backend, queries)
            print(
                f"{name}: {n_params / 1e6:.1f} M params, {backend.dtype}, prompt tokens per query (image tokens "
                f"included) min {tokens['min']} / mean {tokens['mean']} / max {tokens['max']}"
            )
            if scale:
                full_params = n_params + (full_layers - layers) * text_layer_params(SHAPES[args.shape]["text"])
                print(
                    f"  REDUCED DEPTH: {layers} of {full_layers} text layers; the full model has "
                    f"~{full_params / 1e6:,.0f} M params (~{2 * full_params / 2**30:.1f} GiB in bf16). Lines marked "
                    f"'scaled' divide the measured rate by {scale:.2f} (an estimate, not a measurement)"
                )
            reference: list[str] | None = None
            for bs in batch_sizes:
                rate, texts, peak = run(backend, queries, bs, args.repeat)
                same = None if reference is None else texts == reference
                reference = texts if reference is None else reference
                hours = LAGENDA_TEST_PEOPLE / rate / 3600
                mem = f", peak {peak:.1f} GiB" if peak == peak else ""
                same_txt = "" if same is None else f", answers == batch 1: {same}"
                print(f"  batch {bs:3d}: {rate:8.2f} samples/s{mem}{same_txt}; LAGENDA test ~{hours:.1f} h")
                row: dict[str, Any] = {
                    "model": name,
                    "device": device_name,
                    "batch_size": bs,
                    "samples_per_s": round(rate, 3),
                    "peak_gib": None if peak != peak else round(peak, 2),
                    "same_as_batch1": same,
                    "lagenda_test_hours": round(hours, 2),
                    "prompt_tokens": tokens,
                }
                if scale:
                    est = rate / scale
                    row.update(
                        {
                            "text_layers": layers,
                            "full_text_layers": full_layers,
                            "scaled_estimate_full_depth_samples_per_s": round(est, 3),
                            "scaled_estimate_full_depth_lagenda_test_hours": round(LAGENDA_TEST_PEOPLE / est / 3600, 2),
                        }
                    )
                    print(
                        f"  batch {bs:3d} scaled to {full_layers} layers (estimate): {est:8.2f} samples/s; "
                        f"LAGENDA test ~{row['scaled_estimate_full_depth_lagenda_test_hours']:.1f} h"
                    )
                results.append(row)
                _write_json(args.json, results)
            best = max((r for r in results if r["model"] == name), key=lambda r: r["samples_per_s"])
            caveat = "" if args.shape in REAL_SHAPES else " [toy model: plumbing only, says nothing about a 7B/34B]"
            if scale:
                print(
                    f"  => LAGENDA test ({LAGENDA_TEST_PEOPLE:,} people) at full depth: "
                    f"~{best['scaled_estimate_full_depth_lagenda_test_hours']:.1f} h on this device at batch "
                    f"{best['batch_size']} (SCALED ESTIMATE from {layers} of {full_layers} layers; paper: 2.5 h on "
                    f"8 A6000){caveat}"
                )
            else:
                print(
                    f"  => LAGENDA test ({LAGENDA_TEST_PEOPLE:,} people) would take {best['lagenda_test_hours']:.1f} h "
                    f"on this device at batch {best['batch_size']} (paper: 2.5 h on 8 A6000){caveat}"
                )
            backend.close()
    _write_json(args.json, results)


if __name__ == "__main__":
    main()
