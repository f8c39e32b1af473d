"""The paper's reported numbers (tables 1-10) as data, and the layout of each table.

The numbers live in `paper_results.csv` next to this module (long format, one row per printed
number, rates as fractions) so that they can be diffed, reviewed and joined to our own metrics
without parsing the paper again. `PAPER_TABLES` describes how the paper lays each table out
(which rows, in which order, which metric columns), which is what `agegender.report.tables`
fills with our rows.

Transcription choices that the paper leaves implicit:

- Table 1's FP-Age row is a face-only model (input `face`); table 4's ResNet-50 (Paplham et al.)
  and table 7's OrdinalCLIP / L2RCLIP are face models too.
- Table 7's "Age MAE, %" is the MAE on class indices (stored as printed, `class_mae` 0.47), and
  "Age Acc" of tables 5 and 7 is the class accuracy (`class_acc`).
- Table 7's "ShareGPT4V 7B FT / Face" row is the face-fine-tuned model (`sharegpt4v-7b-ft-face`,
  the caption says FT models are fine-tuned on the corresponding input).
- Table 10 prints no input column; the MLLMs are taken as evaluated on the body crop and
  MiVOLO-384 in face + body mode, as in every other table.
- `train_dataset` is filled only where the table prints it (tables 1-3); MiVOLO-384 was trained
  on the extended LAGENDA train set (`lagenda_ext`).
- Table 6 (ShareGPT4V-7b 0.4 epoch on LAGENDA: MAE 3.87) and table 9 (the same model on
  LAGENDA: MAE 3.52) disagree in the paper itself; both are stored under their own table number.
- Which samples a table scores (`PaperTable.view`): table 8 is on NanoLAGENDA after the samples
  ChatGPT4V refused were removed for every model (section 4.1: "> 21% of these images had to be
  removed because ChatGPT refused to provide answers. As a result, this dataset contains 3,062
  samples"), so it uses the `kept` view. Section 4.2 also says of ChatGPT4V's failures in general
  "We decided to remove such samples", without saying whether other models lost them too; table 10
  (Wild104) is therefore left in the `answered` view (each model on its own answers), like the tables
  whose rows answer every sample.

Rows of models trained here: tables 4 and 5 add, under the paper's MiVOLO-384 (the authors' weights), a row for
MiVOLO-384 trained by this project with the paper's recipe (section 3.3) on IMDB-clean train. Its model id is the
paper's id and the training set (`trained_here_key`), so predictions of one architecture trained on different data
never fill one another's rows, and the paper prints no number beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from agegender.errors import InputError
from agegender.metrics import METRICS

#: the file inside this package that holds the numbers.
PAPER_RESULTS_FILE = "paper_results.csv"

PAPER_COLUMNS: tuple[str, ...] = ("table", "model", "train_dataset", "dataset", "input", "metric", "value")

#: canonical ids used in `paper_results.csv`.
PAPER_DATASETS: tuple[str, ...] = ("lagenda", "imdb_clean", "nanolagenda", "adience", "fairface", "cacd", "wild104")
#: the metrics the paper reports (`MetricDef.in_paper`); percent metrics are stored as fractions, as we compute them.
PAPER_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.in_paper)


def trained_here_key(paper_model: str, train_dataset: str) -> str:
    """The model id of predictions by a model this project trained: the paper's id, `@`, the training set
    (`mivolo_d1_384@imdb_clean`); the key of the model in `predict.models` and its rows in the tables."""
    return f"{paper_model}@{train_dataset}"


#: MiVOLO-384 trained here with the paper's section 3.3 recipe on IMDB-clean train (the paper profile's train_mivolo)
MIVOLO_384_TRAINED_HERE = trained_here_key("mivolo_d1_384", "imdb_clean")

#: model id -> the name the paper prints (and the names of the rows trained here).
MODEL_NAMES: dict[str, str] = {
    "mivolo_d1_224": "MiVOLO-224",
    "mivolo_d1_384": "MiVOLO-384",
    "fp_age": "FP-Age",
    "resnet50_paplham": "ResNet-50",
    "ordinalclip": "OrdinalCLIP",
    "l2rclip": "L2RCLIP",
    "llava15-7b": "LLaVA 1.5 7B",
    "llava-next-34b": "LLaVA-NeXT 34B",
    "sharegpt4v-7b": "ShareGPT4V 7B",
    "sharegpt4v-7b-ft": "ShareGPT4V 7B FT",
    "sharegpt4v-7b-ft-1ep": "ShareGPT4V 7B FT 1 epoch",
    "sharegpt4v-13b-ft": "ShareGPT4V 13B FT",
    "llava15-7b-ft": "LLaVA 1.5 7B FT",
    "sharegpt4v-7b-ft-face": "ShareGPT4V 7B FT (face)",
    "gpt-4v": "ChatGPT4V",
    "gpt-4o": "ChatGPT4O",
    MIVOLO_384_TRAINED_HERE: "MiVOLO-384 (trained here, IMDB-clean train)",
}

#: data set id -> the name the paper prints.
DATASET_NAMES: dict[str, str] = {
    "lagenda": "LAGENDA",
    "lagenda_ext": "LAGENDA_ext",
    "imdb_clean": "IMDB-clean",
    "nanolagenda": "NanoLAGENDA",
    "adience": "Adience",
    "fairface": "FairFace",
    "cacd": "CACD",
    "wild104": "Wild104",
}

#: input kind -> the paper's wording.
INPUT_NAMES: dict[str, str] = {
    "face_body": "Body & face",
    "body": "Entire body",
    "body_wo_face": "W/o face",
    "face": "Face",
}


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: which model, on which data, with which input."""

    model: str
    dataset: str
    input: str
    train_dataset: str | None = None


@dataclass(frozen=True)
class PaperTable:
    """The layout of one paper table.

    Attributes:
        number: 1..10.
        caption: the paper's caption.
        datasets: paper data set ids the table reports on, in the paper's order.
        inputs: input kinds shown, in the paper's order.
        metrics: metric columns, in the paper's order.
        key_columns: which of `model`, `train_dataset`, `dataset`, `input` the table prints as
            row labels (the paper's row grouping: rows are grouped by model, then these keys).
        rows: the paper's rows, in the paper's order, including rows printed only as "-".
        view: the evaluation view the paper's numbers correspond to (`agegender.metrics.VIEWS`):
            `kept` where the paper removed a model's refusals for every model, else `answered`.
    """

    number: int
    caption: str
    datasets: tuple[str, ...]
    inputs: tuple[str, ...]
    metrics: tuple[str, ...]
    key_columns: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    view: str = "answered"


def _rows(model_specs: list[tuple[str, str | None]], datasets: tuple[str, ...], inputs: tuple[str, ...]) -> tuple:
    """Cross (model, train set) with data sets and inputs in the paper's nesting order: model, data set, input."""
    return tuple(
        PaperRow(model=m, dataset=d, input=i, train_dataset=t) for m, t in model_specs for d in datasets for i in inputs
    )


_AGE3 = ("age_mape", "age_mae", "age_cs5")
_AGE3_GENDER = (*_AGE3, "gender_acc")

PAPER_TABLES: dict[int, PaperTable] = {
    1: PaperTable(
        1,
        "Comparison of MiVOLO-224 and MiVOLO-384. Age performance in face + body mode.",
        ("imdb_clean", "lagenda"),
        ("face_body",),
        _AGE3,
        ("model", "train_dataset", "dataset"),
        (
            PaperRow("fp_age", "imdb_clean", "face", "imdb_clean"),
            *_rows(
                [("mivolo_d1_224", "lagenda"), ("mivolo_d1_384", "lagenda_ext")],
                ("imdb_clean", "lagenda"),
                ("face_body",),
            ),
        ),
    ),
    2: PaperTable(
        2,
        "Comparison of MiVOLO-224 and MiVOLO-384. Age performance in body only mode. LAGENDA in the train column "
        "refers to a part of the dataset used for training.",
        ("imdb_clean", "lagenda"),
        ("body_wo_face",),
        _AGE3,
        ("model", "train_dataset", "dataset"),
        _rows(
            [("mivolo_d1_224", "lagenda"), ("mivolo_d1_384", "lagenda_ext")],
            ("imdb_clean", "lagenda"),
            ("body_wo_face",),
        ),
    ),
    3: PaperTable(
        3,
        "Comparison of MiVOLO-224 and MiVOLO-384. Gender Accuracy.",
        ("imdb_clean", "lagenda"),
        ("face_body",),
        ("gender_acc",),
        ("model", "train_dataset", "dataset"),
        (
            PaperRow("fp_age", "imdb_clean", "face", "imdb_clean"),
            *_rows(
                [("mivolo_d1_224", "lagenda"), ("mivolo_d1_384", "lagenda_ext")],
                ("imdb_clean", "lagenda"),
                ("face_body",),
            ),
        ),
    ),
    4: PaperTable(
        4,
        "Comparison of models using the CACD test split. MiVOLO models are evaluated in face + body mode.",
        ("cacd",),
        ("face_body", "face"),
        ("age_mae", "age_cs5"),
        ("model",),
        (
            PaperRow("resnet50_paplham", "cacd", "face"),
            PaperRow("mivolo_d1_224", "cacd", "face_body"),
            PaperRow("mivolo_d1_384", "cacd", "face_body"),
            PaperRow(MIVOLO_384_TRAINED_HERE, "cacd", "face_body", "imdb_clean"),
        ),
    ),
    5: PaperTable(
        5,
        "Comparison of models using the FairFace validation margin125 split. MiVOLO models are evaluated in "
        "face + body mode.",
        ("fairface",),
        ("face_body",),
        ("class_acc", "gender_acc"),
        ("model",),
        _rows(
            [("mivolo_d1_224", None), ("mivolo_d1_384", None), (MIVOLO_384_TRAINED_HERE, "imdb_clean")],
            ("fairface",),
            ("face_body",),
        ),
    ),
    6: PaperTable(
        6,
        "Comparison of fine-tuned MLLMs on LAGENDA benchmark.",
        ("lagenda",),
        ("body", "face"),
        ("age_mae", "age_cs5", "gender_acc"),
        ("model", "input"),
        (
            PaperRow("llava15-7b-ft", "lagenda", "body"),
            PaperRow("sharegpt4v-7b-ft", "lagenda", "body"),
            PaperRow("sharegpt4v-7b-ft-1ep", "lagenda", "body"),
            PaperRow("sharegpt4v-13b-ft", "lagenda", "body"),
            PaperRow("sharegpt4v-7b-ft-face", "lagenda", "face"),
        ),
    ),
    7: PaperTable(
        7,
        "Comparison of models using Adience benchmark. MAE here is calculated on classification labels. FT denotes "
        "models that are fine-tuned version on the corresponding input.",
        ("adience",),
        ("face", "face_body", "body"),
        ("class_acc", "class_mae", "gender_acc"),
        ("model", "input"),
        (
            PaperRow("ordinalclip", "adience", "face"),
            PaperRow("l2rclip", "adience", "face"),
            PaperRow("mivolo_d1_224", "adience", "face_body"),
            PaperRow("mivolo_d1_384", "adience", "face_body"),
            PaperRow("sharegpt4v-7b-ft", "adience", "body"),
            PaperRow("sharegpt4v-7b-ft-face", "adience", "face"),
        ),
    ),
    8: PaperTable(
        8,
        "Comparison of performance on NanoLAGENDA benchmark. Models are evaluated with different type of input "
        "information.",
        ("nanolagenda",),
        ("body", "face_body", "body_wo_face"),
        _AGE3_GENDER,
        ("model", "input"),
        (
            *_rows(
                [(m, None) for m in ("llava15-7b", "llava-next-34b", "sharegpt4v-7b", "gpt-4v", "gpt-4o")],
                ("nanolagenda",),
                ("body", "body_wo_face"),
            ),
            *_rows([("mivolo_d1_384", None)], ("nanolagenda",), ("face_body", "body_wo_face")),
            *_rows(
                [("sharegpt4v-7b-ft", None), ("sharegpt4v-13b-ft", None)], ("nanolagenda",), ("body", "body_wo_face")
            ),
        ),
        view="kept",
    ),
    9: PaperTable(
        9,
        "Comparison of performance on IMDB and LAGENDA benchmarks.",
        ("imdb_clean", "lagenda"),
        ("face_body", "body"),
        _AGE3_GENDER,
        ("model", "dataset"),
        (
            *_rows([("mivolo_d1_384", None)], ("imdb_clean", "lagenda"), ("face_body",)),
            *_rows([("llava-next-34b", None), ("sharegpt4v-7b-ft", None)], ("imdb_clean", "lagenda"), ("body",)),
        ),
    ),
    10: PaperTable(
        10,
        "Comparison of performance on the Wild104 benchmark.",
        ("wild104",),
        ("body", "face_body"),
        _AGE3_GENDER,
        ("model",),
        (
            PaperRow("gpt-4v", "wild104", "body"),
            PaperRow("gpt-4o", "wild104", "body"),
            PaperRow("llava-next-34b", "wild104", "body"),
            PaperRow("mivolo_d1_384", "wild104", "face_body"),
            PaperRow("sharegpt4v-7b-ft", "wild104", "body"),
            PaperRow("sharegpt4v-13b-ft", "wild104", "body"),
        ),
    ),
}


def resolve_roles(roles: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """Paper data set id -> our data set playing its role: `roles` as given (`report.roles`; None: nothing plays
    it), every paper data set missing from it playing itself, so that a profile on the real data sets needs none.
    """
    resolved: dict[str, str | None] = {d: d for d in PAPER_DATASETS}
    resolved.update(roles or {})
    return resolved


def load_paper_results() -> pd.DataFrame:
    """Load the paper's reported numbers (tables 1-10) shipped with the package.

    Returns:
        A long table with columns `table` (int), `model`, `train_dataset` (null where the table does
        not print it), `dataset`, `input`, `metric` (str) and `value` (float; rates as fractions,
        e.g. CS@5 69.84 % -> 0.6984), one row per number printed in the paper, in the paper's order.

    Raises:
        InputError: if the packaged file is damaged (missing column, unknown id, bad value).
    """
    source = resources.files("agegender.report").joinpath(PAPER_RESULTS_FILE)
    with resources.as_file(source) as path:
        frame = pd.read_csv(path, dtype={"train_dataset": "string"}, keep_default_na=False, na_values=[""])
        for col in PAPER_COLUMNS:
            if col not in frame.columns:
                raise InputError("required column is missing", file=path, field=col)
        frame = frame.loc[:, list(PAPER_COLUMNS)]
        frame["table"] = frame["table"].astype("int64")
        frame["value"] = frame["value"].astype("float64")
        for col in ("model", "dataset", "input", "metric"):
            frame[col] = frame[col].astype("string")
        frame["train_dataset"] = frame["train_dataset"].astype("string")
        vocab = {
            "dataset": PAPER_DATASETS,
            "input": tuple(INPUT_NAMES),
            "metric": PAPER_METRICS,
            "model": tuple(MODEL_NAMES),
        }
        for col, allowed in vocab.items():
            bad = ~frame[col].isin(allowed)
            if bad.any():
                row = int(bad.to_numpy().argmax()) + 1
                raise InputError(
                    f"{frame[col].iloc[row - 1]!r} is not one of {list(allowed)}", file=path, row=row, field=col
                )
    return frame


def paper_value(
    results: pd.DataFrame, table: int, model: str, dataset: str, input_kind: str, metric: str
) -> float | None:
    """Look up one reported number.

    Args:
        results: the frame from `load_paper_results`.
        table: paper table number.
        model: model id.
        dataset: paper data set id.
        input_kind: input kind.
        metric: metric id.

    Returns:
        The value (fraction for rates), or None where the paper prints none.
    """
    hit = results[
        (results["table"] == table)
        & (results["model"] == model)
        & (results["dataset"] == dataset)
        & (results["input"] == input_kind)
        & (results["metric"] == metric)
    ]
    return None if hit.empty else float(hit["value"].iloc[0])


def model_display_name(model: str, overrides: dict[str, str] | None = None) -> str:
    """Return the paper's name for a model id (or the id itself for models the paper lacks).

    Args:
        model: model id.
        overrides: extra or replacement names, e.g. for demo models.

    Returns:
        The display name.
    """
    if overrides and model in overrides:
        return overrides[model]
    return MODEL_NAMES.get(model, model)
