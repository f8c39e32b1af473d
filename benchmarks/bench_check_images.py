"""Time of the image check of `agegender check` on a LAGENDA-sized folder (67,000 full-size JPEG photos).

`check` opens every image a data set names and decodes it cheaply (`agegender.data.crops.image_size(decode=True)`:
a JPEG at 1/8 scale, which still reads its whole entropy-coded stream), in threads, so that a truncated or empty
file is reported before a run instead of stopping it. This benchmark builds a folder like LAGENDA's test set
(default 67,000 JPEGs, 600-1500 px on the long side, ~100-300 KB; one MiVOLO annotation CSV naming them, with a
second person on every third image as LAGENDA has 84k people on 67k images) and prints:

- the folder: images, bytes, mean size and long side;
- the image check alone over a subset, per image, for header-only, 1/8-scale and full decodes and for several
  thread counts and a process pool (forkserver, as a notebook kernel would need; what `image_sizes` uses is
  threads: see its docstring), all without the cache of verified images;
- `check_dataset("mivolo", ...)` end to end over the whole folder (CSV read, one `stat` and one cheap decode per
  image), each run timed (seconds, images/s, ms per image):
  - first run, cold: the folder's pages evicted from the page cache (`posix_fadvise(DONTNEED)` on its own files
    only: the first run after a reboot or a fresh copy) and an empty cache of verified images;
  - second run: every image is known to decode (`agegender.fingerprint.FileFacts`), so each costs a `stat` and a
    lookup; warm, then with the images and the cache database evicted (the inodes stay cached: evicting them
    would need `drop_caches`, which touches the whole machine);
  - first run, warm: the cache emptied again, the images in the page cache.

The cache of verified images lives in a temporary folder (`AGEGENDER_CACHE_DIR`), removed at the end: the user's
own is neither read nor filled.

Photos: mosaics of the real faces in `../shared/data/fairface540` (read only, never copied anywhere lasting: the
folder is a temporary one, removed at the end unless `--keep`), re-encoded at the sizes above, a few hundred
distinct ones copied to make up the count (copies, not links: each file is read from its own pages). Without that
folder, synthetic photos of the same sizes (smooth fields plus noise). Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_check_images.py                      # 67,000 images in a temporary folder
    .venv/bin/python benchmarks/bench_check_images.py --count 5000 --distinct 100
    .venv/bin/python benchmarks/bench_check_images.py --folder /data/raw/lagenda --csv annotations   # a real one
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from agegender import fingerprint
from agegender.data.crops import image_size, image_sizes
from agegender.data.registry import check_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fairface540"
HEADER = "img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1"


def _photo(rng: np.random.Generator, tiles: Sequence[Path]) -> Image.Image:
    """A full-size photo: a mosaic of 2-6 real 448-px portraits (or, without them, a synthetic field)."""
    cols, rows = int(rng.integers(2, 4)), int(rng.integers(1, 3))
    if tiles:
        mosaic = Image.new("RGB", (448 * cols, 448 * rows))
        for i in range(cols * rows):
            with Image.open(tiles[int(rng.integers(len(tiles)))]) as tile:
                mosaic.paste(tile.convert("RGB").resize((448, 448)), ((i % cols) * 448, (i // cols) * 448))
    else:  # smooth colour fields plus fine noise compress about as photos do
        h, w = 448 * rows, 448 * cols
        coarse = rng.integers(0, 256, (rows * 6, cols * 6, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        mosaic = Image.fromarray((field + rng.integers(-24, 25, (h, w, 3))).clip(0, 255).astype(np.uint8))
    long_side = int(rng.integers(600, 1501))
    scale = long_side / max(mosaic.size)
    return mosaic.resize((max(1, round(mosaic.width * scale)), max(1, round(mosaic.height * scale))))


def build_folder(root: Path, count: int, distinct: int, seed: int) -> dict[str, object]:
    """Write `count` JPEGs (copies of `distinct` photos) under root/images and annotations/lagenda_test.csv."""
    rng = np.random.default_rng(seed)
    tiles = sorted(SHARED.glob("*.jpg")) if SHARED.is_dir() else []
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    sources, sides = [], []
    for k in range(distinct):
        photo = _photo(rng, tiles)
        path = root / "images" / f"{k:06d}.jpg"
        photo.save(path, format="JPEG", quality=int(rng.integers(88, 96)))
        sources.append((path, photo.size))
        sides.append(max(photo.size))
    rows = [HEADER]
    total = 0
    for i in range(count):
        source, (w, h) = sources[i % distinct]
        path = root / "images" / f"{i:06d}.jpg"
        if i >= distinct:
            shutil.copyfile(source, path)
        total += path.stat().st_size
        people = 2 if i % 3 == 0 else 1
        for p in range(people):
            x0 = p * w // 2
            rows.append(
                f"images/{path.name},{20 + i % 50},{'MF'[i % 2]},{x0 + 10},10,{x0 + 60},70,{x0},0,{x0 + w // 2},{h}"
            )
    (root / "annotations" / "lagenda_test.csv").write_text("\n".join(rows) + "\n")
    return {
        "images": count,
        "distinct": distinct,
        "people": len(rows) - 1,
        "bytes": total,
        "mean_kb": total / count / 1024,
        "long_side_min": min(sides),
        "long_side_max": max(sides),
        "tiles": "fairface540 mosaics" if tiles else "synthetic",
    }


def evict(paths: Sequence[Path]) -> None:
    """Drop these files' pages from the page cache (theirs only: nothing else on the machine is touched)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _full_decode(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


def _timed(label: str, run: Callable[[], object], n: int) -> tuple[float, float]:
    """Wall time, and this process's CPU time (all its threads; not that of a process pool's workers).

    The CPU time per image does not grow when other work shares the cores, so `cpu / cores` is what the wall time
    would be on idle cores (when the work spreads over them); the wall time is what it was here and now.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"  {label:<44} {seconds:7.2f} s {n / seconds:7.0f} img/s {1000 * seconds / n:6.2f} ms/img wall;"
        f" {1000 * cpu / n:5.2f} ms/img CPU",
        flush=True,
    )
    return seconds, cpu


def main() -> None:
    """Build the folder (or take one), run the timings, print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=67_000, help="images in the built folder (LAGENDA test: 67,159)")
    parser.add_argument("--distinct", type=int, default=300, help="distinct photos the folder is copied from")
    parser.add_argument("--subset", type=int, default=4000, help="images of the per-method comparison")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="thread counts to compare")
    parser.add_argument("--folder", type=Path, default=None, help="an existing MiVOLO-format data set (kept)")
    parser.add_argument("--csv", default="annotations", help="its annotation folder (with --folder)")
    parser.add_argument("--no-cold", action="store_true", help="skip the runs with the images evicted from cache")
    parser.add_argument("--cold-workers", type=int, nargs="+", default=[2, 4, 8, 16], help="thread counts, cold")
    parser.add_argument("--keep", action="store_true", help="keep the built folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"cpus {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} at the start")
    made = args.folder is None
    root = Path(tempfile.mkdtemp(prefix="bench_check_images_")) if made else args.folder
    cache = Path(tempfile.mkdtemp(prefix="bench_check_images_cache_"))
    os.environ[fingerprint.CACHE_ENV] = str(cache)  # never the user's cache; `check` reads it at each call
    try:
        if made:
            t0 = time.perf_counter()
            info = build_folder(root, args.count, args.distinct, args.seed)
            print(
                f"folder {root}: {info['images']} images ({info['tiles']}, {info['distinct']} distinct), "
                f"{info['people']} people, {info['bytes'] / 1e9:.2f} GB, mean {info['mean_kb']:.0f} KB, "
                f"long side {info['long_side_min']}-{info['long_side_max']} px; "
                f"built in {time.perf_counter() - t0:.0f} s"
            )
            annotations = "annotations"
        else:
            annotations = args.csv
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        n = len(images)

        subset = images[: min(args.subset, n)]
        k = len(subset)
        print(f"the check of one image, over {k} images (warm cache, no cache of verified images):")
        _timed("header only (image_size)", lambda: image_sizes(subset, workers=1), k)
        _timed("full decode, 1 thread", lambda: [_full_decode(p) for p in subset], k)
        for workers in args.workers:
            _timed(
                f"1/8 decode, {workers} thread(s) (image_sizes)",
                lambda w=workers: image_sizes(subset, decode=True, workers=w, cache=False),
                k,
            )
        context = multiprocessing.get_context("forkserver")  # fork is unsafe in a kernel holding threads
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            list(pool.map(partial(image_size, decode=True), subset[:8]))  # start the workers first
            _timed(
                "1/8 decode, 2 processes (forkserver)",
                lambda: list(pool.map(partial(image_size, decode=True), subset, chunksize=64)),
                k,
            )
        _timed("1/8 decode, default threads (image_sizes)", lambda: image_sizes(subset, decode=True, cache=False), k)
        if not args.no_cold:
            print(f"the same {k} images evicted from the page cache before each run (reads wait for the disk):")
            for workers in args.cold_workers:
                evict(subset)
                label = f"1/8 decode, {workers} threads, cold"
                _timed(label, lambda w=workers: image_sizes(subset, decode=True, workers=w, cache=False), k)

        print(f"check_dataset('mivolo', ...) end to end over all {n} images:")
        database = cache / fingerprint.FACTS_DB
        cores = len(os.sched_getaffinity(0))

        def check() -> None:
            problems = check_dataset("mivolo", root, annotations=annotations)
            if problems:
                print(f"    problems found: {len(problems)}: {problems[:2]}")

        def empty_cache() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()

        def per_67k(seconds: float) -> str:
            return f"{67_000 * seconds / n:.1f} s for 67,000 images"

        def first_warm() -> None:
            empty_cache()
            warm, cpu = _timed("first run, warm (empty cache)", check, n)
            print(
                f"    {per_67k(warm)}; its CPU time {cpu:.1f} s, on {cores} idle cores {cpu / cores:.1f} s, "
                f"{per_67k(cpu / cores)}"
            )

        if args.no_cold:
            first_warm()
        else:
            empty_cache()
            evict(images)
            cold, _ = _timed("first run, cold (folder evicted, empty cache)", check, n)
            print(f"    {per_67k(cold)}")
        print(f"    cache of verified images: {database.stat().st_size / 1e6:.1f} MB (+ WAL) for {n} images")
        second, _ = _timed("second run (cached), warm", check, n)
        print(f"    {per_67k(second)}")
        if not args.no_cold:
            evict([*images, *cache.iterdir()])
            second_cold, _ = _timed("second run (cached), images and cache evicted", check, n)
            print(f"    {per_67k(second_cold)}")
            first_warm()
        print(f"load average {os.getloadavg()[0]:.2f} at the end (other work on the machine slows every number)")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if made and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
