"""`agegender annotate FOLDER --out CSV`: label a folder of photos with a specialized model or an MLLM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agegender.errors import InputError


def _predictor_args(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(model name or import path, options) from `--predictor`, `--checkpoint`, `--mivolo`, `--predictor-option`."""
    import yaml

    name = args.predictor
    options: dict[str, Any] = {}
    for item in args.predictor_option or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"{item!r} is not KEY=VALUE", field="--predictor-option")
        options[key] = yaml.safe_load(raw)
    if args.mivolo:
        if name not in (None, "mivolo") or args.checkpoint:
            raise InputError(
                "--mivolo CKPT is --predictor mivolo --checkpoint CKPT: give one of them", field="--mivolo"
            )
        name, options["checkpoint"] = "mivolo", args.mivolo
    elif args.checkpoint:
        options["checkpoint"] = args.checkpoint
    if name is None:
        raise InputError("give --predictor NAME (or --mivolo CKPT)", field="--predictor")
    return name, options


def annotate_command(args: argparse.Namespace) -> int:
    """Run `agegender annotate` with a specialized model (arguments as in `add_annotate_parser`)."""
    from agegender.annotate import annotate_folder, build_face_detector, load_predictor
    from agegender.mivolo.detect import Detector, YoloDetector

    name, options = _predictor_args(args)
    model = load_predictor(name, options, device=args.device)
    if args.detector:
        detector: Detector | None = YoloDetector(args.detector, device=args.device)
    else:
        detector = build_face_detector(args.face_detector)
    try:
        table = annotate_folder(
            args.folder,
            model,
            args.out,
            detector=detector,
            batch_size=args.batch_size,
            progress=not getattr(args, "no_progress", False),
        )
    finally:
        model.close()
    c = table.attrs["counts"]
    failed = f", {c['failed']} the model could not take" if c["failed"] else ""
    print(
        f"{c['processed']} images annotated ({c['done_before']} already in {args.out}): {c['predicted']} people "
        f"predicted, {c['no_crop']} without a usable crop{failed}, {c['no_detection']} images with nobody found, "
        f"{c['unreadable']} unreadable images skipped -> {args.out}"
    )
    return 0


def annotate_command_mllm(args: argparse.Namespace) -> int:
    """Run `agegender annotate FOLDER --backend NAME --model M --out CSV` (see `add_mllm_annotate_arguments`)."""
    from agegender.cli.mllm import backend_options
    from agegender.mllm.backends.base import GenerationParams
    from agegender.mllm.runner import BackendSpec
    from agegender.mllm.tools.annotate import annotate_folder_mllm

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


def dispatch_annotate(args: argparse.Namespace) -> int:
    """Run the specialized-model or the MLLM annotation, whichever the arguments ask for (exactly one)."""
    specialized = bool(getattr(args, "mivolo", None) or getattr(args, "predictor", None))
    if specialized == bool(args.backend):
        message = "give either --predictor NAME (or --mivolo CKPT) or --backend NAME --model M"
        raise InputError(message, field="annotate")
    if args.backend:
        if not args.model:
            raise InputError("--backend needs --model", field="model")
        return annotate_command_mllm(args)
    return annotate_command(args)


def add_mllm_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    """The MLLM options of `agegender annotate` (the specialized-model ones are in `add_annotate_parser`)."""
    from agegender.cli.mllm import add_insecure_http_argument

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


def add_annotate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `agegender annotate FOLDER --predictor NAME [--checkpoint CKPT] [--detector WEIGHTS] --out CSV ...`.

    `agegender.annotate` imports no torch at import time, so registering costs the CLI little.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returned.

    Returns:
        The subcommand's parser (its `func` default runs `dispatch_annotate`).
    """
    from agegender.annotate import NO_FACE_DETECTOR
    from agegender.specialized import MODELS

    parser = subparsers.add_parser(
        "annotate",
        help="label a folder of photos with a specialized model (--predictor) or an MLLM (--backend): a CSV with "
        "age and gender",
    )
    parser.add_argument("folder", help="folder of photos (jpg, jpeg, png, webp; searched recursively)")
    parser.add_argument(
        "--predictor",
        default=None,
        help=f"a specialized model: {', '.join(sorted(MODELS))}, or module:Class (agegender.specialized)",
    )
    parser.add_argument("--checkpoint", default=None, help="the predictor's checkpoint (mivolo)")
    parser.add_argument("--mivolo", default=None, help="MiVOLO checkpoint: the same as --predictor mivolo --checkpoint")
    parser.add_argument(
        "--predictor-option", action="append", default=None, metavar="KEY=VALUE", help="a predictor option (repeatable)"
    )
    parser.add_argument(
        "--detector",
        default=None,
        help="ultralytics YOLO weights with classes 'person' and 'face' (pip install 'agegender[detect]')",
    )
    parser.add_argument(
        "--face-detector",
        default="mtcnn",
        help="without --detector: the offline face detector that finds faces (agegender.faces; default: mtcnn); "
        f"'{NO_FACE_DETECTOR}': every image is one person (one face for a face-only predictor)",
    )
    parser.add_argument("--out", required=True, help="output CSV; images already in it are skipped (resume)")
    parser.add_argument("--batch-size", type=int, default=32, help="the predictor's batch size (default: 32)")
    parser.add_argument("--device", default=None, help="torch device: cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_mllm_annotate_arguments(parser)
    parser.set_defaults(func=dispatch_annotate)
    return parser
