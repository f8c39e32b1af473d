"""The DVC pipeline end to end on a tiny demo profile: every notebook runs, numbers check out, rerun is a no-op."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agegender.files import RUN_LOG_FILE
from agegender.mllm.runner import RUN_FIELDS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

pytestmark = pytest.mark.slow

#: what the Makefile exports besides PATH; `dvc repro` must not need them (README: without make)
MAKEFILE_EXPORTS = ("HF_HUB_OFFLINE", "MPLBACKEND")


def tiny_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare_data"]["demo"].update(n_train=40, n_val=10, n_test=60)
    params["prepare_data"]["subsets"]["nanodemo"]["per_bin"] = 2
    params["evaluate"]["n_resamples"] = 50
    params["report"]["gallery"]["n"] = 3
    # 40 people: more epochs so that the tiny LLaVA learns the answer format (the learning goal itself is tested
    # in tests/unit/test_mllm_finetune.py); one save in between so that selection has two checkpoints
    params["finetune_mllm"]["runs"]["tiny_llava_ft"]["config"].update(num_train_epochs=30, save_steps=40)
    params["finetune_mllm"]["runs"]["tiny_llava_ft_body"]["config"].update(max_steps=4)
    return params


def run(cmd, cwd):
    # a shell with the venv activated, without what the Makefile exports: the stage commands set it themselves
    env = {k: v for k, v in os.environ.items() if k not in MAKEFILE_EXPORTS}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "pyproject.toml"):  # params.yaml: the demo profile, cut down below
        shutil.copy(ROOT / name, root / name)
    for folder in ("notebooks", "src"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(["git", "init", "-q"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    log = run([str(BIN / "dvc"), "repro"], root)
    return root, log


def test_every_stage_ran_and_wrote_its_outputs(project):
    root, log = project
    for stage in ("check", "prepare_data", "train_mivolo", "predict", "evaluate", "report"):
        assert f"Running stage '{stage}'" in log
        assert (root / "metrics" / f"{stage}.json").is_file()
    for key in ("tiny_llava_ft", "tiny_llava_ft_body"):  # one stage per fine-tuning run
        assert f"Running stage 'finetune_mllm@{key}'" in log
        assert (root / "metrics" / "finetune_mllm" / f"{key}.json").is_file()
        assert (root / "predictions" / "finetune_mllm" / key / "predictions.parquet").is_file()
    for key in ("tiny_llava", "tiny_llava_next"):
        assert f"Running stage 'query_mllms@{key}'" in log
        assert (root / "metrics" / "query_mllms" / f"{key}.json").is_file()
        assert (root / "predictions" / "query_mllms" / key / "predictions.parquet").is_file()
    assert (root / "models" / "mivolo" / "mivolo.pth.tar").is_file()
    # the val split's size: the tolerance of the val metrics follows from it (agegender.tolerances)
    assert json.loads((root / "metrics" / "train_mivolo.json").read_text())["val_n"] > 0
    assert (root / "models" / "finetune_mllm" / "tiny_llava_ft" / "best" / "config.json").is_file()
    assert (root / "models" / "finetune_mllm" / "tiny_llava_ft" / "selection.md").is_file()
    # the body run reports the end of its training: no selection, no kept copy
    assert not (root / "models" / "finetune_mllm" / "tiny_llava_ft_body" / "best").exists()
    body = json.loads((root / "metrics" / "finetune_mllm" / "tiny_llava_ft_body.json").read_text())
    assert body["last.step"] == body["train_steps"] == 4 and "selection.checkpoints" not in body
    for nb in (
        "01_prepare_data",
        "02_train_mivolo",
        "04_query_mllms_tiny_llava",
        "05_predict",
        "06_evaluate",
        "07_report",
    ):
        executed = json.loads((root / "reports" / "notebooks" / f"{nb}.ipynb").read_text())
        assert all(c.get("outputs") is not None for c in executed["cells"] if c["cell_type"] == "code")
    assert (root / "dvc.lock").is_file()
    tables = sorted(p.name for p in (root / "reports" / "tables").iterdir())
    assert "table8.md" in tables and "table8.tex" in tables
    assert "assurance.md" in tables and "assurance.tex" in tables  # the age-assurance rates
    figures = {p.name for p in (root / "reports" / "figures").iterdir()}
    assert {"age_group_mae.png", "age_group_mae.pdf", "age_assurance.png", "age_assurance.pdf"} <= figures
    assert "gallery.png" not in figures  # crops of photos never land in a committed folder
    assert (root / "reports" / "gallery" / "gallery.png").is_file()
    # the page a person reads: every table and figure of the committed folders, the gallery's crops not embedded
    page = (root / "reports" / "report.html").read_text()
    assert page.count("<table>") == sum(name.endswith(".md") for name in tables)
    assert page.count("data:image/png;base64,") == sum(name.endswith(".png") for name in figures)
    assert 'id="gallery-png"' not in page


@pytest.mark.parametrize("width", [1280, 800])
def test_the_demo_report_page_reads_in_chromium(project, tmp_path, width):
    """The demo run's own report.html (every table, the wide summary, every figure): each figure loads, no text
    overflows its box, the page does not scroll sideways."""
    from browser import chromium, page_layout  # tests/browser.py

    root, *_ = project
    figures = sum(p.suffix == ".png" for p in (root / "reports" / "figures").iterdir())
    driver = chromium()
    try:
        layout = page_layout(driver, root / "reports" / "report.html", width, tmp_path / f"report-{width}.png")
    finally:
        driver.quit()
    print(f"demo report.html at {width} px: page {layout['width']} x {layout['height']} px, {layout['images']} images")
    assert layout["images"] == figures and layout["broken"] == []
    assert layout["overflowing"] == [] and not layout["page_overflows"]


def test_baseline_numbers_are_the_hand_computed_ones(project):
    root, _ = project
    samples = pd.read_parquet(root / "data" / "prepared" / "samples.parquet")
    train = samples[(samples["dataset"] == "demo") & (samples["split"] == "train")]
    test = samples[(samples["dataset"] == "demo") & (samples["split"] == "test")]
    mean_age = train["age"].mean()
    expected_mae = (test["age"].dropna() - mean_age).abs().mean()
    flat = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert flat["demo.face_body.baseline.age_mae"] == pytest.approx(expected_mae, rel=1e-5)
    assert flat["demo.face_body.baseline.coverage"] == 1.0
    majority = train["gender"].value_counts().idxmax()
    assert flat["demo.body.baseline.gender_acc"] == pytest.approx(
        (test["gender"].dropna() == majority).mean(), rel=1e-5
    )
    assert "demoadience.body.baseline.class_acc" in flat
    assert any(k.startswith("nanodemo.") for k in flat)


def test_every_model_is_evaluated_and_untrained_mllms_are_reported_honestly(project):
    root, _ = project
    flat = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert "demo.face_body.mivolo_demo.age_mae" in flat and "demo.body_wo_face.mivolo_demo.age_mae" in flat
    assert "demo.face.tiny_llava_ft.coverage" in flat
    for key in ("tiny_llava", "tiny_llava_next"):
        queried = json.loads((root / "metrics" / "query_mllms" / f"{key}.json").read_text())
        rows = sum(v for k, v in queried.items() if k.startswith("body."))
        # random weights: the statuses say what happened, and coverage counts only the parsed answers
        assert rows + queried.get("no_crop_body", 0) <= flat[f"nanodemo.body.{key}.n_total"]
        assert flat[f"nanodemo.body.{key}.n_answered"] == queried.get("body.ok", 0)
        # how the run went is in its run log, beside results that hold none of it
        out = root / "predictions" / "query_mllms" / key
        log = json.loads((out / RUN_LOG_FILE).read_text())
        assert sum(run["requests_sent"] for run in log["runs"].values()) > 0 and "requests_sent" not in queried
        manifest = json.loads((out / "manifest.json").read_text())
        assert all(not set(RUN_FIELDS) & set(run) for run in manifest["runs"].values())


def test_captions_say_demo_data(project):
    root, _ = project
    assert "demo data" in (root / "reports" / "tables" / "table8.md").read_text()
    assert "demo data" in (root / "reports" / "tables" / "table8.tex").read_text()


def test_explore_notebook_runs_under_nbval_on_the_outputs(project):
    # in the executed project's copy of the notebook, so that nbval writes nothing into the repository
    root, _ = project
    notebook = root / "notebooks" / "explore.ipynb"
    nbval = ["--nbval-lax", "--nbval-current-env"]
    log = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nbval, str(notebook)], root)
    assert " passed" in log and "failed" not in log  # run() already asserted the exit status


def test_second_repro_only_rechecks(project):
    root, _ = project
    log = run([str(BIN / "dvc"), "repro"], root)
    # `check` runs every time (it looks at files outside the project); its fingerprints did not change
    assert [line for line in log.splitlines() if line.startswith("Running stage")] == ["Running stage 'check':"]
    status = run([str(BIN / "dvc"), "status"], root)
    assert "always changed" in status and "changed deps" not in status and "changed outs" not in status
