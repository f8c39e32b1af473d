"""`agegender annotate FOLDER --backend ... --model ...`: label unlabelled photos with an MLLM.

The paper's motivating use: an MLLM labels new data. Each photo is taken as one person (the whole
image is the body crop the paper's prompt is asked about); answers go through the response store like
every other query, so an interrupted run resumes and a rerun sends nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from agegender.data.crops import image_size
from agegender.data.schema import validate_samples
from agegender.errors import InputError
from agegender.mllm.backends.base import Backend
from agegender.mllm.prompt import PROMPT_VERSION
from agegender.mllm.runner import BackendSpec
from agegender.mllm.store import ResponseStore

ANNOTATION_COLUMNS = ("image", "age", "gender", "status", "raw_answer")


def folder_samples(folder: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A sample table with one person per photo (the whole image as the person box).

    Returns:
        The table, and the photos that could not be read (skipped, reported by the caller).
    """
    from agegender.annotate import list_images

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


def annotate_command_mllm(args: argparse.Namespace) -> int:
    """`agegender annotate FOLDER --backend NAME --model M --out CSV` (see `add_mllm_annotate_arguments`)."""
    from agegender.mllm.backends.base import GenerationParams
    from agegender.mllm.runner import backend_options

    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    backend = BackendSpec(args.backend, args.model, params, backend_options(args))
    out = Path(args.out)
    store_dir = Path(args.store) if args.store else out.parent / "mllm_responses"
    table = annotate_folder_mllm(
        args.folder, backend, store_dir, out, max_side=args.max_side, progress=not args.no_progress
    )
    counts = table["status"].value_counts().to_dict()
    m = table.attrs["manifest"]
    print(
        f"{len(table)} photos -> {out} ({counts}; {m['requests_sent']} requests, {m['cache_hits']} cached; "
        f"{len(table.attrs['unreadable'])} unreadable photos skipped)"
    )
    return 0


def add_mllm_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    """The MLLM options of `agegender annotate` (the specialized-model ones live in `agegender.annotate`)."""
    from agegender.mllm.runner import add_insecure_http_argument

    group = parser.add_argument_group("with an MLLM instead of a specialized model")
    group.add_argument("--backend", default=None, help="registered MLLM backend: openai, transformers, vllm, ...")
    group.add_argument("--model", default=None, help="model id (server) or folder (local)")
    group.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (openai backend)")
    add_insecure_http_argument(group)
    group.add_argument("--concurrency", type=int, default=None, help="requests in flight (openai backend)")
    group.add_argument("--api-key-env", default=None, help="NAME of the environment variable holding the API key")
    group.add_argument("--option", action="append", default=None, help="backend option name=value (repeatable)")
    group.add_argument("--store", default=None, help="response store folder (default: mllm_responses/ beside --out)")
    group.add_argument("--max-side", type=int, default=None, help="downscale photos to this longer side")
    group.add_argument("--max-new-tokens", type=int, default=32)


def dispatch_annotate(args: argparse.Namespace, specialized_command: Any) -> int:
    """Run the specialized-model or the MLLM annotation, whichever the arguments ask for (exactly one)."""
    specialized = bool(getattr(args, "mivolo", None) or getattr(args, "predictor", None))
    if specialized == bool(args.backend):
        message = "give either --predictor NAME (or --mivolo CKPT) or --backend NAME --model M"
        raise InputError(message, field="annotate")
    if args.backend:
        if not args.model:
            raise InputError("--backend needs --model", field="model")
        return annotate_command_mllm(args)
    return specialized_command(args)
