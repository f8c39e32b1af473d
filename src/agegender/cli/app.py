"""`agegender ...`: the package's functions from the shell.

Exit codes: 0 done; 2 bad input (a one-line message naming the file, row and field) or nothing to
do, with no output written; 3 a run that finished but left work undone (MLLM requests that stayed
failed after retries: the message says what was kept and that running it again resumes). A
traceback means a bug in agegender. Outputs are written only after everything succeeded, each
atomically, so a failed command leaves earlier outputs as they were.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agegender import __version__
from agegender.cli import annotate, data, mivolo, mllm, report
from agegender.errors import AgegenderError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `agegender` command: every command group's subcommands, in `--help` order."""
    parser = argparse.ArgumentParser(prog="agegender", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"agegender {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_evaluate_parser(sub)
    data.add_stage_parser(sub)
    data.add_sample_parser(sub)
    mivolo.add_export_parser(sub)
    mivolo.add_train_mivolo_parser(sub)
    data.add_stage_deps_parser(sub)
    data.add_compare_metrics_parser(sub)
    annotate.add_annotate_parser(sub)
    mivolo.add_mivolo_predict_parser(sub)
    mllm.add_query_parser(sub)
    mllm.add_merge_parser(sub)
    data.add_check_parser(sub)
    data.add_profile_parser(sub)
    report.add_paper_rows_parser(sub)
    mllm.add_cost_parser(sub)
    mllm.add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agegender` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AgegenderError, FileNotFoundError) as exc:
        print(f"agegender: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
