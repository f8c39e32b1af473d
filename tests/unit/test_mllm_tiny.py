"""Tiny LLaVA-1.5 / LLaVA-NeXT builders: offline save/load, determinism, tokenizer and chat template."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from agegender.errors import InputError
from agegender.mllm.tools.tiny import VICUNA_SYSTEM, build_tiny_llava, default_corpus, train_tokenizer

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(default_corpus(), vocab_size=1000)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_build_saves_and_loads_offline(tmp_path, kind):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = build_tiny_llava(tmp_path / kind, kind=kind, seed=0)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5 * 1024 * 1024

    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    expected = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}[kind]
    assert type(model).__name__ == expected
    cfg = model.config
    assert cfg.vision_config.image_size == 336 and cfg.vision_config.patch_size == 14
    assert cfg.vision_config.num_hidden_layers == 2 and cfg.text_config.num_hidden_layers == 2
    assert cfg.text_config.hidden_size == 64
    assert cfg.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.num_additional_image_tokens == 1 and processor.patch_size == 14
    if kind == "llava":
        assert type(processor.image_processor).__name__ == "LlavaImageProcessor"
        assert processor.image_processor.do_pad is True  # LLaVA-1.5's pad-to-square
    else:
        assert cfg.image_grid_pinpoints == [[336, 336], [336, 672], [672, 336]]
        assert processor.image_processor.image_grid_pinpoints == cfg.image_grid_pinpoints

    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Gender and age?"}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    image = Image.fromarray(np.full((90, 40, 3), 128, np.uint8))
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    n_image = int((inputs["input_ids"] == cfg.image_token_id).sum())
    # 24x24 patches of a 336 image (CLS dropped); NeXT adds a tile, newlines, minus the unpadding
    assert n_image == 576 if kind == "llava" else n_image > 576
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_build_is_deterministic(tmp_path):
    a = build_tiny_llava(tmp_path / "a", seed=3, image_size=56)
    b = build_tiny_llava(tmp_path / "b", seed=3, image_size=56)
    c = build_tiny_llava(tmp_path / "c", seed=4, image_size=56)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()
    # building must not disturb the caller's random stream
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llava(tmp_path / "d", seed=5, image_size=56)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_covers_prompt_and_answers(tokenizer):
    ids = tokenizer("[female; 40]", add_special_tokens=False)["input_ids"]
    assert len(ids) <= 6
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "[female; 40]"
    assert tokenizer.decode(tokenizer("[male; 7]")["input_ids"], skip_special_tokens=True) == "[male; 7]"
    # BOS is added once by the post-processor
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    image_ids = tokenizer("<image>\nhi", add_special_tokens=False)["input_ids"]
    assert image_ids[0] == tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer.convert_tokens_to_ids("<image>") not in tokenizer("image", add_special_tokens=False)["input_ids"]
    # unseen text still encodes (byte level), and the paper's prompt is compact
    assert tokenizer.decode(tokenizer("Zebra ünïcode 🙂", add_special_tokens=False)["input_ids"]) == "Zebra ünïcode 🙂"
    assert len(tokenizer(default_corpus()[0])["input_ids"]) < 100
    assert tokenizer.padding_side == "left"
    assert {tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token} == {"<pad>", "</s>", "<s>"}


def test_chat_template_is_vicuna_v1(tokenizer):
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Age?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "[female; 40]"}]},
    ]
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    assert text == f"{VICUNA_SYSTEM} USER: <image>\nAge? ASSISTANT: [female; 40]</s>"
    prompt = tokenizer.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{VICUNA_SYSTEM} USER: <image>\nAge? ASSISTANT:"
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(plain, tokenize=False) == "Be brief. USER: Hi"


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="kind"):
        build_tiny_llava(tmp_path / "x", kind="llama")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="multiple"):
        build_tiny_llava(tmp_path / "x", image_size=100)
    with pytest.raises(InputError, match="empty"):
        build_tiny_llava(tmp_path / "x", text_corpus=[])
    with pytest.raises(InputError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


def test_custom_corpus_and_small_image(tmp_path):
    from transformers import AutoProcessor

    folder = build_tiny_llava(tmp_path / "n", kind="llava_next", image_size=112, text_corpus=default_corpus()[:5])
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.image_processor.image_grid_pinpoints == [[112, 112], [112, 224], [224, 112]]
    assert processor.image_processor.crop_size["height"] == 112
