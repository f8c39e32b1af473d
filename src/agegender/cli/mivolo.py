"""`agegender export | train-mivolo | mivolo-predict`: the MiVOLO specialized model from the shell."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from agegender.cli.options import parse_image_roots
from agegender.errors import AgegenderError


def _cmd_export(args: argparse.Namespace) -> int:
    from agegender.mivolo.checkpoint import load_checkpoint
    from agegender.mivolo.export import export_onnx, export_torchscript

    if not args.onnx and not args.torchscript:
        raise AgegenderError("nothing to do: give --onnx and/or --torchscript")
    model = load_checkpoint(args.checkpoint, variant=args.variant)
    if args.onnx:
        export_onnx(model, args.onnx, opset=args.opset, atol=args.atol, batch_dynamic=not args.static_batch)
        print(f"ONNX -> {args.onnx} (checked against PyTorch, atol {args.atol:g})")
    if args.torchscript:
        export_torchscript(model, args.torchscript, atol=args.atol)
        print(f"TorchScript -> {args.torchscript} (checked against PyTorch, atol {args.atol:g})")
    return 0


def _cmd_train_mivolo(args: argparse.Namespace) -> int:
    from agegender.cli.mivolo_train import main as train_main

    return train_main(args.rest)


def mivolo_predict_command(args: argparse.Namespace) -> int:
    """Run `agegender mivolo-predict` (arguments as in `add_mivolo_predict_parser`); returns the exit code.

    Finished rows go to `<out>.parts/` while it runs, so an interrupted run resumes; the folder is
    removed once `out` is written. Resuming over rows another checkpoint or other settings made is refused
    (exit 2, naming what differs) unless `--restart` discards them. Exit code 3 (after writing `out`, like
    `agegender query` with failed rows) when images could not be loaded: their rows are `failed`, and the
    images are named.
    """
    from agegender.data.crops import BadImages
    from agegender.data.schema import read_table, validate_samples
    from agegender.errors import IncompleteRunError
    from agegender.files import write_table
    from agegender.mivolo.predict import predict_checkpoint

    samples_path = Path(args.samples)
    samples = validate_samples(read_table(samples_path), source=samples_path)
    if getattr(args, "split", "all") not in (None, "all"):
        samples = samples[samples["split"] == args.split]
    masked = read_table(args.masked) if getattr(args, "masked", None) else None
    out = Path(args.out)
    parts = out.with_name(out.name + ".parts")
    table = predict_checkpoint(
        args.checkpoint,
        samples,
        masked,
        parse_image_roots(args.data_root),
        inputs=args.inputs,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        model_name=args.model_name,
        out=parts,
        progress=not getattr(args, "no_progress", False),
        restart=getattr(args, "restart", False),
    )
    write_table(table, out)
    shutil.rmtree(parts, ignore_errors=True)
    skipped = {k: v for k, v in table.attrs.get("skipped", {}).items() if v}
    note = f" (no crop, so unanswered: {', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else ""
    print(f"{len(table)} predictions -> {out}{note}")
    if table.attrs["bad_images"]["images"]:
        print(BadImages.describe(table.attrs["bad_images"]))
        return IncompleteRunError.exit_code
    return 0


def add_export_parser(sub: Any) -> None:
    """Register `agegender export CHECKPOINT [--onnx F] [--torchscript F]` on the CLI's subparsers."""
    ex = sub.add_parser("export", help="MiVOLO checkpoint -> ONNX and/or TorchScript, checked against PyTorch")
    ex.add_argument("checkpoint")
    ex.add_argument("--onnx", default=None, help="output .onnx file")
    ex.add_argument("--torchscript", default=None, help="output TorchScript file")
    ex.add_argument("--variant", default=None, help="architecture, when the checkpoint does not say")
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--atol", type=float, default=1e-4)
    ex.add_argument("--static-batch", action="store_true")
    ex.set_defaults(func=_cmd_export)


def add_train_mivolo_parser(sub: Any) -> None:
    """Register `agegender train-mivolo ...`: the arguments of `python -m agegender.mivolo.train`, passed on."""
    tm = sub.add_parser("train-mivolo", help="two-stage MiVOLO training (resumable; run under torchrun for DDP)")
    tm.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of python -m agegender.mivolo.train")
    tm.set_defaults(func=_cmd_train_mivolo)


def add_mivolo_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `agegender mivolo-predict --checkpoint CKPT --samples S --data-root R ... --out PRED`.

    `agegender.mivolo.predict` imports no torch at import time, so registering costs the CLI little.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returned.

    Returns:
        The subcommand's parser (its `func` default runs `mivolo_predict_command`).
    """
    from agegender.mivolo.predict import INPUT_CROPS

    parser = subparsers.add_parser("mivolo-predict", help="predict a sample table with a MiVOLO checkpoint")
    parser.add_argument("--checkpoint", required=True, help="MiVOLO checkpoint (official release or trained here)")
    parser.add_argument("--samples", required=True, help="sample table (.parquet or .csv)")
    parser.add_argument(
        "--data-root", required=True, nargs="+", help="the image folder, or DATASET=FOLDER for each data set"
    )
    parser.add_argument("--masked", default=None, help="masked-persons side table (more boxes to black out)")
    parser.add_argument(
        "--inputs", nargs="+", default=["face_body"], choices=list(INPUT_CROPS), help="input kinds (default: face_body)"
    )
    parser.add_argument("--out", required=True, help="prediction table (.parquet or .csv); resumes from <out>.parts/")
    parser.add_argument("--model-name", default="mivolo", help="the `model` column (default: mivolo)")
    parser.add_argument("--split", default="all", help="predict only this split (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--device", default=None, help="torch device: cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--num-workers", type=int, default=0, help="crop worker processes (default: 0, one thread)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard rows in <out>.parts/ that another checkpoint or other settings made (default: refuse to resume)",
    )
    parser.set_defaults(func=mivolo_predict_command)
    return parser
