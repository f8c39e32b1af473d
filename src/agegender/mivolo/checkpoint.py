"""Read and write MiVOLO checkpoints in the official layout, without trusting the file.

Official layout (a torch pickle): `state_dict` (or `state_dict_ema` / `model_ema` / `model`), `min_age`,
`max_age`, `avg_age`, `no_gender` and, in newer files, `with_persons_model`. Released files may also
hold the training run's `argparse.Namespace` under `args`. The Hugging Face port (`iitolstykh/mivolo_v2`)
stores `model.safetensors` whose keys start with `mivolo.model.` and a `config.json` carrying `min_age`,
`max_age`, `avg_age`, `with_persons_model`, `only_age`, `in_chans`, `num_classes` and `input_size`.

Pickles are loaded with `weights_only=True` and an allowlist of exactly the globals real files need, so a
crafted checkpoint cannot run code; anything else is refused with the name of the global.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agegender.errors import InputError
from agegender.files import save_torch
from agegender.mivolo.model import MODEL_SPECS, MiVOLOModel, MiVOLOSpec

#: Globals a released MiVOLO / timm training checkpoint needs besides tensors and plain containers.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

#: Our additions to the official layout (the official loader ignores unknown keys).
VARIANT_KEY = "agegender_variant"
SPEC_KEY = "agegender_spec"

HF_PREFIX = "mivolo.model."
HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"

# timm's `load_state_dict(use_ema=True)`, which the official loader calls: EMA weights win when present.
_STATE_KEYS_EMA = ("state_dict_ema", "model_ema", "state_dict", "model")
_STATE_KEYS_NO_EMA = ("state_dict", "model")
# what DataParallel, torch.compile and the Hugging Face port put before the official key names
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", HF_PREFIX)
_OFFICIAL_KEYS = ("state_dict", "min_age", "max_age", "avg_age", "no_gender", "with_persons_model")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


@dataclass
class CheckpointData:
    """What a checkpoint file holds, after the key fix-ups.

    Attributes:
        state_dict: model weights with official key names (no `module.` / `mivolo.model.` prefix, no `fds.`).
        min_age: lower end of the age range.
        max_age: upper end of the age range.
        avg_age: the age the normalised output 0 stands for.
        no_gender: age-only model (1 output).
        with_persons: face+body model (6 input channels).
        variant: our registered variant name, when the file records one.
        spec: an explicit architecture, when the file records one (our checkpoints of custom specs).
        extra: every other top-level entry (args, epoch, optimizer state, ...).
    """

    state_dict: dict[str, torch.Tensor]
    min_age: float
    max_age: float
    avg_age: float
    no_gender: bool
    with_persons: bool
    variant: str | None = None
    spec: MiVOLOSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        """The model's input side: VOLO's position grid is the input / 16."""
        return int(self.state_dict["pos_embed"].shape[1]) * 16

    @property
    def num_classes(self) -> int:
        """Outputs of the head: 3 (gender logits + age) or 1 (age)."""
        return int(self.state_dict["head.weight"].shape[0])


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            # torch warns about pickle protocols it was not written for; a refusal below says what matters
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = _GLOBAL_RE.search(text)
        if found:
            why = f"it needs the global {found.group(1)!r}, which is not on the allowlist"
        elif "WeightsUnpickler error:" in text:
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
            why = f"its pickle holds content outside the allowlist ({detail})"
        else:
            raise InputError(f"cannot be read as a torch checkpoint ({text.splitlines()[0][:200]})", file=path) from exc
        raise InputError(
            f"refused to load: {why}. The file is not loaded because unpickling it could run code; if you trust "
            "its source, re-save it without that object (torch.load(..., weights_only=False), keep the official "
            "keys, torch.save)",
            file=path,
        ) from exc
    except Exception as exc:  # a corrupt file fails anywhere in torch's readers, with many exception types
        raise InputError(f"cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})", file=path) from exc


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        from safetensors import safe_open
    except ImportError as exc:  # timm depends on safetensors, so this only happens in unusual set-ups
        raise InputError(
            "reading .safetensors needs the `safetensors` package (pip install safetensors)", file=path
        ) from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError variants
        raise InputError(f"cannot be read as safetensors ({type(exc).__name__}: {exc})", file=path) from exc
    return tensors, metadata


def _strip_wrappers(key: str) -> str:
    """A state-dict key under its official name (`_WRAPPER_PREFIXES` removed, in that order)."""
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _clean_state_dict(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, drop the training-only FDS module, keep only tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor", file=path)
        key = _strip_wrappers(key)
        if key.startswith("fds."):
            continue
        out[key] = value
    for needed in ("pos_embed", "head.weight"):
        if needed not in out:
            raise InputError(f"the state dict has no {needed!r}: not a MiVOLO / VOLO checkpoint", file=path)
    return out


def _select_state(ckpt: Mapping[str, Any], path: Path, use_ema: bool) -> tuple[str | None, Mapping[str, Any]]:
    for key in _STATE_KEYS_EMA if use_ema else _STATE_KEYS_NO_EMA:
        if ckpt.get(key) is not None:
            if not isinstance(ckpt[key], Mapping):
                raise InputError(f"{key!r} is a {type(ckpt[key]).__name__}, not a state dict", file=path, field=key)
            return key, ckpt[key]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return None, ckpt  # a bare state dict
    raise InputError(f"no state dict found (looked for {', '.join(_STATE_KEYS_EMA)})", file=path)


def _number(meta: Mapping[str, Any], key: str, path: Path) -> float:
    if key not in meta or meta[key] is None:
        raise InputError("the age range is missing from the checkpoint", file=path, field=key)
    try:
        return float(meta[key])
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a number: {meta[key]!r}", file=path, field=key) from exc


def _spec_from_dict(raw: Any, path: Path) -> MiVOLOSpec:
    if not isinstance(raw, Mapping):
        raise InputError("not a mapping of MiVOLOSpec fields", file=path, field=SPEC_KEY)
    names = {f.name for f in dataclasses.fields(MiVOLOSpec)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(f"unknown MiVOLOSpec fields {unknown}", file=path, field=SPEC_KEY)
    try:
        return MiVOLOSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except TypeError as exc:
        raise InputError(f"invalid MiVOLOSpec ({exc})", file=path, field=SPEC_KEY) from exc


def _finish(
    path: Path, state: dict[str, torch.Tensor], meta: Mapping[str, Any], no_gender_key: str, extra: dict[str, Any]
) -> CheckpointData:
    min_age, max_age = _number(meta, "min_age", path), _number(meta, "max_age", path)
    if max_age <= min_age:
        raise InputError(f"max_age {max_age} is not above min_age {min_age}", file=path, field="max_age")
    avg_age = _number(meta, "avg_age", path) if meta.get("avg_age") is not None else (min_age + max_age) / 2
    with_persons = meta.get("with_persons_model")
    if with_persons is None:
        # As the official loader: files without the flag are face+body iff the body stem is there.
        with_persons = "patch_embed.conv1.0.weight" in state
    spec = _spec_from_dict(meta[SPEC_KEY], path) if meta.get(SPEC_KEY) is not None else None
    variant = meta.get(VARIANT_KEY)
    if variant is not None and not isinstance(variant, str):
        raise InputError(f"not a variant name: {variant!r}", file=path, field=VARIANT_KEY)
    data = CheckpointData(
        state_dict=state,
        min_age=min_age,
        max_age=max_age,
        avg_age=avg_age,
        no_gender=bool(meta.get(no_gender_key, False)),
        with_persons=bool(with_persons),
        variant=variant,
        spec=spec,
        extra=extra,
    )
    if data.no_gender != (data.num_classes == 1):
        raise InputError(
            f"{no_gender_key}={data.no_gender} but the head has {data.num_classes} outputs",
            file=path,
            field=no_gender_key,
        )
    return data


def _read_hf(path: Path) -> CheckpointData:
    weights = path / HF_WEIGHTS if path.is_dir() else path
    config_path = weights.parent / HF_CONFIG
    if not weights.is_file():
        raise InputError(f"no {HF_WEIGHTS} in the folder", file=path)
    tensors, metadata = _load_safetensors(weights)
    meta: dict[str, Any] = {}
    if config_path.is_file():
        try:
            meta = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"invalid JSON ({exc})", file=config_path) from exc
        if not isinstance(meta, dict):
            raise InputError("expected a JSON object", file=config_path)
    else:
        # Without config.json the safetensors header metadata (string values) may carry the age range.
        for key, value in metadata.items():
            try:
                meta[key] = json.loads(value)
            except json.JSONDecodeError:
                meta[key] = value
    if "min_age" not in meta:
        raise InputError(f"no age range: put the model's {HF_CONFIG} next to the weights", file=weights)
    no_gender_key = "only_age" if "only_age" in meta else "no_gender"
    return _finish(weights, _clean_state_dict(tensors, weights), meta, no_gender_key, {})


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> CheckpointData:
    """Read a checkpoint file (or a Hugging Face folder) without building the model.

    Args:
        path: a torch file in the official layout, a `.safetensors` file (with `config.json` beside it),
            or a folder holding `model.safetensors` and `config.json`.
        use_ema: prefer `state_dict_ema` / `model_ema` when present, as the official loader (timm) does.

    Returns:
        The weights with fixed-up keys and the age range and flags.

    Raises:
        InputError: naming the file when it is missing, untrusted, or not a MiVOLO checkpoint.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors":
        if not path.exists():
            raise InputError("checkpoint not found", file=path)
        return _read_hf(path)
    if not path.is_file():
        raise InputError("checkpoint not found", file=path)
    ckpt = _torch_load(path, "cpu")
    if not isinstance(ckpt, Mapping):
        raise InputError(f"expected a dict, found a {type(ckpt).__name__}", file=path)
    key, raw_state = _select_state(ckpt, path, use_ema)
    if key is None:
        raise InputError("a bare state dict has no age range (min_age, max_age, avg_age)", file=path)
    state = _clean_state_dict(raw_state, path)
    extra = {k: v for k, v in ckpt.items() if k not in (*_OFFICIAL_KEYS, *_STATE_KEYS_EMA, VARIANT_KEY, SPEC_KEY)}
    return _finish(path, state, ckpt, "no_gender", extra)


def check_mivolo_checkpoint(path: Path) -> list[str]:
    """Check that a file (or a Hugging Face folder) holds a MiVOLO checkpoint, without building the model.

    The pre-flight check of `agegender check` (through `MivoloModel.check_file`): every problem as a line, where
    `read_checkpoint` stops at the first with an error. Torch files are loaded with `weights_only=True` (nothing in
    them can run code) and memory-mapped where the format allows, so that a large checkpoint costs little; Hugging
    Face files are checked by their safetensors header only.

    Args:
        path: a `.pth` / `.pth.tar` / `.pt` file, a `.safetensors` file or a folder with `model.safetensors`.

    Returns:
        One line per problem, empty when the file holds MiVOLO weights (`patch_embed.`, `pos_embed`,
        `head.weight`) and an age range.
    """
    if not path.exists():
        return [f"checkpoint not found: {path}"]
    if path.is_dir() or path.suffix == ".safetensors":
        return _check_hf_checkpoint(path)

    def load(mmap: bool) -> Any:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            ckpt = load(mmap=True)
        except RuntimeError as exc:  # files written with the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            ckpt = load(mmap=False)
    except Exception as exc:  # corrupt files and refused pickles fail with many exception types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return [f"{path} cannot be loaded as a weights-only torch checkpoint ({type(exc).__name__}: {first})"]
    if not isinstance(ckpt, Mapping):
        return [f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict"]
    state = next((ckpt[k] for k in _STATE_KEYS_EMA if isinstance(ckpt.get(k), Mapping)), None)
    if state is None:
        return [f"{path} has no state dict (looked for {', '.join(_STATE_KEYS_EMA)})"]
    problems = _weight_key_problems(list(state), path)
    missing = [k for k in ("min_age", "max_age") if ckpt.get(k) is None]
    if missing:
        problems.append(f"{path} has no age range ({', '.join(missing)} missing): not a MiVOLO checkpoint")
    return problems


def _weight_key_problems(keys: list[str], path: Path) -> list[str]:
    """The MiVOLO / VOLO weights missing from a state dict's keys, as one line (empty when none is missing)."""
    clean = {_strip_wrappers(key) for key in keys}
    missing = [k for k in ("pos_embed", "head.weight") if k not in clean]
    if not any(k.startswith("patch_embed.") for k in clean):
        missing.insert(0, "patch_embed.*")
    if missing:
        return [f"{path} holds no MiVOLO / VOLO weights ({', '.join(missing)} missing)"]
    return []


def _check_hf_checkpoint(path: Path) -> list[str]:
    """`check_mivolo_checkpoint` of the Hugging Face port: config.json's age range and the safetensors header."""
    weights = path / HF_WEIGHTS if path.is_dir() else path
    config = weights.parent / HF_CONFIG
    problems = []
    if not weights.is_file():
        return [f"no {HF_WEIGHTS} in {path}"]
    if not config.is_file():
        problems.append(f"no {HF_CONFIG} beside {weights} (it carries the age range)")
    else:
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or "min_age" not in meta:
                problems.append(f"{config} has no min_age: not a MiVOLO config")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{config} is not valid JSON ({exc})")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # SafetensorError and OSError variants
        return [*problems, f"{weights} cannot be read as safetensors ({type(exc).__name__}: {exc})"]
    return problems + _weight_key_problems(keys, weights)


def _resolve_spec(data: CheckpointData, variant: str | MiVOLOSpec | None, path: Path) -> MiVOLOSpec:
    if isinstance(variant, MiVOLOSpec):
        spec = variant
    elif variant is not None or data.variant is not None:
        name = variant if variant is not None else data.variant
        if name not in MODEL_SPECS:
            raise InputError(f"unknown MiVOLO variant {name!r}; known: {sorted(MODEL_SPECS)}", file=path)
        spec = MODEL_SPECS[name]
    elif data.spec is not None:
        spec = data.spec
    else:
        name = f"mivolo_d1_{data.input_size}"
        if name not in MODEL_SPECS:
            raise InputError(
                f"input size {data.input_size} (from pos_embed) matches no registered variant; pass variant=",
                file=path,
            )
        spec = MODEL_SPECS[name]
    if spec.img_size != data.input_size:
        raise InputError(
            f"the weights are for input size {data.input_size} (pos_embed) but the variant takes {spec.img_size}",
            file=path,
        )
    return spec


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:10])}{more}")
    if problems:
        raise InputError("the weights do not fit the model: " + "; ".join(problems), file=path)
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    variant: str | MiVOLOSpec | None = None,
    use_ema: bool = True,
) -> MiVOLOModel:
    """Load a MiVOLO checkpoint (official, ours, or the Hugging Face port) as a ready model.

    The architecture is the file's recorded variant (ours), else `mivolo_d1_{pos_embed grid * 16}` as the
    official code chooses; 3 or 6 input channels follow `with_persons_model` and the outputs the head.

    Args:
        path: see `read_checkpoint`.
        device: where the model lives.
        variant: a registered variant name or a `MiVOLOSpec`, overriding what the file implies.
        use_ema: prefer the EMA weights when the file has them (the official loader does).

    Returns:
        The model in eval mode with `min_age`, `max_age`, `avg_age` set; `model(x)` on [N, 6|3, S, S]
        returns the raw [N, 3|1] outputs.

    Raises:
        InputError: for a missing, untrusted or malformed file, or weights that do not fit strictly
            (listing the first 10 missing / unexpected keys).
    """
    path = Path(path)
    data = read_checkpoint(path, use_ema=use_ema)
    spec = _resolve_spec(data, variant, path)
    model = MiVOLOModel(spec, in_chans=6 if data.with_persons else 3, num_classes=data.num_classes)
    _load_strict(model, data.state_dict, path)
    model.set_age_range(data.min_age, data.max_age, data.avg_age)
    return model.to(device).eval()


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP keeps the model in .module, torch.compile in ._orig_mod
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def variant_name(spec: MiVOLOSpec) -> str | None:
    """The registered name of an architecture, or None for a custom spec."""
    return next((name for name, known in MODEL_SPECS.items() if known == spec), None)


def save_checkpoint(path: str | Path, model: nn.Module, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write a model in the official layout, atomically, so the official code can load it too.

    Keys: `state_dict` (CPU tensors), `min_age`, `max_age`, `avg_age`, `no_gender`, `with_persons_model`, and
    ours: `agegender_variant` (registered name) or `agegender_spec` (the architecture as plain types).

    Args:
        path: the file to write (its folder is created).
        model: a `MiVOLOModel` with an age range (DDP / compiled wrappers are unwrapped).
        extra: more top-level entries (e.g. epoch, metrics); plain types and tensors keep the file
            loadable with `weights_only=True`.

    Returns:
        The path written.

    Raises:
        ValueError: when the model has no age range or `extra` would overwrite a layout key.
    """
    path = Path(path)
    inner = _unwrap(model)
    if not isinstance(inner, MiVOLOModel):
        raise TypeError(f"expected a MiVOLOModel, got {type(inner).__name__}")
    if inner.min_age is None or inner.max_age is None or inner.avg_age is None:
        raise ValueError("the model has no age range: call set_age_range before saving")
    name = variant_name(inner.spec)
    ckpt: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()},
        "min_age": inner.min_age,
        "max_age": inner.max_age,
        "avg_age": inner.avg_age,
        "no_gender": inner.no_gender,
        "with_persons_model": inner.with_persons,
    }
    if name is not None:
        ckpt[VARIANT_KEY] = name
    else:
        ckpt[SPEC_KEY] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(inner.spec).items()}
    for key, value in (extra or {}).items():
        if key in ckpt or key in _STATE_KEYS_EMA:
            raise ValueError(f"extra key {key!r} would overwrite a checkpoint layout key")
        ckpt[key] = value
    return save_torch(ckpt, path, fsync=True)
