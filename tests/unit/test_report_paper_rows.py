"""Which paper row comes from where (`agegender.report.paper_rows`, `agegender paper-rows`): on the paper and demo
profiles, and on variants of them made with the profile loader's overrides."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from agegender import cli
from agegender.params import Params, params_from_text
from agegender.paths import ProjectPaths
from agegender.profiles import render
from agegender.report.paper import PAPER_TABLES
from agegender.report.paper_rows import (
    COLUMNS,
    EXTERNAL,
    FINE_TUNED,
    PAPER_ONLY,
    RELEASED,
    SOURCES,
    SPECIALIZED,
    TRAINED,
    ZERO_SHOT,
    RowSource,
    finetune_runs,
    format_summary,
    paper_row_sources,
    source_counts,
)

ROOT = Path(__file__).resolve().parents[2]
PATHS = ProjectPaths.at(ROOT)


def _profile(name: str, *overrides: str) -> Params:
    return params_from_text(render(PATHS, name, overrides), f"{name}.yaml")


def _find(sources: list[RowSource], table: int, model: str, dataset: str | None = None) -> list[RowSource]:
    found = [s for s in sources if s.table == table and s.row.model == model and dataset in (None, s.row.dataset)]
    assert found, (table, model, dataset)
    return found


@pytest.fixture(scope="module")
def paper() -> list[RowSource]:
    return paper_row_sources(_profile("paper"), PATHS)


def test_every_paper_row_gets_exactly_one_line_in_the_papers_order(paper: list[RowSource]) -> None:
    expected = [(n, row) for n, table in PAPER_TABLES.items() for row in table.rows]
    assert [(s.table, s.row) for s in paper] == expected
    assert all(s.source in SOURCES and s.detail for s in paper)
    assert sum(source_counts(paper).values()) == len(paper)


def test_the_paper_profile_says_what_makes_the_known_rows(paper: list[RowSource]) -> None:
    (ft,) = _find(paper, 6, "sharegpt4v-7b-ft")
    assert ft.source == FINE_TUNED
    assert "finetune_mllm" in ft.detail and "models/hf/sharegpt4v-7b-hf" in ft.detail and "imdb_clean" in ft.detail
    for row in (s for s in paper if s.row.model == "mivolo_d1_384"):
        assert row.source in (RELEASED, TRAINED, PAPER_ONLY)
        assert row.source == RELEASED and "predict.models.mivolo_d1_384: models/hf/mivolo_v2" in row.detail
    for model in ("gpt-4v", "gpt-4o"):
        for row in [*_find(paper, 8, model), *_find(paper, 10, model)]:
            assert row.source == ZERO_SHOT and f"query_mllms.models.{model} (openai, gpt-4" in row.detail
    for row in _find(paper, 1, "mivolo_d1_224"):
        assert row.source == PAPER_ONLY and "proprietary" in row.detail and "section 4.1" in row.detail
    for model in ("fp_age", "resnet50_paplham", "ordinalclip", "l2rclip"):
        cited = [s for s in paper if s.row.model == model]
        assert cited and all(r.source == PAPER_ONLY and "the paper cites" in r.detail for r in cited)
    (fp,) = _find(paper, 1, "fp_age")
    assert fp.source == PAPER_ONLY and "predict.external.fp_age" in fp.detail
    # every fine-tuned variant of table 6 is a run of ours; the full-epoch one is the 7B run's last checkpoint
    for model in ("llava15-7b-ft", "sharegpt4v-7b-ft-1ep", "sharegpt4v-13b-ft", "sharegpt4v-7b-ft-face"):
        (row,) = _find(paper, 6, model)
        assert row.source == FINE_TUNED, model
    (epoch,) = _find(paper, 6, "sharegpt4v-7b-ft-1ep")
    assert epoch.detail.startswith("finetune_mllm.runs.sharegpt4v-7b-ft.also_report.sharegpt4v-7b-ft-1ep (")
    assert "last checkpoint" in epoch.detail and "best checkpoint" in ft.detail
    # the profile's roles are the identity: every paper data set is ours
    assert all(s.our_dataset == s.row.dataset for s in paper)


def test_the_demo_maps_the_roles_and_leaves_every_row_to_the_paper() -> None:
    sources = paper_row_sources(_profile("demo"), PATHS)
    assert len(sources) == sum(len(t.rows) for t in PAPER_TABLES.values())
    assert {s.source for s in sources} == {PAPER_ONLY}
    roles = {"lagenda": "demo", "nanolagenda": "nanodemo", "adience": "demoadience"}
    for s in sources:
        assert s.our_dataset == roles.get(s.row.dataset)
        assert s.detail.startswith(f"no model {s.row.model} ")
        if s.our_dataset is None:
            assert f"report.roles.{s.row.dataset} is null" in s.detail


def test_a_model_that_does_not_answer_the_data_set_or_input_leaves_the_row_to_the_paper() -> None:
    params = _profile(
        "paper",
        "query_mllms.models.gpt-4v.datasets=[nanolagenda]",
        "query_mllms.models.gpt-4v.inputs_by_dataset={}",
        "query_mllms.models.gpt-4o.inputs_by_dataset={wild104: [body_wo_face]}",
    )
    sources = paper_row_sources(params, PATHS, [10])
    (v,) = _find(sources, 10, "gpt-4v")
    assert v.source == PAPER_ONLY and v.detail == "query_mllms.models.gpt-4v does not answer wild104"
    (o,) = _find(sources, 10, "gpt-4o")
    assert o.source == PAPER_ONLY
    assert o.detail == "query_mllms.models.gpt-4o answers wild104 with body_wo_face, not body"


def test_a_role_outside_the_study_is_named() -> None:
    params = _profile("paper", "report.roles.cacd=adience")
    sources = paper_row_sources(params, PATHS, [4])
    (row,) = _find(sources, 4, "mivolo_d1_384")
    assert row.source == RELEASED and row.our_dataset == "adience"
    params = _profile("paper", "study.datasets=[lagenda, nanolagenda, imdb_clean, adience, fairface, wild104]")
    (row,) = _find(paper_row_sources(params, PATHS, [4]), 4, "mivolo_d1_384")
    assert row.source == PAPER_ONLY and row.detail == "cacd, which plays CACD, is not in study.datasets"


def test_a_mivolo_checkpoint_train_mivolo_writes_is_trained_here() -> None:
    mivolo = "{model: mivolo, options: {checkpoint: models/mivolo/mivolo.pth.tar}}"
    params = _profile("demo", f"predict.models.mivolo_d1_384={mivolo}", "report.roles.imdb_clean=demo")
    (row,) = _find(paper_row_sources(params, PATHS, [1]), 1, "mivolo_d1_384", "lagenda")
    assert row.source == TRAINED
    assert row.detail == "train_mivolo on demo train -> predict.models.mivolo_d1_384 (models/mivolo/mivolo.pth.tar)"
    # two paper data sets played by one of ours: both rows come from the same predictions
    (imdb,) = _find(paper_row_sources(params, PATHS, [1]), 1, "mivolo_d1_384", "imdb_clean")
    assert imdb.source == TRAINED and imdb.our_dataset == "demo"
    # the same file when this profile trains no MiVOLO: a file from outside
    params = _profile("demo", f"predict.models.mivolo_d1_384={mivolo}", "train_mivolo.dataset=null")
    (row,) = _find(paper_row_sources(params, PATHS, [1]), 1, "mivolo_d1_384", "lagenda")
    assert row.source == RELEASED and row.detail == "predict.models.mivolo_d1_384: models/mivolo/mivolo.pth.tar"


def test_external_tables_and_specialized_models_without_files() -> None:
    params = _profile(
        "paper",
        "predict.external={fp_age: {path: fp_age.parquet}}",
        "predict.models.l2rclip={model: baseline, options: {train_dataset: imdb_clean}, inputs: [face]}",
    )
    sources = paper_row_sources(params, PATHS, [1, 7])
    (fp, *_) = _find(sources, 1, "fp_age")
    assert fp.source == EXTERNAL and fp.detail == "predict.external.fp_age: fp_age.parquet"
    (l2r,) = _find(sources, 7, "l2rclip")
    assert l2r.source == SPECIALIZED and l2r.detail == "predict.models.l2rclip (baseline)"


def test_finetune_runs_lists_every_model_a_run_reports() -> None:
    found = {m.name: m for m in finetune_runs(_profile("paper"))}
    assert set(found) == {
        "sharegpt4v-7b-ft", "sharegpt4v-7b-ft-1ep", "sharegpt4v-13b-ft", "llava15-7b-ft", "sharegpt4v-7b-ft-face",
    }  # fmt: skip
    best, last = found["sharegpt4v-7b-ft"], found["sharegpt4v-7b-ft-1ep"]
    assert (best.where, best.base, best.train_dataset, best.input_kind, best.checkpoint) == (
        "finetune_mllm.runs.sharegpt4v-7b-ft", "models/hf/sharegpt4v-7b-hf", "imdb_clean", "body", "best",
    )  # fmt: skip
    assert best.inputs == ("body", "body_wo_face")
    # the full-epoch model: the same training, its last checkpoint, on the paper's one row
    assert (last.base, last.checkpoint, last.inputs, last.datasets) == (best.base, "last", ("body",), ("lagenda",))
    assert found["sharegpt4v-7b-ft-face"].input_kind == "face"
    demo = {m.name: m for m in finetune_runs(_profile("demo"))}
    assert (
        demo["tiny_llava_ft"].base == "a tiny llava built from configs" and demo["tiny_llava_ft"].input_kind == "face"
    )
    assert demo["tiny_llava_ft_body"].input_kind == "body" and demo["tiny_llava_ft_body"].checkpoint == "last"
    sources = paper_row_sources(_profile("paper"), PATHS, [6, 10])
    assert (
        _find(sources, 6, "sharegpt4v-13b-ft")[0].source == FINE_TUNED
        and _find(sources, 10, "sharegpt4v-13b-ft")[0].source == FINE_TUNED
    )


def test_a_profile_that_fine_tunes_nothing_leaves_the_rows_to_the_paper() -> None:
    params = _profile("paper", "finetune_mllm.runs={}")
    assert finetune_runs(params) == []
    (row,) = _find(paper_row_sources(params, PATHS, [6]), 6, "sharegpt4v-7b-ft")
    assert row.source == PAPER_ONLY and row.detail.startswith("no model sharegpt4v-7b-ft ")


def test_the_command_prints_markdown_and_csv(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["paper-rows", "--profile", "paper", "--root", str(ROOT), "--table", "6", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert tuple(rows[0]) == COLUMNS and len(rows) == len(PAPER_TABLES[6].rows)
    assert rows[1]["model"] == "sharegpt4v-7b-ft" and rows[1]["source"] == FINE_TUNED
    assert cli.main(["paper-rows", "params.yaml", "--root", str(ROOT), "--table", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Which paper row comes from where: params file `params.yaml`\n")
    assert "| paper only | 16 |" in out
    assert cli.main(["paper-rows", "--profile", "paper", "--root", str(ROOT), "--table", "11"]) == 2
    assert "the paper has no table 11" in capsys.readouterr().err


def test_the_committed_list_and_readme_summary_are_the_commands_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["paper-rows", "--profile", "paper", "--root", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert (ROOT / "docs" / "paper_rows.md").read_text() == out, "regenerate: agegender paper-rows --profile paper"
    summary = format_summary(paper_row_sources(_profile("paper"), PATHS))
    assert summary in (ROOT / "README.md").read_text(), "README's summary: agegender paper-rows --profile paper"
