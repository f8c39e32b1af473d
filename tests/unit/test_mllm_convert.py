"""`convert_llava`: tiny checkpoints in the ORIGINAL LLaVA-1.5 / ShareGPT4V layout -> llava-hf, checked numerically.

The helper `make_original` writes what the original training code leaves behind, at toy sizes: a Llama
causal LM with LLaVA's `mm_*` config keys, weights under `model.layers.*` / `model.embed_tokens` / `lm_head`,
an `mlp2x_gelu` projector under `model.mm_projector.0/.2`, a Llama-style tokenizer without `<image>` or a
pad token of its own (a byte-level BPE `tokenizer.json`, or a LLaMA sentencepiece `tokenizer.model` alone as
the releases ship it), and a CLIP vision folder (transformers-4 key names `vision_model.*`). The vision tower
is either a separate folder (the released ShareGPT4V / LLaVA-1.5 layout) or inside the checkpoint under
`model.vision_tower.vision_tower.vision_model.*` (checkpoints saved by DeepSpeed); in that case the
checkpoint's tower has DIFFERENT weights from the folder named by `mm_vision_tower`, which only lends its config.

The reference logits are computed from the original tensors without the converter: a `LlamaForCausalLM`
loaded with the original key names, a `CLIPVisionModel`, the projector by hand, and LLaVA's splicing of
the image features where the prompt has its image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from agegender.cli import main
from agegender.errors import AgegenderError, InputError
from agegender.mllm.backends import GenerationParams, Query
from agegender.mllm.backends.transformers_backend import TransformersBackend, chat_prompt
from agegender.mllm.prompt import PROMPT
from agegender.mllm.tools.convert import (
    VICUNA_V1_SYSTEM,
    clip_key_to_hf,
    convert_llava,
    original_key_to_hf,
    verify_conversion,
)
from agegender.mllm.tools.tiny import IMAGE_TOKEN

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/llava_original.py
from llava_original import N_PATCHES, SP_VOCAB, TEXT, TOWER_PREFIX, VISION, make_original  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def reference_logits(orig: dict, ids_before: list[int], ids_after: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """LLaVA's forward from the original tensors: text ids, the projected image patches, text ids."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    state = orig["state"]
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=orig["vocab"], **TEXT)).eval()
    text_parts = ("lm_head.", "model.layers.", "model.embed_tokens.", "model.norm.")
    text_state = {k: v for k, v in state.items() if k.startswith(text_parts) and not k.endswith("inv_freq")}
    llama.load_state_dict(text_state, strict=True)
    clip = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    clip.load_state_dict(orig["tower"], strict=True)
    with torch.no_grad():
        patches = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # layer -2, no CLS
        hidden = F.linear(patches, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
        image = F.linear(F.gelu(hidden), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        embed = llama.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids_before)), image[0], embed(torch.tensor(ids_after))])
        return llama(inputs_embeds=embeds[None]).logits[0]


def converted_logits(model, image_id: int, ids_before, ids_after, pixels) -> torch.Tensor:
    ids = torch.tensor([ids_before + [image_id] * N_PATCHES + ids_after])
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits[0]


@pytest.fixture(scope="module", params=["tower_separate", "tower_inside"])
def converted(request, tmp_path_factory):
    inside = request.param == "tower_inside"
    root = tmp_path_factory.mktemp(request.param)
    # the separate-tower layout as released (safetensors here); the inside layout as .bin shards + index
    orig = make_original(root, tower_inside=inside, fmt="bin" if inside else "safetensors")
    out = convert_llava(orig["src"], root / "hf", vision_tower=None if inside else orig["clip"], progress=False)
    return orig, out


def test_output_layout_and_config(converted):
    from transformers import AutoProcessor

    orig, out = converted
    assert (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file()
    config = json.loads((out / "config.json").read_text())
    record = json.loads((out / "conversion.json").read_text())
    vocab = orig["vocab"]
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    assert config["image_token_index"] == vocab  # appended right after the original vocabulary
    assert config["text_config"]["vocab_size"] == vocab + 2  # <image> and <pad>
    assert config["text_config"]["pad_token_id"] == vocab + 1
    assert config["image_seq_length"] == N_PATCHES
    assert record["added_tokens"] == {IMAGE_TOKEN: vocab, "<pad>": vocab + 1}
    assert record["verified"] and record["verified_tensors"] > 40
    assert record["left_out_tensors"] == 1  # the rotary buffer
    assert record["vision_tower"].startswith("checkpoint" if "inside" in str(out) else "folder")
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad is True  # image_aspect_ratio: pad
    assert processor.image_processor.crop_size["height"] == VISION["image_size"]
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == vocab
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How old?"}]}],
        add_generation_prompt=True,
    )
    assert text == f"{VICUNA_V1_SYSTEM} USER: <image>\nHow old? ASSISTANT:"


def test_logits_equal_the_original_forward(converted):
    from transformers import AutoModelForImageTextToText

    orig, out = converted
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    image_id = model.config.image_token_index
    pixels = torch.randn(1, 3, VISION["image_size"], VISION["image_size"], generator=torch.Generator().manual_seed(5))
    before, after = [1, 17, 42, 99, 5], [7, 250, 3, 64]
    ref = reference_logits(orig, before, after, pixels)
    got = converted_logits(model, image_id, before, after, pixels)
    vocab = orig["vocab"]
    assert got.shape == (len(before) + N_PATCHES + len(after), vocab + 2)
    torch.testing.assert_close(got[:, :vocab], ref, rtol=1e-5, atol=1e-5)
    # the added tokens' rows are the mean row: their logit is the mean logit, never the greedy choice
    torch.testing.assert_close(got[:, vocab:], ref.mean(dim=1, keepdim=True).expand(-1, 2), rtol=1e-4, atol=1e-4)
    assert bool((got[:, vocab:].max(dim=1).values < ref.max(dim=1).values).all())

    # the comparison is sensitive: a tensor in the wrong place changes the logits
    lm, tower = model.model.language_model, model.model.vision_tower.encoder.layers
    for layers in (lm.layers, tower):
        state0 = {k: v.clone() for k, v in layers[0].state_dict().items()}
        layers[0].load_state_dict(layers[1].state_dict())
        layers[1].load_state_dict(state0)
        swapped = converted_logits(model, image_id, before, after, pixels)
        assert (swapped[:, :vocab] - ref).abs().max() > 1e-2
        layers[1].load_state_dict(layers[0].state_dict())
        layers[0].load_state_dict(state0)


def test_transformers_backend_answers(converted):
    _, out = converted
    backend = TransformersBackend(str(out), device="cpu", params=GenerationParams(max_new_tokens=4), batch_size=2)
    assert backend.pad_to_square
    assert backend.prompt_text("How old?").startswith(VICUNA_V1_SYSTEM + " USER: <image>\n")
    rng = np.random.default_rng(0)
    queries = [Query(f"q{i}", rng.integers(0, 256, (40 + 9 * i, 30, 3), dtype=np.uint8), "How old?") for i in range(2)]
    answers = backend.generate_batch(queries)
    assert [a.status for a in answers] == ["answered", "answered"]
    assert all(isinstance(a.text, str) and a.completion_tokens >= 1 for a in answers)
    backend.close()


# ---------------------------------------------------------------- a sentencepiece tokenizer (as released)


def llava_prompt_ids(sp, text: str) -> list[int]:
    """LLaVA's `tokenizer_image_token` with the original sentencepiece model: <s>, then each chunk between
    `<image>`s tokenized on its own (so each gets sentencepiece's dummy prefix), the image as -200."""
    ids = [1]
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        ids += ([-200] if i else []) + sp.encode(chunk)
    return ids


@pytest.fixture(scope="module")
def converted_sp(tmp_path_factory):
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("sentencepiece")
    orig = make_original(root, tower_inside=False, tokenizer="sentencepiece", seed=7)
    assert not (orig["src"] / "tokenizer.json").exists()  # tokenizer.model only, as the releases
    out = convert_llava(orig["src"], root / "hf", vision_tower=orig["clip"], progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(orig["src"] / "tokenizer.model"))
    return orig, out, sp


def test_sentencepiece_tokens_are_added_after_the_vocabulary(converted_sp):
    from transformers import AutoTokenizer

    orig, out, sp = converted_sp
    vocab = orig["vocab"]
    assert vocab == sp.get_piece_size() == SP_VOCAB
    config = json.loads((out / "config.json").read_text())
    record = json.loads((out / "conversion.json").read_text())
    assert record["added_tokens"] == {IMAGE_TOKEN: vocab, "<pad>": vocab + 1}
    assert record["verified"] and record["prefix_every_chunk"]
    assert config["image_token_index"] == vocab
    assert config["text_config"]["vocab_size"] == vocab + 2
    assert (config["text_config"]["pad_token_id"], config["text_config"]["bos_token_id"]) == (vocab + 1, 1)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == vocab + 2
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == vocab + 1
    # every original piece keeps its id (byte pieces <0x..> included)
    assert tokenizer.convert_ids_to_tokens(list(range(vocab))) == [sp.id_to_piece(i) for i in range(vocab)]


def test_sentencepiece_prompt_ids_equal_the_original(converted_sp):
    from transformers import AutoProcessor, LlamaTokenizer

    _, out, sp = converted_sp
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tokenizer(PROMPT).input_ids == [1, *sp.encode(PROMPT)]
    assert tokenizer.decode(tokenizer(PROMPT).input_ids, skip_special_tokens=True) == PROMPT

    # the whole vicuna_v1 turn, as the backend writes it: LLaVA's ids, `<image>` for -200
    text = chat_prompt(processor, PROMPT)
    assert text == f"{VICUNA_V1_SYSTEM} USER: <image>\n{PROMPT} ASSISTANT:"
    reference = llava_prompt_ids(sp, text)
    k = reference.index(-200)
    assert [sp.id_to_piece(i) for i in reference[k + 1 : k + 3]] == ["\u2581", "<0x0A>"]  # LLaMA's 29871, 13
    got = tokenizer(text).input_ids
    assert [-200 if i == image_id else i for i in got] == reference
    # LlamaTokenizer rebuilds its pre-tokenizer from the config's `legacy` instead of reading tokenizer.json
    assert LlamaTokenizer.from_pretrained(out)(text).input_ids == got

    # a tokenizer that prefixes only the start of the text (legacy: false as loaded) loses that `▁`
    first_only = AutoProcessor.from_pretrained(out).tokenizer
    pre = first_only.backend_tokenizer.pre_tokenizer
    pre.prepend_scheme = "first"
    first_only.backend_tokenizer.pre_tokenizer = pre
    assert first_only(text).input_ids == got[: k + 1] + got[k + 2 :]


def test_sentencepiece_legacy_true_gives_the_same_ids(tmp_path, converted_sp):
    from transformers import AutoTokenizer

    _, _, sp = converted_sp
    orig = make_original(tmp_path, tower_inside=False, tokenizer="sentencepiece", legacy=True)
    out = convert_llava(orig["src"], tmp_path / "hf", vision_tower=orig["clip"], verify=False, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = f"{VICUNA_V1_SYSTEM} USER: <image>\n{PROMPT} ASSISTANT:"
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert [-200 if i == image_id else i for i in tokenizer(text).input_ids] == llava_prompt_ids(sp, text)


def test_sentencepiece_backend_inputs_and_logits_equal_the_original(converted_sp):
    orig, out, sp = converted_sp
    backend = TransformersBackend(str(out), device="cpu", params=GenerationParams(max_new_tokens=3), batch_size=2)
    rng = np.random.default_rng(1)
    queries = [Query(f"q{i}", rng.integers(0, 256, (50 - 8 * i, 36, 3), dtype=np.uint8), PROMPT) for i in range(2)]
    inputs = backend.build_inputs(queries[:1])
    reference = llava_prompt_ids(sp, backend.prompt_text(PROMPT))
    k = reference.index(-200)
    before, after = reference[:k], reference[k + 1 :]
    image_id = backend.hf_model.config.image_token_index
    assert inputs["input_ids"][0].tolist() == before + [image_id] * N_PATCHES + after
    with torch.no_grad():
        got = backend.hf_model(**inputs).logits[0]
    ref = reference_logits(orig, before, after, inputs["pixel_values"])
    vocab = orig["vocab"]
    torch.testing.assert_close(got[:, :vocab], ref, rtol=1e-5, atol=1e-5)
    assert bool((got[:, vocab:].max(dim=1).values < ref.max(dim=1).values).all())

    answers = backend.generate_batch(queries)
    assert [a.status for a in answers] == ["answered", "answered"]
    assert all(isinstance(a.text, str) and a.completion_tokens >= 1 for a in answers)
    # the prompt holds the expanded image and the whole reference text (left padding is not counted)
    assert answers[0].prompt_tokens == len(reference) - 1 + N_PATCHES
    backend.close()


def test_key_mapping_names():
    assert original_key_to_hf("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert original_key_to_hf("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert original_key_to_hf("model.norm.weight") == "model.language_model.norm.weight"
    assert original_key_to_hf("lm_head.weight") == "lm_head.weight"
    assert original_key_to_hf("model.mm_projector.0.bias") == "model.multi_modal_projector.linear_1.bias"
    assert original_key_to_hf("model.mm_projector.2.weight") == "model.multi_modal_projector.linear_2.weight"
    assert original_key_to_hf("model.mm_projector.1.weight") == "?model.mm_projector.1.weight"
    assert (
        original_key_to_hf(TOWER_PREFIX + "vision_model.pre_layrnorm.weight")
        == "model.vision_tower.pre_layrnorm.weight"
    )
    assert original_key_to_hf("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert original_key_to_hf("model.image_newline") == "?model.image_newline"
    assert (
        clip_key_to_hf("vision_model.encoder.layers.0.mlp.fc1.weight")
        == "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    )
    assert clip_key_to_hf("encoder.layers.0.mlp.fc1.weight") == "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert clip_key_to_hf("text_model.embeddings.token_embedding.weight") is None
    assert clip_key_to_hf("vision_model.embeddings.position_ids") is None


def test_unknown_key_is_named(tmp_path):
    extra = {"model.mm_projector.4.weight": torch.zeros(2, 2), "model.layers.7.mlp.up_proj.weight": torch.zeros(2)}
    orig = make_original(tmp_path, tower_inside=False, extra=extra)
    with pytest.raises(InputError, match=r"model\.layers\.7\.mlp\.up_proj\.weight.*model\.mm_projector\.4\.weight"):
        convert_llava(orig["src"], tmp_path / "hf", vision_tower=orig["clip"], progress=False)
    assert not (tmp_path / "hf").exists()  # checked before anything is written


def test_missing_key_is_named(tmp_path):
    orig = make_original(tmp_path, tower_inside=False, fmt="bin", drop=("model.layers.1.mlp.up_proj.weight",))
    with pytest.raises(InputError, match=r"missing.*model\.language_model\.layers\.1\.mlp\.up_proj\.weight"):
        convert_llava(orig["src"], tmp_path / "hf", vision_tower=orig["clip"], progress=False)


def test_no_vision_tower_names_both_options(tmp_path):
    orig = make_original(tmp_path, tower_inside=False, config_updates={"mm_vision_tower": "nobody/no-such-tower"})
    with pytest.raises(InputError, match=r"--vision-tower DIR.*holds the tower") as err:
        convert_llava(orig["src"], tmp_path / "hf", progress=False)
    assert "holds no model.vision_tower.vision_tower.*" in str(err.value)


def test_sentencepiece_tokenizer_needs_the_package(tmp_path, monkeypatch):
    import importlib.util

    orig = make_original(tmp_path, tower_inside=False, tokenizer="sentencepiece")  # tokenizer.model only
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real_find_spec(name, *a)
    )
    with pytest.raises(InputError, match="pip install sentencepiece") as err:
        convert_llava(orig["src"], tmp_path / "hf", vision_tower=orig["clip"], progress=False)
    assert err.value.file.endswith("tokenizer.model")


def test_tower_from_mm_vision_tower_folder(tmp_path):
    # the released layout without --vision-tower: mm_vision_tower names a local CLIP folder
    # ... and dtype `auto` follows the config's torch_dtype (float16, as the releases say)
    orig = make_original(tmp_path, tower_inside=False, config_updates={"torch_dtype": "float16"})
    out = convert_llava(orig["src"], tmp_path / "hf", progress=False)
    record = json.loads((out / "conversion.json").read_text())
    assert "mm_vision_tower" in record["vision_tower"]
    assert record["dtype"] == "float16" and record["verified"]


def test_differing_towers_are_refused(tmp_path):
    orig = make_original(tmp_path, tower_inside=True)
    with pytest.raises(InputError, match="differ from the vision tower folder"):
        convert_llava(orig["src"], tmp_path / "hf", vision_tower=orig["clip"], progress=False)


@pytest.mark.parametrize(
    ("updates", "field"),
    [
        ({"mm_projector_type": "linear"}, "mm_projector_type"),
        ({"mm_projector_type": "mlp3x_gelu"}, "mm_projector_type"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"image_aspect_ratio": "anyres"}, "image_aspect_ratio"),
        ({"model_type": "llava_mistral"}, "model_type"),
        ({"mm_hidden_size": 48}, "mm_hidden_size"),
    ],
)
def test_unsupported_checkpoints_are_refused(tmp_path, updates, field):
    orig = make_original(tmp_path, tower_inside=False, config_updates=updates)
    with pytest.raises(InputError) as err:
        convert_llava(orig["src"], tmp_path / "hf", vision_tower=orig["clip"], progress=False)
    assert err.value.field == field


def test_dtype_overwrite_and_verification(tmp_path):
    orig = make_original(tmp_path, tower_inside=False)
    out = tmp_path / "hf"
    convert_llava(orig["src"], out, vision_tower=orig["clip"], dtype="bfloat16", verify=False, progress=False)
    record = json.loads((out / "conversion.json").read_text())
    assert record["dtype"] == "bfloat16" and not record["verified"]
    with pytest.raises(InputError, match="not empty"):
        convert_llava(orig["src"], out, vision_tower=orig["clip"], progress=False)
    assert verify_conversion(out, orig["src"], vision_tower=orig["clip"], progress=False) > 40

    # a tensor changed after the conversion: verification names it
    weights = load_file(out / "model.safetensors")
    key = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[key] = weights[key] + 1
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AgegenderError, match=r"layers\.1\.mlp\.down_proj"):
        verify_conversion(out, orig["src"], vision_tower=orig["clip"], progress=False)


def test_cli(tmp_path, capsys):
    orig = make_original(tmp_path, tower_inside=False)
    out = tmp_path / "hf"
    argv = ["convert-llava", str(orig["src"]), str(out), "--vision-tower", str(orig["clip"]), "--no-verify"]
    assert main(argv) == 0
    assert "llava-hf folder" in capsys.readouterr().out
    assert main(argv) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--dtype", "float16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
