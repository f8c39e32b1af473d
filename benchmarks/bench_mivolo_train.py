"""Speed of MiVOLO training steps: steps/s and samples/s of forward + backward + AdamW.

Cases: the demo config (`mivolo_tiny_64`, 6 channels, batch 32, and the face-only stage 1 model) and the
paper's `mivolo_d1_224` at batch 8, on the CPU (a few steps) and, when CUDA is available, on the GPU with
bf16 autocast (and `mivolo_d1_384`). Inputs are random tensors, so this measures the model, not the data
path; `--demo-root` adds the dataset's items/s (crops cached, training augmentations on) on a demo folder.
Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_mivolo_train.py --steps 5 --threads 2
    .venv/bin/python benchmarks/bench_mivolo_train.py --demo-root data/demo
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from agegender.mivolo.model import create_mivolo


def bench_step(
    variant: str, in_chans: int, batch: int, steps: int, device: torch.device, bf16: bool, warmup: int = 2
) -> tuple[float, float]:
    """Return (steps/s, samples/s) of full training steps on random inputs."""
    torch.manual_seed(0)
    model = create_mivolo(variant, in_chans=in_chans, drop_rate=0.1, drop_path_rate=0.1).to(device).train()
    size = model.spec.img_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, in_chans, size, size, device=device)
    age = torch.rand(batch, device=device) - 0.5
    gender = torch.randint(0, 2, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()

    def step() -> None:
        with autocast:
            out = model(x).float()
        loss = F.mse_loss(out[:, 2], age) + F.cross_entropy(out[:, :2], gender)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return steps / seconds, steps * batch / seconds


def bench_dataset(root: str, n: int) -> float:
    """Items/s of the stage-2 training dataset (augmented, crops cached) over the first n train samples."""
    from agegender.data.readers import read_mivolo
    from agegender.mivolo.dataset import Augment, CropRules, MiVOLODataset

    read = read_mivolo(root, "demo", annotations="annotations", splits={"train": "train"})
    samples = read.samples.head(n)
    ds = MiVOLODataset(
        samples,
        read.masked,
        root,
        size=64,
        augment=Augment(face_blur_p=0.5, drop_face_p=0.1, drop_body_p=0.1),
        rules=CropRules(min_person_size=50),
    )
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / (time.perf_counter() - t0)


def main() -> None:
    """Run the cases and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (CPU)")
    parser.add_argument("--gpu-steps", type=int, default=20, help="timed steps per case (CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--demo-root", help="a generated demo folder: also time the training dataset")
    parser.add_argument("--skip-cpu-d1", action="store_true", help="skip mivolo_d1_224 on the CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    cases = [("mivolo_tiny_64", 3, 32), ("mivolo_tiny_64", 6, 32), ("mivolo_small_112", 6, 32)]
    if not args.skip_cpu_d1:
        cases.append(("mivolo_d1_224", 6, 8))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for variant, chans, batch in cases:
        steps = args.steps if variant.startswith("mivolo_d1") else max(args.steps, 20)
        sps, ips = bench_step(variant, chans, batch, steps, cpu, bf16=False)
        print(f"cpu  {variant:17s} in_chans {chans} batch {batch:3d}: {sps:7.2f} steps/s {ips:8.1f} samples/s")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"cuda: {torch.cuda.get_device_name(0)}")
        for variant, chans, batch in [
            ("mivolo_tiny_64", 6, 32),
            ("mivolo_d1_224", 6, 8),
            ("mivolo_d1_224", 6, 64),
            ("mivolo_d1_384", 6, 32),
        ]:
            for bf16 in (False, True):
                sps, ips = bench_step(variant, chans, batch, args.gpu_steps, gpu, bf16=bf16)
                mode = "bf16" if bf16 else "fp32"
                case = f"cuda {variant:17s} in_chans {chans} batch {batch:3d} {mode}"
                print(f"{case}: {sps:7.2f} steps/s {ips:8.1f} samples/s")
    if args.demo_root:
        print(f"dataset (stage 2, augmented, cached crops): {bench_dataset(args.demo_root, 256):.0f} items/s")


if __name__ == "__main__":
    main()
