"""Local image-text-to-text models in Hugging Face format (LLaVA-1.5 and -NeXT, Qwen-VL, Gemma 3, InternVL, OneVision),
run with transformers.

Each query becomes one user turn of the model's own chat template (the image, then the prompt), is
preprocessed by the model's processor and answered greedily. Queries are batched with LEFT padding:
`generate` derives position ids from the attention mask, so a padded row sees exactly the positions and
keys it would see alone, and batched answers equal batch-size-1 answers (tested on tiny models, fp32 CPU).

LLaVA-1.5 preprocessing: the original code pads every image to a square with the CLIP mean colour
before resizing to 336 (`expand2square`). The paper does not mention it (section 4.2: "the original 336x336
resolution"); it comes from LLaVA-1.5's code, whose evaluation and training the paper's ShareGPT4V and fine-tuning
ran on (section 4.3). The llava-hf processors default to a plain
resize + centre crop, which cuts off the top and bottom of a tall body crop. With `pad_to_square` (the
default for `model_type == "llava"`) the backend switches the image processor's own `do_pad` on where it
has LLaVA's `pad_to_square` (`LlavaImageProcessor`), and otherwise pads with the mean colour itself before
the processor (`CLIPImageProcessor`), both placing the image at ((S - w) // 2, (S - h) // 2) like
`expand2square`. LLaVA-NeXT's any-res tiling is the processor's own.

Model revision (part of the response store's key): the commit hash when the folder is a Hugging Face
hub snapshot (`.../snapshots/<40 hex>/`); otherwise `local-` + 16 hex of a SHA-256 over the name, size and full
SHA-256 of every top-level weights file and of every file that defines what the model sees and says (configs,
processor, tokenizer, chat template). Every byte of the weights counts: a model retrained into the same folder
keeps its file sizes and safetensors headers, and a partly frozen or LoRA fine-tune may keep the first and last
megabytes of every shard, so any sampled digest would serve the old model's answers for the new one. Hashing a
7B model (~15 GB) reads it once (~10 s at 1.6 GB/s); the digests are then cached per file by its identity
(`agegender.fingerprint.file_sha256`), so later runs and checkpoint selection do not read it again. Training
bookkeeping (optimizer, scheduler, RNG state, `trainer_state.json`) is left out. The option
`model_revision="..."` overrides it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from agegender.device import resolve_device
from agegender.errors import InputError
from agegender.fingerprint import file_sha256
from agegender.mllm.backend_options import TransformersOptions
from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query, register_backend

_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: other top-level files that change answers: config, generation config, processor, tokenizer, chat template
_DEFINITION_SUFFIXES = (".json", ".jinja", ".model", ".txt")
#: image processors whose `do_pad` is LLaVA-1.5's pad-to-square (`expand2square`)
_SQUARE_PADDING_PROCESSORS = frozenset({"LlavaImageProcessor", "LlavaImageProcessorPil"})
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on CUDA, float32 elsewhere (CPU bf16 is slow and not bit-stable across batch sizes).

    Raises:
        InputError: unknown dtype name.
    """
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}", field="dtype")
    return _DTYPES[dtype]


_TRAINING_STATE_PREFIXES = ("optimizer", "scheduler", "rng_state", "scaler", "training_args", "trainer_state")


def _revision_files(folder: Path) -> list[Path]:
    """The top-level files whose contents make a folder's revision (module docstring), sorted by name."""
    out = []
    for p in folder.iterdir():
        name = p.name
        if name.startswith(".") or not p.is_file() or name.startswith(_TRAINING_STATE_PREFIXES):
            continue
        if name.endswith(_WEIGHT_SUFFIXES) or (
            name.endswith(_DEFINITION_SUFFIXES) and not name.endswith("_results.json") and not name.startswith("README")
        ):
            out.append(p)
    return sorted(out, key=lambda p: p.name)


def folder_revision(folder: str | Path) -> str:
    """The revision of a model folder: hub commit hash, or a digest of every byte of its weights and definition.

    Args:
        folder: a local model folder (a hub snapshot or any save_pretrained output).

    Returns:
        A 40-hex commit hash, or `local-<16 hex>` (see the module docstring for what it covers and costs).

    Raises:
        InputError: the folder or one of its files cannot be read.
    """
    path = Path(folder).resolve()
    # A snapshot folder's files are symlinks into blobs/, so the resolved folder path still names the commit.
    match = _SNAPSHOT.search(Path(folder).absolute().as_posix() + "/") or _SNAPSHOT.search(path.as_posix() + "/")
    if match:
        return match.group(1)
    digest = hashlib.sha256()
    try:
        for p in _revision_files(path):
            digest.update(f"{p.name}\0{p.stat().st_size}\0{file_sha256(p)}\n".encode())
    except OSError as exc:
        raise InputError(f"cannot read the model folder to fingerprint it ({exc})", file=path) from exc
    return "local-" + digest.hexdigest()[:16]


def is_hub_id(model: str) -> bool:
    """Whether a model name reads as a Hugging Face hub id (`owner/name`) rather than a path."""
    return not model.startswith((".", "/", "~")) and model.count("/") == 1


def cached_snapshot(model: str) -> Path | None:
    """The folder of a hub id's snapshot in the local Hugging Face cache, or None; never downloads.

    For callers that report a missing model themselves (`agegender check`, the stages' fingerprints).
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # several hub error types (and a missing package) all mean "not available here"
        return None


def find_model_folder(model: str, *, local_files_only: bool = True) -> Path | None:
    """The local folder of a model: the folder itself, or the cached hub snapshot of a hub id.

    Args:
        model: a folder path or a hub id (`owner/name`).
        local_files_only: when False, a hub id that is not cached gives None (from_pretrained may then
            download it); when True it is an error.

    Returns:
        The folder, or None (hub id not cached, downloads allowed).

    Raises:
        InputError: a path that does not exist, or a hub id that is not cached while downloads are off.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not is_hub_id(model):
        raise InputError("model folder not found (expected a folder with config.json)", file=model)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as exc:  # several hub error types mean "not cached"
        if local_files_only:
            raise InputError(
                f"not a folder and not in the Hugging Face cache ({type(exc).__name__}); download it first or "
                "allow downloads (local_files_only=False)",
                file=model,
            ) from exc
        return None


def chat_prompt(processor: Any, prompt: str, system: str | None = None) -> str:
    """The model's chat template applied to one user turn (the image, then `prompt`) + the generation prompt.

    Args:
        processor: a transformers processor (its chat template, else its tokenizer's, is used).
        prompt: the text prompt.
        system: an optional system turn before it. The llava-hf LLaVA-1.5 template has no system sentence
            of its own; passing `agegender.mllm.tools.tiny.VICUNA_SYSTEM` restores the original vicuna_v1 text.

    Returns:
        The prompt text with the model's image placeholder, ready for the processor.

    Raises:
        InputError: the model has no chat template.
    """
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if system:
        conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    raise InputError("the model has no chat template (processor or tokenizer)", field="chat_template")


def square_pad_color(processor: Any) -> tuple[int, int, int]:
    """LLaVA's padding colour: the image processor's mean, times 255, truncated (as `expand2square` is called)."""
    ip = getattr(processor, "image_processor", None)
    mean = getattr(ip, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
    if isinstance(mean, int | float):
        mean = (mean, mean, mean)
    return tuple(int(x * 255) for x in mean)  # type: ignore[return-value]


def pad_to_square(image: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """LLaVA's `expand2square`: paste the image centred on a square of `color` (side = the longer side).

    Args:
        image: RGB uint8 (H, W, 3).
        color: RGB fill, 0-255.

    Returns:
        The square image (the input itself when already square).
    """
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[...] = np.asarray(color, dtype=np.uint8)
    y, x = (side - h) // 2, (side - w) // 2
    out[y : y + h, x : x + w] = image
    return out


def set_grid_pinpoints(
    hf_model: Any, processor: Any, pinpoints: Sequence[Sequence[int]] | None, source: str
) -> tuple[tuple[int, int], ...] | None:
    """Restrict a LLaVA-NeXT's any-res tiling to `pinpoints` (`TransformersOptions.image_grid_pinpoints`).

    Both readers of the grid get it: the image processor, which picks the resolution and cuts the tiles (and with
    which the processor counts the image tokens), and the model config, from which the model regroups the tiles'
    features. Each side must be a multiple of the vision tower's tile: the model splits the resolution into
    `side // tile` tiles, so 448 with a 336 tile makes the processor cut more tiles than the model expects.

    Returns:
        The grid as set, or None (nothing set: the checkpoint's grid).

    Raises:
        InputError: `image_grid_pinpoints`, for a model without an any-res grid or a side that is no multiple of
            the tile.
    """
    if pinpoints is None:
        return None
    field = "image_grid_pinpoints"
    config = hf_model.config
    image_processor = getattr(processor, "image_processor", None)
    if getattr(config, field, None) is None or not hasattr(image_processor, field):
        model_type = getattr(config, "model_type", "?")
        raise InputError(f"the {model_type} model has no any-res grid to restrict", file=source, field=field)
    tile = int(config.vision_config.image_size)
    grid = tuple((int(h), int(w)) for h, w in pinpoints)
    bad = [list(p) for p in grid if p[0] % tile or p[1] % tile]
    if bad:
        raise InputError(f"{bad} are not multiples of the vision tower's {tile}-pixel tile", file=source, field=field)
    config.image_grid_pinpoints = [list(p) for p in grid]
    image_processor.image_grid_pinpoints = [list(p) for p in grid]
    return grid


#: resolution settings that are switches of the image processor, and go with every processor call too: Gemma 3's and
#: InternVL's processors have call defaults (`do_pan_and_scan: False`, `crop_to_patches: True`) that override what is
#: set on their image processors (SmolVLM's `do_image_splitting` is passed the same way)
_CALL_TIME_SETTINGS = ("do_pan_and_scan", "crop_to_patches", "max_patches", "do_image_splitting")
#: resolution settings that are pixel or edge counts, recorded as ints
_COUNT_SETTINGS = ("min_pixels", "max_pixels", "image_longest_edge")


def resolution_settings(options: TransformersOptions) -> dict[str, Any]:
    """The resolution policy `options` set (any-res grid, pixel budget, pan-and-scan, tiles, SmolVLM's longest edge),
    as the response store's
    key and the manifest record it: each absent unless set, so that the keys of stores made before the option
    existed (the checkpoint's default) are unchanged. Checkpoint selection predicts a key from it before loading."""
    grid = options.image_grid_pinpoints
    settings: dict[str, Any] = {} if grid is None else {"image_grid_pinpoints": [list(p) for p in grid]}
    settings |= {name: int(v) for name in _COUNT_SETTINGS if (v := getattr(options, name)) is not None}
    return settings | {name: v for name in _CALL_TIME_SETTINGS if (v := getattr(options, name)) is not None}


def set_image_budget(
    processor: Any,
    *,
    min_pixels: int | None,
    max_pixels: int | None,
    source: str,
    image_longest_edge: int | None = None,
    **switches: Any,
) -> dict[str, Any]:
    """Set a family's resolution policy on its image processor (`TransformersOptions`: Qwen-VL's pixel budget,
    Gemma 3's pan-and-scan, InternVL's and SmolVLM's tiling), so that how many image tokens a crop costs is a study
    setting, not a processor default.

    Args:
        processor: the model's processor.
        min_pixels, max_pixels: the pixel budget (None: unset).
        image_longest_edge: SmolVLM's resize target (its `size["longest_edge"]`), which with the tile size
            (`max_image_size`) decides how many tiles a crop is cut into (None: unset).
        source: the model, for errors.
        **switches: `_CALL_TIME_SETTINGS` by name (None: unset).

    Returns:
        The settings as set (only those given), for the response store's key and the manifest; {} when none is.

    Raises:
        InputError: naming the option, when the model's image processor has no such setting (e.g. a pixel budget for
            LLaVA), which would otherwise be ignored silently.
    """
    ip = getattr(processor, "image_processor", None)
    model = type(ip).__name__
    settings: dict[str, Any] = {}
    if min_pixels is not None or max_pixels is not None:
        size = getattr(ip, "size", None)
        budget = dict(size or {})
        if "shortest_edge" not in budget or "longest_edge" not in budget or not hasattr(ip, "merge_size"):
            name = "min_pixels" if min_pixels is not None else "max_pixels"
            raise InputError(f"the {model} has no pixel budget to set", file=source, field=name)
        if min_pixels is not None:
            budget["shortest_edge"] = settings["min_pixels"] = int(min_pixels)
        if max_pixels is not None:
            budget["longest_edge"] = settings["max_pixels"] = int(max_pixels)
        if budget["shortest_edge"] > budget["longest_edge"]:
            raise InputError(
                f"min_pixels {budget['shortest_edge']} exceeds max_pixels {budget['longest_edge']}",
                file=source,
                field="min_pixels",
            )
        ip.size = type(size)(**budget) if not isinstance(size, dict) else budget
    if image_longest_edge is not None:
        size = getattr(ip, "size", None)
        if not dict(size or {}).get("longest_edge") or not hasattr(ip, "max_image_size"):
            raise InputError(f"the {model} has no tiling by longest edge", file=source, field="image_longest_edge")
        edge = {"longest_edge": int(image_longest_edge)}
        ip.size = type(size)(**edge) if not isinstance(size, dict) else edge
        settings["image_longest_edge"] = int(image_longest_edge)
    for name, value in switches.items():
        if name not in _CALL_TIME_SETTINGS:
            raise TypeError(f"unknown resolution setting {name!r}")
        if value is None:
            continue
        if not hasattr(ip, name):
            raise InputError(f"the {model} has no {name} setting", file=source, field=name)
        setattr(ip, name, value)
        settings[name] = value
    return settings


def check_image(image: np.ndarray) -> None:
    """Raise InputError unless `image` is a non-empty RGB uint8 array (H, W, 3)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise InputError(f"image must be an RGB uint8 array (H, W, 3), got {shape} {getattr(image, 'dtype', '')}")
    if min(image.shape[:2]) < 1:
        raise InputError(f"empty image {image.shape}")


@register_backend
class TransformersBackend(Backend):
    """A local Hugging Face image-text-to-text model (`AutoModelForImageTextToText` + `AutoProcessor`).

    Args:
        model: a local model folder (save_pretrained layout) or a hub id already in the HF cache.
        params: generation settings; temperature 0 = greedy (the paper), `n` must be 1, `seed` seeds
            sampling when temperature > 0, `detail` is ignored (the processor decides the resolution).
        options: `TransformersOptions` (device, batch_size, dtype, pad_to_square, local_files_only,
            model_revision, attn_implementation, system_prompt, and the resolution policy: image_grid_pinpoints,
            min_pixels, max_pixels, do_pan_and_scan, crop_to_patches, max_patches, image_longest_edge,
            do_image_splitting).
        **kwargs: the same options as keyword arguments, instead of `options`.

    Raises:
        InputError: the model cannot be found or loaded, bad options.
    """

    name = "transformers"
    options_type = TransformersOptions

    def __init__(
        self,
        model: str,
        *,
        params: GenerationParams | None = None,
        options: TransformersOptions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, params=params)
        o = self.load_options(options, **kwargs)
        self.system_prompt = o.system_prompt
        self._check_options(o.batch_size)
        self.device = resolve_device(o.device)
        self.dtype = resolve_dtype(o.dtype, self.device)
        local_files_only, attn_implementation = o.local_files_only, o.attn_implementation
        folder = find_model_folder(model, local_files_only=local_files_only)
        source = str(folder) if folder is not None else model
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        try:
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            if attn_implementation:
                kwargs["attn_implementation"] = attn_implementation
            hf_model = AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot load as an image-text-to-text model: {exc}", file=source) from exc
        revision = o.model_revision or (folder_revision(folder) if folder is not None else None)
        self._attach(hf_model.to(self.device), processor, source, revision, o.pad_to_square)
        self.image_grid_pinpoints = set_grid_pinpoints(self.hf_model, processor, o.image_grid_pinpoints, source)
        self.image_budget = set_image_budget(
            processor,
            min_pixels=o.min_pixels,
            max_pixels=o.max_pixels,
            source=source,
            image_longest_edge=o.image_longest_edge,
            **{name: getattr(o, name) for name in _CALL_TIME_SETTINGS},
        )
        self.resolution = resolution_settings(o)

    @classmethod
    def from_loaded(
        cls,
        hf_model: Any,
        processor: Any,
        *,
        name: str = "in-memory",
        params: GenerationParams | None = None,
        batch_size: int = 8,
        pad_to_square: bool | None = None,
        model_revision: str | None = None,
        system_prompt: str | None = None,
    ) -> TransformersBackend:
        """Wrap a model already in memory (just fine-tuned, or built from a config for a benchmark).

        Args:
            hf_model: an image-text-to-text model; its device and dtype are used as they are.
            processor: its processor (with a tokenizer and a chat template).
            name: what `describe()` reports as the model.
            params, batch_size, pad_to_square, model_revision, system_prompt: as for the constructor.

        Returns:
            The backend.
        """
        self = cls.__new__(cls)
        Backend.__init__(self, name, params=params)
        self.system_prompt = system_prompt
        self._check_options(batch_size)
        first = next(hf_model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self._attach(hf_model, processor, name, model_revision, pad_to_square)
        self.image_grid_pinpoints = None
        self.image_budget: dict[str, Any] = {}
        self.resolution: dict[str, Any] = {}
        return self

    # ----------------------------------------------------------------------------------------- loading

    def _check_options(self, batch_size: int) -> None:
        if self.params.n != 1:
            raise InputError(f"the transformers backend answers one completion per query (n=1), got n={self.params.n}")
        self.batch_size = TransformersOptions(batch_size=batch_size).batch_size

    def _attach(
        self, hf_model: Any, processor: Any, source: str, revision: str | None, pad_to_square: bool | None
    ) -> None:
        self.hf_model = hf_model.eval()
        self.processor = processor
        self._revision = revision
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise InputError("the processor has no tokenizer", file=source)
        # Left padding: every row's last prompt token sits at the end, where generation continues.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        try:
            chat_prompt(processor, "")  # fail at load time, not once per query
        except InputError as exc:
            raise InputError(exc.message, file=source, field="chat_template") from exc
        gen = hf_model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids: frozenset[int] = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.pad_id: int = int(self.tokenizer.pad_token_id)
        model_type = getattr(hf_model.config, "model_type", "")
        self.pad_to_square = model_type == "llava" if pad_to_square is None else bool(pad_to_square)
        self._pad_color: tuple[int, int, int] | None = None
        self._setup_padding()

    def _setup_padding(self) -> None:
        ip = getattr(self.processor, "image_processor", None)
        # Only LLaVA-1.5's image processor pads to a square with `do_pad`; LLaVA-OneVision's has a `pad_to_square`
        # too, but its `do_pad` pads the tile stacks of a batch to one length, which batching needs.
        pads_to_square = type(ip).__name__ in _SQUARE_PADDING_PROCESSORS
        if not self.pad_to_square:
            if pads_to_square and getattr(ip, "do_pad", False):
                ip.do_pad = False
            return
        if pads_to_square and hasattr(ip, "do_pad"):
            ip.do_pad = True  # LlavaImageProcessor: pads with its own mean colour, as expand2square does
            return
        self._pad_color = square_pad_color(self.processor)

    @property
    def model_revision(self) -> str | None:
        """Hub commit hash, or a digest of the local folder's config and weights (see module docs)."""
        return self._revision

    def key_options(self) -> dict[str, Any]:
        """Settings that change answers (store key): preprocessing, system turn, weights dtype.

        Batch size and device stay out: batched answers equal batch-size-1 answers.
        """
        return {
            "pad_to_square": self.pad_to_square,
            "system_prompt": self.system_prompt,
            "dtype": str(self.dtype).removeprefix("torch."),
            **self.resolution,
        }

    def describe(self) -> dict[str, Any]:
        """Backend, model, revision, params, and the local settings that can change answers."""
        info = super().describe()
        info.update(
            {
                "architecture": type(self.hf_model).__name__,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "batch_size": self.batch_size,
                "pad_to_square": self.pad_to_square,
                "system_prompt": self.system_prompt,
                **self.resolution,
                "image_processor": type(getattr(self.processor, "image_processor", None)).__name__,
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__,
            }
        )
        return info

    # ------------------------------------------------------------------------------------ generation

    def prompt_text(self, prompt: str) -> str:
        """The model's chat template applied to one user turn (image, then `prompt`) plus the generation prompt."""
        return chat_prompt(self.processor, prompt, self.system_prompt)

    def prepare_image(self, image: np.ndarray) -> Image.Image:
        """The PIL image handed to the processor (mean-colour square padding where the processor cannot pad)."""
        check_image(image)
        if self._pad_color is not None:
            image = pad_to_square(image, self._pad_color)
        return Image.fromarray(np.ascontiguousarray(image))

    def build_inputs(self, queries: Sequence[Query]) -> Any:
        """Processor outputs for a batch (left-padded token ids, attention mask, pixel values), on the device."""
        texts = [self.prompt_text(q.prompt) for q in queries]
        # One list per query (one crop per request): a flat list reads, for Gemma 3's processor, as all images of
        # the first prompt, and the batch fails and falls back to one query at a time.
        images = [[self.prepare_image(q.image)] for q in queries]
        # Gemma 3's template writes `<bos>` itself, and its tokenizer adds one too: keep exactly one.
        bos = self.tokenizer.bos_token
        once = {"add_special_tokens": False} if bos and all(t.startswith(bos) for t in texts) else {}
        per_call = {k: v for k, v in self.image_budget.items() if k in _CALL_TIME_SETTINGS}
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt", **once, **per_call)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        # A fresh config: the checkpoint's own defaults (sampling, repetition penalty) must not leak in.
        sample = self.params.temperature > 0
        return GenerationConfig(
            max_new_tokens=int(self.params.max_new_tokens),
            do_sample=sample,
            temperature=float(self.params.temperature) if sample else None,
            top_p=None,
            top_k=None,
            num_beams=1,
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.pad_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    @torch.inference_mode()
    def _run(self, queries: Sequence[Query]) -> list[Answer]:
        start = time.perf_counter()
        inputs = self.build_inputs(queries)
        if self.params.temperature > 0 and self.params.seed is not None:
            torch.manual_seed(self.params.seed)
        out = self.hf_model.generate(**inputs, generation_config=self._generation_config())
        prompt_len = inputs["input_ids"].shape[1]
        new_tokens = out[:, prompt_len:].tolist()
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        elapsed = time.perf_counter() - start
        answers = []
        for query, tokens, n_prompt in zip(queries, new_tokens, prompt_counts, strict=True):
            stop = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
            kept = tokens if stop is None else tokens[:stop]
            answers.append(
                Answer(
                    request_id=query.request_id,
                    status="answered",
                    text=self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    finish_reason="length" if stop is None else "stop",
                    # the EOS token counts as generated, as in vLLM and OpenAI usage
                    prompt_tokens=int(n_prompt),
                    completion_tokens=len(tokens) if stop is None else stop + 1,
                    model_revision=self._revision,
                    latency_s=elapsed,
                )
            )
        return answers

    def _run_safely(self, queries: Sequence[Query]) -> list[Answer]:
        try:
            return self._run(queries)
        except torch.cuda.OutOfMemoryError:
            if len(queries) == 1:
                torch.cuda.empty_cache()
                return [self._failed(queries[0], "CUDA out of memory at batch size 1")]
            torch.cuda.empty_cache()
        except (InputError, ValueError, RuntimeError, IndexError) as exc:
            if len(queries) == 1:
                return [self._failed(queries[0], f"{type(exc).__name__}: {exc}")]
        # Split so that one bad image (or too large a batch) does not fail its neighbours.
        half = len(queries) // 2
        return self._run_safely(queries[:half]) + self._run_safely(queries[half:])

    def _failed(self, query: Query, error: str) -> Answer:
        return Answer(request_id=query.request_id, status="failed", error=error, model_revision=self._revision)

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer queries in chunks of `batch_size`, greedily; answers in query order.

        A query whose image or generation fails gets a `failed` answer (with the error) instead of
        stopping the run; a CUDA out-of-memory error halves the batch and retries.
        """
        answers: list[Answer] = []
        for start in range(0, len(queries), self.batch_size):
            answers.extend(self._run_safely(list(queries[start : start + self.batch_size])))
        return answers

    def close(self) -> None:
        """Drop the model and free GPU memory."""
        for attr in ("hf_model", "processor", "tokenizer"):
            if hasattr(self, attr):
                delattr(self, attr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
