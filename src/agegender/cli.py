"""`agegender ...`: the package's functions from the shell.

Exit codes: 0 done; 2 bad input (a one-line message naming the file, row and field) or nothing to
do, with no output written; 3 a run that finished but left work undone (MLLM requests that stayed
failed after retries: the message says what was kept and that running it again resumes). A
traceback means a bug in agegender. Outputs are written only after everything succeeded, each
atomically, so a failed command leaves earlier outputs as they were.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from agegender import __version__
from agegender.errors import AgegenderError

STAGES = ("check", "prepare_data", "train_mivolo", "finetune_mllm", "query_mllms", "predict", "evaluate", "report")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from agegender.evaluate import evaluate_files, write_age_groups, write_rows_json
    from agegender.files import atomic_write_text
    from agegender.metrics import flat_metrics

    result = evaluate_files(
        args.samples,
        args.predictions,
        split=None if args.split == "all" else args.split,
        datasets=args.datasets,
        ci=args.ci,
        n_resamples=args.n_resamples,
        ci_level=args.ci_level,
        seed=args.seed,
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
    from agegender import pipeline

    params, paths = pipeline.setup(args.root, args.params)
    if args.name == "query_mllms":
        keys = [args.model] if args.model else list(params.query_mllms.models)
        for key in keys:
            pipeline.query_mllms(params, paths, key)
    else:
        getattr(pipeline, args.name)(params, paths)
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
    from agegender.mivolo.train import main as train_main

    return train_main(args.rest)


def _cmd_stage_deps(args: argparse.Namespace) -> int:
    from agegender.paths import find_root
    from agegender.stage_deps import HINT, deps_lines, stage_code

    root = find_root(args.root)
    stages = [s for s in stage_code(root) if not args.stages or s.stage in args.stages]
    unknown = sorted(set(args.stages) - {s.stage for s in stages})
    if unknown:
        print(f"agegender: error: no stage {', '.join(unknown)} in {root / 'dvc.yaml'}", file=sys.stderr)
        return 2
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `agegender` command."""
    parser = argparse.ArgumentParser(prog="agegender", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"agegender {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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

    st = sub.add_parser("stage", help="run one pipeline stage without its notebook")
    st.add_argument("name", choices=STAGES)
    st.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    st.add_argument("--params", default="params.yaml")
    st.add_argument("--model", default=None, help="query_mllms: one model of query_mllms.models (default: all)")
    st.set_defaults(func=_cmd_stage)

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

    ex = sub.add_parser("export", help="MiVOLO checkpoint -> ONNX and/or TorchScript, checked against PyTorch")
    ex.add_argument("checkpoint")
    ex.add_argument("--onnx", default=None, help="output .onnx file")
    ex.add_argument("--torchscript", default=None, help="output TorchScript file")
    ex.add_argument("--variant", default=None, help="architecture, when the checkpoint does not say")
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--atol", type=float, default=1e-4)
    ex.add_argument("--static-batch", action="store_true")
    ex.set_defaults(func=_cmd_export)

    tm = sub.add_parser("train-mivolo", help="two-stage MiVOLO training (resumable; run under torchrun for DDP)")
    tm.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of python -m agegender.mivolo.train")
    tm.set_defaults(func=_cmd_train_mivolo)

    sd = sub.add_parser("stage-deps", help="the package files each dvc.yaml stage runs: its code deps")
    sd.add_argument("stages", nargs="*", help="stages of dvc.yaml (default: all)")
    sd.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    sd.add_argument("--check", action="store_true", help="compare with dvc.yaml's deps; exit 1 on any difference")
    sd.set_defaults(func=_cmd_stage_deps)

    cm = sub.add_parser("compare-metrics", help="this run's metrics against the committed ones, within tolerance?")
    cm.add_argument("--rev", default="HEAD", help="git revision holding the metrics to compare with (default: HEAD)")
    cm.add_argument("--new", default=None, help="git revision of the fresh metrics (default: the workspace)")
    cm.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    cm.add_argument("--all", action="store_true", help="list every metric, not only those that differ")
    cm.add_argument("--exact", action="store_true", help="same machine: every metric but timing must be equal")
    cm.set_defaults(func=_cmd_compare_metrics)

    from agegender.annotate import add_annotate_parser
    from agegender.mivolo.predict import add_mivolo_predict_parser
    from agegender.mllm.runner import add_merge_parser, add_query_parser

    add_annotate_parser(sub)
    add_mivolo_predict_parser(sub)
    add_query_parser(sub)
    add_merge_parser(sub)
    from agegender.check import add_check_parser

    add_check_parser(sub)
    from agegender.profiles import add_profile_parser

    add_profile_parser(sub)
    from agegender.mllm.cost import add_cost_parser

    add_cost_parser(sub)
    from agegender.mllm.convert import add_convert_parser

    add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agegender` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (AgegenderError, FileNotFoundError) as exc:
        print(f"agegender: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
