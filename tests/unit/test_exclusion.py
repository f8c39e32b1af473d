"""The refusal exclusion (NanoLAGENDA as the paper built it) and the `kept` view it gives every model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agegender.data.schema import validate_predictions, validate_samples
from agegender.errors import InputError
from agegender.evaluate import evaluate_tables, read_exclusion_counts, read_rows_json, write_rows_json
from agegender.exclusion import (
    EXCLUSION_COLUMNS,
    PAPER_NANOLAGENDA_COUNTS,
    describe_counts,
    excluded_ids,
    exclusion_counts,
    flat_exclusion_metrics,
    refusal_exclusions,
    write_exclusions,
)
from agegender.metrics import evaluate, flat_metrics, scored_samples
from agegender.params import RefusalExclusion, params_from_dict
from agegender.report.paper import PAPER_TABLES
from agegender.report.tables import write_tables

DEMO_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "demo.yaml"
AGES = [5.0, 12.0, 23.0, 37.0, 44.0, 58.0, 66.0, 81.0]
#: gpt refuses n1 and n4 on body and n6 on body_wo_face (so n6 leaves the data set on both inputs)
REFUSED = {("n1", "body"), ("n4", "body"), ("n6", "body_wo_face")}
#: llava's own failure to answer: not an exclusion, it only lowers llava's coverage
UNPARSED = {("n2", "body")}


def _samples() -> pd.DataFrame:
    rows = [(f"n{i}", "nano", age, "male" if i % 2 else "female") for i, age in enumerate(AGES)]
    rows += [(f"o{i}", "other", age, "female") for i, age in enumerate(AGES[:3])]
    frame = pd.DataFrame(rows, columns=["sample_id", "dataset", "age", "gender"])
    frame["split"] = "test"
    frame["image_path"] = frame["sample_id"] + ".jpg"
    return validate_samples(frame)


def _predictions() -> pd.DataFrame:
    rows = []
    for i, age in enumerate(AGES):
        sid, gender = f"n{i}", "male" if i % 2 else "female"
        for model, error in (("gpt", 3.0), ("llava", -5.0)):
            for kind in ("body", "body_wo_face"):
                status = "refused" if model == "gpt" and (sid, kind) in REFUSED else "ok"
                status = "unparsed" if model == "llava" and (sid, kind) in UNPARSED else status
                answered = status == "ok"
                rows.append((sid, model, kind, age + error if answered else None, gender if answered else None, status))
        rows.append((sid, "mivolo", "face_body", age + 1.0, gender, "ok"))
    for i, age in enumerate(AGES[:3]):
        rows.append((f"o{i}", "mivolo", "face_body", age, "female", "ok"))
    columns = ["sample_id", "model", "input", "age_pred", "gender_pred", "status"]
    return validate_predictions(pd.DataFrame(rows, columns=columns))


RULES = {"nano": RefusalExclusion(model="gpt")}


def test_the_exclusion_lists_exactly_the_refused_answers(tmp_path):
    table = refusal_exclusions(_samples(), _predictions(), RULES)
    assert list(table.columns) == list(EXCLUSION_COLUMNS)
    assert {(r.sample_id, r.input) for r in table.itertuples()} == REFUSED
    assert set(table["model"]) == {"gpt"} and set(table["status"]) == {"refused"} and set(table["dataset"]) == {"nano"}
    assert excluded_ids(table, RULES) == {"nano": frozenset({"n1", "n4", "n6"})}
    written = pd.read_csv(write_exclusions(table, tmp_path / "exclusions.csv"), dtype=str)
    pd.testing.assert_frame_equal(written, table.astype(str))
    counts = exclusion_counts(_samples(), table, RULES)
    assert counts.to_dict("records") == [
        {"dataset": "nano", "model": "gpt", "n_drawn": 8, "n_excluded": 3, "n_kept": 5}
    ]
    assert flat_exclusion_metrics(counts) == {
        "nano.exclusion.gpt.n_drawn": 8,
        "nano.exclusion.gpt.n_excluded": 3,
        "nano.exclusion.gpt.n_kept": 5,
    }
    assert describe_counts(counts) == "nano: 8 drawn, 3 removed for every model (refused by gpt), 5 kept"


def test_statuses_and_inputs_choose_which_answers_exclude():
    only_body = refusal_exclusions(_samples(), _predictions(), {"nano": RefusalExclusion("gpt", inputs=("body",))})
    assert set(only_body["sample_id"]) == {"n1", "n4"}
    by_llava = refusal_exclusions(_samples(), _predictions(), {"nano": RefusalExclusion("llava", ("unparsed",))})
    assert by_llava[["sample_id", "input", "status"]].values.tolist() == [["n2", "body", "unparsed"]]
    assert refusal_exclusions(_samples(), _predictions(), {}).empty


def test_an_exclusion_by_a_model_that_never_ran_is_an_error():
    with pytest.raises(InputError, match="'gpt4o' has no predictions on 'nano'"):
        refusal_exclusions(_samples(), _predictions(), {"nano": RefusalExclusion("gpt4o")})
    with pytest.raises(InputError, match="no evaluated samples"):
        refusal_exclusions(_samples(), _predictions(), {"absent": RefusalExclusion("gpt")})


def test_every_model_is_scored_on_the_same_kept_samples():
    result = evaluate_tables(_samples(), _predictions(), exclude_refused=RULES)
    rows = result.rows
    kept = rows[rows["view"] == "kept"]
    # the kept view exists for the data set with an exclusion only, for every model and input there
    assert set(kept["dataset"]) == {"nano"}
    assert set(zip(kept["model"], kept["input"], strict=True)) == {
        ("gpt", "body"),
        ("gpt", "body_wo_face"),
        ("llava", "body"),
        ("llava", "body_wo_face"),
        ("mivolo", "face_body"),
    }
    assert set(kept["n_total"]) == {5}
    kept_ids = {"n0", "n2", "n3", "n5", "n7"}
    scored = scored_samples(_samples(), _predictions(), "kept", excluded_ids(result.exclusions, RULES))
    scored = scored[scored["dataset"] == "nano"]
    by_row = scored.groupby(["model", "input"])["sample_id"].apply(frozenset).to_dict()
    # every model and input scores the kept samples, except llava's own unanswered n2 on body
    assert by_row == {
        ("gpt", "body"): kept_ids,
        ("gpt", "body_wo_face"): kept_ids,
        ("llava", "body"): kept_ids - {"n2"},
        ("llava", "body_wo_face"): kept_ids,
        ("mivolo", "face_body"): kept_ids,
    }
    n = kept.set_index(["model", "input"])["n_answered"].to_dict()
    assert n == {k: len(v) for k, v in by_row.items()}
    # mivolo errs by +1 everywhere: the same MAE, now on 5 of 8 samples; its answered row keeps all 8
    mivolo = rows[(rows["model"] == "mivolo") & (rows["dataset"] == "nano")].set_index("view")
    assert mivolo.loc["answered", "n_answered"] == 8 and mivolo.loc["kept", "n_answered"] == 5
    assert mivolo.loc["kept", "age_mae"] == pytest.approx(1.0)
    # gpt answered every kept sample, so its kept coverage is 1 where its answered coverage is 6/8 (body)
    gpt = kept[(kept["model"] == "gpt") & (kept["input"] == "body")].iloc[0]
    assert gpt["coverage"] == 1.0
    # the common view lies inside the kept samples: llava's n2 leaves it for every body model
    common = rows[(rows["view"] == "common") & (rows["dataset"] == "nano") & (rows["input"] == "body")]
    assert set(common["n_answered"]) == {4} and set(common["n_total"]) == {5}
    # the age groups (figure 3) are those of the kept view
    groups = result.age_groups[(result.age_groups["model"] == "mivolo") & (result.age_groups["dataset"] == "nano")]
    assert groups["n"].sum() == 5


def test_without_an_exclusion_nothing_changes():
    plain = evaluate(_samples(), _predictions())
    assert "kept" not in set(plain["view"])
    nothing = evaluate(_samples(), _predictions(), excluded={"nano": frozenset()})
    kept = nothing[nothing["view"] == "kept"].drop(columns="view").reset_index(drop=True)
    answered = plain[(plain["view"] == "answered") & (plain["dataset"] == "nano")]
    pd.testing.assert_frame_equal(kept, answered.drop(columns="view").reset_index(drop=True))
    pd.testing.assert_frame_equal(nothing[nothing["view"] != "kept"].reset_index(drop=True), plain)


def test_flat_keys_give_the_kept_view_its_suffix(tmp_path):
    result = evaluate_tables(_samples(), _predictions(), exclude_refused=RULES)
    flat = flat_metrics(result.rows, views=("answered", "common", "kept"))
    assert flat["nano.face_body.mivolo.n_total"] == 8
    assert flat["nano.face_body.mivolo.common.n_total"] == 5
    assert flat["nano.face_body.mivolo.kept.n_total"] == 5
    assert not any(k.startswith("other.") and ".kept." in k for k in flat)
    path = write_rows_json(result.rows, tmp_path / "evaluation.json", result.exclusion_counts)
    assert json.loads(path.read_text())["exclusions"][0]["n_kept"] == 5
    assert len(read_rows_json(path)) == len(result.rows)
    pd.testing.assert_frame_equal(read_exclusion_counts(path), result.exclusion_counts)
    # without exclusions the file is what it always was
    bare = write_rows_json(result.rows, tmp_path / "bare.json")
    assert "exclusions" not in json.loads(bare.read_text()) and read_exclusion_counts(bare).empty


def test_table8_uses_the_kept_view_and_states_the_counts(tmp_path):
    assert PAPER_TABLES[8].view == "kept"
    assert {n for n, t in PAPER_TABLES.items() if t.view != "answered"} == {8}
    result = evaluate_tables(_samples(), _predictions(), exclude_refused=RULES)
    write_tables(
        result.rows, tmp_path, roles={"nanolagenda": "nano"}, exclusion_counts=result.exclusion_counts, caption_note="x"
    )
    text = (tmp_path / "table8.md").read_text(encoding="utf-8")
    caption = text.splitlines()[0]
    assert "Our rows on nano: each model on the samples it answered among those kept" in caption
    assert "nano: 8 drawn, 3 removed for every model (refused by gpt), 5 kept" in caption
    assert PAPER_NANOLAGENDA_COUNTS in caption
    mivolo = next(line for line in text.splitlines() if line.startswith("| mivolo | Body & face"))
    assert "| 5/5 (100.00%) |" in mivolo
    # a table the paper scored per model stays in the answered view: table 9 would show all 8
    write_tables(result.rows, tmp_path / "lagenda", roles={"lagenda": "nano"}, exclusion_counts=result.exclusion_counts)
    table9 = (tmp_path / "lagenda" / "table9.md").read_text(encoding="utf-8")
    assert "| 8/8 (100.00%) |" in table9


def test_table8_without_an_exclusion_says_its_rows_are_per_model(tmp_path):
    write_tables(evaluate(_samples(), _predictions()), tmp_path, roles={"nanolagenda": "nano"})
    caption = (tmp_path / "table8.md").read_text(encoding="utf-8").splitlines()[0]
    assert "Our rows on nano: each model on the samples it answered ('answered' view), as no refusal exclusion" in (
        caption
    )
    assert "the paper's table used the 'kept' view" in caption


def _demo_params_with(rules: dict) -> object:
    data = yaml.safe_load(DEMO_PROFILE.read_text())
    data["evaluate"]["exclude_refused"] = rules
    return params_from_dict(data)


def test_params_name_the_excluding_model():
    params = _demo_params_with({"nanodemo": {"model": "baseline", "inputs": ["face_body"]}})
    assert params.evaluate.exclude_refused == {"nanodemo": RefusalExclusion("baseline", inputs=("face_body",))}
    # the demo profile runs the step: its tiny LLaVA decides (and, untrained, refuses nothing)
    assert params_from_dict(yaml.safe_load(DEMO_PROFILE.read_text())).evaluate.exclude_refused == {
        "nanodemo": RefusalExclusion("tiny_llava")
    }
    with pytest.raises(InputError, match="exclude_refused.nanodemo.model: 'gpt' is not a model"):
        _demo_params_with({"nanodemo": {"model": "gpt"}})
    with pytest.raises(InputError, match="statuses"):
        _demo_params_with({"nanodemo": {"model": "baseline", "statuses": ["ok"]}})
    with pytest.raises(InputError, match="'nowhere' is not a data set of prepare_data"):
        _demo_params_with({"nowhere": {"model": "baseline"}})
    # a cut-down study without the data set keeps the rule inert: its model need not be there
    data = yaml.safe_load(DEMO_PROFILE.read_text())
    data["study"]["datasets"], data["query_mllms"]["models"], data["finetune_mllm"]["runs"] = ["demo"], {}, {}
    assert params_from_dict(data).evaluate.exclude_refused == {"nanodemo": RefusalExclusion("tiny_llava")}
    rows = evaluate_tables(_samples(), _predictions(), datasets=["other"], exclude_refused=RULES).rows
    assert "kept" not in set(rows["view"])
