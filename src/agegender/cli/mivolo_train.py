"""`python -m agegender.mivolo.train` (also under `torchrun`, and as `agegender train-mivolo`): its parser.

Kept apart from `agegender.cli.mivolo` so that the `train_mivolo` stage, which runs this entry point, depends on
this parser only, not on every MiVOLO command.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from agegender.cli.options import parse_image_roots
from agegender.errors import InputError


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agegender.mivolo.train` (or under `torchrun`): train from a sample table and a config file."""
    from agegender.data.schema import read_table, validate_samples
    from agegender.mivolo import train

    parser = argparse.ArgumentParser(
        prog="python -m agegender.mivolo.train", description=(train.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--samples", required=True, help="sample table (.parquet or .csv)")
    parser.add_argument("--masked", help="masked-persons side table (.parquet or .csv)")
    parser.add_argument("--image-root", nargs="+", required=True, help="FOLDER, or NAME=FOLDER per data set")
    parser.add_argument("--config", help="YAML with the settings (a params.yaml: its train_mivolo section)")
    parser.add_argument("--section", help="section of the YAML to read (default: train_mivolo if present)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--out", help="output folder (default: out_dir of the config)")
    parser.add_argument("--stop-after", type=int, help="stop after this many epochs (resume later)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = train.read_config(args.config, args.section, args.set)
        samples = validate_samples(read_table(args.samples), source=args.samples)
        masked = read_table(args.masked) if args.masked else None
        result = train.train_mivolo(
            samples,
            masked,
            parse_image_roots(args.image_root, "--image-root"),
            config,
            args.out,
            progress=not args.no_progress,
            stop_after=args.stop_after,
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if train.DistEnv.from_env().main:
        brief = {k: v for k, v in result.items() if k != "history"}
        print(json.dumps(train.plain_data(brief), indent=2))
    return 0
