"""Stage `query_mllms`: each MLLM of `query_mllms.models`, zero-shot, over the study's samples (one DVC stage per
model, `query_mllms@<key>`); its checks (model folders, backends, API settings) and fingerprints (one per model)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.data.prepare import SAMPLES_FILE, load_prepared
from agegender.files import RUN_LOG_FILE, atomic_write_text, write_run_log
from agegender.params import MllmParams, Params, as_dict
from agegender.paths import ProjectPaths
from agegender.stages.common import write_metrics, write_predictions

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "query_mllms"
#: backends that load a local model folder (checked as a Hugging Face model folder, fingerprinted by content)
LOCAL_BACKENDS = ("transformers", "vllm")


def run(params: Params, paths: ProjectPaths, model_key: str, *, progress: bool = True) -> dict:
    """Stage `query_mllms@<model_key>`: one MLLM, zero-shot with the paper's prompt, over the study's samples.

    Writes `<query_mllms.out>/<model_key>/`: `predictions.parquet` (prediction table), `manifest.json` (what was
    asked and answered), `run-log.json` (how this run went: requests sent, answers reused, timings), the
    response store `store/` (kept between runs, so a rerun sends only what is missing) and, in the demo
    profile, the tiny model it builds (`model/`). Local models marked `serve` are queried through the
    project's OpenAI-compatible server on loopback, started and stopped here.

    Endings as for `agegender query` (`agegender.mllm.runner.RunOutcome`): no sample to ask is an `InputError`
    before anything starts; if no request was answered nothing is written; if more rows stay `failed` than the
    model's `max_failed` allows, the outputs are written and then `IncompleteRunError` says so (the stage fails,
    and running it again resends only the failures).

    Returns:
        The metrics (counts per input kind and status, crops missing, bad images), with this run's
        `requests_sent` and `cache_hits` added (those go to the run log, not the metrics file).
    """
    import contextlib
    import sys

    from agegender.mllm.backends import GenerationParams
    from agegender.mllm.runner import BackendSpec, model_plan, query_samples, require_samples

    cfg = params.query_mllms
    data = load_prepared(params, paths)
    samples_file = paths(params.prepare_data.out) / SAMPLES_FILE
    plan = model_plan(params, model_key, data.samples, source=samples_file)
    spec = cfg.models[model_key]
    require_samples(
        plan.sample_ids(),
        source=samples_file,
        selection=f"none in split {params.study.split!r} of the data sets {model_key} answers",
    )
    out = paths(cfg.out) / model_key
    out.mkdir(parents=True, exist_ok=True)
    model = str(paths(spec.model)) if spec.model and (paths.root / spec.model).exists() else spec.model
    if spec.build_tiny is not None:
        from agegender.mllm.tools.tiny import build_tiny_llava

        target = out / "model"
        if target.exists():
            shutil.rmtree(target)
        model = str(build_tiny_llava(target, kind=spec.build_tiny.kind, seed=spec.build_tiny.seed))
    generation = GenerationParams(**as_dict(cfg.generation))
    with contextlib.ExitStack() as stack:
        options = spec.typed_options
        if spec.serve:
            from agegender.mllm.backend_options import OpenAIOptions
            from agegender.mllm.tools.server import running_server, served_identity

            base_url = stack.enter_context(
                running_server(
                    spec.backend, model, params=generation, backend_options=options.server, served_model=model_key
                )
            )
            # the served folder's revision and preprocessing key the store, not only the name
            client = OpenAIOptions(
                base_url=base_url, concurrency=options.client.concurrency, served_identity=served_identity(base_url)
            )
            backend = BackendSpec("openai", model_key, generation, client)
        else:
            backend = BackendSpec(spec.backend, model, generation, options)
        run = query_samples(
            plan, data.masked, data.image_roots(paths), backend=backend, store=out / "store", context=data.samples,
            prompt_version=cfg.prompt_version, max_side=spec.max_side, model_name=model_key, progress=progress,
            max_failed=spec.max_failed, budget_name=f"query_mllms.models.{model_key}.max_failed",
        )  # fmt: skip
    results, outcome = list(run.results.values()), run.outcome
    ending = {"out": out / "predictions.parquet", "store": out / "store", "rerun": f"stage query_mllms@{model_key}"}
    outcome.check_answered(source=samples_file, **ending)
    table = run.predictions
    write_predictions(table, out, "predictions")
    runs = {kind: r.results_manifest for kind, r in run.results.items()}
    logs = {kind: r.run_fields for kind, r in run.results.items()}
    if spec.serve:  # the server started here listened on a free loopback port: a fact of this run, not a result
        for kind, manifest in runs.items():
            manifest["backend"] = dict(manifest["backend"])
            logs[kind]["base_url"] = manifest["backend"].pop("base_url", None)
    manifest = {"model": model_key, "runs": runs}
    manifest["datasets"] = {kind: list(names) for kind, names in plan.datasets.items()}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
    write_run_log(out, {"model": model_key, "runs": logs})
    sent, hits = (sum(int(r.manifest.get(k, 0)) for r in results) for k in ("requests_sent", "cache_hits"))
    print(f"{model_key}: {sent} requests sent, {hits} answers from the response store ({out / RUN_LOG_FILE})")
    counts = table.groupby(["input", "status"]).size()
    summary = {f"{kind}.{status}": int(n) for (kind, status), n in counts.items()}
    summary |= {
        "no_crop": sum(len(r.no_crop_ids) for r in results),
        "bad_images": sum(int(r.manifest["bad_images"]["samples"]) for r in results),  # samples marked failed
    }
    write_metrics(paths, f"{NAME}/{model_key}", summary)
    note = outcome.check_failures(**ending)
    if note is not None:
        print(f"agegender: note: {note}", file=sys.stderr)
    return summary | {"requests_sent": sent, "cache_hits": hits}


def check(checker: Checker) -> None:
    """Each model the stage does not build: an import-path backend imports, an API model has its key in the
    environment, a local model's folder is a model folder of a supported family
    (`agegender.mllm.tools.convert.check_model_folder`; folders `finetune_mllm` makes are skipped) and its backend
    is installed."""
    from agegender.mllm.backends.base import known_backends

    known = known_backends()
    for key, spec in checker.params.query_mllms.models.items():
        if spec.build_tiny is not None:
            continue  # built by the stage
        where = f"query_mllms.models.{key}"
        checker.ran()
        backend = spec.backend
        if ":" in backend and backend not in known:
            message = _import_problem(backend)
            if message:
                checker.add(f"{where}.backend", message)
        elif backend == "openai" and not spec.serve:
            _check_openai(checker, where, spec)
        elif backend in LOCAL_BACKENDS:
            if spec.model and _made_by_finetuning(checker.params, checker.paths, checker.paths(spec.model)):
                continue
            folder = _model_folder(checker, f"{where}.model", spec.model)
            if folder is not None:
                from agegender.mllm.tools.convert import check_model_folder  # torch: imported only when needed

                for line in check_model_folder(folder):
                    checker.add(f"{where}.model", line, folder)
            if backend == "vllm" and importlib.util.find_spec("vllm") is None:
                checker.add(
                    f"{where}.backend",
                    "vLLM is not installed here: pip install 'agegender[vllm]' (Linux, CUDA GPU), or use the "
                    "transformers backend",
                )
        elif backend not in known:
            checker.add(f"{where}.backend", f"unknown MLLM backend {backend!r}; known: {known} or 'module:Class'")


def _made_by_finetuning(params: Params, paths: ProjectPaths, path: Path) -> bool:
    """Whether `path` lies in `finetune_mllm.out` (a DVC output of that stage, not an input from outside)."""
    from agegender.check import inside

    cfg = params.finetune_mllm
    return cfg is not None and inside(path, paths(cfg.out))


def _model_folder(checker: Checker, where: str, model: str | None) -> Path | None:
    """Resolve a local model as the stage does (a folder under the root, an absolute one, a cached hub id)."""
    if not model:
        checker.add(where, "no model folder given")
        return None
    path = checker.paths(model)
    if path.is_dir():
        return path
    if path.exists():
        checker.add(where, "not a folder (a Hugging Face model folder is expected)", path)
        return None
    from agegender.mllm.backends.transformers_backend import cached_snapshot, is_hub_id

    if is_hub_id(model):
        snapshot = cached_snapshot(model)
        if snapshot is not None:
            return snapshot
        checker.add(
            where,
            f"neither a folder under the project root nor in the Hugging Face cache: download it first "
            f"(`hf download {model}`) or give its local folder",
            path,
        )
        return None
    checker.add(where, "model folder not found", path)
    return None


def _check_openai(checker: Checker, where: str, spec: MllmParams) -> None:
    """What the environment must give an API model; its options were checked when params were loaded."""
    from agegender.mllm.backend_options import is_loopback_url

    if not spec.model:
        checker.add(f"{where}.model", "the openai backend needs a model id (e.g. gpt-4o-2024-08-06)")
    options = spec.typed_options
    loopback = is_loopback_url(options.base_url)
    key_env = options.api_key_env
    # only presence is looked at: the value is never read into a message
    if key_env and not loopback and not checker.env.get(str(key_env)):
        checker.add(
            f"{where}.options.api_key_env",
            f"environment variable {key_env} is not set: export it before running (the key is read from the "
            "environment only), or set api_key_env to null for a server without authentication",
        )


def _import_problem(spec: str) -> str | None:
    """Why an import-path backend `module:Class` cannot be used, or None."""
    from agegender.errors import InputError
    from agegender.mllm.backends.base import resolve_backend

    try:
        resolve_backend(spec)
    except InputError as exc:
        return exc.message
    return None


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """`query_mllms/<key>` per model: the model folder; for API models the backend, model and base_url, never the
    key."""
    return {f"{NAME}/{key}": _model_fingerprint(params, paths, spec) for key, spec in params.query_mllms.models.items()}


def _model_fingerprint(params: Params, paths: ProjectPaths, spec: MllmParams) -> dict[str, Any]:
    from agegender.check import fingerprint_path

    if spec.build_tiny is not None:
        return {}
    if spec.backend == "openai" and not spec.serve:
        from agegender.mllm.backend_options import OPENAI_BASE_URL, safe_url

        base_url = spec.typed_options.base_url or OPENAI_BASE_URL
        return {"backend": "openai", "model": spec.model or None, "base_url": safe_url(base_url)}
    out: dict[str, Any] = {"backend": spec.backend, "model": spec.model}
    if not spec.model:
        return out
    path = paths(spec.model)
    if _made_by_finetuning(params, paths, path):
        return out  # made by finetune_mllm: DVC tracks it as that stage's output
    from agegender.mllm.backends.transformers_backend import cached_snapshot, is_hub_id

    if not path.exists() and is_hub_id(spec.model):
        snapshot = cached_snapshot(spec.model)
        out["folder"] = fingerprint_path(snapshot) if snapshot is not None else {"missing": True}
    elif path.exists() or spec.backend in LOCAL_BACKENDS:
        out["folder"] = fingerprint_path(path)
    return out
