"""Images/s of MiVOLO batch inference against a plain per-image loop (and the official code, when given).

Random weights, 6 input channels (face + body). Methods:

- `ours`: batches, eval, `torch.inference_mode`, channels-last input and weights, bf16 autocast on CUDA
  (what `agegender` prediction uses);
- `ours_nchw`: the same without channels-last (shows what the memory layout is worth on this device);
- `loop`: one image at a time, contiguous NCHW, `torch.no_grad`, fp16 weights on CUDA and fp32 on the CPU
  - the official `MiVOLO.inference` way, one crop per call;
- `official`: the official `MiVOLOModel` (from `--official-repo`) with the same weights, called the way
  the official predictor calls it (a batch per image, `torch.no_grad`, fp16 on CUDA).

Prints one line per (variant, method, batch) and, with `--json`, writes the rows. Asserts nothing.

    .venv/bin/python benchmarks/bench_mivolo.py --variants mivolo_d1_224 mivolo_d1_384 --batches 1 8 32 \\
        --repeats 3 --max-images 64 --threads 2 [--official-repo /path/to/MiVOLO] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from agegender.mivolo.model import MODEL_SPECS, create_mivolo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(call: Callable[[], object], device: torch.device, calls: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    _sync(device)
    return time.perf_counter() - start


def _ours(model: nn.Module, device: torch.device, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else contextlib.nullcontext()
    )

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), amp:
            return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    return run


def _plain(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    # as the official MiVOLO class: fp16 on CUDA (half=True default), fp32 on the CPU, no_grad
    half = device.type == "cuda"
    model = model.to(device).eval()
    if half:
        model = model.half()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x.half() if half else x)

    return run


def _loop(run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], None]:
    def per_image(x: torch.Tensor) -> None:
        for i in range(x.shape[0]):
            run(x[i : i + 1])

    return per_image


def _runners(
    variant: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Callable[[torch.Tensor], object]]:
    """One callable per method, every one holding the same weights (so only the code paths differ)."""
    torch.manual_seed(0)
    base = create_mivolo(variant, in_chans=6).eval()
    runners: dict[str, Callable[[torch.Tensor], object]] = {}
    for method in args.methods:
        if method == "official":
            if not args.official_repo:
                continue
            from parity_official import official_model

            model = official_model(args.official_repo, base.spec, 6, 3)
            model.load_state_dict(base.state_dict(), strict=True)
            runners[method] = _plain(model, device)
        elif method == "loop":
            runners[method] = _loop(_plain(copy.deepcopy(base), device))
        elif method in ("ours", "ours_nchw"):
            runners[method] = _ours(copy.deepcopy(base), device, channels_last=method == "ours")
        else:
            raise SystemExit(f"unknown method {method!r}")
    return runners


def bench(args: argparse.Namespace) -> list[dict]:
    """Run every configuration and return result rows.

    The methods take turns call by call, so a change in the machine's load (shared CPUs) hits all of
    them alike; each row reports the median and the best call.
    """
    device = torch.device(args.device)
    rows = []
    for variant in args.variants:
        size = MODEL_SPECS[variant].img_size
        runners = _runners(variant, args, device)
        for batch in args.batches:
            calls = max(1, min(args.repeats, args.max_images // batch))
            x = torch.randn(batch, 6, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
            # the per-image loop's rate does not depend on the batch: a few images per call are enough
            inputs = {m: x[: args.loop_images] if m == "loop" else x for m in runners}
            for method, fn in runners.items():
                # warm-up on at most 8 images: big batches on a CPU would cost minutes for little extra warmth
                _time(lambda fn=fn, x=inputs[method][:8]: fn(x), device, args.warmup)
            times: dict[str, list[float]] = {m: [] for m in runners}
            for _ in range(calls):
                for method, fn in runners.items():
                    times[method].append(_time(lambda fn=fn, x=inputs[method]: fn(x), device, 1))
            for method, seconds in times.items():
                n = inputs[method].shape[0]
                row = {
                    "variant": variant,
                    "method": method,
                    "batch": 1 if method == "loop" else batch,
                    "images_per_call": n,
                    "calls": calls,
                    "median_images_per_s": round(n / statistics.median(seconds), 2),
                    "best_images_per_s": round(n / min(seconds), 2),
                }
                rows.append(row)
                print(
                    f"{variant:14s} batch {batch:3d} {method:10s}: {row['median_images_per_s']:8.2f} images/s median, "
                    f"{row['best_images_per_s']:8.2f} best ({calls} x {n} images)",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["mivolo_d1_224", "mivolo_d1_384"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=["ours", "ours_nchw", "loop", "official"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (at most)")
    parser.add_argument("--max-images", type=int, default=64, help="cap on images per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method and batch")
    parser.add_argument("--loop-images", type=int, default=4, help="images per timed call of the per-image loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--official-repo", help="a checkout of github.com/WildChlamydia/MiVOLO")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"torch {torch.__version__}, {device_name}, {torch.get_num_threads()} threads, load average {load}")
    rows = bench(args)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average after: {load_after}")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "load": [load, load_after], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
