"""The CUDA cases of benchmarks/bench_mivolo_train.py alone (its CPU cases cost GPU-machine time for nothing).

Same measurement (`bench_step`: forward + backward + AdamW on random inputs, 6 input channels), same cases
as that script's CUDA part (fp32 and bf16 autocast), printed in its format. Asserts nothing.

    python3 gpu/mivolo_train_cuda.py [--gpu-steps 10] [--device cpu --cases mivolo_tiny_64:6:2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_mivolo_train import bench_step  # noqa: E402  (a script folder, not a package)

#: (variant, input channels, batch): bench_mivolo_train.py's CUDA cases
CUDA_CASES = ["mivolo_tiny_64:6:32", "mivolo_d1_224:6:8", "mivolo_d1_224:6:64", "mivolo_d1_384:6:32"]


def parse_case(text: str) -> tuple[str, int, int]:
    """`variant:in_chans:batch` -> (variant, in_chans, batch)."""
    try:
        variant, chans, batch = text.split(":")
        return variant, int(chans), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is variant:in_chans:batch, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Time each case in fp32 and in bf16 autocast and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", nargs="+", type=parse_case, default=[parse_case(c) for c in CUDA_CASES])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}", flush=True)
    for variant, chans, batch in args.cases:
        for bf16 in (False, True):
            sps, ips = bench_step(variant, chans, batch, args.gpu_steps, device, bf16=bf16)
            mode = "bf16" if bf16 else "fp32"
            case = f"{device.type} {variant:17s} in_chans {chans} batch {batch:3d} {mode}"
            print(f"{case}: {sps:7.2f} steps/s {ips:8.1f} samples/s", flush=True)


if __name__ == "__main__":
    main()
