"""The interface every specialized model implements, and the registry.

A specialized model (not an MLLM: a regressor/classifier of faces and bodies) is a small class that predicts
age and gender from crops: `predict_crops(faces, bodies)`. It declares the input kinds it can answer
(`agegender.data.schema.INPUT_KINDS`); the default `predict_samples` makes the crops of a sample table with
`agegender.data.crops.iter_crops` and returns a prediction table (DESIGN.md). Models with a faster path of their
own (MiVOLO's batched, masking predictor) override `predict_samples`.

Models are registered by name (`@register_model("mivolo")`) or named by import path (`"my_models:MyModel"`), as
MLLM backends and data set readers are. Options come from params (`predict.models.<name>.options`) as the keyword
arguments of the class; `create_model` reports an unknown or missing option by name.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from agegender.data.crops import INPUT_CROPS, BadImages, iter_crops
from agegender.data.schema import INPUT_KINDS, PREDICTION_COLUMNS, empty_predictions, validate_predictions
from agegender.errors import InputError
from agegender.paths import ProjectPaths
from agegender.plugins import import_subclass

_log = logging.getLogger(__name__)

#: columns `predict_crops` returns, one row per crop pair
CROP_PREDICTION_COLUMNS: tuple[str, ...] = ("age_pred", "gender_pred", "gender_score", "status")

ImageRoots = str | Path | Mapping[str, str | Path]


@dataclass(frozen=True)
class ModelContext:
    """What a model may need at construction besides its options.

    Attributes:
        samples: the prepared sample table (every data set and split), e.g. to fit the constant baseline.
        paths: the project's paths; relative file options resolve against its root.
        device: torch device setting (`auto`, `cpu`, `cuda:1`; `agegender.device.resolve_device`).
    """

    samples: pd.DataFrame | None = None
    paths: ProjectPaths | None = None
    device: str | None = "auto"

    def path(self, value: str | Path) -> Path:
        """A file option as a path: relative to the project root when there is one."""
        return self.paths(value) if self.paths is not None else Path(value)


class SpecializedModel:
    """A model that predicts age and gender from crops.

    Subclasses are registered with `register_model`, take their options as keyword arguments (plus the
    keyword-only `model_name` and `context`), implement `predict_crops`, and may override `predict_samples`.

    Class attributes (what `check` and the pipeline read without building the model):
        name: the registered name.
        inputs: input kinds it can answer; an instance may narrow them once loaded (a face-only MiVOLO).
        file_options: options that name files it reads (checked by `check_file`, fingerprinted by `check`).
        dataset_options: options that name a data set of `prepare_data.datasets`.
        requires: optional packages it imports -> the install command (`check` reports a missing one).

    Args:
        model_name: the `model` column of its prediction tables (default: the registered name).
        context: the prepared samples, project paths and device.
    """

    name: ClassVar[str] = ""
    inputs: tuple[str, ...] = ("face",)
    file_options: ClassVar[tuple[str, ...]] = ()
    dataset_options: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, *, model_name: str | None = None, context: ModelContext | None = None) -> None:
        self.model_name = model_name or self.name or type(self).__name__
        self.context = context or ModelContext()

    @classmethod
    def check_file(cls, option: str, path: Path) -> list[str]:
        """Problems with the file a file option names (one line each); default: it must exist."""
        return [] if path.exists() else [f"file not found ({option})"]

    def predict_crops(self, faces: Sequence[np.ndarray | None], bodies: Sequence[np.ndarray | None]) -> pd.DataFrame:
        """Predict from crop pairs.

        Args:
            faces: face crops, RGB uint8 (H, W, 3), or None where the input kind has none.
            bodies: body crops (the whole person, or the person with faces blacked out), or None; same length.

        Returns:
            One row per pair, in order: `age_pred` (years), `gender_pred` (`male`/`female`/None), `gender_score`
            (P(female) or None), `status` (`ok`, or `failed` for a crop the model could not take).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement predict_crops")

    def answerable(self, inputs: Sequence[str] | None, default: Sequence[str] = INPUT_KINDS) -> list[str]:
        """The input kinds to predict: `inputs` as given (each must be answerable), or those of `default` it answers.

        Raises:
            InputError: an unknown kind, or a kind given explicitly that this model cannot answer.
        """
        if inputs is None:
            return [k for k in dict.fromkeys(default) if k in self.inputs]
        kinds = list(dict.fromkeys(inputs))
        bad = [k for k in kinds if k not in INPUT_KINDS]
        if bad:
            raise InputError(f"unknown input kinds {bad}; known: {list(INPUT_KINDS)}", field="inputs")
        bad = [k for k in kinds if k not in self.inputs]
        if bad:
            raise InputError(
                f"model {self.model_name!r} cannot answer input kinds {bad}; it answers {list(self.inputs)}",
                field="inputs",
            )
        return kinds

    def predict_samples(
        self,
        samples: pd.DataFrame,
        masked: pd.DataFrame | None,
        image_roots: ImageRoots,
        inputs: Sequence[str] | None = None,
        *,
        context: pd.DataFrame | None = None,
        batch_size: int = 64,
        progress: bool = True,
        model_name: str | None = None,
    ) -> pd.DataFrame:
        """Predict every sample for each input kind, from the crops `iter_crops` makes.

        Crops are made one image at a time in the samples' order (an input kind with a face and a body decodes
        each image once per crop kind) and handed to `predict_crops` in batches. As in MiVOLO's predictor, a
        sample without any crop the input kind needs gets no row: it is counted in `attrs["skipped"]` and logged;
        a sample whose image cannot be loaded (missing, empty, truncated) gets a `failed` row without a prediction
        and the run goes on (`attrs["bad_images"]` counts and names the files).

        Args:
            samples: the sample table (DESIGN.md) to predict.
            masked: the reader's side table of persons that exist only to be masked (or None).
            image_roots: folder image paths are relative to, or a mapping data set -> folder.
            inputs: input kinds (None: every kind the model answers).
            context: a larger sample table whose boxes also count as neighbours for the body-without-face crops.
            batch_size: crop pairs per `predict_crops` call.
            progress: show a tqdm bar per input kind.
            model_name: the `model` column (default: this model's `model_name`).

        Returns:
            The validated prediction table, ordered by input kind then sample order, with `attrs["skipped"]` =
            {input kind: samples without a needed crop (no row)}, `attrs["bad_images"]` (`BadImages.summary()`)
            and `attrs["n_samples"]`.

        Raises:
            InputError: a bad input kind or batch size, a missing column or image folder, or a `predict_crops`
                result of the wrong length.
        """
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}", field="batch_size")
        kinds = self.answerable(inputs)
        name = model_name or self.model_name
        samples = samples.reset_index(drop=True)
        frames: list[pd.DataFrame] = []
        skipped: dict[str, int] = {}
        bad = BadImages()
        for kind in kinds:
            skipped[kind] = 0
            bar = tqdm(total=len(samples), desc=f"{name} {kind}", unit="crop", disable=not progress)
            bad_here = BadImages()  # per kind: a sample is failed where its image failed to load for this kind
            try:
                for ids, faces, bodies, n_skipped, failed in _crop_batches(
                    samples, masked, image_roots, kind, context, batch_size, bad_here
                ):
                    skipped[kind] += n_skipped
                    if ids:
                        out = self.predict_crops(faces, bodies)
                        if len(out) != len(ids):
                            message = f"{type(self).__name__}.predict_crops returned {len(out)} rows for {len(ids)}"
                            raise InputError(message, field="predict_crops")
                        frames.append(_rows(ids, kind, name, out))
                    if failed:
                        nothing = [None] * len(failed)
                        out = crop_predictions(nothing, nothing, status=["failed"] * len(failed))
                        frames.append(_rows(failed, kind, name, out))
                    bar.update(len(ids) + n_skipped + len(failed))
            finally:
                bar.close()
                bad.update(bad_here)
        table = pd.concat(frames, ignore_index=True) if frames else empty_predictions()
        if bad.images:  # a batch's failed rows follow its answers: back to the samples' order
            position = {sid: i for i, sid in enumerate(samples["sample_id"].astype(str))}
            order = np.lexsort((table["sample_id"].map(position), table["input"].map(kinds.index)))
            table = table.iloc[order].reset_index(drop=True)
        result = validate_predictions(table, source=f"model {name}")
        result.attrs["skipped"] = skipped
        result.attrs["bad_images"] = bad.summary()
        result.attrs["n_samples"] = len(samples)
        if any(skipped.values()):
            _log.info("%s: samples without any needed crop (no prediction): %s", name, skipped)
        if bad.images:
            _log.warning("%s: %s", name, BadImages.describe(bad.summary(limit=3)))
        return result

    def describe(self) -> dict[str, Any]:
        """What a run records about this model."""
        return {"model": self.name, "class": f"{type(self).__module__}:{type(self).__qualname__}"}

    def close(self) -> None:
        """Release resources (sessions, GPU memory)."""


def _crop_batches(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: ImageRoots,
    kind: str,
    context: pd.DataFrame | None,
    batch_size: int,
    bad: BadImages,
) -> Iterator[tuple[list[str], list[np.ndarray | None], list[np.ndarray | None], int, list[str]]]:
    """(sample ids, face crops, body crops, samples skipped since the last batch, samples on images that cannot be
    loaded since the last batch, recorded in `bad`) in the samples' order."""
    streams = [
        iter_crops(samples, masked, image_roots, crop_kind, context=context, bad_images=bad) if crop_kind else None
        for crop_kind in INPUT_CROPS[kind]
    ]
    ids: list[str] = []
    faces: list[np.ndarray | None] = []
    bodies: list[np.ndarray | None] = []
    failed: list[str] = []
    n_skipped = 0
    for sample_id in samples["sample_id"].astype(str):
        face = next(streams[0])[1] if streams[0] is not None else None
        body = next(streams[1])[1] if streams[1] is not None else None
        if sample_id in bad.samples:
            failed.append(sample_id)
            continue
        if face is None and body is None:
            n_skipped += 1
            continue
        ids.append(sample_id)
        faces.append(face)
        bodies.append(body)
        if len(ids) >= batch_size:
            yield ids, faces, bodies, n_skipped, failed
            ids, faces, bodies, n_skipped, failed = [], [], [], 0, []
    if ids or n_skipped or failed:
        yield ids, faces, bodies, n_skipped, failed


def _rows(ids: Sequence[str], kind: str, model_name: str, out: pd.DataFrame) -> pd.DataFrame:
    """`predict_crops` output -> prediction-table rows (`validate_predictions` checks the values)."""
    missing = [c for c in CROP_PREDICTION_COLUMNS if c not in out.columns and c != "status"]
    if missing:
        raise InputError(f"predict_crops returned no columns {missing}", field="predict_crops")
    n = len(ids)
    status = out["status"].tolist() if "status" in out.columns else ["ok"] * n
    frame = {
        "sample_id": list(ids),
        "model": [model_name] * n,
        "input": [kind] * n,
        "age_pred": pd.array(out["age_pred"].tolist(), dtype="Float64"),
        "gender_pred": pd.array(out["gender_pred"].tolist(), dtype="string"),
        "gender_score": pd.array(out["gender_score"].tolist(), dtype="Float64"),
        "status": status,
        "raw_answer": pd.array([pd.NA] * n, dtype="string"),
    }
    return pd.DataFrame(frame)[list(PREDICTION_COLUMNS)]


def crop_predictions(
    age: Sequence[float | None],
    gender: Sequence[str | None],
    score: Sequence[float | None] | None = None,
    status: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Build a `predict_crops` result from per-crop values (None = not predicted)."""
    n = len(age)
    return pd.DataFrame(
        {
            "age_pred": pd.array([np.nan if a is None else float(a) for a in age], dtype="Float64"),
            "gender_pred": pd.array(list(gender), dtype="string"),
            "gender_score": pd.array([pd.NA] * n if score is None else list(score), dtype="Float64"),
            "status": list(status) if status is not None else ["ok"] * n,
        }
    )


# ---------------------------------------------------------------------------------------------
# The registry

MODELS: dict[str, type[SpecializedModel]] = {}


def register_model(name: str):
    """Class decorator: make a `SpecializedModel` subclass available under `name` (params `model: NAME`)."""
    if not name or "." in name:
        raise ValueError(f"a model name must be non-empty and hold no '.': {name!r}")

    def decorate(cls: type[SpecializedModel]) -> type[SpecializedModel]:
        if not (isinstance(cls, type) and issubclass(cls, SpecializedModel)):
            raise TypeError(f"{cls!r} is not a SpecializedModel subclass")
        cls.name = name
        MODELS[name] = cls
        return cls

    return decorate


def known_models() -> list[str]:
    """The registered model names."""
    return sorted(MODELS)


def resolve_model(spec: str) -> type[SpecializedModel]:
    """The model class of a registered name or an import path `"package.module:Class"`.

    Raises:
        InputError: an unknown name, or a module that does not import, has no such attribute, or whose attribute
            is not a `SpecializedModel` subclass.
    """
    if spec in MODELS:
        return MODELS[spec]
    if ":" not in spec:
        raise InputError(
            f"unknown specialized model {spec!r}; known: {known_models()} or 'module:Class'", field="model"
        )
    return import_subclass(spec, SpecializedModel, what="model")


_RESERVED = ("self", "model_name", "context")


def model_options(cls: type[SpecializedModel]) -> tuple[dict[str, inspect.Parameter], bool]:
    """The options a model class takes (its keyword arguments but `model_name`, `context`), and whether it takes
    any keyword (`**options`)."""
    params = inspect.signature(cls.__init__).parameters
    named = {
        k: p for k, p in params.items() if k not in _RESERVED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def option_problems(cls: type[SpecializedModel], options: Mapping[str, Any]) -> list[str]:
    """Unknown and missing options of a model class, one line each (empty when they fit)."""
    named, any_keyword = model_options(cls)
    problems = []
    unknown = sorted(set(options) - set(named) - set(_RESERVED))
    if unknown and not any_keyword:
        problems.append(f"unknown option(s) {unknown} of model {cls.name or cls.__name__!r}; it takes {sorted(named)}")
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        problems.append(f"{reserved} are not options (the model name is the key, the context comes from the stage)")
    missing = sorted(k for k, p in named.items() if p.default is p.empty and k not in options)
    if missing:
        problems.append(f"model {cls.name or cls.__name__!r} needs option(s) {missing}")
    return problems


def model_problems(
    cls: type[SpecializedModel], spec: str, options: Mapping[str, Any], inputs: Sequence[str] | None
) -> list[tuple[str, str]]:
    """What is wrong with a model's params, found without building it (the pre-flight check of `agegender check`).

    Args:
        cls: the model class (`resolve_model(spec)`).
        spec: the model as params names it (a registered name or an import path), quoted in the messages.
        options: its params options.
        inputs: the input kinds params asks of it (None = its default).

    Returns:
        (field below the model's params key: `options`, `inputs` or `model`; message) per problem: unknown or
        missing options, an input kind the class cannot answer, an optional package it imports that is missing.
        The files and data sets its options name are the caller's to check (`check_file`,
        `dataset_option_values`): what they must be depends on the rest of the params.
    """
    found = [("options", line) for line in option_problems(cls, options)]
    bad = [k for k in inputs or () if k not in cls.inputs]
    if bad:  # a model that narrows its kinds once loaded (a face-only MiVOLO) is told at predict
        found.append(("inputs", f"model {spec!r} cannot answer {bad}; it answers {list(cls.inputs)}"))
    for module, install in cls.requires.items():
        if importlib.util.find_spec(module) is None:
            found.append(("model", f"model {spec!r} needs the package {module!r}: {install}"))
    return found


def dataset_option_values(cls: type[SpecializedModel], options: Mapping[str, Any]) -> dict[str, Any]:
    """The value of each of a model's `dataset_options`: as params set it, else the class's default (else None)."""
    named = model_options(cls)[0]
    values = {}
    for option in cls.dataset_options:
        param = named.get(option)
        default = None if param is None or param.default is param.empty else param.default
        values[option] = options.get(option, default)
    return values


def create_model(
    spec: str,
    options: Mapping[str, Any] | None = None,
    *,
    model_name: str | None = None,
    context: ModelContext | None = None,
    where: str = "options",
) -> SpecializedModel:
    """Build a model by registered name or import path, from its params options.

    Args:
        spec: registered name (`MODELS`) or `"package.module:Class"`.
        options: the class's keyword arguments.
        model_name: the `model` column of its predictions (default: the registered name).
        context: prepared samples, project paths, device.
        where: the params key of the options, for error messages (e.g. `predict.models.mine.options`).

    Raises:
        InputError: unknown model, unknown or missing options.
    """
    cls = resolve_model(spec)
    options = dict(options or {})
    problems = option_problems(cls, options)
    if problems:
        raise InputError("; ".join(problems), field=where)
    return cls(**options, model_name=model_name, context=context)
