"""The paper's numbers as packaged data: spot checks against the paper's text, ranges, layout consistency."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from agegender.data.schema import INPUT_KINDS
from agegender.metrics import PERCENT_METRICS
from agegender.report.paper import (
    MODEL_NAMES,
    PAPER_COLUMNS,
    PAPER_DATASETS,
    PAPER_METRICS,
    PAPER_TABLES,
    load_paper_results,
    model_display_name,
    paper_value,
    resolve_roles,
)


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_results()


# (table, model, dataset, input, metric, value as stored): read off the paper by hand, at least one per table
SPOT_CHECKS = [
    (1, "fp_age", "imdb_clean", "face", "age_mae", 4.68),
    (1, "fp_age", "imdb_clean", "face", "age_cs5", 0.6378),
    (1, "mivolo_d1_224", "imdb_clean", "face_body", "age_mape", 0.1143),
    (1, "mivolo_d1_224", "lagenda", "face_body", "age_cs5", 0.7127),
    (1, "mivolo_d1_384", "lagenda", "face_body", "age_mae", 3.65),
    (2, "mivolo_d1_224", "lagenda", "body_wo_face", "age_mape", 0.2888),
    (2, "mivolo_d1_384", "imdb_clean", "body_wo_face", "age_cs5", 0.5211),
    (2, "mivolo_d1_384", "lagenda", "body_wo_face", "age_mae", 6.16),
    (3, "mivolo_d1_224", "imdb_clean", "face_body", "gender_acc", 0.9955),
    (3, "mivolo_d1_384", "lagenda", "face_body", "gender_acc", 0.9799),
    (4, "resnet50_paplham", "cacd", "face", "age_mae", 3.96),
    (4, "mivolo_d1_224", "cacd", "face_body", "age_cs5", 0.7073),
    (4, "mivolo_d1_384", "cacd", "face_body", "age_mae", 3.89),
    (5, "mivolo_d1_224", "fairface", "face_body", "class_acc", 0.6107),
    (5, "mivolo_d1_384", "fairface", "face_body", "gender_acc", 0.975),
    (6, "llava15-7b-ft", "lagenda", "body", "age_cs5", 0.6984),
    (6, "sharegpt4v-7b-ft", "lagenda", "body", "age_mae", 3.87),
    (6, "sharegpt4v-7b-ft-1ep", "lagenda", "body", "gender_acc", 0.9953),
    (6, "sharegpt4v-13b-ft", "lagenda", "body", "age_cs5", 0.7542),
    (6, "sharegpt4v-7b-ft-face", "lagenda", "face", "age_mae", 4.32),
    (7, "ordinalclip", "adience", "face", "class_acc", 0.612),
    (7, "ordinalclip", "adience", "face", "class_mae", 0.47),
    (7, "l2rclip", "adience", "face", "class_mae", 0.36),
    (7, "mivolo_d1_224", "adience", "face_body", "class_mae", 0.345),
    (7, "mivolo_d1_384", "adience", "face_body", "gender_acc", 0.9739),
    (7, "sharegpt4v-7b-ft", "adience", "body", "class_acc", 0.667),
    (7, "sharegpt4v-7b-ft-face", "adience", "face", "class_acc", 0.6795),
    (8, "llava15-7b", "nanolagenda", "body", "age_mape", 0.1686),
    (8, "llava15-7b", "nanolagenda", "body_wo_face", "age_mae", 18.44),
    (8, "llava-next-34b", "nanolagenda", "body", "age_cs5", 0.554),
    (8, "sharegpt4v-7b", "nanolagenda", "body_wo_face", "age_mae", 11.16),
    (8, "gpt-4v", "nanolagenda", "body", "age_mae", 4.66),
    (8, "gpt-4v", "nanolagenda", "body_wo_face", "gender_acc", 0.9302),
    (8, "gpt-4o", "nanolagenda", "body", "age_cs5", 0.7391),
    (8, "gpt-4o", "nanolagenda", "body_wo_face", "age_mape", 0.1539),
    (8, "mivolo_d1_384", "nanolagenda", "face_body", "age_mae", 4.33),
    (8, "mivolo_d1_384", "nanolagenda", "body_wo_face", "age_mae", 7.19),
    (8, "sharegpt4v-7b-ft", "nanolagenda", "body", "gender_acc", 0.9951),
    (8, "sharegpt4v-13b-ft", "nanolagenda", "body_wo_face", "gender_acc", 0.981),
    (9, "mivolo_d1_384", "imdb_clean", "face_body", "gender_acc", 0.9968),
    (9, "llava-next-34b", "imdb_clean", "body", "age_mape", 0.1604),
    (9, "llava-next-34b", "lagenda", "body", "age_mae", 5.19),
    (9, "sharegpt4v-7b-ft", "lagenda", "body", "age_cs5", 0.7966),
    (10, "gpt-4v", "wild104", "body", "age_mape", 0.1995),
    (10, "gpt-4o", "wild104", "body", "gender_acc", 0.9135),
    (10, "llava-next-34b", "wild104", "body", "age_mae", 9.23),
    (10, "mivolo_d1_384", "wild104", "face_body", "age_cs5", 0.5367),
    (10, "sharegpt4v-7b-ft", "wild104", "body", "age_mae", 7.01),
    (10, "sharegpt4v-13b-ft", "wild104", "body", "age_mape", 0.1827),
]


@pytest.mark.parametrize(("table", "model", "dataset", "input_kind", "metric", "expected"), SPOT_CHECKS)
def test_spot_check_against_paper(paper, table, model, dataset, input_kind, metric, expected):
    assert paper_value(paper, table, model, dataset, input_kind, metric) == pytest.approx(expected, abs=1e-9)


def test_spot_checks_cover_every_table():
    assert {c[0] for c in SPOT_CHECKS} == set(range(1, 11))


def test_columns_and_types(paper):
    assert tuple(paper.columns) == PAPER_COLUMNS
    assert paper["table"].dtype == "int64"
    assert paper["value"].dtype == "float64"
    assert paper["value"].notna().all()


def test_number_of_values_per_table(paper):
    # counted by hand in the paper: printed numbers per table ("-" cells are not numbers)
    expected = {1: 14, 2: 12, 3: 4, 4: 5, 5: 4, 6: 15, 7: 16, 8: 64, 9: 24, 10: 24}
    assert paper.groupby("table").size().to_dict() == expected


def test_no_duplicates(paper):
    key = ["table", "model", "train_dataset", "dataset", "input", "metric"]
    assert not paper.duplicated(key).any()


def test_vocabularies(paper):
    assert set(paper["dataset"]) <= set(PAPER_DATASETS)
    assert set(paper["input"]) <= set(INPUT_KINDS)
    assert set(paper["metric"]) <= set(PAPER_METRICS)
    assert set(paper["model"]) <= set(MODEL_NAMES)
    assert set(paper["train_dataset"].dropna()) == {"lagenda", "lagenda_ext", "imdb_clean"}
    # train data set is printed only in tables 1-3
    assert paper.loc[paper["table"] > 3, "train_dataset"].isna().all()
    assert paper.loc[paper["table"] <= 3, "train_dataset"].notna().all()


def test_value_ranges(paper):
    rates = paper[paper["metric"].isin(PERCENT_METRICS)]
    assert ((rates["value"] > 0.1) & (rates["value"] < 1.0)).all(), "rates must be stored as fractions"
    mae = paper[paper["metric"] == "age_mae"]["value"]
    assert ((mae > 3.0) & (mae < 20.0)).all()
    class_mae = paper[paper["metric"] == "class_mae"]["value"]
    assert ((class_mae > 0.3) & (class_mae < 0.5)).all()


def test_every_number_sits_in_its_table_layout(paper):
    for row in paper.itertuples():
        layout = PAPER_TABLES[row.table]
        assert row.metric in layout.metrics, row
        train = None if pd.isna(row.train_dataset) else row.train_dataset
        assert any(
            (r.model, r.dataset, r.input, r.train_dataset) == (row.model, row.dataset, row.input, train)
            for r in layout.rows
        ), row


def test_layouts(paper):
    assert sorted(PAPER_TABLES) == list(range(1, 11))
    for number, layout in PAPER_TABLES.items():
        assert layout.number == number
        assert layout.caption
        assert set(layout.key_columns) <= {"model", "train_dataset", "dataset", "input"}
        assert {r.dataset for r in layout.rows} <= set(layout.datasets)
        assert all(r.model in MODEL_NAMES for r in layout.rows)
        assert len(set(layout.rows)) == len(layout.rows)
    # table 8 in the paper's order: LLaVA first, ShareGPT4V 13B FT without face last
    rows8 = PAPER_TABLES[8].rows
    assert (rows8[0].model, rows8[0].input) == ("llava15-7b", "body")
    assert (rows8[-1].model, rows8[-1].input) == ("sharegpt4v-13b-ft", "body_wo_face")
    assert len(rows8) == 16
    # table 3's FP-Age row is printed with "-" only: in the layout, without numbers
    assert PAPER_TABLES[3].rows[0].model == "fp_age"
    assert paper_value(paper, 3, "fp_age", "imdb_clean", "face", "gender_acc") is None


def test_tables_agree_where_the_paper_repeats_itself(paper):
    # table 9 repeats MiVOLO-384 of tables 1 and 3
    for metric, table in (("age_mae", 1), ("age_mape", 1), ("age_cs5", 1), ("gender_acc", 3)):
        for dataset in ("imdb_clean", "lagenda"):
            a = paper_value(paper, 9, "mivolo_d1_384", dataset, "face_body", metric)
            b = paper_value(paper, table, "mivolo_d1_384", dataset, "face_body", metric)
            assert a is not None and math.isclose(a, b), (metric, dataset)


def test_model_names():
    assert MODEL_NAMES["mivolo_d1_384"] == "MiVOLO-384"
    assert MODEL_NAMES["sharegpt4v-7b-ft"] == "ShareGPT4V 7B FT"
    assert model_display_name("gpt-4o") == "ChatGPT4O"
    assert model_display_name("my-model") == "my-model"
    assert model_display_name("gpt-4o", {"gpt-4o": "GPT-4o"}) == "GPT-4o"


def test_rows_of_models_trained_here_are_named_by_paper_id_and_train_set():
    from agegender.report.paper import MIVOLO_384_TRAINED_HERE, trained_here_key

    assert trained_here_key("mivolo_d1_384", "imdb_clean") == MIVOLO_384_TRAINED_HERE == "mivolo_d1_384@imdb_clean"
    for number in (4, 5):
        rows = PAPER_TABLES[number].rows
        models = [r.model for r in rows]
        # right under the paper's MiVOLO-384 (the authors' weights), with its training set
        assert models.index(MIVOLO_384_TRAINED_HERE) == models.index("mivolo_d1_384") + 1
        assert rows[models.index(MIVOLO_384_TRAINED_HERE)].train_dataset == "imdb_clean"
    assert MIVOLO_384_TRAINED_HERE not in set(load_paper_results()["model"])  # the paper has no number for it


def test_resolve_roles_lets_a_paper_data_set_missing_from_the_roles_play_itself() -> None:
    roles = resolve_roles({"lagenda": "demo", "imdb_clean": None})
    assert roles["lagenda"] == "demo" and roles["imdb_clean"] is None and roles["cacd"] == "cacd"
    assert set(roles) == set(PAPER_DATASETS)
    assert resolve_roles(None) == {d: d for d in PAPER_DATASETS}
