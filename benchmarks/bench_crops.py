"""Speed of the data path: read_mivolo over synthetic photos, then iter_crops per crop kind.

Generates N synthetic JPEG photos with a few people each in a temporary folder, writes a MiVOLO-format
annotation CSV for them, and prints rows/s of `read_mivolo` and images/s and crops/s of `iter_crops`
for face, body and body_wo_face, raw and letterboxed. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_crops.py --images 200 --size 224 --repeat 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agegender.data.crops import CROP_KINDS, iter_crops
from agegender.data.readers import read_mivolo


def make_dataset(root: Path, n_images: int, width: int, height: int, people: int, seed: int) -> int:
    """Write n_images JPEGs and annotations/bench_test.csv; return the number of CSV rows."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = ["img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1"]
    # A smooth gradient plus noise compresses like a photo, unlike pure noise.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], axis=2)
    for i in range(n_images):
        noise = rng.integers(0, 40, (height, width, 3))
        Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:05d}.jpg", quality=90)
        slot = width // people
        for p in range(people):
            px0 = p * slot + int(rng.integers(0, slot // 8))
            px1 = min(width, px0 + int(slot * rng.uniform(0.8, 1.3)))  # neighbours overlap a little
            py0 = int(rng.integers(0, height // 8))
            py1 = height - int(rng.integers(0, height // 8))
            fw = (px1 - px0) // 3
            fx0 = px0 + (px1 - px0 - fw) // 2
            fy0 = py0 + 5
            masked = p == people - 1 and i % 4 == 0  # some people exist only to be masked
            age, gender = ("-1", "-1") if masked else (str(int(rng.integers(1, 90))), "MF"[int(rng.integers(2))])
            face = f"{fx0},{fy0},{fx0 + fw},{fy0 + int(fw * 1.2)}"
            rows.append(f"images/{i:05d}.jpg,{age},{gender},{face},{px0},{py0},{px1},{py1}")
    (root / "annotations").mkdir()
    (root / "annotations" / "bench_test.csv").write_text("\n".join(rows) + "\n")
    return len(rows) - 1


def main() -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="number of synthetic photos")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--people", type=int, default=3, help="people per photo")
    parser.add_argument("--size", type=int, default=224, help="letterbox size (also runs raw crops)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is printed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n_rows = make_dataset(root, args.images, args.width, args.height, args.people, args.seed)
        dt = time.perf_counter() - t0
        print(f"generated {args.images} images ({args.width}x{args.height}), {n_rows} rows in {dt:.1f} s")

        dt = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = read_mivolo(root, "bench")
            dt = min(dt, time.perf_counter() - t0)
        print(
            f"read_mivolo: {n_rows / dt:8.0f} rows/s  ({result.report['samples']} samples,"
            f" {result.report['masked']} masked, {result.report['boxes_clamped']} boxes clamped)"
        )

        for size in (None, args.size):
            for kind in CROP_KINDS:
                dt = float("inf")
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    crops = iter_crops(result.samples, result.masked, root, kind, size=size)
                    made = sum(c is not None for _, c in crops)
                    dt = min(dt, time.perf_counter() - t0)
                print(
                    f"iter_crops {kind:13s} size={str(size):4s}: {args.images / dt:7.1f} images/s"
                    f"  {len(result.samples) / dt:7.1f} crops/s  ({made}/{len(result.samples)} not None)"
                )


if __name__ == "__main__":
    main()
