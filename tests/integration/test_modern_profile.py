"""The modern profile's open models on the CPU: `agegender profile modern` + `dvc repro query_mllms@<entry>`.

Each open model of `profiles/modern.yaml` (Qwen2.5-VL, Qwen3-VL, InternVL3, Gemma 3, LLaVA-OneVision, SmolVLM2) is
a tiny model of its family in the folder its entry names, queried through the `transformers` backend with the
entry's own options (its image budget scaled to the tiny model). The run-book's other way, a model served behind an
OpenAI-compatible endpoint (`vllm serve`) and queried through the `openai` backend, is stood in for by the project's
own server on loopback serving the same tiny Qwen2.5-VL with the same budget: its answers must be the local ones.
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

from standins import MODERN_FAMILIES, MODERN_OVERRIDES, build_modern_standins, copy_project  # noqa: E402

pytestmark = pytest.mark.slow

#: the served entry of the run-book's `vllm serve` recipe, as a user adds it with `--set`
SERVED = "qwen25-vl-7b-served"


#: made-up keys for the API entries, which the pre-flight check wants in the environment; nothing is sent to them
FAKE_KEYS = {name: "sk-standin-0123456789abcdef" for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "DASHSCOPE_API_KEY")}


def run(cmd, cwd, *, check=True):
    env = {
        **os.environ,
        **FAKE_KEYS,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


def _entries() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "profiles" / "modern.yaml").read_text())["query_mllms"]["models"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from agegender.mllm.backend_options import TransformersOptions
    from agegender.mllm.tools.server import running_server

    root = tmp_path_factory.mktemp("modern")
    copy_project(ROOT, root)
    run(["git", "init", "-q"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root)
    entries = _entries()
    standins = build_modern_standins(root, {key: entries[key]["model"] for key in MODERN_FAMILIES})
    # the served Qwen2.5-VL gets the budget its local entry gets (the `vllm serve --mm-processor-kwargs` of the
    # run-book); `served_model` is the `--served-model-name`
    budget = TransformersOptions(device="cpu", batch_size=8, min_pixels=3136, max_pixels=50176)
    with running_server(
        "transformers", str(standins["qwen25-vl-7b"]), backend_options=budget, served_model="qwen25-vl-7b"
    ) as url:
        served = (
            f"query_mllms.models.{SERVED}={{backend: openai, model: qwen25-vl-7b, datasets: [nanolagenda], "
            f"inputs: [body, body_wo_face], max_side: null, options: {{base_url: '{url}', api_key_env: null}}}}"
        )
        sets = [arg for item in (*MODERN_OVERRIDES, served) for arg in ("--set", item)]
        switch = run([str(BIN / "agegender"), "profile", "modern", *sets], root)
        stages = [f"query_mllms@{key}" for key in (*MODERN_FAMILIES, SERVED)]
        log = run([str(BIN / "dvc"), "repro", *stages], root)
    return root, switch.stdout, log.stdout + log.stderr


def _predictions(root: Path, key: str) -> pd.DataFrame:
    return pd.read_parquet(root / "predictions" / "query_mllms" / key / "predictions.parquet")


def test_the_open_models_are_the_issues_families_each_with_a_stand_in():
    entries = _entries()
    assert {key for key, e in entries.items() if e["backend"] == "transformers"} == set(MODERN_FAMILIES)
    for key in MODERN_FAMILIES:
        assert entries[key]["model"].startswith("models/hf/"), key


def test_every_open_model_answered_every_query(project):
    root, switch, log = project
    assert "every configured file is in place" in switch
    samples = pd.read_parquet(root / "data" / "prepared" / "samples.parquet")
    n_nano = int((samples["dataset"] == "nanolagenda").sum())
    for key in (*MODERN_FAMILIES, SERVED):
        assert f"Running stage 'query_mllms@{key}'" in log, key
        predictions = _predictions(root, key)
        assert set(predictions["input"]) == {"body", "body_wo_face"}, key
        assert predictions.groupby("input").size().max() <= n_nano, key
        # random tiny weights answer nonsense, but every query got an answer (none failed)
        assert set(predictions["status"]) <= {"answered", "unparsed", "refused"}, key
        assert predictions["raw_answer"].notna().all(), key


def test_each_family_ran_with_its_image_budget_on_record(project):
    root, *_ = project
    expected = {
        "qwen25-vl-7b": {"min_pixels": 3136, "max_pixels": 50176},
        "qwen3-vl-8b": {"min_pixels": 4096, "max_pixels": 65536},
        "internvl3-8b": {"crop_to_patches": True, "max_patches": 4},
        "gemma-3-12b": {"do_pan_and_scan": False},
        "smolvlm2-2b": {"image_longest_edge": 128, "do_image_splitting": True},
        "llava-onevision-7b": {
            "image_grid_pinpoints": [[56, 56], [112, 56], [56, 112], [112, 112], [168, 56], [56, 168]]
        },
    }
    for key, settings in expected.items():
        manifest = json.loads((root / "predictions" / "query_mllms" / key / "manifest.json").read_text())
        for run_ in manifest["runs"].values():
            assert settings.items() <= run_["key_options"].items(), (key, run_["key_options"])


def test_the_served_model_answers_as_the_local_one(project):
    """The `vllm serve` recipe's shape: an OpenAI-compatible endpoint serving the folder with the same budget."""
    root, *_ = project
    columns = ["sample_id", "input", "raw_answer"]
    local = _predictions(root, "qwen25-vl-7b")[columns].sort_values(["sample_id", "input"]).reset_index(drop=True)
    served = _predictions(root, SERVED)[columns].sort_values(["sample_id", "input"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(local, served)
