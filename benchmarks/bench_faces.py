"""Speed and yield of the packaged face detectors (`agegender.faces`) on real photos: FairFace-540.

For each detector: images/s of `detect` (decoding excluded: images are loaded first), the share of images with
at least one face and with several faces, and the share of images whose chosen subject face (`pick_subject`)
covers the image centre (a rough plausibility check: FairFace photos are centred on their subject). Prints
numbers; asserts nothing. Skips with a message when `../shared/data/fairface540` is absent.

    .venv/bin/python benchmarks/bench_faces.py --threads 1 --batch-size 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from agegender.data.crops import load_image
from agegender.errors import AgegenderError
from agegender.faces import FACE_DETECTORS, pick_subject, resolve_face_detector

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fairface540"


def main() -> None:
    """Run the benchmark and print one line per detector."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="folder of photos (*.jpg)")
    parser.add_argument("--detectors", nargs="+", default=sorted(FACE_DETECTORS), help="registered names")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--batch-size", type=int, default=16, help="images per detect call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (MTCNN; 1 is fastest on a busy CPU)")
    args = parser.parse_args()

    files = sorted(args.folder.glob("*.jpg"))[: args.limit] if args.folder.is_dir() else []
    if not files:
        print(f"skipped: no photos at {args.folder} (../shared/data is absent on this machine)")
        return
    import torch

    torch.set_num_threads(args.threads)
    images = [load_image(f) for f in files]
    print(f"{len(images)} images from {args.folder}, batch size {args.batch_size}, {args.threads} torch threads")
    for name in args.detectors:
        try:
            detector = resolve_face_detector(name)
        except AgegenderError as exc:
            print(f"{name:10s} skipped: {exc}")
            continue
        detector.detect(images[:1])  # warm-up (first call allocates)
        start = time.perf_counter()
        found = []
        for i in range(0, len(images), args.batch_size):
            found.extend(detector.detect(images[i : i + args.batch_size]))
        seconds = time.perf_counter() - start
        n = len(images)
        with_face = sum(len(d.faces) > 0 for d in found)
        several = sum(len(d.faces) > 1 for d in found)
        centred = 0
        for image, det in zip(images, found, strict=True):
            h, w = image.shape[:2]
            pick = pick_subject(det, (w, h))
            if pick is not None:
                x0, y0, x1, y1 = det.faces[pick]
                centred += int(x0 <= w / 2 <= x1 and y0 <= h / 2 <= y1)
        print(
            f"{name:10s} {n / seconds:6.1f} images/s ({seconds:5.1f} s)  with a face {with_face}/{n} "
            f"({with_face / n:.1%})  several faces {several} ({several / n:.1%})  "
            f"subject covers the centre {centred} ({centred / n:.1%})"
        )


if __name__ == "__main__":
    main()
