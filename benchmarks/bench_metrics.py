"""Benchmark `agegender.metrics.evaluate` on synthetic prediction tables.

Goal (issue): 1,000,000 predictions scored in under 1 s with confidence intervals off. Also times
the bootstrap on a smaller table and `age_group_mae` on the large one.

    .venv/bin/python benchmarks/bench_metrics.py                       # 5 models x 200k samples
    .venv/bin/python benchmarks/bench_metrics.py --n-samples 1000000 --n-models 1
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pandas as pd

from agegender.data.schema import PREDICTION_COLUMNS, SAMPLE_COLUMNS
from agegender.metrics import CLASS_SCHEMES, age_group_mae, evaluate


def make_tables(n_samples: int, n_models: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build a sample table (80 % regression data set, 20 % Adience-style class data set) and predictions.

    Args:
        n_samples: samples in the sample table.
        n_models: models, each predicting every sample once (input ``face_body``).
        seed: random seed.

    Returns:
        (samples, predictions) with the canonical dtypes of the schema.
    """
    rng = np.random.default_rng(seed)
    n_class = n_samples // 5
    age = rng.uniform(0, 90, n_samples).round()
    is_class = np.arange(n_samples) >= n_samples - n_class
    labels = np.asarray(CLASS_SCHEMES["adience"].labels, dtype=object)
    samples = pd.DataFrame({c: pd.Series(pd.NA, index=range(n_samples), dtype=t) for c, t in SAMPLE_COLUMNS.items()})
    samples["sample_id"] = pd.array([f"s{i:07d}" for i in range(n_samples)], dtype="string")
    samples["dataset"] = pd.array(np.where(is_class, "adience", "lagenda"), dtype="string")
    samples["split"] = "test"
    samples["image_path"] = "img.jpg"
    samples["age"] = pd.array(np.where(is_class, np.nan, age), dtype="Float64")
    samples["age_class"] = pd.array(np.where(is_class, rng.choice(labels, n_samples), None), dtype="string")
    samples["gender"] = pd.array(rng.choice(["male", "female"], n_samples), dtype="string")

    frames = []
    for m in range(n_models):
        status = np.where(rng.random(n_samples) < 0.97, "ok", rng.choice(["refused", "unparsed", "failed"], n_samples))
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": samples["sample_id"],
                    "model": f"model_{m}",
                    "input": "face_body",
                    "age_pred": np.clip(age + rng.normal(0, 3 + m, n_samples), 0, None),
                    "gender_pred": np.where(rng.random(n_samples) < 0.95, samples["gender"], "male"),
                    "gender_score": np.nan,
                    "status": status,
                    "raw_answer": None,
                }
            )
        )
    preds = pd.concat(frames, ignore_index=True)
    preds = preds.astype({c: t for c, t in PREDICTION_COLUMNS.items()})
    return samples, preds


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Best wall time of `repeat` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=200_000)
    ap.add_argument("--n-models", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ci-samples", type=int, default=84_000, help="samples of the table timed with CIs on")
    ap.add_argument("--ci-models", type=int, default=1)
    ap.add_argument("--n-resamples", type=int, default=1000)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    samples, preds = make_tables(args.n_samples, args.n_models)
    print(f"built {len(preds):,} predictions on {len(samples):,} samples in {time.perf_counter() - t0:.1f} s")

    for views in (("answered",), ("answered", "common")):
        seconds, out = timed(lambda v=views: evaluate(samples, preds, views=v), args.repeat)
        print(f"evaluate ci=off views={'+'.join(views):<16} {seconds:6.3f} s  ({len(out)} rows)")
    seconds, out = timed(lambda: age_group_mae(samples, preds), args.repeat)
    print(f"age_group_mae                              {seconds:6.3f} s  ({len(out)} rows)")

    small_samples, small_preds = make_tables(args.ci_samples, args.ci_models, seed=1)
    tracemalloc.start()
    seconds, out = timed(
        lambda: evaluate(small_samples, small_preds, ci=True, n_resamples=args.n_resamples, views=("answered",)),
        1,
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"evaluate ci=on  {len(small_preds):,} predictions, {args.n_resamples} resamples, {len(out)} rows: "
        f"{seconds:6.3f} s, peak traced memory {peak / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
