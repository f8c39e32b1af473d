"""Stage `finetune_mllm`: fine-tune an MLLM, select a checkpoint, predict with the kept model; its checks and
fingerprints (base model folder, DeepSpeed config)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from agegender.data.prepare import MASKED_FILE, SAMPLES_FILE, load_prepared
from agegender.errors import InputError
from agegender.files import write_run_log
from agegender.params import Params, as_dict
from agegender.paths import ProjectPaths
from agegender.stages.common import digest, fresh_dir, reset_if_changed, write_metrics, write_predictions

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "finetune_mllm"


def run(params: Params, paths: ProjectPaths, *, progress: bool = True) -> dict:
    """The paper's fine-tuning recipe, checkpoint selection, predictions of the kept model.

    Trains on the train split of `finetune_mllm.dataset` (`<out>/run`, resumable: the folder persists; cleared when
    the section, the samples, the code or the base model's weights changed), queries
    every saved checkpoint on the `select.split` through the zero-shot runner and keeps the best (`<out>/best`,
    a Hugging Face folder the `transformers` and `vllm` backends serve unchanged; `<out>/selection.md`), then the
    kept model answers the study's samples like any zero-shot model (`<predictions>/predictions.parquet`).
    """
    from agegender.mllm.backends import GenerationParams
    from agegender.mllm.finetune.select import RUN_COLUMNS, keep_best, select_checkpoint
    from agegender.mllm.finetune.train import RUN_SUMMARY_FIELDS, finetune
    from agegender.mllm.runner import BackendSpec, plan_queries, query_samples

    cfg = params.finetune_mllm
    if cfg is None:
        raise InputError("params has no finetune_mllm section", field="finetune_mllm")
    if cfg.base_model is None and cfg.build_tiny is None:
        # a profile without fine-tuning: empty outputs, and the metrics say so
        fresh_dir(paths(cfg.out))
        fresh_dir(paths(cfg.predictions))
        write_metrics(paths, NAME, {"finetuned": False})
        reason = "finetune_mllm has neither base_model nor build_tiny: nothing is fine-tuned in this profile"
        return {"finetuned": False, "reason": reason, "selection": pd.DataFrame()}
    config = cfg.config
    data = load_prepared(params, paths)
    samples, roots = data.samples, data.image_roots(paths)
    pool = samples[samples["dataset"] == cfg.dataset].reset_index(drop=True)
    out = paths(cfg.out)
    import agegender.mllm

    identity = {"section": as_dict(cfg), "samples": digest(paths(params.prepare_data.out) / SAMPLES_FILE)}
    if cfg.build_tiny is None:
        from agegender.mllm.backends.transformers_backend import folder_revision

        # a base model retrained or replaced in its folder starts the run afresh (the section names only the path)
        identity["base_model_revision"] = folder_revision(paths(cfg.base_model))
    reset_if_changed(out, identity, code=Path(agegender.mllm.__path__[0]))
    if cfg.build_tiny is not None:
        from agegender.mllm.tools.tiny import build_tiny_llava

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
    options = cfg.answering_options
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
    write_predictions(table, preds_dir, "predictions")
    run_log = {
        "training": {k: trained.get(k) for k in RUN_SUMMARY_FIELDS},
        "selection": selection.table[["name", *RUN_COLUMNS]].to_dict(orient="records"),
        "query": {kind: r.run_fields for kind, r in run.results.items()},
    }
    write_run_log(out, run_log)
    summary = {
        "train_steps": trained.get("steps"),
        "train_loss": trained.get("train_loss"),
        **{f"selection.{k}": v for k, v in selection.summary().items() if v is not None},
        **{f"{kind}.{status}": int(n) for (kind, status), n in table.groupby(["input", "status"]).size().items()},
    }
    write_metrics(paths, NAME, summary)
    return summary | {"selection": selection.table}


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

    from agegender.mllm.finetune.train import read_summary

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
    return read_summary(out / "run")


def check(checker: Checker) -> None:
    """The data set fine-tuned on is prepared; the launch settings; the base model folder (a LLaVA folder,
    `agegender.mllm.tools.convert.check_llava_folder`) and DeepSpeed config, unless the stage builds its own model."""
    cfg = checker.params.finetune_mllm
    if cfg is None:
        return
    checker.prepared_ref("finetune_mllm.dataset", cfg.dataset)
    if cfg.launch is not None:
        checker.ran()
        if cfg.launch.num_processes < 1:
            checker.add("finetune_mllm.launch.num_processes", f"must be at least 1, got {cfg.launch.num_processes}")
        launch_config = None if cfg.launch.config_file is None else checker.paths(cfg.launch.config_file)
        if launch_config is not None and not launch_config.is_file():
            checker.add("finetune_mllm.launch.config_file", "accelerate config not found", launch_config)
    if cfg.build_tiny is not None or cfg.base_model is None:
        return  # built by the stage, or this profile fine-tunes nothing
    from agegender.mllm.tools.convert import check_llava_folder

    checker.ran()
    folder = checker.paths(cfg.base_model)
    if not folder.is_dir():
        checker.add("finetune_mllm.base_model", "base model folder not found", folder)
    else:
        for line in check_llava_folder(folder):
            checker.add("finetune_mllm.base_model", line, folder)
    deepspeed = cfg.config.deepspeed
    if deepspeed:
        checker.ran()
        path = checker.paths(str(deepspeed))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                checker.add("finetune_mllm.config.deepspeed", "the DeepSpeed config is not a JSON object", path)
        except FileNotFoundError:
            checker.add("finetune_mllm.config.deepspeed", "DeepSpeed config file not found", path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            checker.add("finetune_mllm.config.deepspeed", f"not a readable JSON file ({exc})", path)


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """The base model folder and the DeepSpeed config, unless the stage builds its own model."""
    from agegender.check import source_fingerprint

    ft = params.finetune_mllm
    finetune: dict[str, dict] = {}
    if ft is not None and ft.build_tiny is None and ft.base_model is not None:
        finetune["base_model"] = source_fingerprint(paths, ft.base_model)
        if ft.config.deepspeed:
            finetune["deepspeed"] = source_fingerprint(paths, ft.config.deepspeed)
    return {NAME: finetune}
