"""Stages that keep a resumable cache between runs (a persisted DVC output) reuse it only for the same producer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from agegender.data.demo import DemoConfig, generate_demo
from agegender.data.prepare import DATASETS_FILE, MASKED_FILE, SAMPLES_FILE
from agegender.data.readers import read_mivolo
from agegender.files import RUN_LOG_FILE
from agegender.paths import ProjectPaths

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _project(root: Path, models: dict, n_test: int = 3, n_train: int = 0, **sections: dict) -> ProjectPaths:
    """A project whose `prepare_data` output is written directly: a few demo images, the demo params (`sections`
    replace entries of their section)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    demo = root / "data" / "demo"
    generate_demo(demo, DemoConfig(n_train=n_train, n_val=0, n_test=n_test, image_size=96, seed=3), workers=1)
    splits = {"test": "test"} | ({"train": "train"} if n_train else {})
    read = read_mivolo(demo, "demo", annotations="annotations", splits=splits)
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    read.samples.to_parquet(prepared / SAMPLES_FILE)
    read.masked.to_parquet(prepared / MASKED_FILE)
    (prepared / DATASETS_FILE).write_text(json.dumps({"demo": {"root": "data/demo", "source": None}}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"]["datasets"] = ["demo"]
    params["query_mllms"]["models"] = models
    params["finetune_mllm"]["runs"] = {}  # the demo's runs answer nanodemo, which this project lacks; tests give theirs
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return ProjectPaths.at(root)


def test_served_model_retrained_in_place_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve: true` keys the response store by what the server serves, not by the model's name alone."""
    from agegender.mllm.tools import server
    from agegender.mllm.tools.tiny import build_tiny_llava
    from agegender.params import load_params
    from agegender.stages import query_mllms

    served = {"backend": "transformers", "serve": True, "model": "models/served", "datasets": ["demo"],
              "inputs": ["body"], "options": {"batch_size": 4, "concurrency": 2, "device": "cpu"}}  # fmt: skip
    paths = _project(tmp_path, {"served": served})
    params = load_params(paths.params_file)
    folder = paths("models/served")
    build_tiny_llava(folder, seed=1, image_size=56)
    # the server runs in this process (a thread), as the pipeline's subprocess would: same app, same backend
    real = server.running_server
    monkeypatch.setattr(server, "running_server", lambda *a, **k: real(*a, **{**k, "in_process": True}))

    first = query_mllms.run(params, paths, "served", progress=False)
    asked = first["requests_sent"]
    assert asked > 0
    out = paths(params.query_mllms.out) / "served"
    written = {name: (out / name).read_bytes() for name in ("manifest.json", "predictions.parquet")}
    assert query_mllms.run(params, paths, "served", progress=False)["requests_sent"] == 0  # the store works
    # answered from the store, by a server on another free port: the same results, the same bytes; how each run
    # went (requests sent, the port, what the endpoint answered) is in the run log only
    assert {name: (out / name).read_bytes() for name in written} == written
    log = json.loads((out / RUN_LOG_FILE).read_text())["runs"]["body"]
    assert log["base_url"].startswith("http://127.0.0.1:") and log["backend_activity"]["request_counts"] == {}
    shutil.rmtree(folder)
    build_tiny_llava(folder, seed=2, image_size=56)  # retrained into the same folder
    assert query_mllms.run(params, paths, "served", progress=False)["requests_sent"] == asked


def _volo(path: Path, seed: int) -> Path:
    from timm.models.volo import VOLO

    from agegender.mivolo.model import MODEL_SPECS

    torch.manual_seed(seed)
    torch.save(VOLO(**MODEL_SPECS["mivolo_tiny_64"].kwargs()).state_dict(), path)
    return path


def test_train_stage_starts_afresh_when_the_pretrained_weights_change(tmp_path: Path) -> None:
    """New weights under the configured `pretrained` path: the persisted run is cleared, not refused or reused."""
    from agegender.mivolo.train import FINAL_CHECKPOINT
    from agegender.params import load_params
    from agegender.stages import train_mivolo

    weights = _volo(tmp_path / "volo.pth", seed=1)
    config = {"variant": "mivolo_tiny_64", "stage1_epochs": 1, "stage2_epochs": 0, "batch_size": 8, "threads": 1,
              "val_split": None, "min_person_size": 16, "bf16": False, "pretrained": str(weights)}  # fmt: skip
    paths = _project(tmp_path / "project", {}, n_test=2, n_train=16, train_mivolo={"config": config})
    params = load_params(paths.params_file)
    final = paths(params.train_mivolo.out) / FINAL_CHECKPOINT

    def weights_of_final() -> dict[str, torch.Tensor]:
        return torch.load(final, map_location="cpu", weights_only=True)["state_dict"]

    assert train_mivolo.run(params, paths, progress=False)["status"] == "done"
    first = weights_of_final()
    _volo(weights, seed=2)  # other weights, same path and settings
    assert train_mivolo.run(params, paths, progress=False)["status"] == "done"
    second = weights_of_final()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # trained again from the new start
    recorded = json.loads((final.parent / "run.json").read_text())["pretrained_sha256"]
    assert recorded == hashlib.sha256(weights.read_bytes()).hexdigest()


class _Stop(Exception):
    """Ends the stage where the test has seen what it needs."""


def test_finetune_stage_starts_afresh_when_the_base_model_changes(tmp_path: Path, monkeypatch) -> None:
    """A base model retrained in its folder clears the persisted run (the section names only its path)."""
    from agegender.mllm.finetune import train as finetune_module
    from agegender.mllm.tools.tiny import build_tiny_llava
    from agegender.params import load_params
    from agegender.stages import finetune_mllm

    demo = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune_mllm"]["runs"]["tiny_llava_ft"]
    spec = {k: v for k, v in demo.items() if k != "build_tiny"} | {"base_model": "models/base", "datasets": ["demo"]}
    paths = _project(tmp_path, {}, n_test=2, finetune_mllm={"runs": {"ft": spec}})
    params = load_params(paths.params_file)
    base = build_tiny_llava(paths("models/base"), seed=1, image_size=56)
    run = paths(params.finetune_mllm.out) / "ft" / "run"

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(finetune_module, "finetune", stop)
    with pytest.raises(_Stop):
        finetune_mllm.run(params, paths, "ft", progress=False)
    run.mkdir(parents=True)
    (run / "checkpoint-1").mkdir()  # what an interrupted run leaves
    with pytest.raises(_Stop):
        finetune_mllm.run(params, paths, "ft", progress=False)
    assert (run / "checkpoint-1").is_dir()  # same base: kept for the resume
    shutil.rmtree(base)
    build_tiny_llava(base, seed=2, image_size=56)
    with pytest.raises(_Stop):
        finetune_mllm.run(params, paths, "ft", progress=False)
    assert not run.exists()  # another base: the run starts afresh


def test_finetune_runs_each_train_once_and_report_best_and_last(tmp_path: Path, monkeypatch) -> None:
    """Two runs, one stage call each: `ft` trains once and reports its best checkpoint and, through `also_report`,
    its last one without training again; `ft_body` reports only its last (no selection). evaluate and report read
    every run's predictions."""
    from agegender.evaluate import load_predictions
    from agegender.mllm import runner
    from agegender.mllm.finetune import select
    from agegender.mllm.finetune import train as finetune_module
    from agegender.params import load_params
    from agegender.stages import finetune_mllm
    from agegender.stages.common import prediction_dirs

    tiny = {"kind": "llava", "seed": 0, "image_size": 56, "vision_hidden": 32}
    config = {"learning_rate": 0.002, "per_device_train_batch_size": 8, "torch_threads": 1, "seed": 1}
    runs = {
        "ft": {
            "dataset": "demo", "build_tiny": tiny,
            "config": config | {"input_kind": "face", "max_steps": 4, "save_steps": 2},
            "inputs": ["face"], "datasets": ["demo"], "also_report": {"ft-last": {"checkpoint": "last"}},
        },
        "ft_body": {
            "dataset": "demo", "build_tiny": tiny, "config": config | {"input_kind": "body", "max_steps": 2},
            "checkpoint": "last", "inputs": ["body"], "datasets": ["demo"],
        },
    }  # fmt: skip
    select_on_train = {"split": "train", "metric": "age_mae", "min_coverage": 0.0}  # the tiny project has no val
    section = {"runs": runs, "select": select_on_train}
    paths = _project(tmp_path, {}, n_test=2, n_train=8, finetune_mllm=section)
    params = load_params(paths.params_file)
    trainings, selections, served = [], [], {}
    real_finetune, real_select, real_query = finetune_module.finetune, select.select_checkpoint, runner.query_samples

    def counted_finetune(*args, **kwargs):
        trainings.append(args[4])  # the run folder
        return real_finetune(*args, **kwargs)

    def counted_select(*args, **kwargs):
        selections.append(args[0])
        return real_select(*args, **kwargs)

    def keep_first(result, dest, **kwargs):  # 4 steps teach the tiny model no answer: no checkpoint qualifies
        shutil.copytree(select.read_checkpoints(result.run_dir)[0].path, dest)
        return dest

    def recorded_query(*args, **kwargs):
        served[kwargs["model_name"]] = Path(kwargs["backend"].model)  # the selection's checkpoints too
        return real_query(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", counted_finetune)
    monkeypatch.setattr(select, "select_checkpoint", counted_select)
    monkeypatch.setattr(select, "keep_best", keep_first)
    monkeypatch.setattr(runner, "query_samples", recorded_query)
    out = paths(params.finetune_mllm.out)

    summary = finetune_mllm.run(params, paths, "ft", progress=False)
    assert trainings == [out / "ft" / "run"] and selections == [out / "ft" / "run"]  # one training for two models
    last = select.read_checkpoints(out / "ft" / "run")[-1]
    assert {k: served[k] for k in ("ft", "ft-last")} == {"ft": out / "ft" / "best", "ft-last": last.path}
    assert (summary["last.name"], summary["last.step"]) == (last.name, 4) and last.final
    assert summary["train_steps"] == 4 and summary["selection.checkpoints"] == 3  # checkpoint-2, -4 and final

    summary = finetune_mllm.run(params, paths, "ft_body", progress=False)
    assert len(trainings) == 2 and len(selections) == 1  # `last` alone: no selection
    assert served["ft_body"] == select.read_checkpoints(out / "ft_body" / "run")[-1].path
    assert "selection" not in summary and not (out / "ft_body" / "best").exists()
    metrics = json.loads((paths.metrics / "finetune_mllm" / "ft_body.json").read_text())
    statuses = {k: v for k, v in metrics.items() if k.startswith("ft_body.body.")}  # the model's answers, by status
    assert metrics["last.step"] == 2 and sum(statuses.values()) == 2  # the 2 test samples

    dirs = prediction_dirs(params, paths)
    assert paths(params.finetune_mllm.predictions) / "ft" in dirs and paths("predictions/finetune_mllm/ft_body") in dirs
    samples = pd.read_parquet(paths(params.prepare_data.out) / SAMPLES_FILE)
    table = load_predictions([d for d in dirs if "finetune_mllm" in d.parts], samples["sample_id"])
    assert set(zip(table["model"], table["input"], strict=True)) == {
        ("ft", "face"), ("ft-last", "face"), ("ft_body", "body"),
    }  # fmt: skip


def test_served_identity_joins_the_openai_store_key() -> None:
    from agegender.errors import InputError
    from agegender.mllm.backends import create_backend
    from agegender.mllm.tools.server import running_server, served_identity

    with running_server("constant", "x", in_process=True) as url:
        identity = served_identity(url)
        assert identity == {"backend": "constant", "model_revision": identity["model_revision"], "key_options": {}}
        plain = create_backend("openai", "served", base_url=url)
        pinned = create_backend("openai", "served", base_url=url, served_identity=identity)
        assert plain.model_revision is None and pinned.model_revision == identity["model_revision"]
        assert pinned.key_options() == {**plain.key_options(), "served": {"backend": "constant", "key_options": {}}}
    with pytest.raises(InputError, match="loopback"):
        served_identity("http://192.0.2.1:8000/v1")
