"""Original LLaVA-1.5 / ShareGPT4V checkpoints -> Hugging Face llava-hf format (`LlavaForConditionalGeneration`).

The paper's ShareGPT4V-7B/13B (and any checkpoint written by the original LLaVA-1.5 training code) exist
only in the original layout: a Llama causal LM with extra `mm_*` config keys, weights named
`model.layers.*`, `model.embed_tokens`, `model.norm`, `lm_head`, the projector `model.mm_projector.0/.2`
(`mlp2x_gelu`: Linear -> GELU -> Linear) and, only in some checkpoints, the CLIP vision tower under
`model.vision_tower.vision_tower.vision_model.*`. The released LLaVA-1.5 and ShareGPT4V checkpoints leave
the tower out: the config's `mm_vision_tower` names a separate CLIP folder (ShareGPT4V:
`Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12`). The original code feeds the image through the
tower, takes `hidden_states[mm_vision_select_layer]` without the CLS token (`patch`), projects it and
splices it into the embeddings where the prompt has `<image>` (the id -200, never embedded).

`convert_llava` writes a folder that `AutoModelForImageTextToText` / `AutoProcessor` load, for the
`transformers` backend, vLLM and the fine-tuning code:

- weights renamed to transformers 5's names (`model.language_model.*`, `model.vision_tower.*`,
  `model.multi_modal_projector.linear_1/2`, `lm_head`); `save_pretrained` writes safetensors;
- the tokenizer with `<image>` (llava-hf's placeholder) and `<pad>` appended after the checkpoint's
  vocabulary (LLaVA pads with `<unk>`); the embedding and lm_head rows of the new tokens are the mean of
  the old rows, so their logit is the mean logit and greedy decoding never picks them;
- a sentencepiece (Metaspace) tokenizer prefixes `▁` to every text chunk between added tokens, as LLaVA's
  chunk-by-chunk tokenization around `<image>` does (`legacy: true`; see `_prefix_every_chunk`);
- `LlavaConfig`: text config from the original Llama fields, vision config from the CLIP folder,
  `vision_feature_layer = mm_vision_select_layer`, strategy `default` for `patch` (`full` for `cls_patch`);
- `LlavaProcessor` with `LlavaImageProcessor` at the CLIP folder's settings, `do_pad` on when the checkpoint
  was trained with `image_aspect_ratio: pad` (LLaVA-1.5's mean-colour pad-to-square), and the vicuna_v1
  chat template (`VICUNA_V1_SYSTEM`, then ``USER: <image>\\n{prompt} ASSISTANT:``);
- `conversion.json`: where every part came from.

Every source tensor must map to a target name and every target weight must be covered: otherwise an
`InputError` lists the keys. The only tensors left out on purpose are buffers that transformers recomputes
(rotary `inv_freq`, CLIP `position_ids`) and the text half of a full CLIP folder (`CLIPModel`), which LLaVA
never uses; their counts are logged and recorded. With `verify=True` the output is loaded back with
`AutoModelForImageTextToText` and every tensor is compared with its source, re-read from disk.

Memory: the converted weights are held once in memory (the model is built on the meta device and takes
the tensors as they are); verification reloads the output and streams the sources shard by shard.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agegender.errors import AgegenderError, InputError
from agegender.mllm.tools.tiny import IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE, VICUNA_SYSTEM

log = logging.getLogger(__name__)

#: the system sentence of LLaVA's `vicuna_v1` conversation (LLaVA-1.5's and ShareGPT4V's evaluation mode)
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_ESCAPED_TINY_SYSTEM = VICUNA_SYSTEM.replace("'", "\\'")
if _ESCAPED_TINY_SYSTEM not in VICUNA_CHAT_TEMPLATE:  # pragma: no cover - guards a change in tiny.py
    raise ImportError("agegender.mllm.tools.tiny.VICUNA_CHAT_TEMPLATE no longer embeds VICUNA_SYSTEM")
#: the vicuna_v1 chat template with vicuna_v1's own system sentence (same turn layout as the tiny models')
VICUNA_V1_CHAT_TEMPLATE = VICUNA_CHAT_TEMPLATE.replace(_ESCAPED_TINY_SYSTEM, VICUNA_V1_SYSTEM.replace("'", "\\'"))

PAD_TOKEN = "<pad>"
#: original-layout model types with a Llama text model (LLaVA-1.5 writes `llava`, ShareGPT4V `share4v`)
SUPPORTED_MODEL_TYPES = ("llava", "llava_llama", "share4v")
SUPPORTED_PROJECTORS = ("mlp2x_gelu",)
#: `model_type`s of the Hugging Face folders that the transformers backend and fine-tuning take: the llava-hf
#: LLaVA-1.5 / LLaVA-NeXT of the paper and today's families, each tested on a tiny model of its own
#: (`agegender.mllm.tools.tiny`, tests/unit/test_mllm_families.py, test_mllm_finetune_families.py)
HF_MODEL_TYPES: tuple[str, ...] = (
    "llava",
    "llava_next",
    "qwen2_5_vl",
    "qwen3_vl",
    "internvl",
    "gemma3",
    "llava_onevision",
    "smolvlm",
)
#: architectures of the original LLaVA / ShareGPT4V code (not loadable by transformers without conversion)
ORIGINAL_LLAVA_ARCHITECTURES: frozenset[str] = frozenset(
    {"LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM", "Share4VLlamaForCausalLM"}
)
_SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
#: the `--dtype` names `agegender convert-llava` takes, and the torch dtype each one means
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

_CKPT_TOWER = "model.vision_tower.vision_tower."
_CKPT_PROJECTOR = "model.mm_projector."
_PROJECTOR_LAYERS = {"0": "linear_1", "2": "linear_2"}  # index 1 is the GELU (no weights)
_LM_PARTS = ("embed_tokens.", "layers.", "norm.")
_HF_TOWER = "model.vision_tower."
_HF_EMBED = "model.language_model.embed_tokens.weight"
_HF_HEAD = "lm_head.weight"
# Buffers some older checkpoints saved; transformers recomputes them (non-persistent), so they carry nothing.
_RECOMPUTED_BUFFERS = (".rotary_emb.inv_freq", "embeddings.position_ids")
# The text half of a full CLIP folder (`CLIPModel`, e.g. openai/clip-vit-large-patch14-336): LLaVA uses the
# vision half only.
_CLIP_TEXT_PARTS = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
# Original config keys that describe the Llama text model (the rest are LLaVA's mm_* and training flags).
_TEXT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "pretraining_tp", "tie_word_embeddings", "rope_theta", "rope_scaling", "rope_parameters",
    "attention_bias", "attention_dropout", "mlp_bias", "bos_token_id", "eos_token_id",
)  # fmt: skip
_IMAGE_PROCESSOR_KEYS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)  # fmt: skip


# ------------------------------------------------------------------------------------------ key mapping


def original_key_to_hf(key: str) -> str | None:
    """The llava-hf (transformers 5) name of an original LLaVA / ShareGPT4V checkpoint key.

    Args:
        key: a key of the original state dict (e.g. `model.layers.0.mlp.up_proj.weight`).

    Returns:
        The in-memory name in `LlavaForConditionalGeneration` (e.g.
        `model.language_model.layers.0.mlp.up_proj.weight`), None for a recomputed buffer (skipped), or
        the key prefixed with `?` when it has no place in LLaVA-1.5 (the caller reports it).
    """
    if key.endswith(_RECOMPUTED_BUFFERS):
        return None
    if key == _HF_HEAD:
        return key
    if key.startswith(_CKPT_TOWER):
        return _HF_TOWER + key[len(_CKPT_TOWER) :].removeprefix("vision_model.")
    if key.startswith(_CKPT_PROJECTOR):
        index, _, param = key[len(_CKPT_PROJECTOR) :].partition(".")
        if index in _PROJECTOR_LAYERS and param in ("weight", "bias"):
            return f"model.multi_modal_projector.{_PROJECTOR_LAYERS[index]}.{param}"
        return "?" + key
    if key.startswith("model.") and key[len("model.") :].startswith(_LM_PARTS):
        return "model.language_model." + key[len("model.") :]
    return "?" + key


def clip_key_to_hf(key: str) -> str | None:
    """The llava-hf name of a key of a CLIP folder (`CLIPVisionModel` or full `CLIPModel`, any transformers).

    Args:
        key: e.g. `vision_model.encoder.layers.0.mlp.fc1.weight` (transformers 4) or
            `encoder.layers.0.mlp.fc1.weight` (a `CLIPVisionModel` saved by transformers 5).

    Returns:
        `model.vision_tower.<...>`, or None for recomputed buffers and the text half of a full CLIP model.
    """
    if key.endswith(_RECOMPUTED_BUFFERS) or key.startswith(_CLIP_TEXT_PARTS):
        return None
    return _HF_TOWER + key.removeprefix("vision_model.")


# ------------------------------------------------------------------------------------- weight files


@dataclass
class WeightFiles:
    """The weight files of a folder and which file holds each key.

    Attributes:
        folder: the folder.
        key_file: source key -> file that holds it.
    """

    folder: Path
    key_file: dict[str, Path] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        """The files, in name order (shard order)."""
        return sorted(set(self.key_file.values()))


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        # mmap: a shard of several GB is paged in as tensors are copied, not read twice
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle, zip and weights-only errors all mean "not a readable state dict"
        raise InputError(f"cannot read the weights file: {type(exc).__name__}: {exc}", file=path) from exc


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as fh:
            return list(fh.keys())
    except Exception as exc:  # safetensors raises its own error type for a bad header
        raise InputError(f"not a readable safetensors file: {exc}", file=path) from exc


def list_weights(folder: str | Path) -> WeightFiles:
    """Find the weight files of a model folder and the key -> file map, without loading tensors where possible.

    Looks for, in order: `model.safetensors.index.json`, `*.safetensors`, `pytorch_model.bin.index.json`,
    `*.bin` (training state such as `optimizer.bin` or `training_args.bin` is ignored).

    Args:
        folder: a model folder.

    Returns:
        The files and key map.

    Raises:
        InputError: no weights, an index naming a missing file, or a key stored twice.
    """
    folder = Path(folder)
    result = WeightFiles(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError("not a weights index (no 'weight_map')", file=index, field="weight_map") from exc
            for key, name in weight_map.items():
                path = folder / name
                if not path.is_file():
                    raise InputError(f"the index names {name}, which is missing", file=index, field=key)
                result.key_file[key] = path
            return result
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        files = [p for p in sorted(folder.glob("*.bin")) if not p.name.startswith(("training_args", "optimizer"))]
    if not files:
        raise InputError("no weights found (*.safetensors or pytorch_model*.bin)", file=folder)
    for path in files:
        keys = _safetensors_keys(path) if path.suffix == ".safetensors" else list(_load_file(path))
        for key in keys:
            if key in result.key_file:
                raise InputError(f"key stored twice (also in {result.key_file[key].name})", file=path, field=key)
            result.key_file[key] = path
    return result


def _iter_shards(weights: WeightFiles, desc: str, progress: bool) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    from tqdm.auto import tqdm

    files = weights.files
    for i, path in enumerate(tqdm(files, desc=desc, unit="shard", disable=not progress), start=1):
        log.info("%s: shard %d/%d %s", desc, i, len(files), path.name)
        tensors = _load_file(path)
        yield path, {k: v for k, v in tensors.items() if weights.key_file.get(k) == path}


# ------------------------------------------------------------------------------------------- configs


def read_original_config(src: str | Path) -> dict[str, Any]:
    """Read and check the config.json of an original-layout LLaVA-1.5 / ShareGPT4V checkpoint.

    Args:
        src: the checkpoint folder.

    Returns:
        The config as a dict.

    Raises:
        InputError: not an original-layout checkpoint, or one this converter does not support (names the field).
    """
    path = Path(src) / "config.json"
    if not path.is_file():
        raise InputError("no config.json: not a model folder", file=Path(src))
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"not valid JSON: {exc}", file=path) from exc
    if "text_config" in config and "vision_config" in config:
        raise InputError("already in Hugging Face llava-hf format (has text_config/vision_config)", file=path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"model_type {model_type!r} is not an original LLaVA-1.5 / ShareGPT4V checkpoint with a Llama text model "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})",
            file=path,
            field="model_type",
        )
    projector = config.get("mm_projector_type", "linear")
    if projector not in SUPPORTED_PROJECTORS:
        raise InputError(
            f"projector type {projector!r} is not supported: llava-hf's LlavaForConditionalGeneration has the "
            f"two-layer MLP projector only ({', '.join(SUPPORTED_PROJECTORS)})",
            file=path,
            field="mm_projector_type",
        )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in _SELECT_STRATEGY:
        raise InputError(
            f"unknown mm_vision_select_feature {feature!r} (use {', '.join(_SELECT_STRATEGY)})",
            file=path,
            field="mm_vision_select_feature",
        )
    if config.get("mm_use_im_start_end"):
        raise InputError(
            "mm_use_im_start_end is true: the image is wrapped in <im_start>/<im_end> tokens, which llava-hf's "
            "processor does not insert; such checkpoints cannot be converted faithfully",
            file=path,
            field="mm_use_im_start_end",
        )
    aspect = config.get("image_aspect_ratio", "square")
    if aspect not in ("pad", "square", None):
        raise InputError(
            f"image_aspect_ratio {aspect!r} (e.g. LLaVA-NeXT's any-res) is not LLaVA-1.5's preprocessing",
            file=path,
            field="image_aspect_ratio",
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "mm_hidden_size"):
        if not isinstance(config.get(key), int):
            raise InputError(f"missing or not an integer: {key}", file=path, field=key)
    return config


def check_model_folder(folder: Path) -> list[str]:
    """Check that a folder is a Hugging Face model of a family the transformers / vllm backends can load.

    The pre-flight check of `agegender check` for `query_mllms` models and `finetune_mllm.base_model`: it lives
    beside the converter because the commonest problem it finds, a folder in the original layout, is what
    `convert_llava` fixes. Only names and small JSON files are read.

    Args:
        folder: the model folder.

    Returns:
        One line per problem: config.json missing or invalid, the original LLaVA / ShareGPT4V layout (convert it
        with `agegender convert-llava`), an unsupported `model_type`, missing weights or shards, no tokenizer,
        no image processor.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        return [f"no config.json in {folder}: not a Hugging Face model folder"]
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{config_path} is not valid JSON ({exc})"]
    if not isinstance(config, dict):
        return [f"{config_path} holds a {type(config).__name__}, not a JSON object"]
    architectures = config.get("architectures") or []
    if "mm_vision_tower" in config or ORIGINAL_LLAVA_ARCHITECTURES & set(architectures):
        return [
            f"{folder} is in the original LLaVA / ShareGPT4V layout (architectures {architectures}), which "
            "transformers cannot load: convert it to the llava-hf layout with `agegender convert-llava` and point "
            "the params at the converted folder"
        ]
    problems = []
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        problems.append(
            f"model_type {model_type!r} in {config_path} is not supported; supported: "
            f"{', '.join(HF_MODEL_TYPES)} (in the Hugging Face layout: llava-hf's LLaVAs, InternVL's -hf release)"
        )
    indexes = sorted(folder.glob("*.index.json"))
    if indexes:
        for index in indexes:
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{index} is not a weights index with a weight_map ({type(exc).__name__}: {exc})")
                continue
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                problems.append(
                    f"{len(missing)} of {len(shards)} weight shards listed in {index.name} are missing "
                    f"(first: {', '.join(missing[:5])})"
                )
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        problems.append(f"no weights in {folder} (*.safetensors, an index json with its shards, or pytorch_model*.bin)")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        problems.append(f"no tokenizer in {folder} (tokenizer.json or tokenizer.model)")
    if not (folder / "preprocessor_config.json").is_file() and not (folder / "processor_config.json").is_file():
        problems.append(f"no image processor in {folder} (preprocessor_config.json or processor_config.json)")
    return problems


def _text_config(original: dict[str, Any], *, vocab_size: int, pad_id: int | None, bos: Any, eos: Any) -> Any:
    from transformers import LlamaConfig

    kwargs = {k: original[k] for k in _TEXT_CONFIG_KEYS if k in original}
    kwargs.update(vocab_size=vocab_size, pad_token_id=pad_id, tie_word_embeddings=False)
    if bos is not None:
        kwargs["bos_token_id"] = bos
    if eos is not None:
        kwargs["eos_token_id"] = eos
    return LlamaConfig(**kwargs)


def _vision_config(folder: Path) -> Any:
    from transformers import AutoConfig, CLIPVisionConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read the vision tower's config: {exc}", file=folder / "config.json") from exc
    vision = getattr(config, "vision_config", config)  # CLIPConfig holds one, CLIPVisionConfig is one
    if not isinstance(vision, CLIPVisionConfig):
        raise InputError(
            f"not a CLIP vision tower (config is {type(config).__name__}); LLaVA-1.5 / ShareGPT4V use CLIP ViT",
            file=folder / "config.json",
            field="model_type",
        )
    return vision


def _image_processor(folder: Path | None, vision: Any, do_pad: bool) -> Any:
    from transformers import LlavaImageProcessor

    size = int(vision.image_size)
    settings: dict[str, Any] = {
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
    }
    path = None if folder is None else folder / "preprocessor_config.json"
    if path is not None and path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"not valid JSON: {exc}", file=path) from exc
        settings.update({k: found[k] for k in _IMAGE_PROCESSOR_KEYS if k in found})
        for key in ("size", "crop_size"):  # transformers 4 wrote plain ints for CLIP
            if isinstance(settings[key], int):
                n = settings[key]
                settings[key] = {"shortest_edge": n} if key == "size" else {"height": n, "width": n}
    else:
        log.warning("no preprocessor_config.json for the vision tower: CLIP defaults at %d px", size)
    return LlavaImageProcessor(do_pad=do_pad, **settings)


# ----------------------------------------------------------------------------------------- the tower


def _local_folder(name: Any) -> Path | None:
    """The local folder of `mm_vision_tower` (a path or a hub id already in the HF cache), or None."""
    if not isinstance(name, str) or not name:
        return None
    from agegender.mllm.backends.transformers_backend import find_model_folder

    try:
        folder = find_model_folder(name, local_files_only=True)
    except InputError:
        return None
    return folder if folder is not None and (folder / "config.json").is_file() else None


@dataclass
class _TowerPlan:
    config_folder: Path  # CLIP config and preprocessor settings
    weights: WeightFiles | None  # None: the tower's weights come from the checkpoint
    source: str  # for the log and conversion.json


def _plan_tower(src: Path, original: dict[str, Any], ckpt: WeightFiles, vision_tower: Path | None) -> _TowerPlan:
    in_ckpt = any(k.startswith(_CKPT_TOWER) for k in ckpt.key_file)
    named = original.get("mm_vision_tower")
    if vision_tower is not None:
        folder = Path(vision_tower)
        if not (folder / "config.json").is_file():
            raise InputError("the vision tower folder has no config.json (expected a CLIP folder)", file=folder)
        return _TowerPlan(folder, list_weights(folder), f"folder {folder}")
    local = _local_folder(named)
    if in_ckpt:
        if local is None:
            raise InputError(
                f"the checkpoint holds the vision tower's weights, but its config (mm_vision_tower={named!r}) is not "
                "a local folder or in the Hugging Face cache: pass --vision-tower DIR (the CLIP folder; its config "
                "and image settings are used, and its weights must equal the checkpoint's)",
                file=src / "config.json",
                field="mm_vision_tower",
            )
        return _TowerPlan(local, None, f"checkpoint (config from {local})")
    if local is None:
        raise InputError(
            f"no vision tower: the checkpoint holds no {_CKPT_TOWER}* weights and mm_vision_tower={named!r} is not a "
            "local folder or in the Hugging Face cache. Pass --vision-tower DIR (a CLIP vision folder, for "
            "ShareGPT4V-7B: Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12), or use a checkpoint that holds "
            "the tower's weights",
            file=src,
            field="mm_vision_tower",
        )
    return _TowerPlan(local, list_weights(local), f"folder {local} (mm_vision_tower)")


# ------------------------------------------------------------------------------------------ tokenizer


def _load_tokenizer(src: Path) -> Any:
    import importlib.util

    from transformers import AutoTokenizer

    # Without sentencepiece, transformers falls back to other readers and fails with an unrelated message.
    sentencepiece_only = (src / "tokenizer.model").is_file() and not (src / "tokenizer.json").is_file()
    if sentencepiece_only and importlib.util.find_spec("sentencepiece") is None:
        raise InputError(
            "the tokenizer is a sentencepiece file (tokenizer.model, as in the original LLaVA / ShareGPT4V "
            "releases); reading it needs the sentencepiece package: pip install sentencepiece protobuf",
            file=src / "tokenizer.model",
            field="tokenizer",
        )
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=True)
    except ImportError as exc:
        raise InputError(
            f"reading this tokenizer needs a package that is not installed ({exc}); the original LLaVA tokenizers "
            "are sentencepiece files: pip install sentencepiece protobuf",
            file=src,
            field="tokenizer",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot load the tokenizer: {exc}", file=src, field="tokenizer") from exc


def _extend_tokenizer(tokenizer: Any, original: dict[str, Any], rows: int, src: Path) -> dict[str, int]:
    """Add `<image>` and a pad token after the checkpoint's rows; returns the added tokens and their ids."""
    from transformers import AddedToken

    if len(tokenizer) == rows - 1 and original.get("mm_use_im_patch_token", True):
        # The original loaders add <im_patch> whenever the config does not say false (ShareGPT4V's default).
        tokenizer.add_tokens([AddedToken("<im_patch>", special=True, normalized=False)], special_tokens=True)
    if len(tokenizer) != rows:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the checkpoint's embeddings have {rows} rows",
            file=src,
            field="tokenizer",
        )
    added: dict[str, int] = {}
    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN in vocab:
        raise InputError(
            f"the tokenizer already has {IMAGE_TOKEN!r} (id {vocab[IMAGE_TOKEN]}): original LLaVA checkpoints mark "
            "the image with the id -200 and have no such token; is this folder already converted?",
            file=src,
            field="tokenizer",
        )
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    added[IMAGE_TOKEN] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pad = tokenizer.pad_token_id
    # LLaVA pads with <unk> (or nothing); llava-hf has a pad token of its own.
    if pad is None or pad in (tokenizer.unk_token_id, tokenizer.eos_token_id):
        if PAD_TOKEN in tokenizer.get_vocab():
            tokenizer.pad_token = PAD_TOKEN
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
            added[PAD_TOKEN] = tokenizer.pad_token_id
    tokenizer.padding_side = "left"  # generation; the backend sets it too
    tokenizer.chat_template = VICUNA_V1_CHAT_TEMPLATE
    return added


def _prefix_every_chunk(tokenizer: Any) -> bool:
    """Make a sentencepiece-style tokenizer give every text chunk between added tokens its own `▁` prefix.

    LLaVA's `tokenizer_image_token` splits the prompt at `<image>` and tokenizes each chunk on its own, so
    sentencepiece adds its dummy prefix to the chunk after the image: ``<image>\\n`` is `-200, ▁, <0x0A>` (LLaMA's
    `-200, 29871, 13`). A Llama tokenizer with `legacy: false` (vicuna-v1.5's, hence LLaVA-1.5's and
    ShareGPT4V's config) prefixes only the start of the text and would drop that `▁`: the converted model would
    see a prompt it was never trained on. Metaspace's `always` scheme is exactly the per-chunk behaviour;
    `legacy` is recorded too, because transformers 5 rebuilds a `LlamaTokenizer`'s pre-tokenizer from it on load.

    Returns:
        True when the tokenizer was a Metaspace (sentencepiece) one and now prefixes every chunk.
    """
    from tokenizers.pre_tokenizers import Metaspace

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = None if backend is None else backend.pre_tokenizer
    if not isinstance(pre, Metaspace) or pre.prepend_scheme == "never":
        return False  # byte-level BPE and the like: chunking changes nothing
    pre.prepend_scheme = "always"
    backend.pre_tokenizer = pre  # the property hands out a copy of the settings
    tokenizer.legacy = True
    tokenizer.init_kwargs["legacy"] = True  # LlamaTokenizer consumes `legacy`; without this it is not saved
    return True


def _mean_extended(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` with rows appended up to `rows`, each the mean of the existing rows (computed in float32)."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(extra, -1)], dim=0)


# ------------------------------------------------------------------------------------------ conversion


def _resolve_dtype(dtype: str) -> torch.dtype | None:
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}", field="dtype")
    return DTYPES[dtype]


def _plan_keys(
    ckpt: WeightFiles, tower: _TowerPlan, expected: set[str], *, tied: bool
) -> tuple[dict[str, str], dict[str, str], int]:
    """Map every source key; returns (checkpoint key -> target, tower-folder key -> target, skipped count).

    `tied`: the original ties lm_head to the embeddings, so a missing lm_head is taken from them.

    Raises:
        InputError: keys with no place in the model, or model weights that no source provides.
    """
    unknown: list[str] = []
    ckpt_map: dict[str, str] = {}
    tower_map: dict[str, str] = {}
    skipped = 0
    for key in ckpt.key_file:
        target = original_key_to_hf(key)
        if target is None:
            skipped += 1
        elif target not in expected:
            unknown.append(key)
        else:
            ckpt_map[key] = target
    if tower.weights is not None:
        for key in tower.weights.key_file:
            target = clip_key_to_hf(key)
            if target is None:
                skipped += 1
            elif target not in expected:
                unknown.append(f"{key} (in {tower.config_folder})")
            else:
                tower_map[key] = target
    if unknown:
        raise InputError(
            f"{len(unknown)} source weights have no place in LLaVA-1.5 (wrong layer count or an unsupported "
            f"architecture?): {', '.join(sorted(unknown)[:20])}" + (" ..." if len(unknown) > 20 else ""),
            file=ckpt.folder,
        )
    # With a tower folder, the checkpoint's own tower tensors (if any) are only compared with it.
    from_ckpt = {t for t in ckpt_map.values() if tower.weights is None or not t.startswith(_HF_TOWER)}
    covered = from_ckpt | set(tower_map.values())
    if tied:
        covered.add(_HF_HEAD)
    missing = sorted(expected - covered)
    if missing:
        raise InputError(
            f"{len(missing)} model weights are missing from the sources: {', '.join(missing[:20])}"
            + (" ..." if len(missing) > 20 else ""),
            file=ckpt.folder,
        )
    return ckpt_map, tower_map, skipped


def _prepare_out(out: Path, src: Path, overwrite: bool) -> None:
    if out.resolve() == src.resolve():
        raise InputError("the output folder is the source folder", file=out)
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder", file=out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError("the output folder is not empty (use overwrite / --overwrite)", file=out)
        # Stale shards of an earlier conversion would be picked up next to the new ones.
        for stale in [*out.glob("model*.safetensors"), out / "model.safetensors.index.json"]:
            stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def convert_llava(
    src: str | Path,
    out: str | Path,
    *,
    vision_tower: str | Path | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """Convert an original LLaVA-1.5 / ShareGPT4V checkpoint folder to a llava-hf folder (see module docs).

    Args:
        src: the original folder: config.json (`mm_*` keys), safetensors or `pytorch_model*.bin` shards (with
            their index), the Llama tokenizer.
        out: the output folder (created; must be empty unless `overwrite`).
        vision_tower: a CLIP folder (`CLIPVisionModel` or `CLIPModel`, e.g. ShareGPT4V's
            `Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12`) whose config, image settings and weights
            are used. None: the tower's weights come from the checkpoint when it holds them, else from the
            folder named by `mm_vision_tower` when that is a local path or in the Hugging Face cache.
        dtype: `auto` (the checkpoint's own: its config's `torch_dtype`, else its tensors' dtype, e.g. float16),
            `bfloat16`, `float16` or `float32`.
        overwrite: write into a non-empty output folder.
        verify: reload the output with `AutoModelForImageTextToText` and compare every tensor with its source.
        progress: show a progress bar over the shards.

    Returns:
        The output folder.

    Raises:
        InputError: unsupported checkpoint, unmapped or missing keys, shape mismatches, no vision tower, a
            tower given twice with different weights, a tokenizer that does not fit the embeddings.
        AgegenderError: verification found a tensor that differs from its source.
    """
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    src, out = Path(src), Path(out)
    target_dtype = _resolve_dtype(dtype)
    original = read_original_config(src)
    if target_dtype is None:  # `auto`: what the checkpoint was saved in, as its config says
        target_dtype = DTYPES.get(str(original.get("torch_dtype") or original.get("dtype")))
    ckpt = list_weights(src)
    tower = _plan_tower(src, original, ckpt, None if vision_tower is None else Path(vision_tower))
    vision = _vision_config(tower.config_folder)
    if vision.hidden_size != original["mm_hidden_size"]:
        raise InputError(
            f"mm_hidden_size {original['mm_hidden_size']} does not match the vision tower's hidden_size "
            f"{vision.hidden_size} ({tower.config_folder})",
            file=src / "config.json",
            field="mm_hidden_size",
        )
    select_layer = int(original.get("mm_vision_select_layer", -2))
    strategy = _SELECT_STRATEGY[original.get("mm_vision_select_feature", "patch")]
    n_patches = (vision.image_size // vision.patch_size) ** 2

    def llava_config(text: Any, image_token_id: int) -> Any:
        return LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token_id,
            projector_hidden_act="gelu",  # mlp2x_gelu: nn.GELU(), the exact (erf) GELU
            multimodal_projector_bias=True,
            vision_feature_layer=select_layer,
            vision_feature_select_strategy=strategy,
            image_seq_length=n_patches if strategy == "default" else n_patches + 1,
            tie_word_embeddings=False,
        )

    # The names and shapes the model expects, from a weightless model of the checkpoint's own vocabulary.
    probe_text = _text_config(original, vocab_size=original["vocab_size"], pad_id=None, bos=None, eos=None)
    with torch.device("meta"):
        probe = LlavaForConditionalGeneration(llava_config(probe_text, 0))
    shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    del probe
    ckpt_map, tower_map, skipped = _plan_keys(ckpt, tower, set(shapes), tied=bool(original.get("tie_word_embeddings")))
    if skipped:
        log.info("%d recomputed buffers / CLIP text-tower tensors left out", skipped)

    # The tokenizer before the weights: its errors come before gigabytes are read. The embeddings' row count
    # is the config's vocab_size (the shape check below holds the weights to it).
    rows = int(original["vocab_size"])
    tokenizer = _load_tokenizer(src)
    added = _extend_tokenizer(tokenizer, original, rows, src)
    prefix_every_chunk = _prefix_every_chunk(tokenizer)
    _prepare_out(out, src, overwrite)
    log.info("converting %s -> %s (vision tower: %s)", src, out, tower.source)
    state: dict[str, torch.Tensor] = {}
    ckpt_tower: dict[str, torch.Tensor] = {}
    for _, tensors in _iter_shards(ckpt, "checkpoint", progress):
        for key, tensor in tensors.items():
            target = ckpt_map.get(key)
            if target is None:
                continue
            if target_dtype is None:  # `auto` and no dtype in the config: the tensors' own
                target_dtype = tensor.dtype
            if tower.weights is not None and target.startswith(_HF_TOWER):
                ckpt_tower[target] = tensor  # compared with the folder's below
                continue
            # cast as they come: peak memory stays near one copy of the model plus one shard
            state[target] = tensor.to(target_dtype)
        del tensors
    assert target_dtype is not None  # the checkpoint has weights (checked above)
    if tower.weights is not None:
        for _, tensors in _iter_shards(tower.weights, "vision tower", progress):
            for key, tensor in tensors.items():
                if key in tower_map:
                    state[tower_map[key]] = tensor.to(target_dtype)
        differing = [k for k, v in ckpt_tower.items() if not torch.equal(v.to(target_dtype), state[k])]
        if differing:
            raise InputError(
                f"the checkpoint holds a vision tower whose weights differ from the vision tower folder's "
                f"({len(differing)} tensors, e.g. {differing[0]}): leave out --vision-tower to use the checkpoint's",
                file=src,
                field="vision_tower",
            )
        if ckpt_tower:
            log.info("the checkpoint's own vision tower equals the folder's (%d tensors)", len(ckpt_tower))
    ckpt_tower.clear()
    if _HF_HEAD not in state and original.get("tie_word_embeddings"):
        state[_HF_HEAD] = state[_HF_EMBED].clone()
    bad = [f"{k}: {tuple(v.shape)} != {shapes[k]}" for k, v in state.items() if tuple(v.shape) != shapes[k]]
    if bad:
        raise InputError(f"shape mismatch with the config: {'; '.join(bad[:10])}", file=src)

    vocab_size = len(tokenizer)
    for key in (_HF_EMBED, _HF_HEAD):
        state[key] = _mean_extended(state[key], vocab_size)
    text = _text_config(
        original,
        vocab_size=vocab_size,
        pad_id=tokenizer.pad_token_id,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = llava_config(text, image_token_id)
    config.dtype = target_dtype
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    del model
    state.clear()
    gc.collect()

    do_pad = original.get("image_aspect_ratio") == "pad"
    processor = LlavaProcessor(
        image_processor=_image_processor(tower.config_folder, vision, do_pad),
        tokenizer=tokenizer,
        patch_size=int(vision.patch_size),
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=VICUNA_V1_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(out)
    record = {
        "source": str(src),
        "source_model_type": original.get("model_type"),
        "mm_vision_tower": original.get("mm_vision_tower"),
        "vision_tower": tower.source,
        "dtype": str(target_dtype).removeprefix("torch."),
        "original_vocab_rows": rows,
        "added_tokens": added,
        "new_rows_init": "mean of the original rows",
        "prefix_every_chunk": prefix_every_chunk,
        "image_token_index": image_token_id,
        "vision_feature_layer": select_layer,
        "vision_feature_select_strategy": strategy,
        "do_pad": do_pad,
        "left_out_tensors": skipped,
        "verified": False,
        "transformers": __import__("transformers").__version__,
    }
    if verify:
        record["verified_tensors"] = verify_conversion(out, src, vision_tower=vision_tower, progress=progress)
        record["verified"] = True
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s", out)
    return out


def verify_conversion(
    out: str | Path, src: str | Path, *, vision_tower: str | Path | None = None, progress: bool = True
) -> int:
    """Reload a converted folder and compare every tensor with its source, re-read from disk.

    Every weight of the reloaded model must come from a source (a weight that transformers had to
    initialise is an error), original rows of the embeddings and lm_head must equal the checkpoint's, and
    the appended rows must equal the mean of the original rows.

    Args:
        out: the converted folder.
        src: the original checkpoint folder.
        vision_tower: the CLIP folder given to `convert_llava`, if any.
        progress: show a progress bar over the shards.

    Returns:
        The number of tensors compared.

    Raises:
        AgegenderError: a tensor differs, or a model weight has no source.
    """
    from transformers import AutoModelForImageTextToText

    out, src = Path(out), Path(src)
    original = read_original_config(src)
    ckpt = list_weights(src)
    tower = _plan_tower(src, original, ckpt, None if vision_tower is None else Path(vision_tower))
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True, dtype="auto")
    loaded = model.state_dict()
    dtype = loaded[_HF_EMBED].dtype
    checked: set[str] = set()
    differing: list[str] = []

    def compare(target: str, tensor: torch.Tensor) -> None:
        got = loaded[target]
        tensor = tensor.to(dtype)
        if target in (_HF_EMBED, _HF_HEAD):
            n = tensor.shape[0]
            ok = torch.equal(got[:n], tensor) and torch.equal(got[n:], _mean_extended(tensor, got.shape[0])[n:])
        else:
            ok = tuple(got.shape) == tuple(tensor.shape) and torch.equal(got, tensor)
        if not ok:
            differing.append(target)
        checked.add(target)

    for _, tensors in _iter_shards(ckpt, "verify checkpoint", progress):
        for key, tensor in tensors.items():
            target = original_key_to_hf(key)
            if target is None or (tower.weights is not None and target.startswith(_HF_TOWER)):
                continue
            if target not in loaded:
                differing.append(f"{key} (no {target} in the output)")
                continue
            compare(target, tensor)
    if tower.weights is not None:
        for _, tensors in _iter_shards(tower.weights, "verify vision tower", progress):
            for key, tensor in tensors.items():
                target = clip_key_to_hf(key)
                if target is not None:
                    compare(target, tensor)
    if _HF_HEAD not in checked and original.get("tie_word_embeddings") and _HF_EMBED in checked:
        checked.add(_HF_HEAD)
    unsourced = sorted(set(loaded) - checked)
    if differing or unsourced:
        raise AgegenderError(
            f"verification of {out} failed: {len(differing)} tensors differ from their source "
            f"({', '.join(differing[:10])}); {len(unsourced)} weights have no source ({', '.join(unsourced[:10])})"
        )
    log.info("verified %d tensors against the sources", len(checked))
    return len(checked)
