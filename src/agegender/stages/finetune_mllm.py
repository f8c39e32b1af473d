"""Stage `finetune_mllm@<run>`: one fine-tuning run of `finetune_mllm.runs`: train, select or take the last
checkpoint, predict with every model the run reports; its checks and fingerprints (base model folder, DeepSpeed
config), one consumer per run (`finetune_mllm/<run>`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from agegender.data.prepare import MASKED_FILE, SAMPLES_FILE, load_prepared
from agegender.errors import InputError
from agegender.files import write_run_log
from agegender.params import FinetuneMllmParams, FinetuneRunParams, Params, as_dict
from agegender.paths import ProjectPaths
from agegender.stages.common import digest, reset_if_changed, write_metrics, write_predictions

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "finetune_mllm"


def run(params: Params, paths: ProjectPaths, run_key: str, *, progress: bool = True) -> dict:
    """The paper's fine-tuning recipe for one run, its checkpoint(s), predictions of every model it reports.

    Trains on the train split of the run's `dataset` (`<out>/<run>/run`, resumable: the folder persists; cleared when
    the run's settings, the selection settings, the samples, the code or the base model's weights changed). A model
    reporting `best` queries every saved checkpoint on the `select.split` through the zero-shot runner and keeps the
    best (`<out>/<run>/best`, a Hugging Face folder the `transformers` and `vllm` backends serve unchanged;
    `selection.md`); one reporting `last` is the end of training, served from the run folder: the training is shared,
    never repeated. Each model then answers the study's samples like any zero-shot model; all of them go to
    `<predictions>/<run>/predictions.parquet`, the metrics to `metrics/finetune_mllm/<run>.json`.
    """
    from agegender.mllm.backends import GenerationParams
    from agegender.mllm.finetune.select import RUN_COLUMNS, keep_best, read_checkpoints, select_checkpoint
    from agegender.mllm.finetune.train import RUN_SUMMARY_FIELDS, finetune
    from agegender.mllm.runner import BackendSpec, plan_queries, query_samples

    cfg = _section(params)
    if run_key not in cfg.runs:
        raise InputError(f"no run {run_key!r} in finetune_mllm.runs (runs: {sorted(cfg.runs)})", field="run_key")
    spec = cfg.runs[run_key]
    config = spec.config
    data = load_prepared(params, paths)
    samples, roots = data.samples, data.image_roots(paths)
    pool = samples[samples["dataset"] == spec.dataset].reset_index(drop=True)
    out = paths(cfg.out) / run_key
    import agegender.mllm

    identity = {
        "run": as_dict(spec),
        "select": as_dict(cfg.select),
        "samples": digest(paths(params.prepare_data.out) / SAMPLES_FILE),
    }
    if spec.build_tiny is None:
        from agegender.mllm.backends.transformers_backend import folder_revision

        # a base model retrained or replaced in its folder starts the run afresh (the run names only the path)
        identity["base_model_revision"] = folder_revision(paths(spec.base_model))
    reset_if_changed(out, identity, code=Path(agegender.mllm.__path__[0]))
    if spec.build_tiny is not None:
        from agegender.mllm.tools.tiny import build_tiny_llava

        base = out / "base"
        if base.exists():
            shutil.rmtree(base)
        build_tiny_llava(base, **spec.build_tiny)
    else:
        base = paths(spec.base_model)
    if spec.launch is None:
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
        trained = _launch_finetune(params, paths, run_key, roots, base, out, progress=progress)
    generation = GenerationParams(**as_dict(params.query_mllms.generation))
    options = spec.answering_options
    reported = cfg.reported(run_key)
    folders: dict[str, Path] = {}
    run_log: dict = {"training": {k: trained.get(k) for k in RUN_SUMMARY_FIELDS}}
    summary: dict = {"train_steps": trained.get("steps"), "train_loss": trained.get("train_loss")}
    shown: dict = {}
    if any(model.checkpoint == "best" for model in reported):
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
        folders["best"] = keep_best(selection, out / "best", caption=params.report.caption_note)
        run_log["selection"] = selection.table[["name", *RUN_COLUMNS]].to_dict(orient="records")
        summary |= {f"selection.{k}": v for k, v in selection.summary().items() if v is not None}
        shown["selection"] = selection.table
    if any(model.checkpoint == "last" for model in reported):
        last = read_checkpoints(out / "run")[-1]  # by step, the final model last: the end of training
        folders["last"] = last.path
        summary |= {"last.name": last.name, "last.step": last.step, "last.epoch_fraction": last.epoch_fraction}

    tables = []
    run_log["query"] = {}
    for model in reported:
        plan = plan_queries(
            samples, model.inputs, split=params.study.split, datasets=model.datasets or params.study.datasets
        )
        backend = BackendSpec("transformers", str(folders[model.checkpoint]), generation, options)
        answered = query_samples(
            plan, data.masked, roots, backend=backend, store=out / "query_store" / model.name, context=samples,
            prompt_version=params.query_mllms.prompt_version, model_name=model.name, progress=progress,
        )  # fmt: skip
        table = answered.predictions
        tables.append(table)
        run_log["query"][model.name] = {kind: r.run_fields for kind, r in answered.results.items()}
        counts = table.groupby(["input", "status"]).size().items()
        summary |= {f"{model.name}.{kind}.{status}": int(n) for (kind, status), n in counts}
    preds_dir = paths(cfg.predictions) / run_key
    preds_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(pd.concat(tables, ignore_index=True), preds_dir, "predictions")
    write_run_log(out, run_log)
    write_metrics(paths, f"{NAME}/{run_key}", summary)
    return summary | shown


def _section(params: Params) -> FinetuneMllmParams:
    if params.finetune_mllm is None:
        raise InputError("params has no finetune_mllm section", field="finetune_mllm")
    return params.finetune_mllm


def _launch_finetune(
    params: Params, paths: ProjectPaths, run_key: str, roots: dict[str, Path], base: Path, out: Path, *, progress: bool
) -> dict:
    """Train through `accelerate launch` (several processes: GPUs, ZeRO-3) into `<out>/run`; its summary.

    The processes run `python -m agegender.mllm.finetune` on the same records the in-process path uses (the
    train split of the run's `dataset`, the study's image roots); an interrupted launch resumes likewise.
    """
    import subprocess
    import sys

    import yaml

    from agegender.mllm.finetune.train import read_summary

    spec = _section(params).runs[run_key]
    assert spec.launch is not None
    config_file = out / "launch_config.yaml"
    config_file.write_text(yaml.safe_dump({"config": spec.config.to_dict()}, sort_keys=True))
    prepared = paths(params.prepare_data.out)
    image_roots = [f"{name}={root}" for name, root in roots.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if spec.launch.config_file is not None:
        command += ["--config_file", str(paths(spec.launch.config_file))]
    command += ["--num_processes", str(spec.launch.num_processes), *spec.launch.args]
    command += ["-m", "agegender.mllm.finetune", "--samples", str(prepared / SAMPLES_FILE)]
    command += ["--masked", str(prepared / MASKED_FILE), "--image-root", *image_roots, "--base-model", str(base)]
    command += ["--out", str(out / "run"), "--config", str(config_file), "--datasets", spec.dataset]
    command += [] if progress else ["--no-progress"]
    proc = subprocess.run(command, cwd=paths.root, check=False)
    if proc.returncode != 0:
        raise InputError(f"accelerate launch failed with exit code {proc.returncode}: {' '.join(command)}")
    return read_summary(out / "run")


def check(checker: Checker) -> None:
    """Per run: the data set fine-tuned on is prepared; the launch settings; the base model folder (a model folder
    of a supported family, `agegender.mllm.tools.convert.check_model_folder`) and DeepSpeed config, unless the stage
    builds its own model."""
    cfg = checker.params.finetune_mllm
    for key, spec in ({} if cfg is None else cfg.runs).items():
        _check_run(checker, f"finetune_mllm.runs.{key}", spec)


def _check_run(checker: Checker, where: str, spec: FinetuneRunParams) -> None:
    checker.prepared_ref(f"{where}.dataset", spec.dataset)
    if spec.launch is not None:
        checker.ran()
        if spec.launch.num_processes < 1:
            checker.add(f"{where}.launch.num_processes", f"must be at least 1, got {spec.launch.num_processes}")
        launch_config = None if spec.launch.config_file is None else checker.paths(spec.launch.config_file)
        if launch_config is not None and not launch_config.is_file():
            checker.add(f"{where}.launch.config_file", "accelerate config not found", launch_config)
    if spec.base_model is None:
        return  # built by the stage
    from agegender.mllm.tools.convert import check_model_folder

    checker.ran()
    folder = checker.paths(spec.base_model)
    if not folder.is_dir():
        checker.add(f"{where}.base_model", "base model folder not found", folder)
    else:
        for line in check_model_folder(folder):
            checker.add(f"{where}.base_model", line, folder)
    deepspeed = spec.config.deepspeed
    if deepspeed:
        checker.ran()
        path = checker.paths(str(deepspeed))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                checker.add(f"{where}.config.deepspeed", "the DeepSpeed config is not a JSON object", path)
        except FileNotFoundError:
            checker.add(f"{where}.config.deepspeed", "DeepSpeed config file not found", path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            checker.add(f"{where}.config.deepspeed", f"not a readable JSON file ({exc})", path)


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """`finetune_mllm/<run>` per run: the base model folder and the DeepSpeed config, unless the stage builds its own
    model."""
    from agegender.check import source_fingerprint

    prints: dict[str, dict] = {}
    for key, spec in ({} if params.finetune_mllm is None else params.finetune_mllm.runs).items():
        external: dict[str, dict] = {}
        if spec.base_model is not None:
            external["base_model"] = source_fingerprint(paths, spec.base_model)
            if spec.config.deepspeed:
                external["deepspeed"] = source_fingerprint(paths, spec.config.deepspeed)
        prints[f"{NAME}/{key}"] = external
    return prints
