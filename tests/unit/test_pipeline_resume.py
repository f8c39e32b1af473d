"""Stages that keep a resumable cache between runs (a persisted DVC output) reuse it only for the same producer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

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

    section = {"build_tiny": None, "base_model": "models/base", "launch": None}
    paths = _project(tmp_path, {}, n_test=2, finetune_mllm=section)
    params = load_params(paths.params_file)
    base = build_tiny_llava(paths("models/base"), seed=1, image_size=56)
    run = paths(params.finetune_mllm.out) / "run"

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(finetune_module, "finetune", stop)
    with pytest.raises(_Stop):
        finetune_mllm.run(params, paths, progress=False)
    run.mkdir(parents=True)
    (run / "checkpoint-1").mkdir()  # what an interrupted run leaves
    with pytest.raises(_Stop):
        finetune_mllm.run(params, paths, progress=False)
    assert (run / "checkpoint-1").is_dir()  # same base: kept for the resume
    shutil.rmtree(base)
    build_tiny_llava(base, seed=2, image_size=56)
    with pytest.raises(_Stop):
        finetune_mllm.run(params, paths, progress=False)
    assert not run.exists()  # another base: the run starts afresh


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
