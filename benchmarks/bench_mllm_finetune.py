"""Fine-tuning speed: training samples/s of a LLaVA-family model, and the paper-scale estimate.

    python benchmarks/bench_mllm_finetune.py                      # tiny LLaVA on the CPU (demo sizes)
    python benchmarks/bench_mllm_finetune.py --shape 7b           # 7B-shaped LLaVA-1.5 on CUDA, random weights
    python benchmarks/bench_mllm_finetune.py --shape mini --batches 1 2   # the 7b code path at toy sizes (CPU)

The tiny run times what `agegender.mllm.finetune` does per step (SFTCollator on random crops + forward +
backward + AdamW) with the demo profile's tiny model. The 7B run builds LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at
336, Llama-2-7B: 4096 wide, 32 layers, vocab 32064) with random bf16 weights created directly on the GPU,
gradient checkpointing on, AdamW with bf16 states (pure bf16: fp32 master weights and states would not fit one
GPU without ZeRO), and sequences of 576 image tokens + the paper's prompt (~130 tokens with the system sentence)
+ the answer. `--freeze-vision` keeps the vision tower fixed, as LLaVA-1.5's fine-tuning stage and our
`FinetuneConfig.freeze_vision_tower` default do. It reports samples/s and peak memory per batch size, and the
hours one epoch of ~800k samples would take on 1 and on 8 such GPUs (ideal scaling), next to the paper's ~11 h
on 8 A6000. A batch that runs out of GPU memory is reported as such (and larger ones are skipped) instead of
ending the run; with `--json` the result is rewritten after every batch, so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

PAPER_SAMPLES = 800_000
PAPER_HOURS_8_A6000 = 11.0


def bench_tiny(args: argparse.Namespace) -> dict:
    import tempfile

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from agegender.mllm.finetune.sft_data import SFTCollator, SFTDataset, SFTRecord
    from agegender.mllm.tools.tiny import build_tiny_llava

    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llava(
            Path(tmp) / "tiny", kind=args.kind, image_size=args.image_size, vision_hidden=args.vision_hidden
        )
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder).train()
        collator = SFTCollator(processor, model_type=model.config.model_type)
        rng = np.random.default_rng(0)
        for batch_size in args.batches:
            records = [
                SFTRecord(
                    f"s{i}", f"[female; {i % 90}]", "female", i % 90, image=rng.integers(0, 256, (200, 90, 3), np.uint8)
                )
                for i in range(batch_size)
            ]
            data = SFTDataset(records)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            times = []
            for step in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                batch = collator([data[i] for i in range(batch_size)])
                loss = model(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step >= args.warmup:
                    times.append(time.perf_counter() - t0)
            step_s = float(np.median(times))
            results.append(
                {
                    "batch": batch_size,
                    "seq_len": int(batch["input_ids"].shape[1]),
                    "step_s": round(step_s, 4),
                    "samples_per_s": round(batch_size / step_s, 2),
                }
            )
            print(json.dumps(results[-1]))
    return {"shape": "tiny", "kind": args.kind, "image_size": args.image_size, "threads": args.threads, "runs": results}


#: the 7b shape (LLaVA-1.5-7B) and a toy of its code path; layer counts are the defaults of --text/--vision-layers
SHAPES: dict[str, dict[str, int]] = {
    "7b": {
        "vision_hidden": 1024,
        "vision_intermediate": 4096,
        "vision_heads": 16,
        "vision_layers": 24,
        "text_hidden": 4096,
        "text_intermediate": 11008,
        "text_heads": 32,
        "text_layers": 32,
    },
    "mini": {
        "vision_hidden": 64,
        "vision_intermediate": 128,
        "vision_heads": 2,
        "vision_layers": 2,
        "text_hidden": 128,
        "text_intermediate": 256,
        "text_heads": 4,
        "text_layers": 2,
    },
}


def _config_shaped(shape: str, text_layers: int, vision_layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    dims = SHAPES[shape]
    vision = CLIPVisionConfig(
        hidden_size=dims["vision_hidden"],
        intermediate_size=dims["vision_intermediate"],
        num_hidden_layers=vision_layers,
        num_attention_heads=dims["vision_heads"],
        patch_size=14,
        image_size=336,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=dims["text_hidden"],
        intermediate_size=dims["text_intermediate"],
        num_hidden_layers=text_layers,
        num_attention_heads=dims["text_heads"],
        num_key_value_heads=dims["text_heads"],
        max_position_embeddings=4096,
        pad_token_id=32001,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32000,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=576,
    )


def _is_oom(exc: BaseException) -> bool:
    """CUDA out of memory, whether torch raised its own error or a library (cuBLAS, cuDNN) failed to allocate."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def _time_batch(model, opt, config, batch_size: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step time of forward + backward + AdamW at one batch size (the inputs die with this frame)."""
    dtype = next(model.parameters()).dtype
    text_len, answer_len, n_image = args.prompt_tokens, 8, 576
    seq = 1 + n_image + text_len + answer_len
    ids = torch.randint(2, 31999, (batch_size, seq), device=device)
    ids[:, 0] = 1
    ids[:, 1 : 1 + n_image] = config.image_token_index
    labels = torch.full_like(ids, -100)
    labels[:, -answer_len:] = ids[:, -answer_len:]
    pixels = torch.randn(batch_size, 3, 336, 336, device=device, dtype=dtype)
    mask = torch.ones_like(ids)
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    sps = batch_size / step_s
    return {
        "batch": batch_size,
        "seq_len": seq,
        "step_s": round(step_s, 3),
        "samples_per_s": round(sps, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "epoch_800k_hours_1gpu": round(PAPER_SAMPLES / sps / 3600, 1),
        "epoch_800k_hours_8gpu_ideal": round(PAPER_SAMPLES / sps / 3600 / 8, 2),
    }


def bench_shaped(args: argparse.Namespace) -> dict:
    from transformers import LlavaForConditionalGeneration

    if args.shape == "7b" and not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("--shape 7b needs a CUDA GPU (use --shape mini, or --allow-cpu with reduced --text-layers)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 as on the GPU; the toy on a CPU runs in float32 (CPU bf16 backward is ~30x slower than float32 there)
    dtype = torch.bfloat16 if device.type == "cuda" or args.shape == "7b" else torch.float32
    text_layers = args.text_layers or SHAPES[args.shape]["text_layers"]
    vision_layers = args.vision_layers or SHAPES[args.shape]["vision_layers"]
    config = _config_shaped(args.shape, text_layers, vision_layers)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # created in bf16 on the device: no float32 copy, no host-to-device transfer
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    build_s = time.perf_counter() - t0
    if args.freeze_vision:
        for name, param in model.named_parameters():
            if "vision_tower" in name:
                param.requires_grad_(False)
    ckpt_kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    model.config.use_cache = False
    model.config.text_config.use_cache = False  # the KV cache is useless in training (and warns with checkpointing)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-6, fused=device.type == "cuda")
    result = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": n_params,
        "trainable_params": sum(p.numel() for p in trainable),
        "dtype": str(dtype).removeprefix("torch."),
        "freeze_vision": bool(args.freeze_vision),
        "text_layers": text_layers,
        "vision_layers": vision_layers,
        "build_s": round(build_s, 1),
        "paper": f"~{PAPER_HOURS_8_A6000} h for one epoch of ~{PAPER_SAMPLES} samples on 8 A6000",
        "runs": [],
    }
    trainable_b = result["trainable_params"] / 1e9
    print(f"built {n_params / 1e9:.2f} B params ({trainable_b:.2f} B trainable) in {build_s:.1f} s", flush=True)
    oom_at: int | None = None
    for batch_size in args.batches:
        if oom_at is not None and batch_size >= oom_at:
            row = {"batch": batch_size, "error": f"skipped: batch {oom_at} already ran out of memory"}
        else:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                row = _time_batch(model, opt, config, batch_size, args, device)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
                row = {"batch": batch_size, "error": "out of memory", "peak_mem_gib_before_failure": peak}
                oom_at = batch_size if oom_at is None else min(oom_at, batch_size)
            if "error" in row:
                # the failed step's graph and gradients hold memory until they are dropped
                opt.zero_grad(set_to_none=True)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("tiny", "7b", "mini"), default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads; 1 is fastest on a shared 2-core box")
    p.add_argument("--kind", choices=("llava", "llava_next"), default="llava")
    p.add_argument("--image-size", type=int, default=112, help="tiny model's image size (demo profile: 112)")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=None, help="7b/mini: Llama layers (default: 32 = 7B; 2)")
    p.add_argument("--vision-layers", type=int, default=None, help="7b/mini: CLIP layers (24 = ViT-L; 2)")
    p.add_argument("--prompt-tokens", type=int, default=130, help="7b: text tokens before the answer")
    p.add_argument("--allow-cpu", action="store_true", help="7b: run the (reduced) shape on the CPU")
    p.add_argument("--freeze-vision", action="store_true", help="7b/mini: keep the vision tower fixed (LLaVA-1.5)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.batches is None:
        args.batches = [4, 16] if args.shape == "tiny" else [4, 8, 16, 32]
    result = bench_tiny(args) if args.shape == "tiny" else bench_shaped(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
