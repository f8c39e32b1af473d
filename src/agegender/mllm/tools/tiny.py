"""Tiny LLaVA-1.5 and LLaVA-NeXT models, and tiny models of today's families (Qwen2.5-VL, Gemma 3, LLaVA-OneVision,
InternVL, Qwen3-VL, SmolVLM), built from configs, for the demo profile and the tests.

Today's families (`build_tiny_family`) share the tokenizer trainer: a `TinyFamily` gives the family's special tokens
and a chat template equal in structure to its checkpoints', so that the backend meets each family's traps offline.

The models have the architecture of the llava-hf checkpoints (a CLIP vision tower at 336/14, a
two-layer MLP projector and a Llama decoder) at toy sizes, random weights drawn from a seed, and a
byte-level BPE tokenizer trained here with the `tokenizers` library on a small corpus that covers
the paper's prompt and answers such as `[female; 40]`. Everything is written with
`save_pretrained`, so the folder loads offline exactly like a downloaded checkpoint::

    AutoModelForImageTextToText.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)

The pieces (`train_tokenizer`, `tiny_config`, `tiny_processor`) are public so that the fine-tuning
code can build a tokenizer on its own corpus or start from the same architecture.

Chat template: both kinds use the vicuna_v1 conversation of LLaVA-1.5 and llava-v1.6-vicuna
(FACTS.md): a system sentence, then ``USER: <image>\\n{prompt} ASSISTANT: {answer}</s>``, turns
separated by one space; the generation prompt ends with ``ASSISTANT:``. The `<s>` BOS token is added
by the tokenizer's post-processor, not by the template, so it appears exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from agegender.errors import InputError

TinyKind = Literal["llava", "llava_next"]

#: the vicuna_v1 system sentence of LLaVA-1.5
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

#: vicuna_v1 as a Jinja chat template. Content may be a string or HF's list of
#: {"type": "image"} / {"type": "text"} parts; images go first, each as `<image>` + newline (LLaVA's order).
VICUNA_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{%- set ns.system = message['content'] -%}"
    "{%- else -%}{%- set ns.system = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ ns.system }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ ' USER: ' }}{%- for _ in range(n_images) -%}{{ '<image>\n' }}{%- endfor -%}{{ text }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ASSISTANT: ' + text + eos_token }}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
)

#: the special tokens of the tiny tokenizer (Llama's names); `<image>` is LLaVA's placeholder
SPECIAL_TOKENS: dict[str, str] = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}
IMAGE_TOKEN = "<image>"

#: LLaVA-NeXT any-res grid for the tiny models: one tile, two tiles tall or two tiles wide
TINY_GRID_PINPOINTS: tuple[tuple[int, int], ...] = ((336, 336), (336, 672), (672, 336))

# The paper's prompt (section 4.2; equal to agegender.mllm.prompt.PROMPT). A copy, so that the tiny
# tokenizer, and with it every tiny model, stays the same whatever prompts get registered later.
_PAPER_PROMPT = (
    "Please provide the perceived gender and estimated age of the individual in this photo in the format "
    "'[gender; age]', where the age must be a single integer between 0 and 130. It should not be a range. "
    "The gender must be one of two options: 'male' or 'female'. I understand that your response will be based "
    "on visual analysis and may not accurately reflect the actual age or gender identity of the individual."
)

_FILLER = (
    "The person in the image is a man or a woman. I am sorry, I cannot determine the age of this person. "
    "This photo shows a young girl, an old boy, a child, an adult and a teenager. The answer is in years. "
    "Here is my estimate based on the face and the body. It is not possible to say for sure. "
    "What is the gender of the individual? How old is he? How old is she? Describe the picture."
)


def default_corpus() -> list[str]:
    """A small training corpus for the tiny tokenizer.

    It holds the paper's prompt, the vicuna system sentence and role names, answers of every form the
    parser accepts (`[female; 40]`, ranges, decimals, "years", refusals) and some plain English, so that
    prompts and answers tokenize into few tokens. Deterministic (no randomness).

    Returns:
        The corpus as a list of lines.
    """
    lines = [_PAPER_PROMPT, VICUNA_SYSTEM, _FILLER, "USER: ASSISTANT: SYSTEM: user assistant system"]
    for age in range(0, 131):
        gender = "female" if age % 2 else "male"
        other = "male" if age % 2 else "female"
        lines.append(f"USER: <image>\n{_PAPER_PROMPT} ASSISTANT: [{gender}; {age}]")
        lines.append(f"[{other}; {age}] [{gender.capitalize()}; {age} years] [{gender}, {age}.5] ({other}; {age})")
        lines.append(f"[{gender}; {age}-{age + 5}] [{other}; {age}\u2013{age + 10}] ```[{gender}; {age}]```")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 . , ; : [ ] ( ) - ' \" ? ! MALE FEMALE Male Female")
    return lines


@dataclass(frozen=True)
class TinyFamily:
    """What a tiny model's tokenizer needs to look like one family's: its special tokens and chat template.

    Attributes:
        special_tokens: bos/eos/pad/unk names, as the family's tokenizer sets them.
        extra_tokens: further tokens that must stay whole (role markers, image markers, tile names).
        named_tokens: attribute name -> token for those the family's processor reads off the tokenizer
            (`tokenizer.image_token`, `tokenizer.boi_token`, ...).
        bos_in_post_processor: the tokenizer itself puts the BOS token first (Llama, Gemma); else the template does.
        chat_template: a Jinja template equal in structure to the family's (roles, image placement, what follows
            the answer), written for the tiny vocabulary.
        corpus: lines added to `default_corpus()` so that the template's words tokenize into few tokens.
    """

    special_tokens: Mapping[str, str]
    extra_tokens: tuple[str, ...]
    named_tokens: Mapping[str, str]
    bos_in_post_processor: bool
    chat_template: str
    corpus: tuple[str, ...] = ()


#: LLaVA-1.5 / LLaVA-NeXT: Llama's tokens, `<image>`, vicuna_v1
LLAVA_TOKENS = TinyFamily(SPECIAL_TOKENS, (IMAGE_TOKEN,), {}, True, VICUNA_CHAT_TEMPLATE)

#: the text of a message whose content is a string or HF's list of parts, images rendered by `image`
_PARTS = (
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}{{ image }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}"
)

#: Qwen2.5-VL's ChatML template: a default system turn, the image as `<|vision_start|><|image_pad|><|vision_end|>`
#: in place, each turn closed by `<|im_end|>` + newline; the generation prompt is `<|im_start|>assistant\n`.
QWEN_CHAT_TEMPLATE = (
    "{%- set image = '<|vision_start|><|image_pad|><|vision_end|>' -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}" + _PARTS + "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

#: Qwen3-VL's template: Qwen2.5-VL's ChatML without the default system turn
QWEN3_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif -%}",
    "",
)

#: Gemma 3's template: `<bos>` in the template, NO system role (a system turn is folded into the first user turn,
#: followed by a blank line), `assistant` renamed `model`, `<start_of_image>` where the image goes, each turn closed
#: by `<end_of_turn>` + newline; the generation prompt is `<start_of_turn>model\n`.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- set image = '<start_of_image>' -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    + _PARTS.replace("{{ part['text'] }}", "{{ part['text'] | trim }}")
    + "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

#: LLaVA-OneVision's (llava-onevision-qwen2-hf) ChatML template: no default system turn, `<|im_start|>role ` with
#: the images first (`<image>`), then each text on a new line, each turn closed by `<|im_end|>` + newline; the
#: generation prompt is `<|im_start|>assistant\n`.
ONEVISION_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{%- if message['content'] is string -%}{{ '\n' + message['content'] }}{%- else -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'image') -%}{{ '<image>' }}{%- endfor -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') -%}{{ '\n' + part['text'] }}"
    "{%- endfor -%}{%- endif -%}{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

#: InternVL3's (-hf) ChatML template: no default system turn, the image as `<IMG_CONTEXT>` + newline in place (the
#: processor expands it to `<img>` + tokens per tile + `</img>`), each turn closed by `<|im_end|>` + newline.
INTERNVL_CHAT_TEMPLATE = (
    "{%- set image = '<IMG_CONTEXT>\n' -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}" + _PARTS + "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

#: SmolVLM's template: `<|im_start|>` (its BOS) once at the start, then each turn as its capitalised role, a colon
#: (followed by a space unless the turn starts with an image), the parts in place (the image as `<image>`, which the
#: processor expands into tiles and a global view) and `<end_of_utterance>` + newline; the generation prompt is
#: `Assistant:`, so the answer follows after a space.
SMOLVLM_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- set image = '<image>' -%}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}"
    "{%- if message['content'] is not string and message['content'][0]['type'] == 'image' -%}{{ ':' }}"
    "{%- else -%}{{ ': ' }}{%- endif -%}" + _PARTS + "{{ '<end_of_utterance>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
#: SmolVLM's tile names, `<row_{r}_col_{c}>` up to its checkpoints' 6x6 grid (the processor writes one per tile)
SMOLVLM_TILE_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))

#: the special tokens of the ChatML families (Qwen, InternVL, LLaVA-OneVision): turns end with `<|im_end|>`
_CHATML_SPECIALS = {"unk_token": "<unk>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
_QWEN_VISION_TOKENS = ("<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

#: the families the tiny builder knows beside LLaVA, by `model_type`
FAMILY_TOKENS: dict[str, TinyFamily] = {
    "qwen2_5_vl": TinyFamily(
        _CHATML_SPECIALS,
        _QWEN_VISION_TOKENS,
        {},
        False,
        QWEN_CHAT_TEMPLATE,
        ("system user assistant You are a helpful assistant.",),
    ),
    "qwen3_vl": TinyFamily(
        _CHATML_SPECIALS,
        _QWEN_VISION_TOKENS,
        {},
        False,
        QWEN3_CHAT_TEMPLATE,
        ("system user assistant",),
    ),
    "internvl": TinyFamily(
        _CHATML_SPECIALS,
        ("<|im_start|>",),
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        False,
        INTERNVL_CHAT_TEMPLATE,
        ("system user assistant",),
    ),
    "llava_onevision": TinyFamily(
        _CHATML_SPECIALS,
        ("<|im_start|>", "<image>", "<video>"),
        {},
        False,
        ONEVISION_CHAT_TEMPLATE,
        ("system user assistant",),
    ),
    "smolvlm": TinyFamily(
        {
            "unk_token": "<|endoftext|>",
            "bos_token": "<|im_start|>",
            "eos_token": "<end_of_utterance>",
            "pad_token": "<|im_end|>",
        },
        ("<video>", *SMOLVLM_TILE_TOKENS),
        {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        False,
        SMOLVLM_CHAT_TEMPLATE,
        ("System: User: Assistant:",),
    ),
    "gemma3": TinyFamily(
        {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        ("<start_of_turn>", "<end_of_turn>"),
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        True,
        GEMMA3_CHAT_TEMPLATE,
        ("user model",),
    ),
}


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1000, *, family: TinyFamily | None = None) -> Any:
    """Train a byte-level BPE tokenizer with a family's special tokens (default: Llama's and LLaVA's `<image>`).

    Byte-level means any text encodes without `<unk>`. The post-processor adds the BOS token in front of every
    sequence where the family's own tokenizer does (Llama's `<s>`, Gemma's `<bos>`); Qwen puts its first token
    in the chat template instead. Training is deterministic for a given corpus.

    Args:
        corpus: training text, one string per line or document.
        vocab_size: target vocabulary size, special tokens included.
        family: the family's tokens and chat template; None = LLaVA (vicuna_v1), as before families existed.

    Returns:
        A `transformers.PreTrainedTokenizerFast` with bos/eos/pad/unk set, the family's extra tokens registered as
        additional special tokens (named ones also as attributes, e.g. `tokenizer.image_token`, which the family's
        processor reads) and the family's chat template set; padding on the left (generation).

    Raises:
        InputError: when the corpus is empty or the vocabulary is too small for the byte alphabet.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [line for line in corpus if line]
    if not lines:
        raise InputError("the tokenizer corpus is empty", field="text_corpus")
    family = family or LLAVA_TOKENS
    named = dict(family.special_tokens)
    specials = list(dict.fromkeys([*named.values(), *family.extra_tokens, *family.named_tokens.values()]))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials) + 1:
        raise InputError(f"vocab_size must be > {len(alphabet) + len(specials)} (byte alphabet)", field="vocab_size")

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(lines, trainer=trainer)
    bos = named.get("bos_token")
    if family.bos_in_post_processor and bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    extra: list[str] | dict[str, str] = list(family.extra_tokens)
    if family.named_tokens:
        extra = dict(family.named_tokens)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **named,
        extra_special_tokens=extra,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    if family.named_tokens:  # the unnamed extras (role markers) must stay whole tokens too
        fast.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    fast.chat_template = family.chat_template
    return fast


def tiny_config(
    kind: TinyKind,
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    image_size: int = 336,
    patch_size: int = 14,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    num_layers: int = 2,
    grid_pinpoints: Sequence[Sequence[int]] | None = None,
) -> Any:
    """The config of a tiny LLaVA-1.5 (`LlavaConfig`) or LLaVA-NeXT (`LlavaNextConfig`).

    Vision: CLIP ViT (`num_layers` layers, `vision_hidden` wide, patch 14, `image_size` input), features
    from the second-to-last layer without the CLS token ("default" strategy), as in LLaVA-1.5.
    Text: Llama (`num_layers` layers, `text_hidden` wide, 4 heads, 2 KV heads).

    Args:
        kind: `llava` or `llava_next`.
        vocab_size: the tokenizer's full size (special tokens included).
        image_token_id, pad_token_id, bos_token_id, eos_token_id: the tokenizer's ids.
        image_size: vision input size (and any-res tile size for NeXT); must be a multiple of patch_size.
        patch_size: ViT patch size.
        vision_hidden: CLIP width.
        text_hidden: Llama width.
        num_layers: layers of both towers.
        grid_pinpoints: NeXT any-res resolutions (height, width); default: multiples of image_size
            following `TINY_GRID_PINPOINTS`.

    Returns:
        The config object.

    Raises:
        InputError: unknown kind or an image size that is not a multiple of the patch size.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

    if kind not in ("llava", "llava_next"):
        raise InputError(f"unknown tiny model kind {kind!r}; use 'llava' or 'llava_next'", field="kind")
    if image_size % patch_size:
        raise InputError(f"image_size {image_size} is not a multiple of patch_size {patch_size}", field="image_size")
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        patch_size=patch_size,
        image_size=image_size,
        projection_dim=vision_hidden,
    )
    n_image_tokens = (image_size // patch_size) ** 2
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        # NeXT: base tile + up to two tiles + newlines, plus the text, must fit
        max_position_embeddings=max(2048, 8 * n_image_tokens),
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    common: dict[str, Any] = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": image_token_id,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "image_seq_length": n_image_tokens,
    }
    if kind == "llava":
        return LlavaConfig(**common)
    if grid_pinpoints is None:
        scale = image_size / 336
        grid_pinpoints = [[round(h * scale), round(w * scale)] for h, w in TINY_GRID_PINPOINTS]
    return LlavaNextConfig(**common, image_grid_pinpoints=[list(map(int, p)) for p in grid_pinpoints])


def tiny_processor(kind: TinyKind, tokenizer: Any, config: Any) -> Any:
    """The processor of a tiny model: image processor + tokenizer + image-token expansion.

    LLaVA-1.5 gets `LlavaImageProcessor(do_pad=True)`: LLaVA's original pad-to-square with the mean
    colour before the resize to `image_size` (FACTS.md). NeXT gets `LlavaNextImageProcessor` with the
    config's grid pinpoints (any-res tiles of `image_size`).

    Args:
        kind: `llava` or `llava_next`.
        tokenizer: from `train_tokenizer`.
        config: from `tiny_config`.

    Returns:
        A `LlavaProcessor` or `LlavaNextProcessor` with the vicuna chat template.
    """
    from transformers import LlavaImageProcessor, LlavaNextImageProcessor, LlavaNextProcessor, LlavaProcessor

    size = int(config.vision_config.image_size)
    common_img: dict[str, Any] = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    common_proc: dict[str, Any] = {
        "tokenizer": tokenizer,
        "patch_size": int(config.vision_config.patch_size),
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,  # CLIP's CLS token
        "chat_template": VICUNA_CHAT_TEMPLATE,
        "image_token": IMAGE_TOKEN,
    }
    if kind == "llava":
        return LlavaProcessor(image_processor=LlavaImageProcessor(do_pad=True, **common_img), **common_proc)
    image_processor = LlavaNextImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints, **common_img)
    return LlavaNextProcessor(image_processor=image_processor, **common_proc)


def build_tiny_llava(
    out_dir: str | Path,
    *,
    kind: TinyKind = "llava",
    seed: int = 0,
    image_size: int = 336,
    vocab_size: int = 1000,
    text_corpus: Iterable[str] | None = None,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    num_layers: int = 2,
) -> Path:
    """Build a tiny LLaVA-1.5 or LLaVA-NeXT with random (seeded) weights and save it in HF format.

    The folder holds config.json, generation_config.json, model.safetensors, the tokenizer files, the
    processor/image-processor configs and the chat template; it loads offline with
    `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`. Same arguments ->
    byte-identical weights. About 1-3 MB on disk; builds in a second or two.

    Args:
        out_dir: target folder (created; existing files of the same names are overwritten).
        kind: `llava` (LlavaForConditionalGeneration) or `llava_next` (LlavaNextForConditionalGeneration).
        seed: seeds the weights (the global torch RNG is left as it was).
        image_size: vision input size (336 as LLaVA-1.5; smaller is faster for tests).
        vocab_size: tokenizer target size.
        text_corpus: lines to train the tokenizer on; default `default_corpus()`.
        vision_hidden: CLIP width.
        text_hidden: Llama width.
        num_layers: layers of both towers.

    Returns:
        The output folder.

    Raises:
        InputError: bad kind, sizes or an empty corpus.
    """
    from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    out = Path(out_dir)
    tokenizer = train_tokenizer(default_corpus() if text_corpus is None else text_corpus, vocab_size=vocab_size)
    config = tiny_config(
        kind,
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        image_size=image_size,
        vision_hidden=vision_hidden,
        text_hidden=text_hidden,
        num_layers=num_layers,
    )
    model_cls = LlavaForConditionalGeneration if kind == "llava" else LlavaNextForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32).eval()
    # Greedy and short by default: what the paper's protocol asks of every model.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tiny_processor(kind, tokenizer, config).save_pretrained(out)
    (out / "agegender_tiny.json").write_text(
        json.dumps(
            {"kind": kind, "seed": seed, "image_size": image_size, "vocab_size": vocab_size, "random_weights": True},
            indent=2,
        )
        + "\n"
    )
    return out


#: the tiny families `build_tiny_family` builds, in the issue's order; `llava`/`llava_next` go to `build_tiny_llava`
TinyFamilyName = Literal["qwen2_5_vl", "gemma3", "llava_onevision", "internvl", "qwen3_vl", "smolvlm"]


def _toy_tower(num_layers: int) -> dict[str, int]:
    """The toy size of a ViT-style vision tower (SigLIP, InternViT, SmolVLM's): width 32, MLP 64, 2 heads."""
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": num_layers, "num_attention_heads": 2}


def _family_model_and_processor(family: str, tokenizer: Any, text_hidden: int, num_layers: int) -> tuple[Any, Any]:
    """The config-built model (random weights, drawn from the current torch RNG) and processor of a tiny family.

    Sizes are toy sizes, but every structural piece the family's checkpoints have is there: Qwen2.5-VL's windowed
    ViT with 2x2 patch merging and M-RoPE, Gemma 3's SigLIP + pooled `mm_tokens_per_image` soft tokens and
    pan-and-scan crops, LLaVA-OneVision's SigLIP + Qwen2 with any-res tiles (a 2x2-tile grid at toy size), Qwen3-VL's
    DeepStack ViT (patch 16) with interleaved M-RoPE, InternVL's ViT + pixel shuffle with tiles and a thumbnail,
    SmolVLM's SigLIP-like tower + pixel-shuffle connector with tiles (`<row_r_col_c>`) and a global view.
    """
    import transformers as tf

    ids = tokenizer.convert_tokens_to_ids
    vocab = len(tokenizer)
    text = {
        "vocab_size": vocab,
        "hidden_size": text_hidden,
        "intermediate_size": text_hidden * 2,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": False,
    }
    if family == "qwen2_5_vl":
        head_dim = text_hidden // 4
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(head_dim)}
        config = tf.Qwen2_5_VLConfig(
            text_config={**text, "rope_parameters": rope},
            vision_config={
                "depth": num_layers,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": text_hidden,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [num_layers - 1],
            },
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
        )
        # a small default pixel budget (28x28 pixels per token): 4 to 64 image tokens
        image_processor = tf.Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64})
        processor = tf.Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=tf.Qwen2VLVideoProcessor(),
            chat_template=tokenizer.chat_template,
        )
        return tf.Qwen2_5_VLForConditionalGeneration(config), processor
    if family == "qwen3_vl":
        head_dim = text_hidden // 4
        rope = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope_section(head_dim),
            "mrope_interleaved": True,
        }
        config = tf.Qwen3VLConfig(
            text_config={**text, "head_dim": head_dim, "rope_parameters": rope},
            vision_config={
                "depth": num_layers,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": text_hidden,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
            },
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
        # 32x32 pixels per token (patch 16, 2x2 merge): 4 to 64 image tokens by default
        image_processor = tf.Qwen2VLImageProcessor(
            patch_size=16,
            merge_size=2,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": 64 * 64, "longest_edge": 32 * 32 * 64},
        )
        processor = tf.Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=tf.Qwen3VLVideoProcessor(),
            chat_template=tokenizer.chat_template,
        )
        return tf.Qwen3VLForConditionalGeneration(config), processor
    if family == "internvl":
        tile, patch = 56, 14
        tokens_per_tile = (tile // patch) ** 2 // 4  # pixel shuffle with downsample_ratio 0.5
        config = tf.InternVLConfig(
            vision_config=tf.InternVLVisionConfig(
                **_toy_tower(num_layers),
                image_size=[tile, tile],
                patch_size=[patch, patch],
            ),
            text_config=tf.Qwen2Config(**text),
            image_token_id=ids("<IMG_CONTEXT>"),
            image_seq_length=tokens_per_tile,
            downsample_ratio=0.5,
            tie_word_embeddings=False,
        )
        # tiling as the checkpoints ship it: the crop cut into up to 4 tiles plus a thumbnail
        image_processor = tf.GotOcr2ImageProcessor(
            size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=4
        )
        processor = tf.InternVLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=tf.InternVLVideoProcessor(size={"height": tile, "width": tile}),
            image_seq_length=tokens_per_tile,
            chat_template=tokenizer.chat_template,
        )
        return tf.InternVLForConditionalGeneration(config), processor
    if family == "gemma3":
        image_size, patch, tokens_per_image = 64, 8, 16
        config = tf.Gemma3Config(
            text_config=tf.Gemma3TextConfig(**{**text, "head_dim": text_hidden // 4, "sliding_window": 512}),
            vision_config=tf.SiglipVisionConfig(
                **_toy_tower(num_layers),
                image_size=image_size,
                patch_size=patch,
            ),
            mm_tokens_per_image=tokens_per_image,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
        )
        # pan-and-scan off, as the checkpoints ship; its crop sizes are the processor's (at least 256 pixels)
        image_processor = tf.Gemma3ImageProcessor(
            size={"height": image_size, "width": image_size}, do_pan_and_scan=False
        )
        processor = tf.Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
            image_seq_length=tokens_per_image,
        )
        return tf.Gemma3ForConditionalGeneration(config), processor
    if family == "llava_onevision":
        tile, patch = 56, 14
        grid = [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
        config = tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(
                **_toy_tower(num_layers),
                image_size=tile,
                patch_size=patch,
            ),
            text_config=tf.Qwen2Config(**text),
            image_token_index=ids("<image>"),
            video_token_index=ids("<video>"),
            image_grid_pinpoints=grid,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        image_processor = tf.LlavaOnevisionImageProcessor(
            size={"height": tile, "width": tile}, image_grid_pinpoints=grid, do_pad=True
        )
        processor = tf.LlavaOnevisionProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=tf.LlavaOnevisionVideoProcessor(size={"height": tile, "width": tile}),
            num_image_tokens=(tile // patch) ** 2,
            vision_feature_select_strategy="full",
            chat_template=tokenizer.chat_template,
        )
        return tf.LlavaOnevisionForConditionalGeneration(config), processor
    if family == "smolvlm":
        tile, patch, scale = 32, 8, 2
        tokens_per_tile = (tile // patch) ** 2 // scale**2  # the connector's pixel shuffle
        config = tf.SmolVLMConfig(
            vision_config=tf.SmolVLMVisionConfig(
                **_toy_tower(num_layers),
                image_size=tile,
                patch_size=patch,
            ),
            text_config={**text, "model_type": "llama"},
            image_token_id=ids("<image>"),
            scale_factor=scale,
            pad_token_id=tokenizer.pad_token_id,
        )
        # tiling as the checkpoints ship it (longest edge 4 tiles): the crop resized to a longest edge of 2 tiles
        # here, cut into tiles plus a global view
        image_processor = tf.SmolVLMImageProcessor(
            size={"longest_edge": 2 * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True
        )
        processor = tf.SmolVLMProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=tf.SmolVLMVideoProcessor(max_image_size={"longest_edge": tile}),
            image_seq_len=tokens_per_tile,
            chat_template=tokenizer.chat_template,
        )
        return tf.SmolVLMForConditionalGeneration(config), processor
    raise InputError(f"unknown tiny model family {family!r}; use one of {', '.join(FAMILY_TOKENS)}", field="family")


def mrope_section(head_dim: int) -> list[int]:
    """Qwen's M-RoPE split of a head's rotary frequencies over (time, height, width): Qwen2.5-VL's 16/24/24 of 64,
    scaled to `head_dim // 2` frequencies."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_tiny_family(
    out_dir: str | Path,
    family: TinyFamilyName,
    *,
    seed: int = 0,
    vocab_size: int = 1000,
    text_hidden: int = 64,
    num_layers: int = 2,
) -> Path:
    """Build a tiny model of one of today's families (`FAMILY_TOKENS`) with random (seeded) weights, in HF format.

    Like `build_tiny_llava`: the folder holds config, weights, processor, tokenizer and chat template and loads
    offline with `AutoModelForImageTextToText` / `AutoProcessor` (and so with `TransformersBackend`); the same
    arguments give byte-identical weights. The tokenizer has the family's special tokens and a chat template of the
    family's structure (`TinyFamily`), so each family's traps (Gemma's folded system turn and template BOS, what
    ends a turn) are there to be tested.

    Args:
        out_dir: target folder (created; files of the same names are overwritten).
        family: `qwen2_5_vl`, `gemma3`, `llava_onevision`, `internvl`, `qwen3_vl` or `smolvlm`.
        seed: seeds the weights (the global torch RNG is left as it was).
        vocab_size: tokenizer target size.
        text_hidden: decoder width (a multiple of 16: 4 heads with an even rotary half).
        num_layers: layers of both towers.

    Returns:
        The output folder.

    Raises:
        InputError: an unknown family.
    """
    from transformers import GenerationConfig

    if family not in FAMILY_TOKENS:
        raise InputError(f"unknown tiny model family {family!r}; use one of {', '.join(FAMILY_TOKENS)}", field="family")
    tokens = FAMILY_TOKENS[family]
    tokenizer = train_tokenizer([*default_corpus(), *tokens.corpus], vocab_size=vocab_size, family=tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _family_model_and_processor(family, tokenizer, text_hidden, num_layers)
    model = model.to(torch.float32).eval()
    # What ends an answer: the family's end-of-turn token as well as its EOS (as the checkpoints' generation configs).
    stops = list(dict.fromkeys([tokenizer.eos_token_id, *_turn_end_ids(family, tokenizer)]))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {"kind": family, "seed": seed, "vocab_size": vocab_size, "random_weights": True}
    (out / "agegender_tiny.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _turn_end_ids(family: str, tokenizer: Any) -> list[int]:
    """The token that closes a turn in the family's template (SmolVLM's is its EOS token too; the caller drops the
    repeat), so that generation stops at the end of the turn as with the checkpoints' generation configs."""
    closing = {
        "qwen2_5_vl": "<|endoftext|>",
        "gemma3": "<end_of_turn>",
        "llava_onevision": "<|endoftext|>",
        "qwen3_vl": "<|endoftext|>",
        "internvl": "<|endoftext|>",
        "smolvlm": "<end_of_utterance>",
    }
    return [tokenizer.convert_tokens_to_ids(closing[family])]
