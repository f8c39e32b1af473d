"""Multi-process fine-tuning on the CPU: 2 processes (gloo) give the model of 1 process with the same global batch.

Both runs go through the module entry point; the 2-process one under `accelerate launch` with the shipped
configs/accelerate_cpu_2proc.yaml (which starts the processes through torchrun; gloo on the CPU). Process 0 cuts
the crops first, the other reuses them; every checkpoint and the final model are complete HF folders.

Why the two runs can match: accelerate hands process i the batches i, i+2, ... of the same seeded sampler, so
the 2 x 2 samples of a 2-process step are the 4 samples of the 1-process step; the loss is summed over the
answer tokens of the global batch and divided by their global count (transformers' `num_items_in_batch`), so
the all-reduced gradient is the 1-process gradient; the tiny model has no dropout. What remains is float32
summation order: measured max weight difference 7e-7 after the first step (the weights moved by up to 2e-3);
tolerance 1e-5, losses within 1e-3. Only full global batches are compared: accelerate pads the last, partial
batch of an epoch with repeated samples (even_batches), a single process does not, so from there the runs
differ by design (measured 1e-3 after such a step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from agegender.data.demo import DemoConfig, generate_demo
from agegender.data.readers import read_mivolo
from agegender.mllm.finetune.train import CHECKPOINT_INDEX
from agegender.mllm.tools.tiny import build_tiny_llava

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    root = tmp_path / "demo"
    generate_demo(root, DemoConfig(n_train=12, n_val=0, n_test=0, image_size=96, seed=21), workers=1)
    read = read_mivolo(root, "demo", annotations="annotations", splits={"train": "train"})
    read.samples.to_parquet(tmp_path / "samples.parquet")
    read.masked.to_parquet(tmp_path / "masked.parquet")
    base = build_tiny_llava(tmp_path / "base", image_size=56, seed=3)
    config = {
        "learning_rate": 1e-3,
        # two full global batches of the first epoch: a last, partial batch is split unevenly (accelerate pads
        # the shorter process's batch with repeated samples), which a single process does not do
        "max_steps": 2,
        "save_steps": 1,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "freeze_vision_tower": False,
        "torch_threads": 1,
        "seed": 5,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["-m", "agegender.mllm.finetune", "--samples", str(tmp_path / "samples.parquet")]
    common += ["--masked", str(tmp_path / "masked.parquet"), "--image-root", str(root), "--base-model", str(base)]
    common += ["--config", str(tmp_path / "config.yaml"), "--no-progress"]
    _run([sys.executable, *common, "--out", str(tmp_path / "one"), "--set", "per_device_train_batch_size=4"], tmp_path)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO / "configs" / "accelerate_cpu_2proc.yaml"), "--main_process_port", "29517"]
    out = _run([*launch, *common, "--out", str(tmp_path / "two"), "--set", "per_device_train_batch_size=2"], tmp_path)
    assert "x 2 processes" in out

    one_sum = json.loads((tmp_path / "one" / "finetune_summary.json").read_text())
    two_sum = json.loads((tmp_path / "two" / "finetune_summary.json").read_text())
    assert two_sum["world_size"] == 2 and two_sum["global_batch"] == one_sum["global_batch"] == 4
    one_idx = json.loads((tmp_path / "one" / CHECKPOINT_INDEX).read_text())
    two_idx = json.loads((tmp_path / "two" / CHECKPOINT_INDEX).read_text())
    assert [e["name"] for e in two_idx] == [e["name"] for e in one_idx] == ["checkpoint-1", "checkpoint-2", "final"]
    for name in ("checkpoint-1", "final"):
        one = load_file(tmp_path / "one" / name / "model.safetensors")
        two = load_file(tmp_path / "two" / name / "model.safetensors")
        assert one.keys() == two.keys()
        base_w = load_file(base / "model.safetensors")
        assert any(not torch.equal(base_w[k], one[k]) for k in one)
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
        moved = max((one[k] - base_w[k]).abs().max().item() for k in one)
        print(f"{name}: max |1 proc - 2 procs| {diff:.2e}, max change from the base {moved:.2e}")
        assert diff < 1e-5 < moved, (name, diff, moved)
        assert (tmp_path / "two" / name / "tokenizer.json").is_file()
    one_loss = [h["loss"] for h in one_sum["loss_history"]]
    two_loss = [h["loss"] for h in two_sum["loss_history"]]
    assert two_loss == pytest.approx(one_loss, abs=1e-3)


def test_the_stage_trains_through_accelerate_launch(tmp_path, monkeypatch):
    """`finetune_mllm.launch`: the DVC stage itself runs the training in 2 processes, then selects and predicts."""
    from agegender.stages import common, finetune_mllm, prepare_data

    params = yaml.safe_load((REPO / "profiles" / "demo.yaml").read_text())
    params["prepare_data"]["demo"].update(n_train=12, n_val=6, n_test=8, image_size=96)
    params["prepare_data"]["subsets"]["nanodemo"]["per_bin"] = 1
    spec = params["finetune_mllm"]["runs"]["tiny_llava_ft"]
    params["finetune_mllm"]["runs"] = {"tiny_llava_ft": spec}
    spec["build_tiny"] = {"kind": "llava", "seed": 3, "image_size": 56, "vision_hidden": 32}
    # enough steps for the tiny model to learn the answer format (selection needs parsed answers)
    spec["config"].update(num_train_epochs=40, per_device_train_batch_size=2, save_steps=60)
    spec["datasets"] = ["nanodemo"]
    spec["launch"] = {
        "num_processes": 2,
        "config_file": str(REPO / "configs" / "accelerate_cpu_2proc.yaml"),
        "args": ["--main_process_port", "29519"],
    }
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    loaded, paths = common.setup(tmp_path)
    prepare_data.run(loaded, paths, progress=False)
    summary = finetune_mllm.run(loaded, paths, "tiny_llava_ft", progress=False)
    out = tmp_path / "models" / "finetune_mllm" / "tiny_llava_ft"
    run = json.loads((out / "run" / "finetune_summary.json").read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 4
    assert summary["train_steps"] == run["steps"] > 0
    assert (out / "best" / "config.json").is_file()
    assert (tmp_path / "predictions" / "finetune_mllm" / "tiny_llava_ft" / "predictions.parquet").is_file()
