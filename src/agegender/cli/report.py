"""`agegender paper-rows`: which paper row comes from where under a profile or params file."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_paper_rows(args: argparse.Namespace) -> int:
    from agegender.params import load_params, params_from_text
    from agegender.paths import ProjectPaths
    from agegender.profiles import PROFILES_DIR, render
    from agegender.report.paper_rows import format_csv, format_markdown, paper_row_sources

    paths = ProjectPaths.at(args.root)
    if args.profile is not None:
        params = params_from_text(render(paths, args.profile), paths(PROFILES_DIR) / f"{args.profile}.yaml")
        named = f"profile `{args.profile}`"
    else:
        params = load_params(paths(args.params))
        named = f"params file `{args.params}`"
    sources = paper_row_sources(params, paths, None if args.table is None else [args.table])
    print(format_csv(sources) if args.format == "csv" else format_markdown(sources, named), end="")
    return 0


def add_paper_rows_parser(sub: Any) -> None:
    """Register `agegender paper-rows [--profile NAME | PARAMS] [--table N] [--format md|csv]`."""
    pr = sub.add_parser(
        "paper-rows",
        help="every row of the paper's tables with what produces it (a model run, a checkpoint) or why none does",
    )
    source = pr.add_mutually_exclusive_group()
    source.add_argument("--profile", default=None, help="a profile of profiles/ (demo, paper, ...)")
    source.add_argument("params", nargs="?", default="params.yaml", help="params file under the project root")
    pr.add_argument("--table", type=int, default=None, help="one paper table (1-10; default: all)")
    pr.add_argument("--format", choices=("md", "csv"), default="md", help="markdown document (default) or CSV")
    pr.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    pr.set_defaults(func=_cmd_paper_rows)
