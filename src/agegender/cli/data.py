"""`agegender evaluate | stage | sample | stage-deps | compare-metrics | check | profile`: data, stages, checks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agegender.stages import STAGES as _REGISTERED

#: the stages `agegender stage NAME` runs, in pipeline order: `check`, then the registered stages
STAGES = ("check", *_REGISTERED)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from agegender.assurance import assurance_metrics
    from agegender.evaluate import evaluate_files, write_age_groups, write_rows_json
    from agegender.files import atomic_write_text
    from agegender.metrics import flat_metrics
    from agegender.params import AssuranceParams

    result = evaluate_files(
        args.samples,
        args.predictions,
        split=None if args.split == "all" else args.split,
        datasets=args.datasets,
        ci=args.ci,
        n_resamples=args.n_resamples,
        ci_level=args.ci_level,
        seed=args.seed,
        # NIST IR 8525's limits; the pipeline takes them from evaluate.assurance
        extra_metrics=assurance_metrics(AssuranceParams()),
    )
    # everything is computed before the first file is written; each file is replaced atomically
    flat = flat_metrics(result.rows, views=("answered", "common")) if args.flat else None
    write_rows_json(result.rows, args.out)
    if flat is not None:
        atomic_write_text(args.flat, json.dumps(flat, indent=1, sort_keys=True) + "\n")
    if args.age_groups:
        write_age_groups(result.age_groups, args.age_groups)
    print(
        f"{len(result.rows)} rows -> {args.out}"
        + (f" ({result.n_ignored} predictions outside the split ignored)" if result.n_ignored else "")
    )
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from agegender.stages import check, stage
    from agegender.stages.common import setup

    params, paths = setup(args.root, args.params)
    if args.name == check.NAME:
        check.run(params, paths, params_file=args.params)
    elif args.name == "query_mllms":
        keys = [args.model] if args.model else list(params.query_mllms.models)
        for key in keys:
            stage(args.name).run(params, paths, key)
    elif args.name == "finetune_mllm":
        runs = [args.run] if args.run else list(params.finetune_mllm.runs if params.finetune_mllm else {})
        for key in runs:
            stage(args.name).run(params, paths, key)
    else:
        stage(args.name).run(params, paths)
    print(f"stage {args.name} done")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from agegender.data.sampling import nano_sample
    from agegender.data.schema import read_table, validate_samples

    samples = validate_samples(read_table(args.samples), source=args.samples)
    if args.split != "all":
        samples = samples[samples["split"] == args.split]
    if args.dataset:
        samples = samples[samples["dataset"] == args.dataset]
    drawn = nano_sample(
        samples, per_bin=args.per_bin, seed=args.seed, bin_width=args.bin_width, max_age=args.max_age,
        exclude=args.exclude, name=args.name,
    )  # fmt: skip
    out = Path(args.out)
    drawn.to_csv(out, index=False) if out.suffix == ".csv" else drawn.to_parquet(out, index=False)
    print(f"{len(drawn)} samples -> {out}")
    return 0


def _cmd_stage_deps(args: argparse.Namespace) -> int:
    from agegender.paths import find_root
    from agegender.stage_deps import HINT, deps_lines, stage_code, write_deps

    root = find_root(args.root)
    stages = [s for s in stage_code(root) if not args.stages or s.stage in args.stages]
    unknown = sorted(set(args.stages) - {s.stage for s in stages})
    if unknown:
        print(f"agegender: error: no stage {', '.join(unknown)} in {root / 'dvc.yaml'}", file=sys.stderr)
        return 2
    if args.write:
        changed = write_deps(root, [s.stage for s in stages])
        print(f"{root / 'dvc.yaml'}: code deps rewritten for {', '.join(changed)}" if changed else "code deps exact")
        return 0
    if not args.check:
        print("\n".join(deps_lines(stages, root)))
        return 0
    problems = [line for stage in stages for line in stage.problems(root)]
    print("\n".join([*problems, HINT]) if problems else f"{len(stages)} stage(s): code deps exact")
    return 1 if problems else 0


def _cmd_compare_metrics(args: argparse.Namespace) -> int:
    from agegender.paths import find_root
    from agegender.tolerances import compare_metrics, dvc_metrics_diff, format_comparison

    comparisons = compare_metrics(dvc_metrics_diff(find_root(args.root), args.rev, args.new), exact=args.exact)
    print(format_comparison(comparisons, rev=args.rev, show_all=args.all))
    return 1 if any(c.verdict == "OUTSIDE" for c in comparisons) else 0


def _cmd_check(args: argparse.Namespace) -> int:
    from agegender.check import check_params, format_problems, write_fingerprints
    from agegender.params import load_params
    from agegender.paths import ProjectPaths

    paths = ProjectPaths.at(args.root)
    params = load_params(paths(args.params))
    problems = check_params(params, paths, sections=args.section)
    if args.fingerprints:
        files = write_fingerprints(params, paths, paths(args.fingerprints))
        print(f"fingerprints: {len(files)} files in {paths(args.fingerprints)}")
    if problems:
        print(format_problems(problems))
        return 1
    print(f"OK: {problems.n_checks} checks")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from agegender.params import params_from_text
    from agegender.paths import ProjectPaths
    from agegender.profiles import active, available, use

    paths = ProjectPaths.at(args.root)
    if args.name is None:
        name, edited = active(paths)
        state = "none" if name is None else name + (" (edited since)" if edited else "")
        print(f"active: {state}; available: {', '.join(available(paths))}")
        return 0
    target = use(paths, args.name, args.set or (), force=args.force)
    print(f"{target}: profile {args.name} is active")
    if args.no_check:
        return 0
    from agegender.check import check_params, format_problems

    params = params_from_text(target.read_text(), target)
    problems = check_params(params, paths)
    if problems:
        print(f"{len(problems)} problem(s) to fix before `dvc repro` (README: run-book):\n{format_problems(problems)}")
        return 1
    print("check: every configured file is in place; next: dvc repro")
    return 0


def add_evaluate_parser(sub: Any) -> None:
    """Register `agegender evaluate` on the CLI's subparsers."""
    ev = sub.add_parser("evaluate", help="metrics of prediction tables against a sample table")
    ev.add_argument("--samples", required=True, help="sample table (.parquet or .csv)")
    ev.add_argument("--predictions", required=True, nargs="+", help="prediction tables or folders of them")
    ev.add_argument("--out", required=True, help="output JSON: {'rows': [...]}")
    ev.add_argument("--split", default="test", help="evaluated split, or 'all' (default: test)")
    ev.add_argument("--datasets", nargs="*", default=None, help="evaluated data sets (default: all)")
    ev.add_argument("--ci", action="store_true", help="add bootstrap confidence intervals")
    ev.add_argument("--n-resamples", type=int, default=1000)
    ev.add_argument("--ci-level", type=float, default=0.95)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--flat", help="also write DESIGN.md's flat metrics JSON here")
    ev.add_argument("--age-groups", help="also write MAE per 5-year age group (CSV) here")
    ev.set_defaults(func=_cmd_evaluate)


def add_stage_parser(sub: Any) -> None:
    """Register `agegender stage NAME` on the CLI's subparsers."""
    st = sub.add_parser("stage", help="run one pipeline stage without its notebook")
    st.add_argument("name", choices=STAGES)
    st.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    st.add_argument("--params", default="params.yaml")
    st.add_argument("--model", default=None, help="query_mllms: one model of query_mllms.models (default: all)")
    st.add_argument("--run", default=None, help="finetune_mllm: one run of finetune_mllm.runs (default: all)")
    st.set_defaults(func=_cmd_stage)


def add_sample_parser(sub: Any) -> None:
    """Register `agegender sample` on the CLI's subparsers."""
    sa = sub.add_parser("sample", help="NanoLAGENDA-style subset: N samples per 5-year age bin")
    sa.add_argument("--samples", required=True)
    sa.add_argument("--out", required=True, help=".parquet or .csv")
    sa.add_argument("--per-bin", type=int, required=True)
    sa.add_argument("--seed", type=int, default=1234)
    sa.add_argument("--split", default="test")
    sa.add_argument("--dataset", default=None)
    sa.add_argument("--bin-width", type=float, default=5.0)
    sa.add_argument("--max-age", type=float, default=90.0)
    sa.add_argument("--exclude", default=None, help="file of sample ids to remove (e.g. refusals)")
    sa.add_argument("--name", default=None, help="name of the new data set")
    sa.set_defaults(func=_cmd_sample)


def add_stage_deps_parser(sub: Any) -> None:
    """Register `agegender stage-deps` on the CLI's subparsers."""
    sd = sub.add_parser("stage-deps", help="the package files each dvc.yaml stage runs: its code deps")
    sd.add_argument("stages", nargs="*", help="stages of dvc.yaml (default: all)")
    sd.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    mode = sd.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with dvc.yaml's deps; exit 1 on any difference")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps in place (comments kept)")
    sd.set_defaults(func=_cmd_stage_deps)


def add_compare_metrics_parser(sub: Any) -> None:
    """Register `agegender compare-metrics` on the CLI's subparsers."""
    cm = sub.add_parser("compare-metrics", help="this run's metrics against the committed ones, within tolerance?")
    cm.add_argument("--rev", default="HEAD", help="git revision holding the metrics to compare with (default: HEAD)")
    cm.add_argument("--new", default=None, help="git revision of the fresh metrics (default: the workspace)")
    cm.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    cm.add_argument("--all", action="store_true", help="list every metric, not only those that differ")
    cm.add_argument("--exact", action="store_true", help="same machine: every metric but timing must be equal")
    cm.set_defaults(func=_cmd_compare_metrics)


def add_check_parser(sub: Any) -> None:
    """Register `agegender check` on the CLI's subparsers."""
    from agegender.check import SECTIONS

    parser = sub.add_parser("check", help="check every file and setting params.yaml names; list all problems")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    parser.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    parser.add_argument(
        "--section", action="extend", nargs="+", choices=SECTIONS, default=None, help="check only these sections"
    )
    parser.add_argument("--fingerprints", default=None, help="also write the stages' fingerprints to this folder")
    parser.set_defaults(func=_cmd_check)


def add_profile_parser(sub: Any) -> None:
    """Register `agegender profile [NAME] [--set key=value ...] [--force] [--no-check]`."""
    pr = sub.add_parser("profile", help="make a profile (profiles/NAME.yaml) the active params.yaml, then check it")
    pr.add_argument("name", nargs="?", default=None, help="demo, paper, ... (none: show the active one)")
    pr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. predict.batch_size=128")
    pr.add_argument("--force", action="store_true", help="overwrite a params.yaml with hand edits")
    pr.add_argument("--no-check", action="store_true", help="do not check the configured files")
    pr.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    pr.set_defaults(func=_cmd_profile)
