"""Fine-tuning speed: training samples/s of a LLaVA-family model, and the paper-scale estimate.

    python benchmarks/bench_mllm_finetune.py                      # tiny LLaVA on the CPU (demo sizes)
    python benchmarks/bench_mllm_finetune.py --shape 7b           # 7B-shaped LLaVA-1.5 on CUDA, random weights

The tiny run times what `agegender.mllm.finetune` does per step (SFTCollator on random crops + forward +
backward + AdamW) with the demo profile's tiny model. The 7B run builds LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at
336, Llama-2-7B: 4096 wide, 32 layers, vocab 32064) with random bf16 weights on the GPU, gradient checkpointing
on, AdamW with bf16 states (pure bf16: fp32 master weights and states would not fit one GPU without ZeRO), and
sequences of 576 image tokens + the paper's prompt (~130 tokens with the system sentence) + the answer. It
reports samples/s and peak memory per batch size, and the hours one epoch of ~800k samples would take on 1 and
on 8 such GPUs (ideal scaling), next to the paper's ~11 h on 8 A6000.
"""

from __future__ import annotations

import argparse
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

    from agegender.mllm.sft_data import SFTCollator, SFTDataset, SFTRecord
    from agegender.mllm.tiny import build_tiny_llava

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


def _config_7b(text_layers: int, vision_layers: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=vision_layers,
        num_attention_heads=16,
        patch_size=14,
        image_size=336,
        projection_dim=768,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=text_layers,
        num_attention_heads=32,
        num_key_value_heads=32,
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


def bench_7b(args: argparse.Namespace) -> dict:
    from transformers import LlavaForConditionalGeneration

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("--shape 7b needs a CUDA GPU (use --allow-cpu with reduced --text-layers for a smoke test)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    config = _config_7b(args.text_layers, args.vision_layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-6, fused=device.type == "cuda")
    text_len, answer_len, n_image = args.prompt_tokens, 8, 576
    results = []
    for batch_size in args.batches:
        seq = 1 + n_image + text_len + answer_len
        ids = torch.randint(2, 31999, (batch_size, seq), device=device)
        ids[:, 0] = 1
        ids[:, 1 : 1 + n_image] = config.image_token_index
        labels = torch.full_like(ids, -100)
        labels[:, -answer_len:] = ids[:, -answer_len:]
        pixels = torch.randn(batch_size, 3, 336, 336, device=device, dtype=dtype)
        mask = torch.ones_like(ids)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
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
        except torch.cuda.OutOfMemoryError:
            print(json.dumps({"batch": batch_size, "error": "out of memory"}))
            opt.zero_grad(set_to_none=True)
            break
        step_s = float(np.median(times))
        sps = batch_size / step_s
        row = {
            "batch": batch_size,
            "seq_len": seq,
            "step_s": round(step_s, 3),
            "samples_per_s": round(sps, 2),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "epoch_800k_hours_1gpu": round(PAPER_SAMPLES / sps / 3600, 1),
            "epoch_800k_hours_8gpu_ideal": round(PAPER_SAMPLES / sps / 3600 / 8, 2),
        }
        results.append(row)
        print(json.dumps(row))
    return {
        "shape": "7b",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "params": n_params,
        "text_layers": args.text_layers,
        "vision_layers": args.vision_layers,
        "paper": f"~{PAPER_HOURS_8_A6000} h for one epoch of ~{PAPER_SAMPLES} samples on 8 A6000",
        "runs": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("tiny", "7b"), default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (tiny); 1 is fastest on a shared 2-core box")
    p.add_argument("--kind", choices=("llava", "llava_next"), default="llava")
    p.add_argument("--image-size", type=int, default=112, help="tiny model's image size (demo profile: 112)")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=32, help="7b: Llama layers (32 = 7B)")
    p.add_argument("--vision-layers", type=int, default=24, help="7b: CLIP layers (24 = ViT-L)")
    p.add_argument("--prompt-tokens", type=int, default=130, help="7b: text tokens before the answer")
    p.add_argument("--allow-cpu", action="store_true", help="7b: run the (reduced) shape on the CPU")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    if args.batches is None:
        args.batches = [4, 16] if args.shape == "tiny" else [4, 8, 16, 32]
    result = bench_tiny(args) if args.shape == "tiny" else bench_7b(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
