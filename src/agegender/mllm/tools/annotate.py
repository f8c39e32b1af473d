"""`agegender annotate FOLDER --backend ... --model ...`: label unlabelled photos with an MLLM.

The paper's motivating use: an MLLM labels new data. Each photo is taken as one person (the whole
image is the body crop the paper's prompt is asked about); answers go through the response store like
every other query, so an interrupted run resumes and a rerun sends nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from agegender.data.crops import image_size
from agegender.data.schema import validate_samples
from agegender.errors import InputError
from agegender.mllm.backends.base import Backend
from agegender.mllm.prompt import PROMPT_VERSION
from agegender.mllm.runner import BackendSpec
from agegender.mllm.store import ResponseStore
from agegender.photos import list_images

ANNOTATION_COLUMNS = ("image", "age", "gender", "status", "raw_answer")


def folder_samples(folder: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A sample table with one person per photo (the whole image as the person box).

    Returns:
        The table, and the photos that could not be read (skipped, reported by the caller).
    """
    folder = Path(folder)
    rows, unreadable = [], []
    for rel in list_images(folder):
        try:
            width, height = image_size(folder / rel)
        except InputError:
            unreadable.append(rel)
            continue
        rows.append(
            {"sample_id": rel, "dataset": "folder", "split": "test", "image_path": rel, "image_width": width,
             "image_height": height, "person_x0": 0.0, "person_y0": 0.0, "person_x1": float(width),
             "person_y1": float(height)}
        )  # fmt: skip
    if not rows:
        raise InputError("no readable photos (jpg, jpeg, png, webp) in the folder", file=folder)
    return validate_samples(pd.DataFrame(rows), source=folder), unreadable


def annotate_folder_mllm(
    folder: str | Path,
    backend: Backend | BackendSpec,
    store: ResponseStore | str | Path,
    out_csv: str | Path,
    *,
    prompt_version: str = PROMPT_VERSION,
    max_side: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Ask an MLLM for `[gender; age]` on every photo of a folder and write a CSV.

    Args:
        folder: the photos (searched recursively).
        backend: any registered MLLM backend, or what to create it from (closed when the run ends).
        store: the response store or its folder (answers are recorded there as they arrive).
        out_csv: the output: image, age, gender, status (`ok`, `refused`, `unparsed`, `failed`), raw_answer.
        prompt_version: the prompt (the paper's by default).
        max_side: downscale photos so that the longer side is at most this (None: original size).
        progress: progress bar.

    Returns:
        The annotation table; `attrs["unreadable"]` lists the photos that were skipped.
    """
    from agegender.mllm.runner import plan_queries, query_samples, write_table

    samples, unreadable = folder_samples(folder)
    run = query_samples(
        plan_queries(samples, ["body"]), None, Path(folder), backend=backend, store=store,
        prompt_version=prompt_version, max_side=max_side, progress=progress,
    )  # fmt: skip
    result = run.results["body"]
    preds = result.predictions.rename(columns={"sample_id": "image", "age_pred": "age", "gender_pred": "gender"})
    table = preds[list(ANNOTATION_COLUMNS)].sort_values("image").reset_index(drop=True)
    write_table(table, Path(out_csv))
    table.attrs["unreadable"] = unreadable
    table.attrs["manifest"] = result.manifest
    return table
