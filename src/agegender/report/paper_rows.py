"""Which paper row comes from where: every row of the paper's tables 1-10 with what produces it under a profile.

The report's tables (`agegender.report.tables`) put our number beside the paper's where one of our models has the
paper's model id as its name and one of our data sets plays the paper data set's role (`report.roles`); every
other paper row is printed with the paper's numbers only. This module says, before anything runs, which of the two
each row will be and why, from the params alone (`agegender paper-rows`): a reader of the tables sees which numbers
this project makes, with which model (a zero-shot query, a model fine-tuned or trained here, a released checkpoint,
an external prediction table), and which stay the paper's, with the reason.

A row is produced when the model named by its id answers the data set playing its paper data set with its input:

- `query_mllms.models.<id>`: each model's `datasets` (None: the study's) and `inputs` (or `inputs_by_dataset`);
- the fine-tuned model(s) of `finetune_mllm` (`finetune_runs`): `datasets` and `inputs`, as the stage plans them;
- `predict.models.<id>`: every study data set, with its `inputs` or every study input its class can take, as the
  `predict` stage does; `predict.external.<id>`: every study data set and input (the table decides what it holds).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agegender.params import MllmParams, Params
from agegender.paths import ProjectPaths
from agegender.report.paper import DATASET_NAMES, MODEL_NAMES, PAPER_TABLES, PaperRow, resolve_roles

#: what produces a row: the model is queried zero-shot through an MLLM backend (`query_mllms`)
ZERO_SHOT = "zero-shot query"
#: an MLLM fine-tuned by the `finetune_mllm` stage, then queried
FINE_TUNED = "fine-tuned here"
#: a MiVOLO checkpoint the `train_mivolo` stage trains, predicted with by `predict`
TRAINED = "trained here"
#: a checkpoint file made elsewhere (e.g. the authors' release), predicted with by `predict`
RELEASED = "released checkpoint"
#: a specialized model that names no checkpoint file (the constant baseline, a pip package's built-in weights)
SPECIALIZED = "specialized model"
#: predictions another tool made (`predict.external`)
EXTERNAL = "external table"
#: nothing in the profile produces the row: the tables print the paper's numbers only
PAPER_ONLY = "paper only"
#: every source, in the order the summary lists them
SOURCES: tuple[str, ...] = (ZERO_SHOT, FINE_TUNED, TRAINED, RELEASED, SPECIALIZED, EXTERNAL, PAPER_ONLY)

#: paper model id -> why no profile can simply add it (quoted from the paper; README run-book for releases)
NOT_MADE_HERE: dict[str, str] = {
    "fp_age": "the paper cites FP-Age's published numbers (table 1, 'FP-Age [21]'); its predictions can be given "
    "as predict.external.fp_age",
    "resnet50_paplham": "the paper cites Paplham et al.'s ResNet-50 (table 4, 'ResNet-50 [31]'); its predictions can "
    "be given as predict.external.resnet50_paplham",
    "ordinalclip": "the paper cites OrdinalCLIP's published numbers (table 7, 'OridinalCLIP [20]'); its predictions "
    "can be given as predict.external.ordinalclip",
    "l2rclip": "the paper cites L2RCLIP's published numbers (table 7, 'L2RCLIP [44]'); its predictions can be given "
    "as predict.external.l2rclip",
    "mivolo_d1_224": "the paper's MiVOLO-224 was trained on LAGENDA train (tables 1-3, train column), which is "
    "proprietary (section 4.1: LAGENDA 'includes proprietary training and validation parts'), and this checkpoint "
    "was not released (README run-book)",
    "mivolo_d1_384": "the paper's MiVOLO-384 was trained on LAGENDA_ext (section 3.2: LAGENDA train, which section "
    "4.1 calls proprietary, extended 'primarily through production pipelines'); its weights are released (README "
    "run-book)",
}


@dataclass(frozen=True)
class FinetunedModel:
    """One fine-tuned MLLM a profile makes: a model a `finetune_mllm` run reports.

    Attributes:
        name: its model name in the prediction tables.
        where: its params key path (`finetune_mllm.runs.<run>`, or `...also_report.<name>` for another checkpoint
            of the same training).
        base: what the training starts from (a local model folder, or a tiny model built from configs).
        train_dataset: the data set whose train split trains it.
        input_kind: the crop it is trained on.
        checkpoint: the checkpoint it reports, `best` (selected on validation) or `last`.
        datasets: data sets it answers (None: the study's).
        inputs: crops it answers.
    """

    name: str
    where: str
    base: str
    train_dataset: str
    input_kind: str
    checkpoint: str
    datasets: tuple[str, ...] | None
    inputs: tuple[str, ...]


def finetune_runs(params: Params) -> list[FinetunedModel]:
    """Every model the `finetune_mllm` runs of `params` report (`FinetuneMllmParams.models`), run by run."""
    section = params.finetune_mllm
    if section is None:
        return []
    models = []
    for model in section.models():
        run = section.runs[model.run]
        where = f"finetune_mllm.runs.{model.run}" + ("" if model.name == model.run else f".also_report.{model.name}")
        tiny = run.build_tiny.get("kind", "llava") if run.build_tiny is not None else None
        models.append(
            FinetunedModel(
                name=model.name,
                where=where,
                base=f"a tiny {tiny} built from configs" if tiny is not None else str(run.base_model),
                train_dataset=run.dataset,
                input_kind=run.config.input_kind,
                checkpoint=model.checkpoint,
                datasets=model.datasets,
                inputs=tuple(model.inputs),
            )
        )
    return models


@dataclass(frozen=True)
class RowSource:
    """What produces one paper row under a profile.

    Attributes:
        table: the paper table's number.
        row: the paper's row (model id, data set, input, printed train set).
        our_dataset: our data set playing the row's paper data set (None: none plays it).
        source: one of `SOURCES`.
        detail: which params produce it (section key, backend, model or file), or why it stays the paper's.
    """

    table: int
    row: PaperRow
    our_dataset: str | None
    source: str
    detail: str


@dataclass(frozen=True)
class _Producer:
    """A model of the profile: what kind it is, how to name it, and which (data set, input) pairs it answers."""

    source: str
    detail: str
    where: str
    answers: Mapping[str, tuple[str, ...]]


def _mllm_answers(spec: MllmParams, study: Sequence[str]) -> dict[str, tuple[str, ...]]:
    return {d: tuple(spec.inputs_by_dataset.get(d, spec.inputs)) for d in spec.datasets or study}


def _specialized(params: Params, paths: ProjectPaths, key: str) -> _Producer:
    """A model of `predict.models`: trained here when a file it reads is one `train_mivolo` writes."""
    from agegender.check import inside
    from agegender.errors import InputError
    from agegender.specialized import resolve_model

    spec = params.predict.models[key]
    where = f"predict.models.{key}"
    try:
        cls: Any = resolve_model(spec.model)
        files, kinds = list(cls.file_options), tuple(cls.inputs)
    except InputError:  # a class outside agegender that does not import here: `agegender check` names it
        files, kinds = [], tuple(params.study.inputs)
    inputs = spec.inputs if spec.inputs is not None else tuple(k for k in params.study.inputs if k in kinds)
    answers = dict.fromkeys(params.study.datasets, tuple(inputs))
    train = params.train_mivolo
    for option in files:
        value = spec.options.get(option)
        if not isinstance(value, str):
            continue
        if train.dataset is not None and inside(paths(value), paths(train.out)):
            detail = f"train_mivolo on {train.dataset} train -> {where} ({value})"
            return _Producer(TRAINED, detail, where, answers)
        return _Producer(RELEASED, f"{where}: {value}", where, answers)
    return _Producer(SPECIALIZED, f"{where} ({spec.model})", where, answers)


def _producers(params: Params, paths: ProjectPaths) -> dict[str, _Producer]:
    """Model name -> its producer, for every model of the profile (names are unique across sections)."""
    study = params.study.datasets
    found: dict[str, _Producer] = {}
    for key, spec in params.query_mllms.models.items():
        model = spec.model or f"a tiny {spec.build_tiny.kind if spec.build_tiny else 'model'} built from configs"
        backend = f"{spec.backend}, served on loopback" if spec.serve else spec.backend
        where = f"query_mllms.models.{key}"
        found[key] = _Producer(ZERO_SHOT, f"{where} ({backend}, {model})", where, _mllm_answers(spec, study))
    for run in finetune_runs(params):
        detail = (
            f"{run.where} ({run.base}, {run.input_kind} crops, trained on {run.train_dataset} train, "
            f"{run.checkpoint} checkpoint)"
        )
        answers = dict.fromkeys(run.datasets or study, run.inputs)
        found[run.name] = _Producer(FINE_TUNED, detail, run.where, answers)
    for key in params.predict.models:
        found[key] = _specialized(params, paths, key)
    for key, ext in params.predict.external.items():
        where = f"predict.external.{key}"
        found[key] = _Producer(EXTERNAL, f"{where}: {ext.path}", where, dict.fromkeys(study, params.study.inputs))
    return found


def _why_not(params: Params, producers: Mapping[str, _Producer], row: PaperRow, our_dataset: str | None) -> list[str]:
    """Every reason the profile does not produce `row` (empty: it does)."""
    paper_set = DATASET_NAMES.get(row.dataset, row.dataset)
    reasons = []
    producer = producers.get(row.model)
    if producer is None:
        name = f"no model {row.model} ({MODEL_NAMES.get(row.model, row.model)}) in the profile"
        reasons.append(f"{name}: {NOT_MADE_HERE[row.model]}" if row.model in NOT_MADE_HERE else name)
    if our_dataset is None:
        reasons.append(f"no data set plays {paper_set} (report.roles.{row.dataset} is null)")
    elif our_dataset not in params.study.datasets:
        reasons.append(f"{our_dataset}, which plays {paper_set}, is not in study.datasets")
    elif producer is not None:
        kinds = producer.answers.get(our_dataset)
        if kinds is None:
            reasons.append(f"{producer.where} does not answer {our_dataset}")
        elif row.input not in kinds:
            answered = ", ".join(kinds) or "no input"
            reasons.append(f"{producer.where} answers {our_dataset} with {answered}, not {row.input}")
    return reasons


def paper_row_sources(params: Params, paths: ProjectPaths, tables: Iterable[int] | None = None) -> list[RowSource]:
    """What produces each row of the paper's tables under `params`, in the paper's order.

    Args:
        params: a profile's params.
        paths: the project's paths (a checkpoint's folder decides whether `train_mivolo` makes it).
        tables: table numbers to list (None: 1-10).

    Returns:
        One entry per paper row of the tables asked for.

    Raises:
        InputError: a table number the paper does not have.
    """
    from agegender.errors import InputError

    numbers = list(PAPER_TABLES) if tables is None else list(tables)
    unknown = [n for n in numbers if n not in PAPER_TABLES]
    if unknown:
        raise InputError(f"the paper has no table {unknown[0]}; it has tables 1-{max(PAPER_TABLES)}", field="table")
    producers = _producers(params, paths)
    roles = resolve_roles(params.report.roles)
    out = []
    for number in numbers:
        for row in PAPER_TABLES[number].rows:
            our_dataset = roles.get(row.dataset)
            reasons = _why_not(params, producers, row, our_dataset)
            if reasons:
                out.append(RowSource(number, row, our_dataset, PAPER_ONLY, "; ".join(reasons)))
            else:
                producer = producers[row.model]
                out.append(RowSource(number, row, our_dataset, producer.source, producer.detail))
    return out


def source_counts(sources: Iterable[RowSource]) -> dict[str, int]:
    """Rows per source, in `SOURCES` order, sources with no row left out."""
    counts = Counter(s.source for s in sources)
    return {name: counts[name] for name in SOURCES if counts[name]}


#: the columns of both formats: the paper's row, then our data set and the source
COLUMNS: tuple[str, ...] = ("table", "model", "train_dataset", "dataset", "input", "our_dataset", "source", "detail")
_HEADERS = ("Table", "Model", "Train set", "Data set", "Input", "Our data set", "Source", "Detail")


def _cells(entry: RowSource) -> list[str]:
    row = entry.row
    return [
        str(entry.table), row.model, row.train_dataset or "-", row.dataset, row.input, entry.our_dataset or "-",
        entry.source, entry.detail,
    ]  # fmt: skip


def format_csv(sources: Iterable[RowSource]) -> str:
    """The rows as CSV (`COLUMNS`), ids as in params and `paper_results.csv`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_cells(s) for s in sources)
    return buffer.getvalue()


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def format_summary(sources: Sequence[RowSource]) -> str:
    """A markdown table of the number of paper rows per source."""
    lines = [_md_row(("Source", "Paper rows")), "|---|---|"]
    lines += [_md_row((name, str(n))) for name, n in source_counts(sources).items()]
    lines.append(_md_row(("all", str(len(sources)))))
    return "\n".join(lines) + "\n"


def format_markdown(sources: Sequence[RowSource], profile: str) -> str:
    """The rows as a markdown document: what it is, the count per source, then one table line per paper row.

    Args:
        sources: from `paper_row_sources`.
        profile: how the params were named (e.g. "profile `paper`"), for the title.
    """
    lines = [
        f"# Which paper row comes from where: {profile}",
        "",
        "Generated by `agegender paper-rows`. One line per row of the paper's tables (model id, the train set the "
        "table prints, the paper's data set and input) with our data set playing that data set (`report.roles`) "
        "and what produces the row: a zero-shot query, a model fine-tuned or trained here, a released checkpoint, "
        "a specialized model, an external prediction table, or 'paper only' with the reason (its tables then "
        "print the paper's numbers only).",
        "",
        format_summary(sources),
        _md_row(_HEADERS),
        "|" + "|".join("---" for _ in _HEADERS) + "|",
        *(_md_row(_cells(s)) for s in sources),
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "COLUMNS",
    "EXTERNAL",
    "FINE_TUNED",
    "NOT_MADE_HERE",
    "PAPER_ONLY",
    "RELEASED",
    "SOURCES",
    "SPECIALIZED",
    "TRAINED",
    "ZERO_SHOT",
    "FinetunedModel",
    "RowSource",
    "finetune_runs",
    "format_csv",
    "format_markdown",
    "format_summary",
    "paper_row_sources",
    "source_counts",
]
