"""Tiny checkpoints in the ORIGINAL LLaVA-1.5 / ShareGPT4V layout (what the original training code leaves behind).

Used by tests/unit/test_mllm_convert.py (the converter's numerical checks) and tests/standins.py (the paper profile's
ShareGPT4V stand-in, converted with `agegender convert-llava` as a researcher would).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from agegender.mllm.tools.tiny import default_corpus

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
    "projection_dim": 32,
}
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,  # the vicuna_v1 prompt in the sentencepiece vocabulary: ~330 tokens
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
N_PATCHES = (VISION["image_size"] // VISION["patch_size"]) ** 2
TOWER_PREFIX = "model.vision_tower.vision_tower."
#: vocabulary of the sentencepiece tokenizer: 3 specials, 256 byte pieces, the rest merges
SP_VOCAB = 384


def _random_(module: torch.nn.Module, seed: int) -> None:
    """Random weights of a size that makes every tensor matter for the logits (unlike a 0.02 init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _corpus() -> list[str]:
    # `<image>` is not text in LLaVA (the id -200), so the tokenizers never learn it
    return [line.replace("<image>", "") for line in default_corpus()]


def _bpe_tokenizer(folder: Path) -> int:
    """A byte-level BPE fast tokenizer with Llama's specials only (<unk>, <s>, </s>; pad = <unk> as LLaVA's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    fast.save_pretrained(folder)
    return len(fast)


def _added_token(content: str) -> dict:
    # the form transformers 4.3x wrote special tokens in (the LLaVA-1.5 / ShareGPT4V releases)
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}  # fmt: skip


def _sentencepiece_tokenizer(folder: Path, legacy: bool | None) -> int:
    """A LLaMA-style sentencepiece release: tokenizer.model + tokenizer_config.json + special_tokens_map.json.

    Trained offline on the tiny corpus with LLaMA's trainer settings (BPE, byte fallback, split digits, no
    normalisation, whitespace kept, unk/bos/eos = 0/1/2, no pad piece). `legacy` is written to the config as
    given (vicuna-v1.5, the base of LLaVA-1.5 and ShareGPT4V, says false; None leaves the key out).
    """
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        # one sentence a line, as sentencepiece reads a text file: `\n` is no piece and falls back to <0x0A>
        sentence_iterator=(part for line in _corpus() for part in line.split("\n")),
        model_writer=model,
        model_type="bpe",
        vocab_size=SP_VOCAB,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token("</s>"),
        "legacy": legacy,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token("<unk>"),
    }
    if legacy is None:
        del config["legacy"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    # LLaVA's training code pads with <unk>, and saves that choice here
    specials = {"bos_token": _added_token("<s>"), "eos_token": _added_token("</s>"), "pad_token": "<unk>",
                "unk_token": _added_token("<unk>")}  # fmt: skip
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def _clip_folder(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """A CLIP vision folder as transformers 4 wrote them (`vision_model.*` keys, int sizes in the preprocessor)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**VISION)
    model = CLIPVisionModel(config)
    _random_(model, seed)
    folder.mkdir(parents=True)
    config.to_json_file(folder / "config.json")
    state = {k.removeprefix("vision_model."): v.contiguous() for k, v in model.state_dict().items()}
    save_file({"vision_model." + k: v for k, v in state.items()}, folder / "model.safetensors")
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "size": VISION["image_size"],
        "crop_size": VISION["image_size"],
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return state


def make_original(
    root: Path,
    *,
    tower_inside: bool,
    fmt: str = "safetensors",
    seed: int = 0,
    drop: tuple[str, ...] = (),
    extra: dict[str, torch.Tensor] | None = None,
    config_updates: dict | None = None,
    tokenizer: str = "bpe",
    legacy: bool | None = False,
) -> dict:
    """Write a tiny original-layout checkpoint; returns paths and the original tensors for the reference.

    Args:
        root: folder for the checkpoint (`original/`) and its CLIP folder (`clip/`).
        tower_inside: also store a (different) vision tower in the checkpoint.
        fmt: `safetensors`, or `bin` for two `pytorch_model*.bin` shards with their index.
        seed: seeds the weights.
        drop: checkpoint keys to leave out.
        extra: tensors to add to the checkpoint.
        config_updates: config.json keys to override.
        tokenizer: `bpe` (a byte-level BPE fast tokenizer, tokenizer.json) or `sentencepiece` (tokenizer.model
            only, as the LLaVA-1.5 / ShareGPT4V releases ship it).
        legacy: the `legacy` flag of the sentencepiece tokenizer's config (None: no such key).

    Returns:
        `src`, `clip` (folders), `state` (checkpoint tensors), `tower` (the vision tower's tensors without the
        `vision_model.` prefix) and `vocab` (the tokenizer's size, the embeddings' rows).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    src, clip = root / "original", root / "clip"
    src.mkdir(parents=True)
    clip_state = _clip_folder(clip, seed + 1)
    if tokenizer == "bpe":
        vocab = _bpe_tokenizer(src)
    elif tokenizer == "sentencepiece":
        vocab = _sentencepiece_tokenizer(src, legacy)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r} (bpe or sentencepiece)")
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **TEXT))
    _random_(llama, seed + 2)
    state = {k: v.contiguous() for k, v in llama.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 3)
    h_v, h_t = VISION["hidden_size"], TEXT["hidden_size"]
    state["model.mm_projector.0.weight"] = torch.randn(h_t, h_v, generator=gen) * 0.3
    state["model.mm_projector.0.bias"] = torch.randn(h_t, generator=gen) * 0.3
    state["model.mm_projector.2.weight"] = torch.randn(h_t, h_t, generator=gen) * 0.3
    state["model.mm_projector.2.bias"] = torch.randn(h_t, generator=gen) * 0.3
    # an old-style saved rotary buffer: recomputed by transformers, so left out on purpose
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    tower = clip_state
    if tower_inside:
        # A tower that differs from the config folder's: the converter must take the checkpoint's own.
        other = root / "clip_inside"
        tower = _clip_folder(other, seed + 4)
        state.update({f"{TOWER_PREFIX}vision_model.{k}": v for k, v in tower.items()})
    for key in drop:
        del state[key]
    state.update(extra or {})

    if fmt == "safetensors":
        save_file(state, src / "model.safetensors")
    else:  # two pytorch_model*.bin shards with their index, as the original LLaVA / ShareGPT4V releases
        keys = sorted(state)
        half = len(keys) // 2
        weight_map = {}
        for i, part in enumerate((keys[:half], keys[half:]), start=1):
            name = f"pytorch_model-0000{i}-of-00002.bin"
            torch.save({k: state[k] for k in part}, src / name)
            weight_map.update(dict.fromkeys(part, name))
        (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    config = {
        "architectures": ["Share4VLlamaForCausalLM"],
        "model_type": "share4v",
        **TEXT,
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "mm_vision_tower": str(clip),
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": h_v,
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "transformers_version": "4.31.0",
        **(config_updates or {}),
    }
    (src / "config.json").write_text(json.dumps(config, indent=2))
    return {"src": src, "clip": clip, "state": state, "tower": tower, "vocab": vocab}
