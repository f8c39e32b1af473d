"""MiVOLO training: config, dataset and augmentations, weight transfer, losses, resume, and the demo goal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from agegender.cli.mivolo_train import main
from agegender.data.demo import DemoConfig, generate_demo
from agegender.data.readers import read_mivolo
from agegender.errors import InputError
from agegender.files import RUN_LOG_FILE
from agegender.metrics import evaluate
from agegender.mivolo.checkpoint import load_checkpoint
from agegender.mivolo.dataset import Augment, CropRules, MiVOLODataset
from agegender.mivolo.model import MODEL_SPECS, create_mivolo
from agegender.mivolo.predict import predict_samples
from agegender.mivolo.preprocess import to_tensor
from agegender.mivolo.train import (
    FINAL_CHECKPOINT,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    STATE_FILE,
    SUMMARY_FILE,
    TrainConfig,
    derive_seed,
    lds_weights,
    load_pretrained,
    train_mivolo,
    transfer_weights,
)
from agegender.specialized import ConstantBaseline

SPLITS = {"train": "train", "val": "val", "test": "test"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_tiny") / "demo"
    generate_demo(root, DemoConfig(n_train=40, n_val=8, n_test=8, image_size=128, seed=7), workers=1)
    read = read_mivolo(root, "demo", annotations="annotations", splits=SPLITS)
    return root, read.samples, read.masked


def _tiny_config(**kw) -> TrainConfig:
    base = {
        "variant": "mivolo_tiny_64",
        "stage1_epochs": 1,
        "stage2_epochs": 2,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_epochs": 0.5,
        "min_person_size": 16,
        "ema": True,
        "ema_decay": 0.9,
        "face_blur_p2": 0.5,
        "drop_face_p": 0.2,
        "drop_body_p": 0.2,
        "eval_batch_size": 16,
        "threads": 1,
    }
    base.update(kw)
    return TrainConfig.from_dict(base)


# ----------------------------------------------------------------------------------------------
# Config


def test_config_defaults_follow_the_paper_and_variant():
    cfg = TrainConfig()
    assert cfg.drop_rate == 0.1 and cfg.drop_path_rate == 0.1
    assert cfg.face_blur_p1 == 0.05
    assert cfg.img_size == MODEL_SPECS[cfg.variant].img_size
    assert TrainConfig(variant="mivolo_d1_384").img_size == 384
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_config_rejects_unknown_and_bad_settings():
    with pytest.raises(ValueError, match=r"train_mivolo\.config\.epochs: unknown key \(known: variant, "):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="img_size"):
        TrainConfig.from_dict({"variant": "mivolo_tiny_64", "img_size": 224})
    assert TrainConfig.from_dict({"variant": "mivolo_tiny_64", "img_size": 64}).img_size == 64
    with pytest.raises(ValueError, match="unknown MiVOLO variant"):
        TrainConfig(variant="volo_d9")
    with pytest.raises(ValueError, match="face_blur_p2"):
        TrainConfig(face_blur_p2=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="age_loss"):
        TrainConfig(age_loss="huber")
    with pytest.raises(ValueError, match="at least 1"):
        TrainConfig(stage1_epochs=0, stage2_epochs=0)


def test_derive_seed_depends_only_on_keys():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    assert 0 <= derive_seed(5) < 2**31


# ----------------------------------------------------------------------------------------------
# Losses


def test_lds_weights_favour_rare_ages_and_average_one():
    ages = np.array([30.0] * 50 + [31.0] * 50 + [80.0] * 2 + [np.nan])
    w = lds_weights(ages, 30, 80, sigma=2.0, power=1.0)
    assert w.shape == (51,)
    counts = np.bincount(np.round(ages[np.isfinite(ages)]).astype(int) - 30, minlength=51)
    assert np.isclose((counts * w).sum() / counts.sum(), 1.0, atol=1e-5)
    assert w[50] > 10 * w[0]
    flat = lds_weights(ages, 30, 80, sigma=2.0, power=0.0)
    assert np.allclose(flat, 1.0)


# ----------------------------------------------------------------------------------------------
# Dataset


def test_dataset_items_targets_and_black_missing_inputs(tiny_demo):
    root, samples, masked = tiny_demo
    train = samples[samples["split"] == "train"].reset_index(drop=True)
    rules = CropRules(min_person_size=16)
    ds = MiVOLODataset(train, masked, root, size=64, rules=rules, age_range=(0.0, 90.0, 45.0))
    x, age, gender = ds[0]
    assert x.shape == (6, 64, 64) and x.dtype == torch.float32
    expected_age = (round(float(train["age"].iloc[0])) - 45.0) / 90.0
    assert age.item() == pytest.approx(expected_age)
    assert gender.item() == (1 if train["gender"].iloc[0] == "female" else 0)
    # body_wo_face: the face channels are a normalised black image
    body_only = MiVOLODataset(train, masked, root, size=64, rules=rules, input_kind="body_wo_face")
    xb = body_only[0][0]
    assert torch.equal(xb[:3], to_tensor(None, 64))
    assert torch.equal(xb[3:], x[3:])
    face_only = MiVOLODataset(train, masked, root, size=64, rules=rules, with_persons=False, input_kind="face")
    assert face_only[0][0].shape == (3, 64, 64)
    assert torch.equal(face_only[0][0], x[:3])
    with pytest.raises(InputError, match="face-only"):
        MiVOLODataset(train, masked, root, size=64, with_persons=False, input_kind="face_body")
    with pytest.raises(InputError, match="no image folder"):
        MiVOLODataset(train, masked, {"other": root}, size=64)


def test_dataset_missing_labels_and_unusable_rows(tiny_demo):
    root, samples, masked = tiny_demo
    rows = samples[samples["split"] == "train"].head(4).reset_index(drop=True).copy()
    rows.loc[0, "age"] = pd.NA
    rows.loc[1, "gender"] = pd.NA
    for col in ("face_x0", "face_y0", "face_x1", "face_y1", "person_x0", "person_y0", "person_x1", "person_y1"):
        rows.loc[2, col] = pd.NA
    ds = MiVOLODataset(rows, masked, root, size=64, rules=CropRules(min_person_size=16), age_range=(0, 90, 45))
    assert np.isnan(ds[0][1].item())
    assert ds[1][2].item() == -1
    assert not ds.usable()[2] and ds.usable()[[0, 1, 3]].all()
    assert torch.equal(ds[2][0], torch.cat([to_tensor(None, 64)] * 2))


def test_augmentation_is_seeded_per_sample_and_epoch_and_cache_free(tiny_demo):
    root, samples, masked = tiny_demo
    train = samples[samples["split"] == "train"].reset_index(drop=True)
    aug = Augment(face_blur_p=0.5, drop_face_p=0.2, drop_body_p=0.2)
    kw = {"size": 64, "rules": CropRules(min_person_size=16), "augment": aug, "seed": 3, "stage": 2}
    cached = MiVOLODataset(train, masked, root, cache=True, **kw)
    lazy = MiVOLODataset(train, masked, root, cache=False, **kw)
    order = [5, 0, 3, 5, 1]
    first = [cached[i][0] for i in order]
    # same items whatever the order of access and with or without the crop cache
    assert torch.equal(first[0], first[3])
    for i, x in zip(order, first, strict=True):
        assert torch.equal(lazy[i][0], x)
    plain = MiVOLODataset(train, masked, root, size=64, rules=CropRules(min_person_size=16))
    assert any(not torch.equal(cached[i][0], plain[i][0]) for i in range(8))
    cached.set_epoch(1)
    assert any(not torch.equal(cached[i][0], first[k]) for k, i in enumerate(order))
    # independent of the DataLoader worker count
    cached.set_epoch(0)
    loader0 = torch.utils.data.DataLoader(cached, batch_size=4, num_workers=0)
    loader2 = torch.utils.data.DataLoader(cached, batch_size=4, num_workers=2)
    for (a, _, _), (b, _, _) in zip(loader0, loader2, strict=True):
        assert torch.equal(a, b)


def test_face_blur_changes_only_the_face(tiny_demo):
    root, samples, masked = tiny_demo
    train = samples[samples["split"] == "train"].reset_index(drop=True)
    no_jitter = {"flip_p": 0.0, "scale_jitter": 0.0, "translate_jitter": 0.0}
    kw = {"size": 64, "rules": CropRules(min_person_size=16), "seed": 1}
    blurred = MiVOLODataset(train, masked, root, augment=Augment(face_blur_p=1.0, **no_jitter), **kw)
    sharp = MiVOLODataset(train, masked, root, augment=Augment(face_blur_p=0.0, **no_jitter), **kw)
    i = int(np.flatnonzero(train["face_x0"].notna().to_numpy())[0])
    xb, xs = blurred[i][0], sharp[i][0]
    assert not torch.equal(xb[:3], xs[:3])
    assert torch.equal(xb[3:], xs[3:])
    # a blur lowers the high-frequency energy of the face
    assert xb[:3].diff(dim=2).abs().mean() < xs[:3].diff(dim=2).abs().mean()


# ----------------------------------------------------------------------------------------------
# Weights


def test_stage2_init_copies_face_stem_into_both_stems():
    torch.manual_seed(0)
    stage1 = create_mivolo("mivolo_tiny_64", in_chans=3)
    stage2 = create_mivolo("mivolo_tiny_64", in_chans=6)
    report = transfer_weights(stage1.state_dict(), stage2, skip_heads=False)
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    for stem in ("conv1", "conv2"):
        assert torch.equal(s2[f"patch_embed.{stem}.0.weight"], s1["patch_embed.conv.0.weight"])
        assert torch.equal(s2[f"patch_embed.{stem}.1.running_var"], s1["patch_embed.conv.1.running_var"])
    for proj in ("proj1", "proj2"):
        assert torch.equal(s2[f"patch_embed.{proj}.weight"], s1["patch_embed.proj.weight"])
    for key in ("pos_embed", "cls_token", "head.weight", "aux_head.bias", "network.0.0.attn.v.weight"):
        assert torch.equal(s2[key], s1[key])
    assert report["missing"] and all(k.startswith("patch_embed.map.") for k in report["missing"])


def test_load_pretrained_from_timm_volo_file(tmp_path):
    from safetensors.torch import save_file
    from timm.models.volo import VOLO

    spec = MODEL_SPECS["mivolo_tiny_64"]
    torch.manual_seed(1)
    volo = VOLO(**spec.kwargs(), num_classes=1000)  # an "ImageNet" VOLO of the tiny shape
    sd = volo.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "volo.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "volo.safetensors"))
    for name in ("volo.pth", "volo.safetensors"):
        model = create_mivolo("mivolo_tiny_64", in_chans=6)
        report = load_pretrained(model, tmp_path / name)
        msd = model.state_dict()
        assert torch.equal(msd["patch_embed.conv2.0.weight"], sd["patch_embed.conv.0.weight"])
        assert torch.equal(msd["patch_embed.proj1.weight"], sd["patch_embed.proj.weight"])
        assert torch.equal(msd["network.0.0.attn.v.weight"], sd["network.0.0.attn.v.weight"])
        assert report["skipped"]["head.weight"] == "head" and "aux_head.weight" in report["skipped"]
        assert "head.weight" in report["missing"]
    # weights for another input size: the position embedding is resampled to the model's grid
    torch.save(VOLO(**{**spec.kwargs(), "img_size": 128}, num_classes=1000).state_dict(), tmp_path / "volo128.pth")
    model = create_mivolo("mivolo_tiny_64", in_chans=3)
    assert "pos_embed" in load_pretrained(model, tmp_path / "volo128.pth")["loaded"]
    # another width does not fit: skipped with the reason, never forced
    big = create_mivolo("mivolo_small_112", in_chans=3)
    report = load_pretrained(big, tmp_path / "volo.pth")
    assert "pos_embed" not in report["loaded"] and report["skipped"]["pos_embed"].startswith("shape")
    with pytest.raises(InputError, match="not found"):
        load_pretrained(big, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.pth"):
        load_pretrained(big, tmp_path / "junk.pth")


# ----------------------------------------------------------------------------------------------
# Training and resume


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_train_writes_checkpoints_and_resumes_bit_for_bit(tiny_demo, tmp_path):
    root, samples, masked = tiny_demo
    cfg = _tiny_config()
    full = train_mivolo(samples, masked, root, cfg, tmp_path / "full", progress=False)
    assert full["status"] == "done"
    assert full["stages"]["stage2"]["init"]["from"] == "stage1" and full["stages"]["stage2"]["steps"] > 0
    out = tmp_path / "full"
    for rel in (FINAL_CHECKPOINT, HISTORY_FILE, f"stage1/{LAST_CHECKPOINT}", f"stage2/{STATE_FILE}"):
        assert (out / rel).is_file(), rel
    history = pd.read_csv(out / HISTORY_FILE)
    assert list(history["stage"]) == [1, 2, 2]
    assert history["val_age_mae"].notna().all() and history["val_gender_acc"].between(0, 1).all()
    model = load_checkpoint(out / FINAL_CHECKPOINT)
    assert model.with_persons and model.spec == MODEL_SPECS["mivolo_tiny_64"]
    ages = samples.loc[samples["split"] == "train", "age"].round()
    assert (model.min_age, model.max_age) == (float(ages.min()), float(ages.max()))
    assert model.avg_age == (model.min_age + model.max_age) / 2

    # interrupted after every epoch, across the stage boundary, then resumed each time
    parts = tmp_path / "parts"
    statuses = [train_mivolo(samples, masked, root, cfg, parts, progress=False, stop_after=1)["status"]]
    assert not (parts / FINAL_CHECKPOINT).exists()
    statuses.append(train_mivolo(samples, masked, root, cfg, parts, progress=False, stop_after=1)["status"])
    statuses.append(train_mivolo(samples, masked, root, cfg, parts, progress=False, stop_after=1)["status"])
    assert statuses == ["stopped", "stopped", "done"]
    resumed = train_mivolo(samples, masked, root, cfg, parts, progress=False)
    assert resumed["status"] == "done"
    a, b = _state_dict(out / FINAL_CHECKPOINT), _state_dict(parts / FINAL_CHECKPOINT)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    raw_a, raw_b = _state_dict(out / "stage2" / LAST_CHECKPOINT), _state_dict(parts / "stage2" / LAST_CHECKPOINT)
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)
    assert pd.read_csv(parts / HISTORY_FILE)[["stage", "epoch", "step"]].equals(history[["stage", "epoch", "step"]])
    # the same bytes in every checkpoint and the history (the resume states hold the same values, pickled from
    # objects made in another order); the epochs' wall-clock times are in the run log only
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != STATE_FILE}
    files -= {RUN_LOG_FILE, SUMMARY_FILE}
    assert FINAL_CHECKPOINT in files and HISTORY_FILE in files
    assert {f for f in files if (out / f).read_bytes() != (parts / f).read_bytes()} == set()
    assert "seconds" not in history.columns
    assert [(e["stage"], e["epoch"]) for e in json.loads((parts / RUN_LOG_FILE).read_text())["epochs"]] == [
        (1, 1), (2, 1), (2, 2)
    ]  # fmt: skip
    # EMA on: the final file holds the EMA weights, which differ from the raw ones
    assert any(not torch.equal(a[k], raw_a[k]) for k in a if k.endswith("weight"))

    # a finished run is not trained again; other settings in the same folder are refused
    again = train_mivolo(samples, masked, root, cfg, out, progress=False)
    assert again["status"] == "done" and again["history"] == full["history"]
    with pytest.raises(InputError, match="other settings") as err:
        train_mivolo(samples, masked, root, _tiny_config(lr=1e-2), out, progress=False)
    assert STATE_FILE in str(err.value)


def test_face_only_run_and_bad_inputs(tiny_demo, tmp_path):
    root, samples, masked = tiny_demo
    from timm.models.volo import VOLO

    torch.save(VOLO(**MODEL_SPECS["mivolo_tiny_64"].kwargs()).state_dict(), tmp_path / "volo.pth")
    cfg = _tiny_config(
        stage1_epochs=1, stage2_epochs=0, ema=False, val_split=None, pretrained=str(tmp_path / "volo.pth")
    )
    result = train_mivolo(samples, masked, root, cfg, tmp_path / "face", progress=False)
    assert result["status"] == "done" and list(result["stages"]) == ["stage1"]
    assert result["stages"]["stage1"]["init"]["from"] == "pretrained"
    assert result["stages"]["stage1"]["init"]["skipped"]["head.weight"] == "head"
    assert not load_checkpoint(result["checkpoint"]).with_persons
    with pytest.raises(InputError, match="no rows of split"):
        train_mivolo(samples[samples["split"] != "train"], masked, root, cfg, tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="global batch"):
        train_mivolo(samples, masked, root, _tiny_config(batch_size=64), tmp_path / "y", progress=False)


def test_resume_refuses_other_pretrained_weights_at_the_same_path(tiny_demo, tmp_path):
    """A run started from one pretrained file is never continued from another file saved under its name."""
    from timm.models.volo import VOLO

    root, samples, masked = tiny_demo
    weights = tmp_path / "volo.pth"
    torch.manual_seed(1)
    torch.save(VOLO(**MODEL_SPECS["mivolo_tiny_64"].kwargs()).state_dict(), weights)
    cfg = _tiny_config(stage1_epochs=2, stage2_epochs=0, ema=False, val_split=None, pretrained=str(weights))
    out = tmp_path / "run"
    assert train_mivolo(samples, masked, root, cfg, out, progress=False, stop_after=1)["status"] == "stopped"
    torch.manual_seed(2)
    torch.save(VOLO(**MODEL_SPECS["mivolo_tiny_64"].kwargs()).state_dict(), weights)  # other weights, same path
    with pytest.raises(InputError, match="other pretrained weights") as err:
        train_mivolo(samples, masked, root, cfg, out, progress=False)
    assert STATE_FILE in str(err.value) and "pretrained" in str(err.value)
    # the first weights back in place: the run resumes and finishes
    torch.manual_seed(1)
    torch.save(VOLO(**MODEL_SPECS["mivolo_tiny_64"].kwargs()).state_dict(), weights)
    assert train_mivolo(samples, masked, root, cfg, out, progress=False)["status"] == "done"


def test_command_line_entry_point(tiny_demo, tmp_path, capsys):
    root, samples, masked = tiny_demo
    samples.to_parquet(tmp_path / "samples.parquet")
    masked.to_parquet(tmp_path / "masked.parquet")
    params = {"profile": "demo", "train_mivolo": {**_tiny_config().to_dict(), "stage2_epochs": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--samples", str(tmp_path / "samples.parquet"), "--masked", str(tmp_path / "masked.parquet")]
    args += ["--image-root", f"demo={root}", "--config", str(tmp_path / "params.yaml"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "cli"), "--set", "ema=false"]) == 0
    assert '"status": "done"' in capsys.readouterr().out
    assert (tmp_path / "cli" / FINAL_CHECKPOINT).is_file()
    assert main([*args, "--out", str(tmp_path / "cli2"), "--set", "epochs=3"]) == 2
    assert "train_mivolo.epochs: unknown key" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The demo goal, on a smaller run


@pytest.mark.slow
def test_demo_goal_small_run_beats_the_baseline_and_body_only(tmp_path):
    root = tmp_path / "demo"
    generate_demo(root, DemoConfig(n_train=300, n_val=40, n_test=200, image_size=256, seed=1234))
    read = read_mivolo(root, "demo", annotations="annotations", splits=SPLITS)
    samples, masked = read.samples, read.masked
    cfg = TrainConfig.from_dict(
        {
            "variant": "mivolo_tiny_64",
            "stage1_epochs": 12,
            "stage2_epochs": 15,
            "batch_size": 32,
            "lr": 2e-3,
            "age_loss": "l1",
            "min_person_size": 50,
            "threads": 2,
        }
    )
    t0 = time.perf_counter()
    result = train_mivolo(samples, masked, root, cfg, tmp_path / "run", progress=False)
    train_seconds = time.perf_counter() - t0
    model = load_checkpoint(result["checkpoint"])
    test = samples[samples["split"] == "test"].reset_index(drop=True)
    kinds = ("face_body", "body_wo_face")
    preds = predict_samples(model, test, masked, root, inputs=kinds, progress=False)
    baseline = ConstantBaseline.fit(samples[samples["split"] == "train"]).predict(test, kinds)
    table = evaluate(test, pd.concat([preds, baseline], ignore_index=True), views=("answered",))
    get = table.set_index(["input", "model"])
    base_mae = get.loc[("face_body", "baseline"), "age_mae"]
    base_acc = get.loc[("face_body", "baseline"), "gender_acc"]
    mae, acc = get.loc[("face_body", "mivolo"), "age_mae"], get.loc[("face_body", "mivolo"), "gender_acc"]
    body_mae = get.loc[("body_wo_face", "mivolo"), "age_mae"]
    body_acc = get.loc[("body_wo_face", "mivolo"), "gender_acc"]
    summary = f"{train_seconds:.0f} s; mae {mae:.2f} vs {base_mae:.2f}, acc {acc:.3f} vs {base_acc:.3f}"
    summary += f"; body only: mae {body_mae:.2f}, acc {body_acc:.3f}"
    assert mae <= 0.7 * base_mae, summary
    assert acc >= base_acc + 0.15, summary
    assert mae < body_mae and acc > body_acc, summary
