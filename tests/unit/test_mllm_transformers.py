"""The `transformers` backend on tiny LLaVA-1.5 / LLaVA-NeXT models: batched == batch size 1, padding, answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.errors import InputError
from agegender.mllm.backends import GenerationParams, Query, create_backend, transformers_backend
from agegender.mllm.backends.transformers_backend import (
    TransformersBackend,
    folder_revision,
    pad_to_square,
    square_pad_color,
)
from agegender.mllm.tools.tiny import VICUNA_SYSTEM, build_tiny_llava

torch.set_num_threads(min(2, torch.get_num_threads()))

# crops of different sizes and aspect ratios (tall body crops, wide, square, tiny)
SHAPES = [(120, 50), (40, 90), (64, 64), (200, 80), (33, 47), (90, 30), (17, 60)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    # 112 = 8x8 patches: the architecture of the 336 models, ~10x cheaper for CPU tests
    return {kind: build_tiny_llava(root / kind, kind=kind, seed=1, image_size=112) for kind in ("llava", "llava_next")}


def _queries(n: int = len(SHAPES)) -> list[Query]:
    rng = np.random.default_rng(7)
    queries = []
    for i, (h, w) in enumerate(SHAPES[:n]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # prompts of different lengths, so that left padding is exercised for LLaVA-1.5 too
        queries.append(Query(f"s{i}|body", image, "Please give [gender; age]." + " Be precise." * i))
    return queries


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_batched_equals_batch_size_one(models, kind):
    backend = create_backend(
        "transformers", str(models[kind]), params=GenerationParams(max_new_tokens=6), batch_size=len(SHAPES)
    )
    queries = _queries()
    inputs = backend.build_inputs(queries)
    mask = inputs["attention_mask"]
    assert bool((mask[:, -1] == 1).all()) and bool((mask[:, 0] == 0).any())  # padded, on the left

    batched = backend.generate_batch(queries)
    backend.batch_size = 1
    single = backend.generate_batch(queries)
    assert [a.request_id for a in batched] == [q.request_id for q in queries]
    for b, s in zip(batched, single, strict=True):
        assert b.status == s.status == "answered"
        assert b.text == s.text
        assert b.text  # untrained models answer nonsense, but they answer
        assert (b.finish_reason, b.prompt_tokens, b.completion_tokens) == (
            s.finish_reason,
            s.prompt_tokens,
            s.completion_tokens,
        )
    backend.close()


def test_left_padding_and_token_counts(models):
    backend = TransformersBackend(str(models["llava"]), params=GenerationParams(max_new_tokens=4), batch_size=2)
    short, long = _queries(2)[0], Query("long", _queries(2)[1].image, "word " * 30)
    inputs = backend.build_inputs([short, long])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n_short = int(mask[0].sum())
    assert n_short < ids.shape[1]
    pad = backend.tokenizer.pad_token_id
    assert ids[0, : ids.shape[1] - n_short].eq(pad).all() and mask[0, : ids.shape[1] - n_short].eq(0).all()
    assert ids[0, -1] == ids[1, -1]  # both rows end with the generation prompt
    alone = backend.build_inputs([short])["input_ids"]
    assert torch.equal(ids[0, -n_short:], alone[0])

    answers = backend.generate_batch([short, long])
    assert answers[0].prompt_tokens == alone.shape[1]
    assert answers[1].prompt_tokens == int(mask[1].sum())
    for a in answers:
        assert a.status == "answered" and a.finish_reason == "length" and a.completion_tokens == 4
        assert a.model_revision == backend.model_revision and a.latency_s > 0


def test_stop_at_eos(models):
    backend = TransformersBackend(str(models["llava"]), params=GenerationParams(max_new_tokens=5))
    query = _queries(1)[0]
    first = backend.tokenizer.convert_tokens_to_ids(backend.tokenizer.tokenize(backend.generate_batch([query])[0].text))
    # make the model's first answer token the end-of-sequence token
    inputs = backend.build_inputs([query])
    with torch.inference_mode():
        out = backend.hf_model.generate(**inputs, generation_config=backend._generation_config())
    first = int(out[0, inputs["input_ids"].shape[1]])
    backend.eos_ids = frozenset({first})
    answer = backend.generate_batch([query])[0]
    assert (answer.finish_reason, answer.completion_tokens, answer.text) == ("stop", 1, "")


def test_pad_to_square_for_llava15(models):
    backend = TransformersBackend(str(models["llava"]))
    assert backend.pad_to_square and backend.processor.image_processor.do_pad
    tall = np.random.default_rng(0).integers(0, 256, (150, 50, 3), dtype=np.uint8)
    query = Query("tall", tall, "Age?")
    padded = backend.build_inputs([query])["pixel_values"]

    color = square_pad_color(backend.processor)
    assert color == (122, 116, 104)  # CLIP mean * 255, as LLaVA's expand2square uses
    square = pad_to_square(tall, color)
    assert square.shape == (150, 150, 3) and (square[:, :50] == color).all() and (square[:, 50:100] == tall).all()
    ip = backend.processor.image_processor
    ip.do_pad = False
    manual = backend.build_inputs([Query("sq", square, "Age?")])["pixel_values"]
    cropped = backend.build_inputs([query])["pixel_values"]
    assert torch.allclose(padded, manual, atol=1e-5)
    assert not torch.allclose(padded, cropped, atol=1e-2)  # without padding the tall crop is centre-cropped

    # the fallback for processors without LLaVA's do_pad (e.g. CLIPImageProcessor) pads the same way
    backend._pad_color = color
    fallback = backend.build_inputs([query])["pixel_values"]
    assert torch.allclose(padded, fallback, atol=1e-5)

    off = TransformersBackend(str(models["llava"]), pad_to_square=False)
    assert not off.processor.image_processor.do_pad
    assert not TransformersBackend(str(models["llava_next"])).pad_to_square  # NeXT: any-res instead


def test_revision_and_describe(models, tmp_path):
    folder = models["llava"]
    backend = TransformersBackend(str(folder))
    rev = backend.model_revision
    assert rev == folder_revision(folder) and rev.startswith("local-") and len(rev) == 22
    assert folder_revision(build_tiny_llava(tmp_path / "other", seed=2, image_size=112)) != rev

    snapshot = tmp_path / "hub" / "models--me--tiny" / "snapshots" / ("ab12" * 10)
    shutil.copytree(folder, snapshot)
    assert TransformersBackend(str(snapshot)).model_revision == "ab12" * 10
    assert TransformersBackend(str(folder), model_revision="v1").model_revision == "v1"

    info = backend.describe()
    assert info["backend"] == "transformers" and info["model_revision"] == rev
    assert info["dtype"] == "float32" and info["device"] == "cpu" and info["pad_to_square"] is True
    assert info["architecture"] == "LlavaForConditionalGeneration"


def test_prompt_text_and_system_prompt(models):
    backend = TransformersBackend(str(models["llava"]))
    assert backend.prompt_text("Age?") == f"{VICUNA_SYSTEM} USER: <image>\nAge? ASSISTANT:"
    backend = TransformersBackend(str(models["llava"]), system_prompt="Be brief.")
    assert backend.prompt_text("Age?") == "Be brief. USER: <image>\nAge? ASSISTANT:"
    assert backend.describe()["system_prompt"] == "Be brief."
    assert backend.key_options() == {"pad_to_square": True, "system_prompt": "Be brief.", "dtype": "float32"}


def test_from_loaded_matches_folder_backend(models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = str(models["llava_next"])
    params = GenerationParams(max_new_tokens=3)
    wrapped = TransformersBackend.from_loaded(
        AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder), params=params
    )
    assert wrapped.model == "in-memory" and wrapped.model_revision is None and wrapped.dtype == torch.float32
    queries = _queries(2)
    expected = TransformersBackend(folder, params=params).generate_batch(queries)
    assert [a.text for a in wrapped.generate_batch(queries)] == [a.text for a in expected]


def test_bad_input(models, tmp_path):
    with pytest.raises(InputError, match="not found"):
        TransformersBackend(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="cache"):
        TransformersBackend("nobody/not-cached-model")
    with pytest.raises(InputError, match="n=1"):
        TransformersBackend(str(models["llava"]), params=GenerationParams(n=2))
    with pytest.raises(InputError, match="dtype"):
        TransformersBackend(str(models["llava"]), dtype="int3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        TransformersBackend(str(tmp_path / "empty"))

    backend = TransformersBackend(str(models["llava"]), params=GenerationParams(max_new_tokens=2), batch_size=3)
    good = _queries(2)
    bad = Query("bad", np.zeros((10, 10), np.uint8), "Age?", image_hash="x")
    answers = backend.generate_batch([good[0], bad, good[1]])
    assert [a.status for a in answers] == ["answered", "failed", "answered"]
    assert "RGB uint8" in answers[1].error and answers[1].text is None
    assert answers[0].text == backend.generate_batch([good[0]])[0].text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_cuda(models, kind):
    fp32 = TransformersBackend(str(models[kind]), device="cuda", dtype="float32", batch_size=len(SHAPES))
    queries = _queries()
    batched = [a.text for a in fp32.generate_batch(queries)]
    fp32.batch_size = 1
    assert batched == [a.text for a in fp32.generate_batch(queries)]
    bf16 = TransformersBackend(str(models[kind]), device="cuda", batch_size=4)
    assert bf16.dtype == torch.bfloat16
    assert all(a.status == "answered" for a in bf16.generate_batch(queries))


MIB = 1 << 20


def _weights_folder(folder: Path, middle: float) -> Path:
    """A model folder whose weights file is 3 MiB: a first, a middle and a last tensor of 1 MiB each."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llava"}')
    from safetensors.torch import save_file

    tensors = {
        "a.embed": torch.zeros(MIB // 4),
        "b.layers.weight": torch.full((MIB // 4,), middle),
        "c.head": torch.ones(MIB // 4),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_folder_revision_sees_every_byte_of_large_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retrain into the same folder that changes only middle tensors (a LoRA-merged or partly frozen fine-tune
    keeps the embeddings and the head, hence the first and last MiB, and the safetensors header) is a new
    revision. The folder stands for a 15 GB one: a size limit below which every byte was hashed is lowered."""
    monkeypatch.setattr(transformers_backend, "FULL_HASH_LIMIT", MIB, raising=False)
    folder = _weights_folder(tmp_path / "model", middle=0.5)
    before = folder_revision(folder)
    assert before.startswith("local-") and folder_revision(folder) == before
    _weights_folder(folder, middle=0.25)  # "retrained": same names, shapes, header and file size
    assert folder_revision(folder) != before
    # processor and chat template change what the model is asked: a new revision too
    after = folder_revision(folder)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert folder_revision(folder) != after
    # training bookkeeping and notes do not
    with_template = folder_revision(folder)
    (folder / "trainer_state.json").write_text('{"global_step": 3}')
    (folder / "optimizer.pt").write_bytes(b"state")
    (folder / "README.md").write_text("notes")
    assert folder_revision(folder) == with_template


def test_hub_ids_and_cached_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`owner/name` reads as a hub id, a path does not; a snapshot not in the cache is None, never a download."""
    assert transformers_backend.is_hub_id("llava-hf/llava-1.5-7b-hf")
    for path in ("models/llava/hf", "./llava", "/models/llava", "~/llava", "llava"):
        assert not transformers_backend.is_hub_id(path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert transformers_backend.cached_snapshot("agegender-test/not-cached") is None
    with pytest.raises(InputError, match="not in the Hugging Face cache"):
        transformers_backend.find_model_folder("agegender-test/not-cached")
    with pytest.raises(InputError, match="model folder not found"):
        transformers_backend.find_model_folder(str(tmp_path / "nowhere"))


def test_image_grid_pinpoints_limit_the_tiles_and_join_the_store_key(models):
    """A smaller any-res grid (the paper's LLaVA-NeXT bound, as an option) tiles a large crop into fewer tiles."""
    folder = str(models["llava_next"])  # tiny grid (h, w): 112x112, 112x224, 224x112 (112-pixel tiles)
    tall = Query("tall|body", np.random.default_rng(3).integers(0, 256, (600, 250, 3), dtype=np.uint8), "Age?")
    params = GenerationParams(max_new_tokens=2)
    default = TransformersBackend(folder, params=params)
    single = TransformersBackend(folder, params=params, image_grid_pinpoints=[[112, 112]])

    def image_tokens(backend: TransformersBackend) -> tuple[int, int]:
        inputs = backend.build_inputs([tall])
        n_tokens = int((inputs["input_ids"] == backend.hf_model.config.image_token_id).sum())
        return int(inputs["pixel_values"].shape[1]), n_tokens

    (tiles_default, tokens_default), (tiles_single, tokens_single) = image_tokens(default), image_tokens(single)
    assert tiles_default == 3 and tiles_single == 2  # the base image + 2 tiles (224x112) against + 1 tile
    assert tokens_single < tokens_default
    assert single.generate_batch([tall])[0].status == "answered"  # the model counts the tiles from the same grid
    assert "image_grid_pinpoints" not in default.key_options()  # stores made before the option keep their key
    assert single.key_options()["image_grid_pinpoints"] == [[112, 112]]
    assert single.describe()["image_grid_pinpoints"] == [[112, 112]]


def test_image_grid_pinpoints_are_checked(models):
    with pytest.raises(InputError, match="image_grid_pinpoints.*multiples of the vision tower's 112-pixel tile"):
        TransformersBackend(str(models["llava_next"]), image_grid_pinpoints=[[224, 168]])
    with pytest.raises(InputError, match="image_grid_pinpoints.*no any-res grid"):
        TransformersBackend(str(models["llava"]), image_grid_pinpoints=[[112, 112]])
    for bad in ([], [[112]], [[112, 0]], [[112, 112, 112]]):
        with pytest.raises(InputError, match="image_grid_pinpoints"):
            TransformersBackend(str(models["llava_next"]), image_grid_pinpoints=bad)
