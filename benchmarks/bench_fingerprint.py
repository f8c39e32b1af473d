"""Cost of the weights fingerprints that resumable caches are keyed by: full SHA-256, then the cached lookup.

`agegender.fingerprint.file_sha256` reads every byte of a file once and caches the digest by the file's identity;
`folder_revision` (the response store's model revision) does that for every weights and definition file of a model
folder. This prints, for a model folder you name (e.g. a 7B llava-hf folder) or for a generated file of `--mib`
MiB, the time and throughput of the first digest (cold: every byte read and hashed; the page cache may already
hold the file) and of the second (served from the digest cache). With `--mivolo VARIANT` it also times the
producer fingerprint of `mivolo-predict`'s resume parts (a SHA-256 of the state dict in memory), which every run
with `--out` computes. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_fingerprint.py --mib 1024 --mivolo mivolo_d1_384
    .venv/bin/python benchmarks/bench_fingerprint.py --folder /models/llava-1.5-7b-hf
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    """Run the benchmark and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=None, help="a model folder to fingerprint (folder_revision)")
    parser.add_argument("--mib", type=int, default=512, help="size of the generated file without --folder")
    parser.add_argument("--mivolo", default=None, help="also time producer_fingerprint of this MiVOLO variant")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # a private digest cache, so that the first run is really cold for the cache
        os.environ["AGEGENDER_CACHE_DIR"] = str(Path(tmp) / "cache")
        import agegender.fingerprint as fp

        fp.RACY_S = 0.0  # the generated file was just written; a real model folder is older than 2 s anyway
        if args.folder is not None:
            from agegender.mllm.backends.transformers_backend import _revision_files, folder_revision

            folder = Path(args.folder)
            size = sum(p.stat().st_size for p in _revision_files(folder.resolve()))
            first, cold = _timed(folder_revision, folder)
            second, warm = _timed(folder_revision, folder)
            what = f"folder_revision({folder}) over {len(_revision_files(folder.resolve()))} files"
        else:
            path = Path(tmp) / "weights.bin"
            chunk = os.urandom(1 << 20)
            with path.open("wb") as handle:
                for _ in range(args.mib):
                    handle.write(chunk)
            size = path.stat().st_size
            first, cold = _timed(fp.file_sha256, path)
            second, warm = _timed(fp.file_sha256, path)
            what = f"file_sha256 of a generated {args.mib} MiB file"
        assert first == second
        print(what)
        print(f"  first (every byte read and hashed): {cold:.2f} s, {size / cold / 1e9:.2f} GB/s")
        print(f"  second (digest cache):              {warm * 1000:.2f} ms")
        print(f"  a 15 GB 7B model at this rate:      {15e9 / (size / cold):.1f} s the first time")
    if args.mivolo:
        import torch

        from agegender.mivolo.model import create_mivolo
        from agegender.mivolo.predict import producer_fingerprint

        model = create_mivolo(args.mivolo, in_chans=6, num_classes=3)
        model.set_age_range(0, 100)
        n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        producer_fingerprint(model, amp=False)  # warm-up (imports)
        _, seconds = _timed(lambda: producer_fingerprint(model, amp=False))
        print(f"producer_fingerprint({args.mivolo}): {n / 1e6:.0f} MB of weights in {seconds * 1000:.0f} ms "
              f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")  # fmt: skip


if __name__ == "__main__":
    main()
