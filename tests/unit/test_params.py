from pathlib import Path

import pytest
import yaml

from agegender.errors import InputError
from agegender.mllm.backend_options import OpenAIOptions, ServedClientOptions, ServedOptions, TransformersOptions
from agegender.params import Params, as_dict, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.profile == "demo"
    assert set(params.study.datasets) <= set(params.prepare_data.datasets) | set(params.prepare_data.subsets)
    assert params.report.caption_note == "demo data"
    # round trip through the plain form
    assert params_from_dict(as_dict(params)) == params


def test_defaults_when_sections_are_missing():
    assert params_from_dict({}) == Params()
    assert {k: v.model for k, v in Params().predict.models.items()} == {"baseline": "baseline"}


def test_predict_models():
    models = load_params(ROOT / "params.yaml").predict.models
    assert {k: v.model for k, v in models.items()} == {"baseline": "baseline", "mivolo_demo": "mivolo"}
    assert models["mivolo_demo"].options == {"checkpoint": "models/mivolo/mivolo.pth.tar"}
    assert models["baseline"].inputs is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prepare_data": {"demo": {"n_trian": 3}}}, "prepare_data.demo.n_trian: unknown key"),
        ({"evaluate": {"n_resamples": "many"}}, "evaluate.n_resamples: expected an integer"),
        ({"evaluate": {"ci": 1}}, "evaluate.ci: expected true/false"),
        ({"study": {"inputs": ["torso"]}}, "study.inputs"),
        ({"study": {"datasets": ["nope"]}}, "'nope'"),
        ({"prepare_data": {"datasets": {"x": {"root": "r"}}}}, "prepare_data.datasets.x.reader: required key"),
        ({"prepare_data": {"subsets": {"n": {"source": "zz"}}}}, "unknown data set 'zz'"),
        ({"predict": {"models": {"m": {"options": {}}}}}, "predict.models.m.model: required key"),
        ({"predict": {"models": {"m": {"model": "mivolo", "inputs": ["torso"]}}}}, "predict.models.m.inputs"),
        ({"predict": {"models": {"m.v2": {"model": "mivolo"}}}}, "must not hold '.': ['m.v2']"),
        ({"predict": {"mivolo": {}}}, "predict.mivolo: unknown key"),
        (
            {
                "predict": {"models": {"gpt": {"model": "baseline"}}},
                "query_mllms": {"models": {"gpt": {"backend": "x", "model": "y"}}},
            },
            "model names ['gpt'] are used twice",
        ),  # fmt: skip
        ({"predict": {"models": {"t": {"model": "baseline"}}, "external": {"t": {"path": "t.csv"}}}}, "['t']"),
        (
            {"query_mllms": {"models": {"g": {"backend": "openai", "model": "m", "options": {"concurency": 4}}}}},
            "query_mllms.models.g.options.concurency: unknown key (known: base_url, api_key_env, concurrency",
        ),  # fmt: skip
        (
            {"query_mllms": {"models": {"g": {"backend": "openai", "model": "m", "options": {"concurrency": 0}}}}},
            "query_mllms.models.g.options.concurrency: must be >= 1, not 0",
        ),  # fmt: skip
        (
            {"query_mllms": {"models": {"g": {"backend": "openai", "model": "m", "options": {"http_transport": 1}}}}},
            "query_mllms.models.g.options.http_transport: unknown key",  # code only, never from a file
        ),  # fmt: skip
        (
            {
                "query_mllms": {
                    "models": {"t": {"backend": "transformers", "model": "m", "options": {"batch_size": "8"}}}
                }
            },
            "query_mllms.models.t.options.batch_size: expected an integer, got '8'",
        ),  # fmt: skip
        (
            {
                "query_mllms": {
                    "models": {"t": {"backend": "transformers", "model": "m", "options": {"concurrency": 2}}}
                }
            },
            "query_mllms.models.t.options.concurrency: unknown key",  # a client option, without `serve`
        ),  # fmt: skip
        (
            {
                "query_mllms": {
                    "models": {
                        "t": {"backend": "transformers", "model": "m", "serve": True, "options": {"concurrency": 0}}
                    }
                }
            },
            "query_mllms.models.t.options.concurrency: must be >= 1",
        ),  # fmt: skip
        (
            {"query_mllms": {"models": {"v": {"backend": "vllm", "model": "m", "options": {"tensor_parallel": 2}}}}},
            "query_mllms.models.v.options.tensor_parallel: unknown key (known: batch_size, tensor_parallel_size",
        ),  # fmt: skip
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "backend_options": {"btach_size": 4}}}}},
            "finetune_mllm.runs.ft.backend_options.btach_size: unknown",
        ),
        ({"train_mivolo": {"config": {"lr": -1}}}, "train_mivolo.config.lr: must be a number >= 0, got -1"),
        ({"train_mivolo": {"config": {"lr": "fast"}}}, "train_mivolo.config.lr: expected a number, got 'fast'"),
        ({"train_mivolo": {"config": {"epochs": 3}}}, "train_mivolo.config.epochs: unknown key (known: variant,"),
        ({"train_mivolo": {"config": {"variant": "volo_d9"}}}, "train_mivolo.config.variant: unknown MiVOLO variant"),
        (
            {"train_mivolo": {"config": {"drop_face_p": 0.6, "drop_body_p": 0.6}}},
            "train_mivolo.config.drop_body_p: must be at most 1 - drop_face_p, got 0.6",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "config": {"learning_rate": 0}}}}},
            "finetune_mllm.runs.ft.config.learning_rate: must be a positive number, got 0.0",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "config": {"input_kind": "torso"}}}}},
            "finetune_mllm.runs.ft.config.input_kind: must be one of",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "config": {"lora_rank": 8}}}}},
            "finetune_mllm.runs.ft.config.lora_rank: unknown key",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "checkpoint": "middle"}}}},
            "finetune_mllm.runs.ft.checkpoint: must be one of ['best', 'last'], got 'middle'",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "also_report": {"ft1": {"checkpoint": "first"}}}}}},
            "finetune_mllm.runs.ft.also_report.ft1.checkpoint: must be one of ['best', 'last'], got 'first'",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"config": {}}}}},
            "finetune_mllm.runs.ft.base_model: give exactly one of base_model (a Hugging Face folder) and build_tiny",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"base_model": "m", "build_tiny": {}}}}},
            "finetune_mllm.runs.ft.base_model: give exactly one of",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "inputs": ["face_body"]}}}},
            "finetune_mllm.runs.ft.inputs: ['face_body'] not among ['body', 'face', 'body_wo_face']",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "datasets": ["elsewhere"]}}}},
            "finetune_mllm.runs.ft.datasets: ['elsewhere'] are not in study.datasets",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "also_report": {"ft-1": {"inputs": ["torso"]}}}}}},
            "finetune_mllm.runs.ft.also_report.ft-1.inputs: ['torso'] not among",
        ),
        (
            {"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "also_report": {"ft": {}}}}}},
            "model names ['ft'] are used twice",
        ),
        (
            {
                "query_mllms": {"models": {"m": {"backend": "openai", "model": "x"}}},
                "finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "also_report": {"m": {}}}}},
            },
            "model names ['m'] are used twice",
        ),
        ({"finetune_mllm": {"runs": {"ft": {"build_tiny": {}, "epochs": 1}}}}, "finetune_mllm.runs.ft.epochs: unknown"),
    ],
)
def test_bad_params_name_the_key(data, message, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as info:
        load_params(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("a: [1,")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_served_model_options_split_between_server_and_client():
    spec = {"backend": "transformers", "model": "m", "serve": True, "options": {"batch_size": 4, "concurrency": 3}}
    model = params_from_dict({"query_mllms": {"models": {"t": spec}}}).query_mllms.models["t"]
    assert model.options == {"batch_size": 4, "concurrency": 3}  # as written
    assert model.typed_options == ServedOptions(TransformersOptions(batch_size=4), ServedClientOptions(concurrency=3))
    unset = {**spec, "options": {}}
    assert params_from_dict({"query_mllms": {"models": {"t": unset}}}).query_mllms.models["t"].typed_options == (
        ServedOptions(TransformersOptions(), ServedClientOptions())
    )


def test_backend_options_load_into_their_typed_class():
    options = {"base_url": "http://127.0.0.1:8000/v1", "concurrency": 4, "timeout_s": 5}
    spec = {"backend": "openai", "model": "m", "options": options}
    typed = params_from_dict({"query_mllms": {"models": {"g": spec}}}).query_mllms.models["g"].typed_options
    assert isinstance(typed, OpenAIOptions)
    assert (typed.base_url, typed.concurrency, typed.timeout_s) == ("http://127.0.0.1:8000/v1", 4, 5.0)
    assert typed.max_retries == OpenAIOptions.max_retries  # unwritten: the class's default
    assert isinstance(typed.timeout_s, float)  # converted once, as the backend takes it


def test_backend_options_of_an_import_path_backend_are_left_to_its_class():
    spec = {"backend": "mypkg.mod:MyBackend", "model": "m", "options": {"anything": 1}}
    model = params_from_dict({"query_mllms": {"models": {"x": spec}}}).query_mllms.models["x"]
    assert model.options == {"anything": 1} and model.typed_options == {"anything": 1}


def test_finetuned_model_answers_with_its_training_prompt_unless_backend_options_say_otherwise():
    config = {"pad_to_square": True, "system_prompt": "Be brief."}
    run = {"build_tiny": {}, "config": config, "backend_options": {"batch_size": 2, "system_prompt": "Other."}}
    section = params_from_dict({"finetune_mllm": {"runs": {"ft": run, "plain": {"build_tiny": {}}}}}).finetune_mllm
    assert section.runs["ft"].answering_options == TransformersOptions(
        batch_size=2, pad_to_square=True, system_prompt="Other."
    )
    assert section.runs["plain"].answering_options == TransformersOptions()


def test_the_typed_options_are_no_params_key():
    spec = {"backend": "openai", "model": "m", "options": {"concurrency": 2}}
    params = params_from_dict(
        {"query_mllms": {"models": {"g": spec}}, "finetune_mllm": {"runs": {"f": {"build_tiny": {}}}}}
    )
    plain = as_dict(params)
    assert plain["query_mllms"]["models"]["g"]["options"] == {"concurrency": 2}
    assert "typed_options" not in plain["query_mllms"]["models"]["g"]
    assert "answering_options" not in plain["finetune_mllm"]["runs"]["f"]
    assert params_from_dict(plain) == params


def test_finetune_runs_report_their_models_and_share_a_training_for_also_report():
    """A run names its model; `also_report` adds other checkpoints of the same training (its inputs and data sets
    unless it gives its own), in the order written; every reported model is one name of the model namespace."""
    study = {"datasets": ["demo", "nanodemo"]}
    runs = {
        "ft": {
            "build_tiny": {"kind": "llava"},
            "inputs": ["body", "body_wo_face"],
            "datasets": ["demo", "nanodemo"],
            "also_report": {"ft-last": {"datasets": ["demo"]}, "ft-face": {"checkpoint": "best", "inputs": ["face"]}},
        },
        "other": {"base_model": "models/base", "checkpoint": "last"},
    }
    prepare = {"datasets": {name: {"reader": "mivolo", "root": f"data/{name}"} for name in study["datasets"]}}
    params = params_from_dict({"study": study, "prepare_data": prepare, "finetune_mllm": {"runs": runs}})
    section = params.finetune_mllm
    assert [(m.name, m.run, m.checkpoint) for m in section.models()] == [
        ("ft", "ft", "best"),
        ("ft-last", "ft", "last"),
        ("ft-face", "ft", "best"),
        ("other", "other", "last"),
    ]
    ft, last, face, other = section.models()
    assert (last.inputs, last.datasets) == (("body", "body_wo_face"), ("demo",))
    assert (face.inputs, face.datasets) == (("face",), ("demo", "nanodemo"))
    assert (other.inputs, other.datasets) == (("body", "body_wo_face"), None)  # None: all of study.datasets
    assert section.reported("other") == [other]
    assert params_from_dict(as_dict(params)) == params
    assert params_from_dict({"finetune_mllm": {}}).finetune_mllm.runs == {}  # a profile that fine-tunes nothing
