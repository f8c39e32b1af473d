"""Checkpoint selection: the index, the choice rules, a real run on tiny checkpoints, resuming and keeping the best."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agegender.data.demo import DemoConfig, generate_demo
from agegender.data.readers import read_mivolo
from agegender.errors import InputError
from agegender.mllm.backend_options import TransformersOptions
from agegender.mllm.backends.base import GenerationParams, Query
from agegender.mllm.backends.transformers_backend import TransformersBackend, chat_prompt
from agegender.mllm.finetune import select
from agegender.mllm.finetune.select import (
    RUN_COLUMNS,
    Checkpoint,
    SelectionResult,
    choose_best,
    keep_best,
    read_checkpoints,
    score_predictions,
    select_checkpoint,
)
from agegender.mllm.prompt import PROMPT
from agegender.mllm.tools.tiny import build_tiny_llava

torch.set_num_threads(min(2, torch.get_num_threads()))
GEN = GenerationParams(max_new_tokens=8)
CPU = {"device": "cpu", "batch_size": 4}


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _fake_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llava"}')
    (path / "model.safetensors").write_bytes(b"weights of " + path.name.encode())
    return path


def _fake_run(root: Path, steps: list[int], final: bool = False) -> Path:
    entries = []
    for i, step in enumerate(steps):
        _fake_folder(root / f"checkpoint-{step}")
        entries.append({"step": step, "epoch_fraction": (i + 1) / (len(steps) + 1), "path": f"checkpoint-{step}"})
    (root / "checkpoints.json").write_text(json.dumps(entries))
    if final:
        _fake_folder(root / "final")
    return root


def _scripted_model(folder: Path, answer: str | None, seed: int) -> Path:
    """A tiny LLaVA that answers `answer` to the paper's prompt whatever the image (None: random weights).

    The language model's attention and MLP outputs are zeroed, so each position's hidden state is its token's
    embedding: a bigram machine. The embeddings and lm_head map the prompt's last token to the answer's first
    token, each answer token to the next, and the last one to EOS.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    build_tiny_llava(folder, seed=seed, image_size=112)
    if answer is None:
        return folder
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    tok = processor.tokenizer
    chain = [
        tok(chat_prompt(processor, PROMPT))["input_ids"][-1],
        *tok(answer, add_special_tokens=False)["input_ids"],
        tok.eos_token_id,
    ]
    assert len(set(chain)) == len(chain)
    with torch.no_grad():
        for name, module in model.named_modules():
            if "language_model" in name and name.endswith(("o_proj", "down_proj")):
                module.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        for dim, (current, following) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            emb[current] = 0
            emb[current, dim] = 10
            head[:, dim] = 0
            head[following, dim] = 10
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(root, DemoConfig(n_train=0, n_val=6, n_test=2, image_size=128, seed=3), workers=1)
    read = read_mivolo(root, "demo", splits={"val": "val", "test": "test"})
    return root, read.samples, read.masked


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two scripted checkpoints and a random `final/`, with training state files beside the model."""
    run = tmp_path_factory.mktemp("run")
    _scripted_model(run / "checkpoint-2", "[female; 30]", seed=1)
    _scripted_model(run / "checkpoint-4", "[male; 40]", seed=2)
    _scripted_model(run / "final", None, seed=3)
    for name in ("checkpoint-2", "checkpoint-4"):
        (run / name / "optimizer.pt").write_bytes(b"optimizer state")
        (run / name / "rng_state.pth").write_bytes(b"rng")
        (run / name / "global_step2").mkdir()
    (run / "final" / "trainer_state.json").write_text(json.dumps({"global_step": 5, "epoch": 1.0}))
    index = [
        {"step": 2, "epoch_fraction": 0.4, "path": "checkpoint-2"},
        {"step": 4, "epoch_fraction": 0.8, "path": str(run / "checkpoint-4")},
    ]
    (run / "checkpoints.json").write_text(json.dumps(index))
    return run


# ---------------------------------------------------------------------------------------------------------------
# the index


def test_read_checkpoints_sorted_with_final(tmp_path):
    run = _fake_run(tmp_path, [900, 450], final=True)
    (run / "final" / "trainer_state.json").write_text(json.dumps({"global_step": 1000, "epoch": 1.0}))
    got = read_checkpoints(run)
    assert [(c.name, c.step) for c in got] == [("checkpoint-450", 450), ("checkpoint-900", 900), ("final", 1000)]
    assert got[0].epoch_fraction == pytest.approx(2 / 3) and got[-1].epoch_fraction == 1.0
    assert [c.name for c in read_checkpoints(run, include_final=False)] == ["checkpoint-450", "checkpoint-900"]


def test_final_without_trainer_state_takes_last_step_and_sorts_after_it(tmp_path):
    run = _fake_run(tmp_path, [450, 900], final=True)
    got = read_checkpoints(run)
    assert [(c.name, c.step, c.epoch_fraction) for c in got][-2:] == [
        ("checkpoint-900", 900, pytest.approx(2 / 3)),
        ("final", 900, 1.0),
    ]


def test_final_listed_in_index_is_not_added_twice(tmp_path):
    run = _fake_run(tmp_path, [450], final=True)
    entries = json.loads((run / "checkpoints.json").read_text()) + [{"step": 500, "epoch_fraction": 1, "path": "final"}]
    (run / "checkpoints.json").write_text(json.dumps(entries))
    assert [c.name for c in read_checkpoints(run)] == ["checkpoint-450", "final"]


def test_index_as_finetune_writes_it(tmp_path, monkeypatch):
    # finetune.py: "path" is out_dir/<name> as the user spelled out_dir (relative to the working directory of
    # training), "name" relative to the index; LoRA checkpoints serve from checkpoint-N/merged; the final model may
    # share the last checkpoint's step.
    monkeypatch.chdir(tmp_path)
    run = Path("models/llava_ft")
    for name in ("checkpoint-450/merged", "checkpoint-900/merged", "final"):
        _fake_folder(run / name)
    entries = [
        {"step": 450, "epoch_fraction": 0.5, "path": "models/llava_ft/checkpoint-450/merged",
         "name": "checkpoint-450/merged", "final": False},
        {"step": 900, "epoch_fraction": 1.0, "path": "models/llava_ft/checkpoint-900/merged",
         "name": "checkpoint-900/merged", "final": False},
        {"step": 900, "epoch_fraction": 1.0, "path": "models/llava_ft/final", "name": "final", "final": True},
    ]  # fmt: skip
    (run / "checkpoints.json").write_text(json.dumps(entries))
    got = read_checkpoints(run)
    assert [(c.name, c.step, c.final) for c in got] == [
        ("checkpoint-450/merged", 450, False),
        ("checkpoint-900/merged", 900, False),
        ("final", 900, True),
    ]
    assert all(c.path.resolve().is_relative_to(run.resolve()) for c in got)
    monkeypatch.chdir(run)  # the index read from elsewhere: "name" still finds the folders
    assert [c.name for c in read_checkpoints(".")] == [c.name for c in got]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"step": "450", "epoch_fraction": 0.5, "path": "checkpoint-450"}, "step"),
        ({"step": -1, "epoch_fraction": 0.5, "path": "checkpoint-450"}, "step"),
        ({"step": 450, "epoch_fraction": "half", "path": "checkpoint-450"}, "epoch_fraction"),
        ({"step": 450, "epoch_fraction": 0.5}, "path"),
        ({"step": 450, "epoch_fraction": 0.5, "path": "nowhere"}, "path"),
        ({"step": 1, "epoch_fraction": 0.5, "path": "checkpoint-1"}, "step"),  # same step as entry 1
        ({"step": 450, "epoch_fraction": 0.5, "path": "checkpoint-1"}, "path"),  # same folder as entry 1
        ({"step": 450, "epoch_fraction": 0.5, "path": "empty"}, "path"),  # no config.json
    ],
)
def test_bad_index_entries_name_file_row_field(tmp_path, entry, field):
    run = _fake_run(tmp_path, [1])
    (run / "empty").mkdir()
    entries = json.loads((run / "checkpoints.json").read_text()) + [entry]
    (run / "checkpoints.json").write_text(json.dumps(entries))
    with pytest.raises(InputError) as err:
        read_checkpoints(run)
    assert err.value.file == str(run / "checkpoints.json") and err.value.row == 2 and err.value.field == field


def test_unreadable_or_missing_index(tmp_path):
    with pytest.raises(InputError, match="not a fine-tuning run folder"):
        read_checkpoints(tmp_path)
    (tmp_path / "checkpoints.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON") as err:
        read_checkpoints(tmp_path)
    assert err.value.file == str(tmp_path / "checkpoints.json")
    (tmp_path / "checkpoints.json").write_text('{"step": 1}')
    with pytest.raises(InputError, match="list"):
        read_checkpoints(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the choice rules, on scripted numbers


def _table(**columns):
    n = len(columns["age_mae"])
    base = {"step": [450 * (i + 1) for i in range(n)], "coverage": [1.0] * n}
    return pd.DataFrame({**base, **columns, **{m: columns.get(m, [0.5] * n) for m in select.METRICS}})


def test_lower_is_better_for_mae_and_mape_higher_for_cs5_and_accuracy():
    table = _table(
        age_mae=[6.0, 4.0, 5.0], age_mape=[0.3, 0.2, 0.1], age_cs5=[0.4, 0.6, 0.5], gender_acc=[0.9, 0.8, 0.7]
    )
    assert choose_best(table, "age_mae")[0] == 1
    assert choose_best(table, "age_mape")[0] == 2
    assert choose_best(table, "age_cs5")[0] == 1
    assert choose_best(table, "gender_acc")[0] == 0


def test_tie_goes_to_the_earlier_step_even_when_listed_later():
    table = _table(age_mae=[4.0, 5.0, 4.0 + 1e-12])
    table["step"] = [900, 450, 450 - 1]  # rows out of step order: the rule is the step, not the position
    assert choose_best(table, "age_mae")[0] == 2
    table = _table(age_mae=[4.0, 4.0, 4.0 + 1e-6])
    assert choose_best(table, "age_mae")[0] == 0


def test_low_coverage_or_nan_cannot_win():
    table = _table(age_mae=[2.0, float("nan"), 5.0, 6.0])
    table["coverage"] = [0.49, 1.0, 0.5, 1.0]
    best, eligible = choose_best(table, "age_mae")
    assert best == 2 and eligible == [False, False, True, True]
    assert choose_best(table, "age_mae", min_coverage=0.4)[0] == 0
    best, eligible = choose_best(table, "age_mae", min_coverage=1.0)
    assert best == 3 and eligible == [False, False, False, True]


def test_bad_metric_or_threshold():
    table = _table(age_mae=[1.0])
    with pytest.raises(InputError, match="unknown selection metric") as err:
        choose_best(table, "age_ce20")
    assert err.value.field == "metric"
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(InputError) as err:
            choose_best(table, "age_mae", min_coverage=bad)
        assert err.value.field == "min_coverage"


def _patch_evaluator(monkeypatch, numbers_by_name):
    calls = []

    def fake(checkpoint, samples, masked, image_roots, **kwargs):
        calls.append((checkpoint.name, kwargs["input_kind"], len(samples)))
        numbers = {"n": len(samples), "n_no_crop": 0, "requests_sent": len(samples), "model_loaded": True}
        numbers.update(numbers_by_name[checkpoint.name])
        preds = pd.DataFrame({"sample_id": samples["sample_id"], "model": checkpoint.name})
        return numbers, preds, {"model_name": checkpoint.name}

    monkeypatch.setattr(select, "_evaluate_checkpoint", fake)
    return calls


def _numbers(mae, coverage=1.0, cs5=0.5, mape=0.2, acc=0.8):
    return {"coverage": coverage, "age_mae": mae, "age_cs5": cs5, "age_mape": mape, "gender_acc": acc}


def test_select_table_one_row_per_checkpoint_and_choice(tmp_path, monkeypatch, demo):
    root, samples, masked = demo
    run = _fake_run(tmp_path / "run", [450, 900, 1350], final=True)
    calls = _patch_evaluator(
        monkeypatch,
        {
            "checkpoint-450": _numbers(6.0),
            "checkpoint-900": _numbers(4.5, acc=0.7),  # the paper's case: best early in the epoch
            "checkpoint-1350": _numbers(4.5, acc=0.9),  # tie on MAE: the earlier step wins
            "final": _numbers(3.0, coverage=0.3),  # best MAE, but answers too rarely
        },
    )
    result = select_checkpoint(run, samples, masked, root, progress=False)
    n_val = int((samples["split"] == "val").sum())
    assert calls == [(n, "body", n_val) for n in ("checkpoint-450", "checkpoint-900", "checkpoint-1350", "final")]
    assert list(result.table.columns) == list(select.TABLE_COLUMNS)
    assert list(result.table["name"]) == ["checkpoint-450", "checkpoint-900", "checkpoint-1350", "final"]
    assert result.best is not None and result.best.name == "checkpoint-900"
    assert list(result.table["best"]) == [False, True, False, False]
    assert list(result.table["eligible"]) == [True, True, True, False]
    assert result.table["epoch_fraction"].tolist()[:3] == pytest.approx([0.25, 0.5, 0.75])
    summary = result.summary()
    assert summary["best_step"] == 900 and summary["best_age_mae"] == 4.5 and summary["checkpoints"] == 4
    assert summary["best_n"] == n_val and isinstance(summary["best_n"], int)
    assert select.default_store(run) == (tmp_path / "run-selection" / "responses").absolute()

    by_acc = select_checkpoint(run, samples, masked, root, metric="gender_acc", progress=False)
    assert by_acc.best.name == "checkpoint-1350"  # final has acc 0.8 and is ineligible anyway
    assert by_acc.higher_is_better


def test_select_bad_arguments(tmp_path, monkeypatch, demo):
    root, samples, masked = demo
    run = _fake_run(tmp_path / "run", [450])
    calls = _patch_evaluator(monkeypatch, {"checkpoint-450": _numbers(1.0)})
    with pytest.raises(InputError, match="no sample of split 'dev'"):
        select_checkpoint(run, samples, masked, root, split="dev", progress=False)
    with pytest.raises(InputError, match="unknown selection metric"):
        select_checkpoint(run, samples, masked, root, metric="mae", progress=False)
    with pytest.raises(InputError, match="input kind"):
        select_checkpoint(run, samples, masked, root, input_kind="face_body", progress=False)
    assert calls == []  # argument errors come before any query


def test_no_eligible_checkpoint_keeps_nothing(tmp_path, monkeypatch, demo):
    root, samples, masked = demo
    run = _fake_run(tmp_path / "run", [450, 900])
    _patch_evaluator(monkeypatch, {"checkpoint-450": _numbers(float("nan"), 0.0), "checkpoint-900": _numbers(3, 0.2)})
    result = select_checkpoint(run, samples, masked, root, progress=False)
    assert result.best is None and result.best_row is None and not result.table["best"].any()
    assert result.summary()["best_step"] is None
    with pytest.raises(InputError, match="no checkpoint reached coverage 0.5"):
        keep_best(result, tmp_path / "best")
    assert not (tmp_path / "best").exists()
    assert "none qualified" in select.selection_markdown(result)


# ---------------------------------------------------------------------------------------------------------------
# scoring


def test_score_predictions_pools_and_counts_only_queried_samples():
    samples = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d", "e"],
            "dataset": ["x", "x", "y", "y", "y"],
            "split": "val",
            "age": [20.0, 30.0, 40.0, 50.0, 60.0],
            "age_class": [None, None, "25;32", None, None],
            "gender": ["male", "female", "male", "female", "male"],
        }
    )
    preds = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],  # e had no crop
            "model": "m",
            "input": "body",
            "age_pred": [22.0, 40.0, 41.0, None],
            "gender_pred": ["male", "male", "male", None],
            "gender_score": None,
            "status": ["ok", "ok", "ok", "unparsed"],
            "raw_answer": None,
        }
    )
    got = score_predictions(samples, preds)
    assert got["n"] == 4 and got["coverage"] == 0.75
    assert got["age_mae"] == pytest.approx((2 + 10 + 1) / 3)
    assert got["age_cs5"] == pytest.approx(2 / 3)
    assert got["age_mape"] == pytest.approx((2 / 21 + 10 / 31 + 1 / 41) / 3)
    assert got["gender_acc"] == pytest.approx(2 / 3)
    empty = score_predictions(samples, preds.iloc[:0])
    assert empty["n"] == 0 and math.isnan(empty["coverage"]) and math.isnan(empty["age_mae"])


# ---------------------------------------------------------------------------------------------------------------
# end to end on tiny checkpoints


def test_end_to_end_rerun_and_keep_best(tmp_path, demo, tiny_run):
    root, samples, masked = demo
    store = tmp_path / "store"
    result = select_checkpoint(
        tiny_run, samples, masked, root, store=store, backend_options=CPU, generation=GEN, progress=False
    )
    table = result.table.set_index("name")
    assert list(table.index) == ["checkpoint-2", "checkpoint-4", "final"]
    assert list(table["step"]) == [2, 4, 5] and list(table["epoch_fraction"]) == [0.4, 0.8, 1.0]

    val = samples.loc[samples["split"] == "val"].set_index("sample_id")
    preds = result.predictions["checkpoint-2"]
    queried = val.loc[preds["sample_id"]]
    assert len(queried) >= 3 and (preds["status"] == "ok").all() and (preds["raw_answer"] == "[female; 30]").all()
    assert (result.predictions["checkpoint-4"]["raw_answer"] == "[male; 40]").all()
    expected = {}
    for name, age, gender in (("checkpoint-2", 30, "female"), ("checkpoint-4", 40, "male")):
        assert table.loc[name, "coverage"] == 1.0 and table.loc[name, "n"] == len(queried)
        assert table.loc[name, "age_mae"] == pytest.approx(np.abs(queried["age"] - age).mean())
        assert table.loc[name, "gender_acc"] == pytest.approx((queried["gender"] == gender).mean())
        expected[name] = table.loc[name, "age_mae"]
    assert table.loc["final", "coverage"] < 0.5 and not table.loc["final", "eligible"]  # random weights
    assert result.best.name == min(expected, key=expected.get)
    assert table["requests_sent"].tolist() == [len(queried)] * 3 and table["model_loaded"].all()

    again = select_checkpoint(
        tiny_run, samples, masked, root, store=store, backend_options=CPU, generation=GEN, progress=False
    )
    assert again.table["requests_sent"].tolist() == [0, 0, 0]
    assert not again.table["model_loaded"].any()  # every answer came from the store: no model was even loaded
    pd.testing.assert_frame_equal(
        again.table.drop(columns=["requests_sent", "model_loaded"]),
        result.table.drop(columns=["requests_sent", "model_loaded"]),
    )
    for name, frame in result.predictions.items():
        pd.testing.assert_frame_equal(again.predictions[name], frame)

    dest = keep_best(result, tmp_path / "out" / "best", caption="demo data: tiny scripted checkpoints")
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "model.safetensors", "agegender_selection.json"} <= names
    assert not names & {"optimizer.pt", "rng_state.pth", "global_step2"}
    info = json.loads((dest / "agegender_selection.json").read_text())
    assert info["name"] == result.best.name and info["metric"] == "age_mae"
    csv = pd.read_csv(tmp_path / "out" / "selection.csv")
    assert list(csv["name"]) == ["checkpoint-2", "checkpoint-4", "final"] and csv["best"].sum() == 1
    md = (tmp_path / "out" / "selection.md").read_text()
    assert md.startswith("demo data") and f"`{result.best.name}`" in md and md.count("\n| ") == 4
    # what the store already held says how the run went, not what was measured: not in the written tables
    assert not set(RUN_COLUMNS) & set(csv.columns) and not any(c in md for c in RUN_COLUMNS)

    backend = TransformersBackend(str(dest), device="cpu", params=GEN)
    image = np.random.default_rng(0).integers(0, 256, (90, 40, 3), dtype=np.uint8)
    (answer,) = backend.generate_batch([Query("x|body", image, PROMPT)])
    best_answer = result.predictions[result.best.name]["raw_answer"].iloc[0]
    assert answer.text == best_answer
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (dest / name).read_bytes() == (result.best.path / name).read_bytes()


def test_lazy_backend_checks_its_predicted_store_key(tiny_run):
    lazy = select._LazyTransformers(str(tiny_run / "checkpoint-2"), params=GEN, **CPU)
    real = TransformersBackend(str(tiny_run / "checkpoint-2"), params=GEN, **CPU)
    assert (lazy.model_revision, lazy.key_options()) == (real.model_revision, real.key_options())
    assert lazy.real is None and lazy.describe()["loaded"] is False
    lazy._key["pad_to_square"] = False  # a prediction that no longer follows TransformersBackend
    with pytest.raises(RuntimeError, match="store key predicted"):
        lazy.load()
    assert lazy.real is None


def test_lazy_backend_takes_the_typed_options_the_stage_gives(tiny_run):
    folder = str(tiny_run / "checkpoint-2")
    typed = TransformersOptions(device="cpu", batch_size=4, pad_to_square=False, system_prompt="Be brief.")
    lazy = select._LazyTransformers(folder, params=GEN, options=typed)
    assert lazy.batch_size == 4 and lazy.key_options()["system_prompt"] == "Be brief."
    assert lazy.load().key_options() == lazy.key_options()  # the loaded backend got the same typed value
    lazy.close()


def test_keep_best_replaces_and_links(tmp_path):
    src = _fake_folder(tmp_path / "run" / "checkpoint-450")
    (src / "tokenizer.json").write_text("{}")
    (src / "scheduler.pt").write_bytes(b"x")
    table = pd.DataFrame(
        [{c: 0 for c in select.TABLE_COLUMNS} | {"name": "checkpoint-450", "step": 450, "best": True, "age_mae": 1.0}]
    )
    result = SelectionResult(
        table=table,
        best=Checkpoint("checkpoint-450", 450, 0.4, src),
        metric="age_mae",
        higher_is_better=False,
        min_coverage=0.5,
        split="val",
        input_kind="body",
        run_dir=tmp_path / "run",
    )
    dest = tmp_path / "models" / "best"
    dest.mkdir(parents=True)
    (dest / "stale.bin").write_bytes(b"old model")
    keep_best(result, dest, link=True, table_dir=tmp_path / "tables")
    assert sorted(p.name for p in dest.iterdir()) == [
        "agegender_selection.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (dest / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
    assert (tmp_path / "tables" / "selection.csv").is_file() and (tmp_path / "tables" / "selection.md").is_file()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
    keep_best(result, dest)  # a copy this time
    assert (dest / "model.safetensors").stat().st_ino != (src / "model.safetensors").stat().st_ino
    (src / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no model weights") as err:
        keep_best(result, dest)
    assert err.value.file == str(src) and (dest / "model.safetensors").is_file()  # the old copy stays
