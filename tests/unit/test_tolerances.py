"""`agegender compare-metrics`: each metric judged against the committed one with its stated tolerance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest

from agegender import cli
from agegender.tolerances import (
    SIBLINGS,
    TOLERANCES,
    Comparison,
    Tolerance,
    compare_metrics,
    dvc_metrics_diff,
    format_comparison,
    interval,
    tolerance_for,
    wilson_half_width,
)

REPO = Path(__file__).resolve().parents[2]
EVAL = "metrics/evaluate.json"
ROW = "demo.face.mivolo_demo"


def _diff(path: str, old: dict, new: dict) -> dict:
    """A `dvc metrics diff --json --all` result for one file."""
    return {path: {k: {"old": old.get(k), "new": new.get(k)} for k in old.keys() | new.keys()}}


def _by_key(comparisons: list[Comparison]) -> dict[str, Comparison]:
    return {c.key: c for c in comparisons}


def _evaluate(mae: float, low: float, high: float, answered: int = 380) -> dict:
    return {
        f"{ROW}.age_mae": mae,
        f"{ROW}.age_mae_ci_low": low,
        f"{ROW}.age_mae_ci_high": high,
        f"{ROW}.n_total": 400,
        f"{ROW}.n_answered": answered,
    }


def test_wilson_half_width_matches_the_textbook_interval() -> None:
    assert wilson_half_width(0.5, 100) == pytest.approx(0.0962, abs=1e-4)  # 50/100: [0.4038, 0.5962]
    assert wilson_half_width(0.0, 100) > 0.015  # 0/100 does not prove a rate of exactly 0


def test_evaluation_metric_within_its_ci_and_outside_it() -> None:
    old = _evaluate(10.46, 9.56, 11.35)  # the recorded cross-machine move of the MiVOLO demo's face MAE
    within = _by_key(compare_metrics(_diff(EVAL, old, _evaluate(12.02, 11.09, 12.95))))
    assert within[f"{ROW}.age_mae"].verdict == "within"
    assert within[f"{ROW}.age_mae"].allowed == pytest.approx((11.35 - 10.46) + (12.02 - 11.09))
    assert within[f"{ROW}.age_mae_ci_low"].verdict == "within"  # a bound follows its metric
    assert within[f"{ROW}.n_total"].verdict == "exact"
    outside = _by_key(compare_metrics(_diff(EVAL, old, _evaluate(13.0, 12.1, 13.9))))
    assert outside[f"{ROW}.age_mae"].verdict == "OUTSIDE" and outside[f"{ROW}.age_mae_ci_high"].verdict == "OUTSIDE"


def test_answer_counts_move_within_their_binomial_interval() -> None:
    old = _evaluate(10.0, 9.0, 11.0, answered=380)
    assert _by_key(compare_metrics(_diff(EVAL, old, old | {f"{ROW}.n_answered": 375})))[
        f"{ROW}.n_answered"
    ].verdict == ("within")
    moved = _by_key(compare_metrics(_diff(EVAL, old, old | {f"{ROW}.n_answered": 300})))
    assert moved[f"{ROW}.n_answered"].verdict == "OUTSIDE"
    changed_total = _by_key(compare_metrics(_diff(EVAL, old, old | {f"{ROW}.n_total": 401})))
    assert changed_total[f"{ROW}.n_total"].verdict == "OUTSIDE"  # the evaluated samples are data: exact


def test_trained_val_mae_from_its_sample_size() -> None:
    path = "metrics/train_mivolo.json"
    old = {"val_age_mae": 11.72, "val_gender_acc": 0.82, "val_n": 200, "steps": 574, "trained": True}
    # the cross-machine move: 11.72 -> 12.75 on a 200-sample val split
    ok = _by_key(compare_metrics(_diff(path, old, old | {"val_age_mae": 12.75})))
    assert ok["val_age_mae"].verdict == "within" and ok["steps"].verdict == "exact"
    assert _by_key(compare_metrics(_diff(path, old, old | {"val_age_mae": 15.0})))["val_age_mae"].verdict == "OUTSIDE"
    assert _by_key(compare_metrics(_diff(path, old, old | {"steps": 575})))["steps"].verdict == "OUTSIDE"
    # without its sample size the metric cannot have an interval: judged exact, and the output says why
    bare = {k: v for k, v in old.items() if k != "val_n"}
    (c,) = [c for c in compare_metrics(_diff(path, bare, bare | {"val_age_mae": 12.75})) if c.key == "val_age_mae"]
    assert c.verdict == "OUTSIDE" and "judged exact" in c.note


def test_finetuned_selection_and_answer_statuses() -> None:
    path = "metrics/finetune_mllm/ft.json"
    old = {"selection.best_age_mae": 14.85, "selection.best_n": 184, "selection.best_name": "checkpoint-560"}
    old |= {"ft.face.ok": 542, "train_loss": 1.1, "train_samples_per_second": 149.0, "train_steps": 560}
    old |= {"last.step": 700, "ft-last.face.ok": 540}
    new = old | {"selection.best_age_mae": 15.35, "selection.best_name": "checkpoint-420", "train_loss": 1.2}
    new |= {"ft.face.ok": 538, "ft.face.unparsed": 4, "train_samples_per_second": 90.0}
    result = _by_key(compare_metrics(_diff(path, old, new)))
    assert result["selection.best_age_mae"].verdict == "within"  # the move: 14.85 -> 15.35
    assert result["ft.face.ok"].verdict == "within" and result["ft.face.unparsed"].verdict == "within"
    assert result["selection.best_name"].verdict == "free" and result["train_loss"].verdict == "free"
    worse = _by_key(compare_metrics(_diff(path, old, new | {"ft.face.ok": 500, "ft.face.unparsed": 42})))
    assert worse["ft.face.ok"].verdict == "OUTSIDE" and worse["ft.face.unparsed"].verdict == "OUTSIDE"
    assert worse["selection.best_n"].verdict == "exact"
    assert result["train_samples_per_second"].verdict == "timing"
    assert tolerance_for(path, "last.step").kind == "exact"  # the end of training follows from the settings
    assert tolerance_for(path, "ft-last.face.ok").n == SIBLINGS  # each reported model's statuses, by their own sum
    # the same-machine check: everything but timing must be equal
    exact = _by_key(compare_metrics(_diff(path, old, new), exact=True))
    assert {k for k, c in exact.items() if c.verdict == "OUTSIDE"} == {
        "selection.best_age_mae", "selection.best_name", "train_loss", "ft.face.ok", "ft.face.unparsed",
    }  # fmt: skip
    assert exact["train_samples_per_second"].verdict == "timing"


def test_exact_outputs_and_store_counters() -> None:
    old = {"demo.test.n": 400, "n_samples": 2275}
    result = compare_metrics(_diff("metrics/prepare_data.json", old, old | {"demo.test.n": 399}))
    assert [c.verdict for c in result] == ["OUTSIDE", "exact"]
    counters = {"cache_hits": 325, "requests_sent": 0, "no_crop": 35}
    moved = _by_key(compare_metrics(_diff("metrics/query_mllms/m.json", counters, counters | {"cache_hits": 0})))
    assert moved["cache_hits"].verdict == "cache" and moved["no_crop"].verdict == "exact"


def test_report_lists_what_differs_and_a_summary() -> None:
    old = _evaluate(10.46, 9.56, 11.35)
    comparisons = compare_metrics(_diff(EVAL, old, _evaluate(13.0, 12.1, 13.9)))
    text = format_comparison(comparisons, rev="abc123")
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "old", "new", "diff", "tolerance", "verdict"]
    assert any(line.startswith(f"{EVAL}:{ROW}.age_mae ") and line.endswith("OUTSIDE") for line in lines)
    assert not any(f"{ROW}.n_total" in line for line in lines)  # equal: left out
    assert lines[-1].startswith("5 metrics against abc123: 2 exact, 0 within tolerance, 3 OUTSIDE")
    assert format_comparison(compare_metrics(_diff(EVAL, old, old))).startswith("no metric differs from HEAD")


def test_table_is_well_formed() -> None:
    assert TOLERANCES[-1].pattern == "*" and TOLERANCES[-1].kind == "exact", "anything unnamed is exact"
    for rule in TOLERANCES:
        assert rule.why, rule.pattern
        assert (rule.n is not None) == (rule.kind in ("rate", "mean_error")), rule.pattern
    assert tolerance_for("metrics/query_mllms/x.json", "body.unparsed").n == SIBLINGS
    assert tolerance_for("metrics/check.json", "checks").kind == "exact"


def test_trained_metrics_are_judged_by_their_statistic() -> None:
    """Metrics without a bootstrap interval take the interval of their `MetricDef.statistic`: MAEs and MAPE the
    mean-error interval, accuracies and shares Wilson's."""
    ft, train = "metrics/finetune_mllm/ft.json", "metrics/train_mivolo.json"
    assert tolerance_for(ft, "selection.best_age_mae").kind == "mean_error"
    assert tolerance_for(ft, "selection.best_age_mape").kind == "mean_error"
    assert tolerance_for(ft, "selection.best_age_cs5").kind == "rate"
    assert tolerance_for(ft, "selection.best_coverage").kind == "rate"
    assert tolerance_for(train, "val_age_mae") == Tolerance(train + ":val_age_mae", "mean_error", "val_n", why=ANY)
    assert tolerance_for(train, "val_gender_acc").kind == "rate"
    assert tolerance_for(train, "val_n").kind == "exact"


def test_every_committed_metric_has_its_interval() -> None:
    """Every committed metric that the table judges by an interval has one: no pattern misses a real key."""
    missing = []
    for file in sorted((REPO / "metrics").rglob("*.json")):
        path = file.relative_to(REPO).as_posix()
        values = json.loads(file.read_text())
        for key, value in values.items():
            rule = tolerance_for(path, key)
            judged = key.rsplit("_ci_", 1)[0] if rule.kind == "ci" else key
            if rule.kind in ("ci", "rate", "mean_error") and value == value and interval(values, judged, rule) is None:
                missing.append(f"{path}:{key}")
    if "val_n" not in json.loads((REPO / "metrics" / "train_mivolo.json").read_text()):
        # the committed file predates val_n, the val split's size, which the stage writes from now on
        missing = [m for m in missing if not m.startswith("metrics/train_mivolo.json:val_")]
    assert not missing


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True
    )


def test_compare_metrics_command_on_a_dvc_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    stage = {"cmd": "true", "metrics": [{"metrics/prepare_data.json": {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": {"prepare_data": stage}}))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "prepare_data.json").write_text(json.dumps({"demo.test.n": 400, "n_masked": 108}))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "metrics")
    assert cli.main(["compare-metrics", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("no metric differs from HEAD")
    (tmp_path / "metrics" / "prepare_data.json").write_text(json.dumps({"demo.test.n": 401, "n_masked": 108}))
    diff = dvc_metrics_diff(tmp_path)
    assert diff["metrics/prepare_data.json"]["demo.test.n"] == {"old": 400, "new": 401, "diff": 1}
    assert cli.main(["compare-metrics", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "metrics/prepare_data.json:demo.test.n" in out and "OUTSIDE" in out
    assert cli.main(["compare-metrics", "--root", str(tmp_path), "--rev", "no-such-rev"]) == 2
