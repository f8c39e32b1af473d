"""The paper profile's code path on the CPU: `agegender profile paper` + `dvc repro` over tiny stand-ins.

Every data set (LAGENDA, NanoLAGENDA, IMDB-clean, Adience, FairFace, CACD, Wild104) and model (MiVOLO-384 as a
Hugging Face folder, MiVOLO-224 as an official checkpoint, LLaVA-1.5 and LLaVA-NeXT llava-hf folders, ShareGPT4V
converted from the original LLaVA layout, its fine-tuned version, GPT-4V/4o through the `openai` backend) is a tiny
stand-in in the folder the run-book names; `profiles/paper.yaml` is used as committed, with size overrides only and
the two ChatGPT entries pointed at local OpenAI-compatible servers instead of api.openai.com.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))

from standins import STANDIN_OVERRIDES, api_overrides, build_standins, copy_project  # noqa: E402

from agegender.files import RUN_LOG_FILE  # noqa: E402

pytestmark = pytest.mark.slow

#: a made-up key: the servers ignore it, and it must never be written anywhere
FAKE_KEY = "sk-standin-0123456789abcdef"
PAPER_MODELS = ("llava15-7b", "llava-next-34b", "sharegpt4v-7b", "gpt-4v", "gpt-4o")
PAPER_FINETUNE_RUNS = ("sharegpt4v-7b-ft", "sharegpt4v-13b-ft", "llava15-7b-ft", "sharegpt4v-7b-ft-face")


def run(cmd, cwd, *, check=True):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "OPENAI_API_KEY": FAKE_KEY,
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from agegender.mllm.tools.server import running_server

    root = tmp_path_factory.mktemp("paper")
    copy_project(ROOT, root)
    run(["git", "init", "-q"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)

    # before the stand-ins exist, the switch lists every missing file at once and still makes the profile active
    before = run([str(BIN / "agegender"), "profile", "paper"], root, check=False)
    assert before.returncode == 1, before.stdout + before.stderr
    standins = build_standins(root)
    with (
        # the stand-in for gpt-4v refuses every 4th request, as ChatGPT4V refused part of NanoLAGENDA (section 4.1)
        running_server(
            "transformers",
            str(standins["llava15-7b"]),
            served_model="gpt-4-turbo-2024-04-09",
            faults={"refuse": list(range(4, 2000, 4))},
        ) as v,
        running_server("transformers", str(standins["llava-next-34b"]), served_model="gpt-4o-2024-05-13") as o,
    ):
        gpt = {"gpt-4v": v, "gpt-4o": o}
        overrides = [*STANDIN_OVERRIDES, *api_overrides(gpt)]
        sets = [arg for item in overrides for arg in ("--set", item)]
        switch = run([str(BIN / "agegender"), "profile", "paper", *sets], root)
        log = run([str(BIN / "dvc"), "repro"], root)
    return root, before.stdout + before.stderr, switch.stdout, log.stdout + log.stderr, gpt


def test_the_switch_listed_every_missing_file_at_once(project):
    _, before, _, _, _ = project
    for expected in (
        "data/raw/lagenda",
        "data/raw/imdb_clean",
        "data/raw/adience",
        "data/raw/fairface",
        "data/raw/cacd",
        "data/raw/wild104",
        "models/hf/mivolo_v2",
        "model_imdb_cross_person_4.24_99.46.pth.tar",
        "models/hf/llava-1.5-7b-hf",
        "models/hf/llava-v1.6-34b-hf",
        "models/hf/sharegpt4v-7b-hf",
        "models/hf/sharegpt4v-13b-hf",
    ):
        assert expected in before, f"{expected} not reported:\n{before}"


def test_params_yaml_is_the_paper_profile(project):
    root, _, switch, _, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["profile"] == "paper"
    assert "every configured file is in place" in switch
    committed = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())
    assert params["study"] == committed["study"]
    assert params["report"]["roles"] == committed["report"]["roles"]


def test_every_stage_ran(project):
    root, _, _, log, _ = project
    for stage in ("check", "prepare_data", "train_mivolo", "predict", "evaluate", "report"):
        assert f"Running stage '{stage}'" in log
    for key in PAPER_FINETUNE_RUNS:
        assert f"Running stage 'finetune_mllm@{key}'" in log
    for key in PAPER_MODELS:
        assert f"Running stage 'query_mllms@{key}'" in log
    # MiVOLO-384 trained here (train_mivolo on IMDB-clean train), predicted as `mivolo_d1_384@imdb_clean`
    assert json.loads((root / "metrics" / "train_mivolo.json").read_text())["trained"] is True


def test_every_data_set_was_read_in_its_layout(project):
    root, *_ = project
    samples = pd.read_parquet(root / "data" / "prepared" / "samples.parquet")
    counts = samples.groupby(["dataset", "split"]).size()
    for name in ("lagenda", "nanolagenda", "imdb_clean", "adience", "fairface", "cacd", "wild104"):
        assert counts.get((name, "test"), 0) > 0, name
    assert counts.get(("imdb_clean", "train"), 0) > 0 and counts.get(("imdb_clean", "val"), 0) > 0
    assert samples.loc[samples["dataset"] == "fairface", "age_class"].notna().all()
    assert samples.loc[samples["dataset"] == "adience", "age_class"].notna().all()


def test_every_model_answered_its_data_sets(project):
    root, *_ = project
    flat = json.loads((root / "metrics" / "evaluate.json").read_text())
    expected = {
        "lagenda.face_body.mivolo_d1_384",
        "imdb_clean.face_body.mivolo_d1_224_imdb",
        "cacd.face_body.mivolo_d1_384",
        "fairface.face_body.mivolo_d1_384",
        "adience.face_body.mivolo_d1_384",
        "wild104.face_body.mivolo_d1_384",
        "nanolagenda.body.llava15-7b",
        "nanolagenda.body_wo_face.sharegpt4v-7b",
        "nanolagenda.body.llava-next-34b",
        "lagenda.body.llava-next-34b",
        "imdb_clean.body.llava-next-34b",
        "nanolagenda.body.gpt-4v",
        "nanolagenda.body_wo_face.gpt-4o",
        "wild104.body.gpt-4o",
        "nanolagenda.body.sharegpt4v-7b-ft",
        "lagenda.body.sharegpt4v-7b-ft",
        "cacd.face_body.mivolo_d1_384@imdb_clean",
        "fairface.face_body.mivolo_d1_384@imdb_clean",
        # the other fine-tuned variants: each answers the data sets and inputs of its paper rows
        "lagenda.body.sharegpt4v-7b-ft-1ep",
        "nanolagenda.body_wo_face.sharegpt4v-13b-ft",
        "wild104.body.sharegpt4v-13b-ft",
        "lagenda.body.llava15-7b-ft",
        "adience.face.sharegpt4v-7b-ft-face",
    }
    for key in expected:
        assert f"{key}.n_total" in flat, key
        # the age-assurance populations are counted for every row (a rate only on evaluate.assurance.min_n people)
        assert all(f"{key}.{n}" in flat for n in ("challenge_n", "minor_n", "child_band_n", "adult_n")), key
    # inputs_by_dataset: LLaVA-NeXT answered full LAGENDA with body crops only, as in the paper
    assert "lagenda.body_wo_face.llava-next-34b.n_total" not in flat
    for key in ("gpt-4v", "gpt-4o"):
        queried = json.loads((root / "metrics" / "query_mllms" / f"{key}.json").read_text())
        log = json.loads((root / "predictions" / "query_mllms" / key / RUN_LOG_FILE).read_text())
        assert sum(run["requests_sent"] for run in log["runs"].values()) > 0 and "requests_sent" not in queried


def test_report_puts_the_papers_numbers_beside_ours(project):
    root, *_ = project
    tables = root / "reports" / "tables"
    for n in range(1, 11):
        assert (tables / f"table{n}.md").is_file() and (tables / f"table{n}.tex").is_file()
    table8 = (tables / "table8.md").read_text()
    assert "demo data" not in table8
    # our MiVOLO-384 row on NanoLAGENDA carries the paper's value and the difference
    row = next(
        line for line in table8.splitlines() if line.startswith("| MiVOLO-384 | Body & face") and "; paper" in line
    )
    assert "Δ" in row
    # tables 4 and 5: MiVOLO-384 trained here fills its own row under the paper's, with no paper number beside it
    for n in (4, 5):
        trained = next(line for line in (tables / f"table{n}.md").read_text().splitlines() if "trained here" in line)
        assert "no predictions yet" not in trained and "; paper" not in trained
    # every fine-tuned variant of table 6 is a model of ours now: its rows come from a finetune_mllm run
    table6 = (tables / "table6.md").read_text()
    assert "no predictions yet" not in table6
    names = yaml.safe_load((root / "params.yaml").read_text())["report"]["model_names"]
    for model in (
        "sharegpt4v-7b-ft",
        "sharegpt4v-7b-ft-1ep",
        "sharegpt4v-13b-ft",
        "llava15-7b-ft",
        "sharegpt4v-7b-ft-face",
    ):
        assert any(line.startswith(f"| {names[model]} |") for line in table6.splitlines()), model
    # rows we have no predictions for are marked, not dropped
    assert any("no predictions yet" in (tables / f"table{n}.md").read_text() for n in range(1, 11))
    figures = {p.name for p in (root / "reports" / "figures").iterdir()}
    assert {"age_group_mae.png", "age_group_mae.pdf"} <= figures


def test_nanolagenda_is_built_from_gpt4v_refusals(project):
    """The paper profile's exclusion step ran: gpt-4v's refusals are listed, counted, and table 8 uses `kept`."""
    root, *_ = project
    exclusions = pd.read_csv(root / "reports" / "exclusions.csv", dtype=str)
    assert list(exclusions.columns) == ["dataset", "sample_id", "input", "model", "status"]
    # the stand-in for gpt-4v refused every 4th request: those samples are listed, nothing else
    assert set(exclusions["model"]) == {"gpt-4v"} and set(exclusions["status"]) == {"refused"}
    flat = json.loads((root / "metrics" / "evaluate.json").read_text())
    drawn, removed, kept = (flat[f"nanolagenda.exclusion.gpt-4v.{n}"] for n in ("n_drawn", "n_excluded", "n_kept"))
    assert (
        drawn == flat["nanolagenda.face_body.mivolo_d1_384.n_total"]
        and 0 < removed == exclusions["sample_id"].nunique()
        and kept == drawn - removed
    )
    # every model of every input is evaluated on the same kept samples, the fine-tuned and trained ones included
    kept_totals = {k: v for k, v in flat.items() if k.startswith("nanolagenda.") and k.endswith(".kept.n_total")}
    assert len(kept_totals) >= 8 and set(kept_totals.values()) == {kept}, kept_totals
    table8 = (root / "reports" / "tables" / "table8.md").read_text()
    assert "('kept' view)" in table8.splitlines()[0] and f"{kept:,} kept" in table8.splitlines()[0]


def test_report_writes_the_fairness_view_and_significance_marks(project):
    """evaluate writes the fairness view, report renders it and marks the paper tables' cells (issue 15)."""
    root, *_ = project
    fairness = pd.read_csv(root / "reports" / "fairness.csv")
    # the stand-ins carry no race column: gender groups only, with the n each group stands on
    assert set(fairness["attribute"]) == {"gender"} and (fairness["gender_n"] >= 0).all()
    assert "No race labels in" in (root / "reports" / "tables" / "fairness.md").read_text().splitlines()[0]
    table8 = (root / "reports" / "tables" / "table8.md").read_text()
    assert "★" in table8 and "paired bootstrap difference" in table8.splitlines()[0]


def test_the_api_key_is_never_written(project):
    root, *_ = project
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.stat().st_size < 20_000_000:
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_second_repro_only_rechecks(project):
    root, *_ = project
    log = run([str(BIN / "dvc"), "repro"], root, check=False)
    text = log.stdout + log.stderr
    ran = [line for line in text.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'check':"], text[-3000:]
