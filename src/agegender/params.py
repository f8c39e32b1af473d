"""params.yaml -> frozen, validated dataclasses.

Each stage's section is a dataclass that owns its defaults; unknown keys and wrong types are
reported with the file and the key path (``params.yaml: prepare_data.demo.n_trian: unknown key``)
instead of surfacing later as a KeyError inside a notebook.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agegender.data.schema import INPUT_KINDS
from agegender.errors import InputError


@dataclass(frozen=True)
class DemoParams:
    """The generated demo data set (see `agegender.data.demo`)."""

    root: str = "data/demo"
    n_train: int = 1200
    n_val: int = 200
    n_test: int = 400
    image_size: int = 256
    seed: int = 1234


@dataclass(frozen=True)
class DatasetParams:
    """One data set read by a registered reader (`agegender.data.readers.READERS`).

    `options` go to the reader unchanged (e.g. `annotations`, `splits` for the MiVOLO CSVs).
    """

    reader: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SubsetParams:
    """A NanoLAGENDA-style subset: `per_bin` samples per age bin of a source data set's split."""

    source: str
    split: str = "test"
    per_bin: int = 200
    bin_width: float = 5.0
    max_age: float = 90.0
    seed: int = 1234
    exclude: str | None = None


@dataclass(frozen=True)
class PrepareDataParams:
    """Section `prepare_data`: what to generate and read into the sample table."""

    out: str = "data/prepared"
    demo: DemoParams | None = None
    datasets: dict[str, DatasetParams] = field(default_factory=dict)
    subsets: dict[str, SubsetParams] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyParams:
    """Section `study`: what every model is evaluated on, shared by predict, evaluate and report."""

    split: str = "test"
    datasets: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("face_body", "body", "body_wo_face", "face")


@dataclass(frozen=True)
class BaselineParams:
    """The constant baseline: train-set mean age and majority gender."""

    train_dataset: str = "demo"
    train_split: str = "train"


@dataclass(frozen=True)
class PredictParams:
    """Section `predict`: the models that predict every evaluated data set."""

    out: str = "predictions/predict"
    baseline: BaselineParams = field(default_factory=BaselineParams)


@dataclass(frozen=True)
class EvaluateParams:
    """Section `evaluate`: bootstrap confidence intervals and where results go."""

    ci: bool = True
    n_resamples: int = 1000
    ci_level: float = 0.95
    seed: int = 1234
    age_group_width: float = 5.0


@dataclass(frozen=True)
class GalleryParams:
    """The figure-1 style gallery."""

    dataset: str | None = None
    input: str = "body"
    n: int = 6
    seed: int = 1234


@dataclass(frozen=True)
class ReportParams:
    """Section `report`: tables in the paper's layouts and figures."""

    caption_note: str | None = None
    roles: dict[str, str | None] = field(default_factory=dict)
    age_group_dataset: str | None = None
    gallery: GalleryParams = field(default_factory=GalleryParams)
    model_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    profile: str = "demo"
    study: StudyParams = field(default_factory=StudyParams)
    prepare_data: PrepareDataParams = field(default_factory=PrepareDataParams)
    predict: PredictParams = field(default_factory=PredictParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)

    def __post_init__(self) -> None:
        bad = [k for k in self.study.inputs if k not in INPUT_KINDS]
        if bad:
            raise ValueError(f"study.inputs: {bad} not among {list(INPUT_KINDS)}")
        known = set(self.prepare_data.datasets) | set(self.prepare_data.subsets)
        for name in self.study.datasets:
            if name not in known:
                raise ValueError(f"study.datasets: {name!r} is neither in prepare_data.datasets nor in .subsets")
        for name, subset in self.prepare_data.subsets.items():
            if subset.source not in self.prepare_data.datasets:
                raise ValueError(f"prepare_data.subsets.{name}.source: unknown data set {subset.source!r}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert `value` to the annotated type `tp`, raising ValueError naming the key path `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{path}: required key is missing")
    return cls(**kwargs)


def params_from_dict(data: dict[str, Any], source: str | Path = "params") -> Params:
    """Build and validate `Params` from a parsed params mapping.

    Raises:
        InputError: naming `source` and the key path of the first problem.
    """
    try:
        return _build(Params, data, "")
    except ValueError as exc:
        raise InputError(str(exc), file=source) from None


def load_params(path: str | Path) -> Params:
    """Read and validate a params file (params.yaml).

    Args:
        path: the YAML file.

    Returns:
        The validated, frozen `Params`.

    Raises:
        InputError: the file is missing, is not YAML, or has an unknown key or a wrongly typed value.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("params file not found", file=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", file=path) from None
    return params_from_dict(data or {}, source=path)


def as_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) form of a params dataclass, for showing the resolved configuration."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [as_dict(v) for v in obj]
    return obj
