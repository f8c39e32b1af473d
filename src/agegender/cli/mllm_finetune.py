"""`python -m agegender.mllm.finetune` (one process, or under torchrun / accelerate launch): its parser.

Kept apart from `agegender.cli.mllm` so that the `finetune_mllm` stage, which runs this entry point in several
processes, depends on this parser only, not on every MLLM command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agegender.cli.options import parse_image_roots
from agegender.errors import InputError


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agegender.mllm.finetune ...` (also under torchrun / accelerate launch)."""
    from agegender.data.schema import read_table, validate_samples
    from agegender.mllm.finetune import train

    p = argparse.ArgumentParser(
        prog="python -m agegender.mllm.finetune", description=(train.__doc__ or "").split("\n")[0]
    )
    p.add_argument("--samples", required=True, help="sample table (.parquet or .csv)")
    p.add_argument("--masked", default=None, help="the reader's masked-persons side table")
    p.add_argument("--image-root", required=True, nargs="+", help="image folder, or dataset=folder pairs")
    p.add_argument("--base-model", required=True, help="local HF model folder to fine-tune")
    p.add_argument("--out", required=True, help="output folder (resumed when it holds checkpoints)")
    p.add_argument("--config", default=None, help="YAML with FinetuneConfig keys (or params.yaml with --section)")
    p.add_argument("--section", default=None, help="dotted section of --config, e.g. finetune_mllm.runs.tiny_llava_ft")
    p.add_argument("--set", action="append", default=[], help="override key=value (YAML value)")
    p.add_argument("--split", default="train", help="split to train on, or 'all' (default: train)")
    p.add_argument("--datasets", nargs="*", default=None, help="data sets to train on (default: all)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        config = train.read_config(args.config, args.section, args.set)
        samples = validate_samples(read_table(args.samples), source=args.samples)
        context = samples
        if args.split != "all":
            samples = samples[samples["split"] == args.split].reset_index(drop=True)
        if args.datasets:
            samples = samples[samples["dataset"].isin(args.datasets)].reset_index(drop=True)
        masked = read_table(args.masked) if args.masked else None
        summary = train.finetune(
            samples,
            masked,
            parse_image_roots(args.image_root, "--image-root"),
            args.base_model,
            args.out,
            config,
            progress=not args.no_progress,
            context=context,
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary:
        print(
            f"{summary['records']} records, {summary['steps']} steps, loss {summary['train_loss']:.4f}, "
            f"{summary.get('train_samples_per_second') or 0:.2f} samples/s x {summary['world_size']} processes -> "
            f"{summary['final']} ({len(summary['checkpoints'])} indexed models)"
        )
    return 0
