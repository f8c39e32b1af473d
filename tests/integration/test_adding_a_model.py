"""docs/adding_a_model.md works as written: each snippet is taken from the page and run against a tiny project.

The project is the paper profile over tiny stand-ins (tests/standins.py), cut down to LAGENDA / NanoLAGENDA and
without the paper's own models; the page's four recipes then add a llava-hf model, a model behind an OpenAI-compatible
server, a specialized model class and a UTKFace reader, and the pipeline's stages run.
"""

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "adding_a_model.md"
sys.path.insert(0, str(ROOT / "tests"))

from standins import build_datasets  # noqa: E402

from agegender.files import RUN_LOG_FILE  # noqa: E402

pytestmark = pytest.mark.slow

#: the paper profile minus the paper's models and the data sets the guide does not need
BASE_OVERRIDES = (
    "study.datasets=[lagenda, nanolagenda]",
    "prepare_data.subsets.nanolagenda.per_bin=2",
    "query_mllms.models={}",
    "evaluate.exclude_refused={}",  # gpt-4v, whose refusals shrink NanoLAGENDA, is one of the models left out
    "predict.models={baseline: {model: baseline, options: {train_dataset: imdb_clean}}}",
    "finetune_mllm.runs={}",
    "evaluate.n_resamples=20",
    "report.gallery.n=2",
)


def guide_blocks() -> dict[str, str]:
    """`<!-- guide: NAME -->` followed by a fenced block -> {NAME: code}."""
    text = GUIDE.read_text()
    blocks = dict(re.findall(r"<!-- guide: ([\w-]+) -->\n```\w+\n(.*?)\n```", text, flags=re.S))
    assert set(blocks) == {"llava-hf", "server", "specialized", "specialized-params", "reader", "reader-params"}
    return blocks


def merge(base: dict, extra: dict) -> dict:
    """Deep-merge a snippet into params; lists of `study.datasets` are extended, as the guide says."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            base[key] = base[key] + [v for v in value if v not in base[key]]
        else:
            base[key] = value
    return base


def test_the_guide_works_as_written(tmp_path: Path) -> None:
    from agegender.check import check_params, format_problems
    from agegender.mllm.tools.server import running_server
    from agegender.mllm.tools.tiny import build_tiny_llava
    from agegender.paths import ProjectPaths
    from agegender.profiles import render
    from agegender.stages import common, evaluate, predict, prepare_data, query_mllms, report

    blocks = guide_blocks()
    root = tmp_path
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "profiles").mkdir()
    (root / "profiles" / "paper.yaml").write_text((ROOT / "profiles" / "paper.yaml").read_text())
    paths = ProjectPaths.at(root)
    build_datasets(root)
    data = yaml.safe_load(render(paths, "paper", BASE_OVERRIDES))
    for name in ("imdb_clean", "lagenda"):
        assert name in data["prepare_data"]["datasets"]
    data["prepare_data"]["datasets"] = {k: data["prepare_data"]["datasets"][k] for k in ("lagenda", "imdb_clean")}
    data["report"]["roles"] = {"lagenda": "lagenda", "nanolagenda": "nanolagenda"}

    # 4. a reader: the module as printed, a UTKFace-style folder (labels in the file names)
    (root / "my_readers.py").write_text(blocks["reader"] + "\n")
    utk = root / "data" / "raw" / "utkface"
    utk.mkdir(parents=True)
    for i, (age, gender) in enumerate([(25, 0), (61, 1), (3, 0), (40, 1)]):
        Image.new("RGB", (48, 48), (40 * i, 90, 160)).save(utk / f"{age}_{gender}_0_2017010{i}.jpg")
    merge(data, yaml.safe_load(blocks["reader-params"]))
    # 1. a llava-hf model at the printed path; 2. a model behind a server at the printed URL (port swapped)
    merge(data, yaml.safe_load(blocks["llava-hf"]))
    build_tiny_llava(root / "models" / "hf" / "llava-v1.6-mistral-7b-hf", kind="llava_next", seed=3, image_size=112)
    server = yaml.safe_load(blocks["server"])
    # 3. a specialized model: the module as printed, named by its import path
    (root / "my_models.py").write_text(blocks["specialized"] + "\n")
    merge(data, yaml.safe_load(blocks["specialized-params"]))

    with running_server(
        "transformers",
        str(build_tiny_llava(root / "served", kind="llava", seed=4, image_size=112)),
        served_model="Qwen/Qwen2-VL-7B-Instruct",
    ) as url:
        port = re.search(r":(\d+)/v1$", url).group(1)
        server["query_mllms"]["models"]["qwen2-vl-7b"]["options"]["base_url"] = f"http://127.0.0.1:{port}/v1"
        merge(data, server)
        (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        params, paths = common.setup(root)
        assert params.query_mllms.models["qwen2-vl-7b"].options["api_key_env"] is None

        problems = check_params(params, paths)
        assert problems == [], format_problems(problems)

        prepare_data.run(params, paths, progress=False)
        samples = pd.read_parquet(root / "data" / "prepared" / "samples.parquet")
        utk_rows = samples[samples["dataset"] == "utkface"].sort_values("age")
        assert list(utk_rows["age"]) == [3.0, 25.0, 40.0, 61.0]
        assert list(utk_rows["gender"]) == ["male", "male", "female", "female"]
        assert utk_rows["face_x1"].eq(48).all()

        counts = predict.run(params, paths, progress=False)
        assert set(counts.loc[counts["model"] == "brightness_regressor", "input"]) == {"face"}
        for key in ("llava-next-mistral-7b", "qwen2-vl-7b"):
            query_mllms.run(params, paths, key, progress=False)
            log = json.loads((paths(params.query_mllms.out) / key / RUN_LOG_FILE).read_text())
            assert sum(run["requests_sent"] for run in log["runs"].values()) > 0
    result = evaluate.run(params, paths)
    rows = result.rows[result.rows["view"] == "answered"]
    have = set(zip(rows["dataset"], rows["input"], rows["model"], strict=True))
    assert ("nanolagenda", "face", "brightness_regressor") in have
    assert ("nanolagenda", "body", "llava-next-mistral-7b") in have
    assert ("nanolagenda", "body_wo_face", "llava-next-mistral-7b") in have
    assert ("nanolagenda", "body", "qwen2-vl-7b") in have
    assert ("utkface", "face", "baseline") in have
    regressor = rows[(rows["model"] == "brightness_regressor") & (rows["dataset"] == "nanolagenda")].iloc[0]
    assert regressor["n_answered"] > 0 and regressor["age_mae"] > 0
    report.run(params, paths)
    assert "brightness_regressor" in (root / "reports" / "tables" / "summary.md").read_text()
