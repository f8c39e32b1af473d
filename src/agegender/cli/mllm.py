"""`agegender query | merge | cost | convert-llava`, and the backend options every MLLM command shares."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.cli.options import parse_image_roots
from agegender.errors import InputError

if TYPE_CHECKING:
    from agegender.mllm.tools.cost import CostEstimate


# ---------------------------------------------------------------------------------------------------------------
# Backend options (`query`, `annotate --backend`)


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def backend_options(args: argparse.Namespace) -> Any:
    """The backend's typed options from the `query` arguments (`--base-url`, `--allow-insecure-http`,
    `--concurrency`, `--api-key-env`, `--option`), loaded as params.yaml's are (`load_backend_options`), so a
    misspelt or bad option gets the same message as in params, without the key path, before anything runs.

    The API key itself never passes through here: only the NAME of the environment variable that holds it.

    Returns:
        The instance of `--backend`'s options class (a mapping for a backend kept outside agegender).

    Raises:
        InputError: a malformed `--option`, a secret on the command line, an `--api-key-env` variable that is not
            set, or an unknown or bad option (its `field`).
    """
    from agegender.mllm.backend_options import load_backend_options
    from agegender.mllm.runner import SECRET_KEY_NAME

    options: dict[str, Any] = {}
    for item in args.option or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--option {item!r}: expected name=value", field="option")
        if SECRET_KEY_NAME.search(name):
            raise InputError(
                f"--option {name}: secrets are never given on the command line; use --api-key-env VAR", field="option"
            )
        options[name.strip()] = _option_value(value)
    if args.base_url:
        options["base_url"] = args.base_url
    if args.allow_insecure_http:
        options["allow_insecure_http"] = True  # the openai backend decides whether the URL needs it
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if args.api_key_env:
        if args.api_key_env not in os.environ:
            raise InputError(f"environment variable {args.api_key_env} (--api-key-env) is not set", field="api_key_env")
        options["api_key_env"] = args.api_key_env
    return load_backend_options(args.backend, options)


def add_insecure_http_argument(parser: Any) -> None:
    """`--allow-insecure-http`, for every command that takes `--base-url` (read by `backend_options`).

    The flag exists so that sending the key and the photos in clear text to another host is a decision the user
    wrote down, never a default: the openai backend refuses such a base_url without it.
    """
    from agegender.mllm.backend_options import INSECURE_HTTP_FLAG

    parser.add_argument(
        INSECURE_HTTP_FLAG,
        action="store_true",
        help="accept a plain http:// --base-url that is not this machine's loopback (key and photos unencrypted)",
    )


# ---------------------------------------------------------------------------------------------------------------
# `agegender query`, `agegender merge`


def _cmd_query(args: argparse.Namespace) -> int:
    from agegender.data.schema import read_table, validate_samples
    from agegender.mllm.backends.base import GenerationParams
    from agegender.mllm.prompt import get_prompt
    from agegender.mllm.runner import (
        BackendSpec,
        parse_shard,
        plan_queries,
        query_samples,
        require_samples,
        write_run,
    )

    table = validate_samples(read_table(args.samples), source=args.samples)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    plan = plan_queries(
        table, [args.input], split=None if args.split == "all" else args.split, datasets=args.datasets or None,
        shard=shard, source=args.samples,
    )  # fmt: skip
    selection = (
        "the table has no data rows"
        if table.empty
        else f"none in split {args.split!r}" + (f" of data sets {list(args.datasets)}" if args.datasets else "")
    )
    require_samples(plan.sample_ids(), source=args.samples, selection=selection)
    masked = read_table(args.masked) if args.masked else None
    roots = parse_image_roots(args.data_root)
    get_prompt(args.prompt_version)
    detail = None if args.detail == "none" else args.detail
    params = GenerationParams(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed, n=1, detail=detail
    )
    out = Path(args.out)
    store_dir = Path(args.store) if args.store else out.parent / "mllm_responses"
    run = query_samples(
        plan, masked, roots, backend=BackendSpec(args.backend, args.model, params, backend_options(args)),
        store=store_dir, store_tag=f"s{shard[0] + 1}of{shard[1]}", prompt_version=args.prompt_version,
        max_side=args.max_side, model_name=args.model_name, progress=not args.quiet, max_failed=args.max_failed,
        budget_name="--max-failed",
    )  # fmt: skip
    result, outcome = run.results[args.input], run.outcome
    outcome.check_answered(source=args.samples, out=out, store=store_dir, rerun="the same command")
    preds, manifest = write_run(result, out, args.manifest)
    m = result.manifest
    counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
    print(
        f"{m['rows']} rows -> {preds} ({counts}; {m['requests_sent']} requests, {m['cache_hits']} cached, "
        f"{m['no_crop']} without a {args.input} crop); manifest -> {manifest}"
    )
    if m["bad_images"]["images"]:
        from agegender.data.crops import BadImages

        print(BadImages.describe(m["bad_images"]))
    note = outcome.check_failures(out=preds, store=store_dir, rerun="the same command")
    if note is not None:
        print(f"agegender: note: {note}", file=sys.stderr)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from agegender.files import write_json
    from agegender.mllm.runner import default_manifest_path, merge_manifests, merge_predictions, prediction_files

    merged = merge_predictions(args.predictions, args.out)
    line = f"{len(merged)} rows from {len(prediction_files(args.predictions))} files -> {args.out}"
    if args.manifests:
        manifest = merge_manifests(args.manifests)
        path = write_json(manifest, args.manifest_out or default_manifest_path(args.out))
        line += f"; manifest -> {path}" + ("" if manifest["complete"] else " (NOT every shard is present)")
    print(line)
    return 0


def add_query_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `agegender query` to a subparsers object (from `ArgumentParser.add_subparsers`).

    The command sets `func` (returns the exit code). API keys are read by the backend from the environment
    variable named by `--api-key-env`; there is deliberately no option that takes a key.

    Exit codes (through `agegender.cli.main`): 0 done; 2 bad input, or nothing to do (no sample selected, no
    crop), with nothing written; 3 more rows stayed `failed` after retries than `--max-failed` allows (the
    table and manifest are written, a summary says why and how to resume), or no request was answered at all
    (nothing written).
    """
    from agegender.mllm.prompt import PROMPT_VERSION
    from agegender.mllm.runner import MLLM_INPUTS

    p = subparsers.add_parser(
        "query",
        help="ask an MLLM for [gender; age] on every sample (resumable, shardable)",
        description="Zero-shot MLLM queries with the paper's prompt; answers are stored and reused.",
    )
    p.add_argument("--samples", required=True, help="sample table (.parquet or .csv)")
    p.add_argument("--data-root", required=True, nargs="+", help="image folder, or dataset=folder pairs")
    p.add_argument("--masked", default=None, help="the reader's masked-persons side table (for body_wo_face)")
    p.add_argument("--input", required=True, choices=MLLM_INPUTS, help="crop sent to the model")
    p.add_argument("--backend", required=True, help="registered backend: openai, transformers, vllm, ...")
    p.add_argument("--model", required=True, help="model id (server) or folder (local)")
    p.add_argument("--model-name", default=None, help="name in the prediction table's model column")
    p.add_argument("--out", required=True, help="prediction table (.parquet or .csv)")
    p.add_argument("--manifest", default=None, help="run manifest (default: <out>.manifest.json)")
    p.add_argument("--store", default=None, help="response store folder (default: mllm_responses/ beside --out)")
    p.add_argument("--shard", default=None, help="i/n, 1-based: run the i-th of n shards")
    p.add_argument("--split", default="test", help="split to query, or 'all' (default: test)")
    p.add_argument("--datasets", nargs="*", default=None, help="data sets to query (default: all)")
    p.add_argument("--max-side", type=int, default=None, help="downscale crops to this longer side (default: none)")
    p.add_argument("--prompt-version", default=PROMPT_VERSION, help=f"registered prompt (default: {PROMPT_VERSION})")
    p.add_argument("--base-url", default=None, help="server URL (OpenAI-compatible backends)")
    add_insecure_http_argument(p)
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (server backends)")
    p.add_argument("--api-key-env", default=None, help="NAME of the environment variable holding the API key")
    p.add_argument("--option", action="append", default=None, help="backend option name=value (JSON values)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the paper's (and cacheable)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=1234, help="sent where the endpoint takes it (paper: 1234)")
    p.add_argument("--detail", default="high", choices=("high", "low", "auto", "none"), help="OpenAI image detail")
    p.add_argument(
        "--max-failed",
        default="0",
        help="rows that may stay failed after retries: a count N or a percentage P%% of the rows (default 0). More "
        "end the run with exit code 3 after writing what was answered; a run that answered nothing writes nothing "
        "and ends with 3 too",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_query)
    return p


def add_merge_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `agegender merge` (join shard prediction tables, and optionally their manifests)."""
    p = subparsers.add_parser("merge", help="join shard prediction tables (and manifests) into one")
    p.add_argument("--predictions", required=True, nargs="+", help="shard prediction tables or folders of them")
    p.add_argument("--out", required=True, help="merged table (.parquet or .csv)")
    p.add_argument("--manifests", nargs="*", default=None, help="shard manifests to merge too")
    p.add_argument("--manifest-out", default=None, help="merged manifest (default: <out>.manifest.json)")
    p.set_defaults(func=_cmd_merge)
    return p


# ---------------------------------------------------------------------------------------------------------------
# `agegender cost`


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _print_estimates(estimates: Mapping[str, CostEstimate], args: argparse.Namespace) -> None:
    for name, estimate in estimates.items():
        print(estimate.table(title=name))
        seconds = estimate.duration_s(
            concurrency=args.concurrency, latency_s=args.latency_s, rpm=args.rpm, tpm=args.tpm
        )
        print(
            f"time: about {_hours(seconds)} ({estimate.requests:,} requests, concurrency {args.concurrency}, "
            f"{args.latency_s:g} s per request" + (f", {args.rpm:g} RPM" if args.rpm else "")
            + (f", {args.tpm:g} TPM" if args.tpm else "") + ")\n"
        )  # fmt: skip


def _cmd_cost(args: argparse.Namespace) -> int:
    from agegender.mllm.tools.cost import estimate_cost, estimate_params

    options: dict[str, Any] = {
        "price_in": args.price_in,
        "price_out": args.price_out,
        "output_tokens": args.output_tokens,
        "text_tokens": args.text_tokens,
        "upscale": args.upscale,
        "progress": not args.quiet,
    }
    if args.params is not None:
        if args.samples is not None:
            raise InputError("give either --params or --samples, not both", field="params")
        from agegender.stages.common import setup

        params, paths = setup(args.root, args.params)
        estimates = estimate_params(params, paths, model_key=args.model_key, model=args.model, **options)
    else:
        from agegender.data.schema import read_table, validate_samples
        from agegender.mllm.runner import plan_queries

        if args.samples is None or not args.data_root:
            raise InputError("give --params, or --samples with --data-root", field="samples")
        samples = validate_samples(read_table(args.samples), source=args.samples)
        plan = plan_queries(
            samples, args.input, split=None if args.split == "all" else args.split, datasets=args.datasets,
            source=args.samples,
        )  # fmt: skip
        masked = read_table(args.masked) if args.masked else None
        detail = None if args.detail == "none" else args.detail
        estimate = estimate_cost(
            plan, masked, parse_image_roots(args.data_root), model=args.model or "gpt-4o", detail=detail,
            max_side=args.max_side, prompt_version=args.prompt_version, context=samples, **options,
        )  # fmt: skip
        estimates = {estimate.model: estimate}
    _print_estimates(estimates, args)
    if args.json:
        from agegender.files import write_json

        write_json({name: e.as_dict() for name, e in estimates.items()}, args.json)
        print(f"-> {args.json}")
    return 0


def add_cost_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `agegender cost` (API cost and time of a zero-shot run, from the real crop sizes)."""
    from agegender.mllm.prompt import PROMPT_VERSION
    from agegender.mllm.runner import MLLM_INPUTS
    from agegender.mllm.tools.cost import DEFAULT_OUTPUT_TOKENS

    p = subparsers.add_parser(
        "cost",
        help="API cost and time of a zero-shot run through OpenAI, from the real crop sizes",
        description="Tokens, USD and time of the queries a run would send (no request is sent). Either "
        "--params (the query_mllms models of a params file, over the prepared data) or --samples/--data-root.",
    )
    p.add_argument("--params", default=None, help="params file: price its query_mllms models with backend openai")
    p.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    p.add_argument("--model-key", default=None, help="one entry of query_mllms.models (default: the openai ones)")
    p.add_argument("--samples", default=None, help="sample table (.parquet or .csv), instead of --params")
    p.add_argument("--data-root", nargs="+", default=None, help="image folder, or dataset=folder pairs")
    p.add_argument("--masked", default=None, help="the reader's masked-persons side table (for body_wo_face)")
    p.add_argument("--datasets", nargs="*", default=None, help="data sets to count (default: all)")
    p.add_argument("--split", default="test", help="split to count, or 'all' (default: test)")
    p.add_argument(
        "--input",
        nargs="+",
        choices=MLLM_INPUTS,
        default=["body", "body_wo_face"],
        help="input kinds (default: the paper's)",
    )
    p.add_argument("--model", default=None, help="OpenAI model id to price (default: gpt-4o; --params: each entry's)")
    p.add_argument("--detail", default="high", choices=("high", "low", "auto", "none"), help="image detail sent")
    p.add_argument("--max-side", type=int, default=None, help="the run's downscale (default: none, as the paper)")
    p.add_argument("--prompt-version", default=PROMPT_VERSION)
    p.add_argument(
        "--price-in",
        type=float,
        default=None,
        help="USD per million input tokens (default: the dated price table mllm/tools/prices.csv)",
    )
    p.add_argument(
        "--price-out", type=float, default=None, help="USD per million output tokens (default: the dated price table)"
    )
    p.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS, help="tokens per answer (default 8)")
    p.add_argument("--text-tokens", type=int, default=None, help="exact text tokens per request (prompt + framing)")
    p.add_argument("--upscale", action="store_true", help="the tile rule's literal reading: enlarge small crops")
    p.add_argument("--concurrency", type=int, default=8, help="time estimate: requests in flight (default 8)")
    p.add_argument("--latency-s", type=float, default=3.0, help="time estimate: seconds per request (default 3)")
    p.add_argument("--rpm", type=float, default=None, help="time estimate: the account's requests per minute")
    p.add_argument("--tpm", type=float, default=None, help="time estimate: the account's tokens per minute")
    p.add_argument("--json", default=None, help="also write the estimates as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cost)
    return p


# ---------------------------------------------------------------------------------------------------------------
# `agegender convert-llava`


def _cmd_convert(args: argparse.Namespace) -> int:
    from agegender.mllm.tools.convert import convert_llava

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = convert_llava(
        args.src,
        args.out,
        vision_tower=args.vision_tower,
        dtype=args.dtype,
        overwrite=args.overwrite,
        verify=not args.no_verify,
    )
    record = json.loads((out / "conversion.json").read_text())
    checked = f", verified {record['verified_tensors']} tensors" if record["verified"] else ", not verified"
    print(f"llava-hf folder -> {out} ({record['dtype']}{checked})")
    return 0


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `agegender convert-llava` to a subparsers object (from `ArgumentParser.add_subparsers`)."""
    from agegender.mllm.tools import convert

    p = subparsers.add_parser(
        "convert-llava",
        help="original LLaVA-1.5 / ShareGPT4V checkpoint -> Hugging Face llava-hf folder (verified)",
        description=(convert.__doc__ or "").splitlines()[0],
    )
    p.add_argument("src", help="original checkpoint folder (config.json with mm_* keys, weights, tokenizer)")
    p.add_argument("out", help="output folder (llava-hf layout)")
    p.add_argument(
        "--vision-tower",
        default=None,
        help="CLIP vision folder (ShareGPT4V: Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12, downloaded); "
        "default: the checkpoint's own tower, else mm_vision_tower if it is local or cached",
    )
    p.add_argument("--dtype", default="auto", choices=["auto", *convert.DTYPES], help="default: the checkpoint's own")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--no-verify", action="store_true", help="skip reloading the output and comparing every tensor")
    p.set_defaults(func=_cmd_convert)
    return p
