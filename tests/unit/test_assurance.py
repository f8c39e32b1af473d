"""Age-assurance rates (NIST IR 8525): each rate by hand, the min_n rule, intervals, params, tolerances, report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from agegender.assurance import assurance_metrics, in_range, too_few_text
from agegender.metrics import METRICS, evaluate, flat_metrics
from agegender.params import AssuranceParams, params_from_dict
from agegender.report.figures import FIGURE_NAMES, assurance_figure
from agegender.report.tables import write_tables
from agegender.tolerances import tolerance_for

REPO = Path(__file__).resolve().parents[2]
RATES = ("challenge25_fpr", "challenge21_fpr", "minor_as_adult", "child_band_tpr", "child_band_adult_fpr")
COUNTS = ("challenge_n", "minor_n", "child_band_n", "adult_n")

# true age -> estimate; the comments say which populations a person is in (C: 14-17, M: < 18, B: 13-16, A: 18+)
PEOPLE = [
    (14.0, 25.0),  # C M B: at 25 exactly counts as 25+ (and 21+, 18+), outside the band
    (15.0, 21.0),  # C M B: 21+ but not 25+
    (16.0, 14.0),  # C M B: in the band
    (17.0, 18.0),  # C M: 18 exactly is an adult estimate
    (17.5, 30.0),  # C M: 17.5 is still under 18
    (12.0, 19.0),  # M: a minor as an adult, in no other population
    (20.0, 15.0),  # A: an adult estimated inside the band
    (30.0, 40.0),  # A
    (13.0, 13.0),  # M B: 13 is the band's lower end, inside
    (16.0, 17.0),  # C M B: 17 is the band's upper end, outside
]
EXPECTED = {
    "challenge_n": 6,  # 14, 15, 16, 17, 17.5, 16
    "challenge25_fpr": 2 / 6,  # 25, 30
    "challenge21_fpr": 3 / 6,  # 25, 21, 30
    "minor_n": 8,  # all but 20 and 30
    "minor_as_adult": 5 / 8,  # 25, 21, 18, 30, 19
    "child_band_n": 5,  # 14, 15, 16, 13, 16
    "child_band_tpr": 2 / 5,  # 14, 13
    "adult_n": 2,  # 20, 30
    "child_band_adult_fpr": 1 / 2,  # 15
}


def _tables(people=PEOPLE, status: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ages, preds = zip(*people, strict=True)
    ids = [f"s{i}" for i in range(len(people))]
    samples = pd.DataFrame({"sample_id": ids, "dataset": "d", "age": ages, "age_class": None, "gender": "male"}).astype(
        {"age_class": "object"}
    )
    predictions = pd.DataFrame(
        {
            "sample_id": ids,
            "model": "m",
            "input": "face",
            "age_pred": preds,
            "gender_pred": "male",
            "status": status or ["ok"] * len(people),
        }
    )
    return samples, predictions


def _evaluate(min_n: int = 1, people=PEOPLE, status: list[str] | None = None, **kwargs) -> pd.DataFrame:
    samples, predictions = _tables(people, status)
    extra = assurance_metrics(AssuranceParams(min_n=min_n))
    return evaluate(samples, predictions, extra_metrics=extra, views=("answered",), **kwargs)


def test_each_rate_and_count_by_hand() -> None:
    row = _evaluate().iloc[0]
    for name, value in EXPECTED.items():
        assert row[name] == pytest.approx(value, abs=1e-15), name
    assert [d.name for d in assurance_metrics(AssuranceParams())] == list(RATES)
    assert [d.count_column for d in assurance_metrics(AssuranceParams())] == [
        "challenge_n",
        "challenge_n",
        "minor_n",
        "child_band_n",
        "adult_n",
    ]


def test_only_answered_ages_count() -> None:
    status = ["ok"] * len(PEOPLE)
    status[0] = "refused"  # the 14-year-old estimated at 25 leaves every population it was in
    row = _evaluate(status=status).iloc[0]
    assert (row["challenge_n"], row["minor_n"], row["child_band_n"]) == (5, 7, 4)
    assert row["challenge25_fpr"] == pytest.approx(1 / 5)
    assert row["minor_as_adult"] == pytest.approx(4 / 7)


def test_thresholds_come_from_params() -> None:
    cfg = AssuranceParams(
        challenge_ages=(15, 17), challenge_thresholds=(30,), adult_age=21, child_band=(10, 14), min_n=1
    )
    names = [d.name for d in assurance_metrics(cfg)]
    assert names == ["challenge30_fpr", "minor_as_adult", "child_band_tpr", "child_band_adult_fpr"]
    samples, predictions = _tables()
    row = evaluate(samples, predictions, extra_metrics=assurance_metrics(cfg), views=("answered",)).iloc[0]
    assert row["challenge_n"] == 3  # 15, 16, 16
    assert row["challenge30_fpr"] == 0.0
    assert row["minor_n"] == 9 and row["minor_as_adult"] == pytest.approx(3 / 9)  # 25, 21, 30 of those under 21
    assert row["child_band_n"] == 2 and row["child_band_tpr"] == pytest.approx(1 / 2)  # 12 -> 19 out, 13 -> 13 in
    assert row["adult_n"] == 1 and row["child_band_adult_fpr"] == 0.0  # the 30-year-old


def test_a_rate_on_fewer_than_min_n_people_is_not_given() -> None:
    table = _evaluate(min_n=3, ci=True, n_resamples=50)
    row = table.iloc[0]
    assert row["adult_n"] == 2  # the count stays: it says why the rate is missing
    assert math.isnan(row["child_band_adult_fpr"])
    assert math.isnan(row["child_band_adult_fpr_ci_low"]) and math.isnan(row["child_band_adult_fpr_ci_high"])
    assert row["child_band_tpr"] == pytest.approx(2 / 5)  # 5 >= 3
    flat = flat_metrics(table)
    assert flat["d.face.m.adult_n"] == 2 and isinstance(flat["d.face.m.adult_n"], int)
    assert "d.face.m.child_band_adult_fpr" not in flat and "d.face.m.child_band_tpr" in flat
    assert too_few_text(2, 3) == "too few (n=2 < 3)"
    assert too_few_text(0, 3) == "no people"


def test_every_rate_has_an_interval_around_it_and_the_paper_metrics_do_not_move() -> None:
    samples, predictions = _tables()
    extra = assurance_metrics(AssuranceParams(min_n=1))
    plain = evaluate(samples, predictions, ci=True, n_resamples=200)
    with_rates = evaluate(samples, predictions, ci=True, n_resamples=200, extra_metrics=extra)
    assert with_rates[list(plain.columns)].equals(plain)  # same resamples, same bytes for the paper's metrics
    assert list(with_rates.columns)[len(plain.columns) :][: len(EXPECTED)] == list(EXPECTED)
    for row in with_rates.itertuples():
        for name in RATES:
            low, value, high = getattr(row, f"{name}_ci_low"), getattr(row, name), getattr(row, f"{name}_ci_high")
            assert 0.0 <= low <= value <= high <= 1.0, name


def test_common_view_counts_the_people_every_model_answered() -> None:
    samples, predictions = _tables()
    other = predictions.assign(model="n", status=["refused"] + ["ok"] * (len(PEOPLE) - 1))
    extra = assurance_metrics(AssuranceParams(min_n=1))
    table = evaluate(samples, pd.concat([predictions, other], ignore_index=True), extra_metrics=extra)
    common = table[(table["model"] == "m") & (table["view"] == "common")].iloc[0]
    answered = table[(table["model"] == "m") & (table["view"] == "answered")].iloc[0]
    assert (answered["challenge_n"], common["challenge_n"]) == (6, 5)


def test_extra_metrics_must_not_shadow_the_paper_metrics() -> None:
    samples, predictions = _tables()
    with pytest.raises(ValueError, match="clash"):
        evaluate(samples, predictions, extra_metrics=(METRICS[1],))


def test_in_range_is_half_open_and_nan_is_outside() -> None:
    assert in_range(np.array([12.9, 13.0, 16.99, 17.0, np.nan]), 13, 17).tolist() == [False, True, True, False, False]


def test_params_defaults_are_nist_and_bad_limits_are_named() -> None:
    cfg = AssuranceParams()
    assert (cfg.challenge_ages, cfg.challenge_thresholds, cfg.adult_age, cfg.child_band) == (
        (14, 18),
        (25, 21),
        18,
        (13, 17),
    )
    for bad in ({"challenge_ages": [18, 14]}, {"child_band": [13, 17, 20]}, {"min_n": 0}, {"challenge_thresholds": []}):
        with pytest.raises(Exception, match="evaluate.assurance"):
            params_from_dict({"evaluate": {"assurance": bad}})


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_states_the_limits(profile: Path) -> None:
    section = yaml.safe_load(profile.read_text())["evaluate"]["assurance"]
    assert set(section) == {"challenge_ages", "challenge_thresholds", "adult_age", "child_band", "min_n"}
    assert AssuranceParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})


def test_tolerances_judge_rates_by_their_interval_and_counts_as_answers() -> None:
    path = "metrics/evaluate.json"
    for name in RATES:
        assert tolerance_for(path, f"d.face.m.{name}").kind == "ci"
        assert tolerance_for(path, f"d.face.m.common.{name}_ci_low").kind == "ci"
    for name in COUNTS:  # people of a population with an answered age, out of the evaluated samples
        rule = tolerance_for(path, f"d.face.m.{name}")
        assert (rule.kind, rule.n) == ("rate", "n_total")


def test_report_table_and_figure_say_too_few(tmp_path: Path) -> None:
    table = _evaluate(min_n=3, ci=True, n_resamples=50)
    extra = assurance_metrics(AssuranceParams(min_n=3))
    written = write_tables(table, tmp_path, caption_note="demo data", assurance=extra)
    assert [p.name for p in written[-2:]] == ["assurance.md", "assurance.tex"]
    text = (tmp_path / "assurance.md").read_text()
    header, _, row = text.splitlines()[2:5]
    assert "Challenge n" in header and "Challenge-25 FPR (age 14-17 as 25+), %" in header
    assert "| 33.33 [" in row and "too few (n=2 < 3)" in row
    assert "too few (n=2 < 3)" in (tmp_path / "assurance.tex").read_text()
    assert "age_assurance" in FIGURE_NAMES
    fig = assurance_figure(table, extra, caption_note="demo data")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["too few (n=2 < 3)"]
    assert len(fig.axes) == 6 and not fig.axes[5].axison  # five rates on a 3 x 2 grid
    empty = assurance_figure(None, extra)
    assert [t.get_text() for ax in empty.axes for t in ax.texts] == ["no predictions yet"]
