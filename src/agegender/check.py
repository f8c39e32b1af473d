"""Check every file a params file names before any work starts, and fingerprint what each stage reads.

`check_params` looks at everything params.yaml points at outside the project (data set folders, annotation
CSVs and the images they name, each present and decoding, MiVOLO checkpoints, external prediction tables,
Hugging Face model folders, API settings) and returns ALL problems at once, each naming its params key, what is
wrong and the file.
What the pipeline makes itself is skipped: data sets inside the generated demo folder, checkpoints inside
`train_mivolo.out`, model folders inside `finetune_mllm.out`, and `build_tiny` models. API keys are checked
for presence in the environment only; their values are never read into a message, a fingerprint or a file.

`fingerprints` / `write_fingerprints` record, per consumer stage, what it reads from outside the project, so
that DVC (whose always-run `check` stage writes them to `data/sources/`) reruns a stage exactly when one of
those inputs changed. Consumers: `prepare_data`, `train_mivolo`, `predict`, `finetune_mllm` and
`query_mllms/<key>` for each configured model. Folders are walked recursively in sorted order (hidden names,
starting with ".", are left out: editor, OS and download-tool metadata):

- text-like files (`.csv .txt .json .yaml .yml .tsv .jinja .model`) are hashed in full (BLAKE2b);
- weight files (`.safetensors .bin .pt .pth .tar .gguf`) are recorded by size and a hash of their first and
  last MiB (reading gigabytes on every `dvc repro` would cost minutes);
- every other file (images above all) is recorded by relative path and size only, folded into one digest per
  folder with the file count and total bytes, so that LAGENDA's 67k images cost 67k `stat` calls and a few
  bytes of JSON.

Limitations: an image (or any other non-text, non-weight file) replaced by a different file of exactly the
same size is not noticed, and neither is a weight file whose change leaves its size and its first and last MiB
untouched. Touch the params (or delete the fingerprint file) to force a rerun after such an edit.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import stat as stat_module
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agegender.errors import InputError
from agegender.files import atomic_write_text
from agegender.params import MllmParams, Params
from agegender.paths import ProjectPaths

#: top-level params sections that `check_params(sections=...)` can limit the check to
SECTIONS: tuple[str, ...] = ("prepare_data", "train_mivolo", "predict", "query_mllms", "finetune_mllm", "report")
#: `model_type`s of the Hugging Face folders that the transformers / vllm backends and fine-tuning take
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llava", "llava_next")
#: architectures of the original LLaVA / ShareGPT4V code (not loadable by transformers without conversion)
ORIGINAL_LLAVA_ARCHITECTURES: frozenset[str] = frozenset(
    {"LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM", "Share4VLlamaForCausalLM"}
)
#: hashed in full by the fingerprints
TEXT_SUFFIXES: tuple[str, ...] = (".csv", ".txt", ".json", ".yaml", ".yml", ".tsv", ".jinja", ".model")
#: recorded by size and a hash of the first and last MiB (".pth.tar" ends with ".tar")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".tar", ".gguf")

_MIB = 1 << 20
_LOCAL_BACKENDS = ("transformers", "vllm")
_DEFAULT_KEY_ENV = "OPENAI_API_KEY"  # the openai backend's default `api_key_env`


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration.

    Attributes:
        where: params key path, e.g. `prepare_data.datasets.lagenda.root`.
        message: what is wrong and how to fix it (one line).
        path: the file or folder concerned, where there is one.
    """

    where: str
    message: str
    path: str | None = None


class Problems(list[Problem]):
    """What `check_params` returns: the problems found, and `n_checks`, how many things were checked."""

    n_checks: int = 0


# ----------------------------------------------------------------------------------------------
# Small helpers


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (both resolved, so `..` and symlinked roots compare right)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _is_hub_id(model: str) -> bool:
    # as transformers_backend.find_model_folder: `owner/name`, not a path-looking string
    return not model.startswith((".", "/", "~")) and model.count("/") == 1


def _hub_snapshot(model: str) -> Path | None:
    """The cached snapshot folder of a hub id, or None (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # several hub error types (and a missing package) all mean "not available here"
        return None


def check_llava_folder(folder: Path) -> list[str]:
    """Check that a folder is a Hugging Face LLaVA-family model the transformers / vllm backends can load.

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
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(
            f"model_type {model_type!r} in {config_path} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (LLaVA-1.5 and LLaVA-NeXT in the llava-hf layout)"
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


def check_mivolo_checkpoint(path: Path) -> list[str]:
    """Check that a file (or a Hugging Face folder) holds a MiVOLO checkpoint, without building the model.

    Torch files are loaded with `weights_only=True` (nothing in them can run code) and memory-mapped where the
    format allows, so a large checkpoint costs little; Hugging Face files are checked by their safetensors
    header only.

    Args:
        path: a `.pth` / `.pth.tar` / `.pt` file, a `.safetensors` file or a folder with `model.safetensors`.

    Returns:
        One line per problem, empty when the file holds MiVOLO weights (`patch_embed.`, `pos_embed`,
        `head.weight`) and an age range.
    """
    if not path.exists():
        return [f"checkpoint not found: {path}"]
    if path.is_dir() or path.suffix == ".safetensors":
        return _check_hf_mivolo(path)
    import torch

    from agegender.mivolo.checkpoint import SAFE_GLOBALS

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
    state = next(
        (ckpt[k] for k in ("state_dict_ema", "model_ema", "state_dict", "model") if isinstance(ckpt.get(k), Mapping)),
        None,
    )
    if state is None:
        return [f"{path} has no state dict (looked for state_dict_ema, model_ema, state_dict, model)"]
    problems = _mivolo_keys(list(state), path)
    missing = [k for k in ("min_age", "max_age") if ckpt.get(k) is None]
    if missing:
        problems.append(f"{path} has no age range ({', '.join(missing)} missing): not a MiVOLO checkpoint")
    return problems


def _mivolo_keys(keys: list[str], path: Path) -> list[str]:
    prefixes = ("module.", "_orig_mod.", "mivolo.model.")
    clean = set()
    for key in keys:
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        clean.add(key)
    missing = [k for k in ("pos_embed", "head.weight") if k not in clean]
    if not any(k.startswith("patch_embed.") for k in clean):
        missing.insert(0, "patch_embed.*")
    if missing:
        return [f"{path} holds no MiVOLO / VOLO weights ({', '.join(missing)} missing)"]
    return []


def _check_hf_mivolo(path: Path) -> list[str]:
    weights = path / "model.safetensors" if path.is_dir() else path
    config = weights.parent / "config.json"
    problems = []
    if not weights.is_file():
        return [f"no model.safetensors in {path}"]
    if not config.is_file():
        problems.append(f"no config.json beside {weights} (it carries the age range)")
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
    return problems + _mivolo_keys(keys, weights)


def check_predictions_file(path: Path, model: str) -> list[str]:
    """Check an external prediction table: readable, the prediction-table columns and values, the model name.

    Args:
        path: a `.parquet` or `.csv` file.
        model: the model name its `model` column must hold (when it has one).

    Returns:
        One line per problem.
    """
    from agegender.evaluate import read_external_predictions

    try:
        # the same reading and checks as the predict stage's (sample ids are checked there, against the sample table)
        read_external_predictions(path, model, None)
    except InputError as exc:
        return [str(exc)]
    return []


# ----------------------------------------------------------------------------------------------
# The checker


class _Checker:
    def __init__(self, params: Params, paths: ProjectPaths, env: Mapping[str, str]) -> None:
        self.params, self.paths, self.env = params, paths, env
        self.found = Problems()

    def add(self, where: str, message: str, path: Path | str | None = None) -> None:
        self.found.append(Problem(where, message, None if path is None else str(path)))

    def ran(self, n: int = 1) -> None:
        self.found.n_checks += n

    # --- cross references ----------------------------------------------------------------------

    def dataset_ref(self, where: str, name: str | None, known: Collection[str], what: str) -> None:
        if name is None:
            return
        self.ran()
        if name not in known:
            self.add(where, f"{name!r} is not one of {what}: {sorted(known)}")

    def prepared_ref(self, where: str, name: str | None) -> None:
        self.dataset_ref(where, name, self.params.prepare_data.datasets, "prepare_data.datasets")

    # --- sections -------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        from agegender.data.readers import check_dataset, resolve_reader

        cfg = self.params.prepare_data
        demo_root = self.paths(cfg.demo.root) if cfg.demo is not None else None
        for name, ds in cfg.datasets.items():
            where = f"prepare_data.datasets.{name}"
            self.face_detector(where, ds.face_detector, ds.face_detector_options)
            root = self.paths(ds.root)
            if demo_root is not None and _inside(root, demo_root):
                continue  # generated by prepare_data itself
            self.ran()
            ok = True
            try:
                reader = resolve_reader(ds.reader)
            except InputError as exc:
                self.add(f"{where}.reader", exc.message)
                ok = False
            if not root.exists():
                self.add(f"{where}.root", "data set folder not found: fix the path or mount the data", root)
                ok = False
            if ok:
                for line in check_dataset(reader, root, **ds.options):
                    self.add(where, line, root)
        for name, sub in cfg.subsets.items():
            if sub.exclude:
                self.ran()
                path = self.paths(sub.exclude)
                if not path.is_file():
                    self.add(f"prepare_data.subsets.{name}.exclude", "exclude file (sample ids) not found", path)

    def face_detector(self, where: str, name: str | None, options: Mapping[str, Any]) -> None:
        from agegender.faces import check_face_detector

        if name is None:
            if options:
                self.ran()
                self.add(f"{where}.face_detector_options", "set, but face_detector is null: name a detector or drop it")
            return
        self.ran()
        for line in check_face_detector(name, options):
            self.add(f"{where}.face_detector", line)

    def train_mivolo(self) -> None:
        cfg = self.params.train_mivolo
        if cfg.dataset is None:
            return  # this profile trains no MiVOLO
        self.prepared_ref("train_mivolo.dataset", cfg.dataset)
        pretrained = cfg.config.get("pretrained")
        if pretrained:
            self.ran()
            path = self.paths(str(pretrained))
            if not path.is_file():
                self.add("train_mivolo.config.pretrained", "pretrained weights file not found", path)

    def _made_by_training(self, path: Path) -> bool:
        cfg = self.params.train_mivolo
        return cfg.dataset is not None and _inside(path, self.paths(cfg.out))

    def predict(self) -> None:
        from agegender.specialized import option_problems, resolve_model

        cfg = self.params.predict
        for name, spec in cfg.models.items():
            where = f"predict.models.{name}"
            self.ran()
            try:
                cls = resolve_model(spec.model)
            except InputError as exc:
                self.add(f"{where}.model", exc.message)
                continue
            for line in option_problems(cls, spec.options):
                self.add(f"{where}.options", line)
            bad = [k for k in spec.inputs or () if k not in cls.inputs]
            if bad:  # a model that narrows its kinds once loaded (a face-only MiVOLO) is told at predict
                self.add(f"{where}.inputs", f"model {spec.model!r} cannot answer {bad}; it answers {list(cls.inputs)}")
            for module, install in cls.requires.items():
                if importlib.util.find_spec(module) is None:
                    self.add(f"{where}.model", f"model {spec.model!r} needs the package {module!r}: {install}")
            for option in cls.dataset_options:
                value = spec.options.get(option, _option_default(cls, option))
                self.prepared_ref(f"{where}.options.{option}", value)
            for option, path in _model_files(self.params, self.paths, spec.options, cls):
                self.ran()
                for line in cls.check_file(option, path):
                    self.add(f"{where}.options.{option}", line, path)
        for name, ext in getattr(cfg, "external", {}).items():
            self.ran()
            path = self.paths(ext.path)
            if not path.is_file():
                self.add(f"predict.external.{name}.path", "prediction table not found", path)
                continue
            for line in check_predictions_file(path, name):
                self.add(f"predict.external.{name}.path", line, path)

    def _made_by_finetuning(self, path: Path) -> bool:
        cfg = self.params.finetune_mllm
        return cfg is not None and _inside(path, self.paths(cfg.out))

    def _model_folder(self, where: str, model: str | None) -> Path | None:
        """Resolve a local model as the pipeline does (a folder under the root, an absolute one, a cached hub id)."""
        if not model:
            self.add(where, "no model folder given")
            return None
        path = self.paths(model)
        if path.is_dir():
            return path
        if path.exists():
            self.add(where, "not a folder (a Hugging Face model folder is expected)", path)
            return None
        if _is_hub_id(model):
            snapshot = _hub_snapshot(model)
            if snapshot is not None:
                return snapshot
            self.add(
                where,
                f"neither a folder under the project root nor in the Hugging Face cache: download it first "
                f"(`hf download {model}`) or give its local folder",
                path,
            )
            return None
        self.add(where, "model folder not found", path)
        return None

    def query_mllms(self) -> None:
        from agegender.mllm.backends.base import known_backends

        known = known_backends()
        for key, spec in self.params.query_mllms.models.items():
            if spec.build_tiny is not None:
                continue  # built by the stage
            where = f"query_mllms.models.{key}"
            self.ran()
            backend = spec.backend
            if ":" in backend and backend not in known:
                message = _import_problem(backend)
                if message:
                    self.add(f"{where}.backend", message)
            elif backend == "openai" and not spec.serve:
                self._openai(where, spec)
            elif backend in _LOCAL_BACKENDS:
                if spec.model and self._made_by_finetuning(self.paths(spec.model)):
                    continue
                folder = self._model_folder(f"{where}.model", spec.model)
                if folder is not None:
                    for line in check_llava_folder(folder):
                        self.add(f"{where}.model", line, folder)
                if backend == "vllm" and importlib.util.find_spec("vllm") is None:
                    self.add(
                        f"{where}.backend",
                        "vLLM is not installed here: pip install 'agegender[vllm]' (Linux, CUDA GPU), or use the "
                        "transformers backend",
                    )
            elif backend not in known:
                self.add(f"{where}.backend", f"unknown MLLM backend {backend!r}; known: {known} or 'module:Class'")

    def _openai(self, where: str, spec: MllmParams) -> None:
        from agegender.mllm.backends.openai_backend import (
            INSECURE_HTTP_OPTION,
            base_url_problem,
            insecure_http_problem,
            is_loopback_url,
        )

        if not (spec.model or spec.options.get("model")):
            self.add(f"{where}.model", "the openai backend needs a model id (e.g. gpt-4o-2024-08-06)")
        allow_insecure = spec.options.get(INSECURE_HTTP_OPTION, False)
        if not isinstance(allow_insecure, bool):
            self.add(f"{where}.options.{INSECURE_HTTP_OPTION}", f"must be true or false, not {allow_insecure!r}")
            allow_insecure = False
        base_url = spec.options.get("base_url")
        loopback = False
        if base_url is not None:
            # the backend's own refusals, reported before the run (the same words, the same opt-in)
            problem = base_url_problem(str(base_url))
            if problem is not None:
                self.add(f"{where}.options.base_url", problem)
                return
            loopback = is_loopback_url(str(base_url))
            problem = insecure_http_problem(str(base_url))
            if problem is not None and not allow_insecure:
                self.add(f"{where}.options.base_url", problem)
        key_env = spec.options.get("api_key_env", _DEFAULT_KEY_ENV)
        # only presence is looked at: the value is never read into a message
        if key_env and not loopback and not self.env.get(str(key_env)):
            self.add(
                f"{where}.options.api_key_env",
                f"environment variable {key_env} is not set: export it before running (the key is read from the "
                "environment only), or set api_key_env to null for a server without authentication",
            )

    def finetune_mllm(self) -> None:
        cfg = self.params.finetune_mllm
        if cfg is None:
            return
        self.prepared_ref("finetune_mllm.dataset", cfg.dataset)
        if cfg.launch is not None:
            self.ran()
            if cfg.launch.num_processes < 1:
                self.add("finetune_mllm.launch.num_processes", f"must be at least 1, got {cfg.launch.num_processes}")
            launch_config = None if cfg.launch.config_file is None else self.paths(cfg.launch.config_file)
            if launch_config is not None and not launch_config.is_file():
                self.add("finetune_mllm.launch.config_file", "accelerate config not found", launch_config)
        if cfg.build_tiny is not None or cfg.base_model is None:
            return  # built by the stage, or this profile fine-tunes nothing
        self.ran()
        folder = self.paths(cfg.base_model)
        if not folder.is_dir():
            self.add("finetune_mllm.base_model", "base model folder not found", folder)
        else:
            for line in check_llava_folder(folder):
                self.add("finetune_mllm.base_model", line, folder)
        deepspeed = cfg.config.get("deepspeed")
        if deepspeed:
            self.ran()
            path = self.paths(str(deepspeed))
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    self.add("finetune_mllm.config.deepspeed", "the DeepSpeed config is not a JSON object", path)
            except FileNotFoundError:
                self.add("finetune_mllm.config.deepspeed", "DeepSpeed config file not found", path)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.add("finetune_mllm.config.deepspeed", f"not a readable JSON file ({exc})", path)

    def report(self) -> None:
        cfg = self.params.report
        study = self.params.study.datasets
        for role, name in cfg.roles.items():
            self.dataset_ref(f"report.roles.{role}", name, study, "study.datasets")
        self.dataset_ref("report.age_group_dataset", cfg.age_group_dataset, study, "study.datasets")
        self.dataset_ref("report.gallery.dataset", cfg.gallery.dataset, study, "study.datasets")


def _option_default(cls: type, option: str) -> Any:
    from agegender.specialized import model_options

    param = model_options(cls)[0].get(option)
    return None if param is None or param.default is param.empty else param.default


def _model_files(params: Params, paths: ProjectPaths, options: Mapping[str, Any], cls: type) -> list[tuple[str, Path]]:
    """(option, path) of the files a specialized model's options name, but those `train_mivolo` makes."""
    train = params.train_mivolo
    found = []
    for option in cls.file_options:
        value = options.get(option)
        if not isinstance(value, str | os.PathLike):
            continue
        path = paths(str(value))
        if train.dataset is not None and _inside(path, paths(train.out)):
            continue  # the train_mivolo stage writes it
        found.append((option, path))
    return found


def _import_problem(spec: str) -> str | None:
    """Why an import-path backend `module:Class` cannot be used, or None."""
    from agegender.mllm.backends.base import resolve_backend

    try:
        resolve_backend(spec)
    except InputError as exc:
        return exc.message
    return None


def check_params(
    params: Params,
    paths: ProjectPaths,
    *,
    env: Mapping[str, str] | None = None,
    sections: Collection[str] | None = None,
) -> Problems:
    """Check every file and setting the params point at, and return ALL problems at once.

    Relative paths resolve against the project root. Nothing is loaded beyond headers, checkpoint keys and
    small JSON files, except the images a data set names: each is opened and cheaply decoded (a JPEG at 1/8 scale,
    in threads; `agegender.data.readers.image_problems`), so that a truncated or empty file is reported here, with
    every other one, and not by a run that stops at it (67,000 LAGENDA-sized JPEGs: ~1.5 ms of CPU each, about
    a minute on 2 cores; an image already found to decode is not decoded again while the file is unchanged, so a
    later check of the same folder takes ~1.5 s; `benchmarks/bench_check_images.py`).

    Args:
        params: validated params.
        paths: the project's paths.
        env: where API keys are looked up (default `os.environ`); only presence is checked.
        sections: limit the check to these top-level sections (`SECTIONS`); None = all.

    Returns:
        The problems (a list of `Problem`, empty when all is well) with `n_checks` set.

    Raises:
        ValueError: an unknown section name.
    """
    wanted = SECTIONS if sections is None else tuple(sections)
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    checker = _Checker(params, paths, os.environ if env is None else env)
    for section in SECTIONS:
        if section in wanted:
            getattr(checker, section)()
    return checker.found


def format_problems(problems: Sequence[Problem]) -> str:
    """A numbered list of the problems, grouped by params section, for people to read.

    Args:
        problems: what `check_params` found.

    Returns:
        The text (no trailing newline); "no problems" for an empty list.
    """
    if not problems:
        return "no problems"
    groups: dict[str, list[Problem]] = {}
    for problem in problems:
        groups.setdefault(problem.where.split(".", 1)[0], []).append(problem)
    order = [s for s in SECTIONS if s in groups] + [s for s in groups if s not in SECTIONS]
    lines = [f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found:"]
    n = 0
    for section in order:
        lines.append(f"[{section}]")
        for problem in groups[section]:
            n += 1
            lines.append(f"{n:3d}. {problem.where}: {problem.message}")
            if problem.path and problem.path not in problem.message:
                lines.append(f"     at {problem.path}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Fingerprints


def _hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_ends(path: Path, size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        h.update(handle.read(_MIB))
        if size > _MIB:
            handle.seek(max(_MIB, size - _MIB))
            h.update(handle.read(_MIB))
    return h.hexdigest()


def _kind(name: str) -> str:
    lower = name.lower()
    if lower.endswith(TEXT_SUFFIXES):
        return "text"
    if lower.endswith(WEIGHT_SUFFIXES):
        return "weights"
    return "other"


def _file_entry(path: Path, size: int) -> dict[str, Any]:
    kind = _kind(path.name)
    if kind == "text":
        return {"size": size, "blake2b": _hash_file(path)}
    if kind == "weights":
        return {"size": size, "ends_blake2b": _hash_ends(path, size)}
    return {"size": size}


def _walk(folder: Path, prefix: str, seen: set[tuple[int, int]]) -> Iterator[tuple[str, Path, os.stat_result | None]]:
    """(relative path, path, stat or None for a dangling link) of every file below `folder`, sorted, links followed."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = f"{prefix}{entry.name}"
        try:
            st = entry.stat()  # follows symlinks: data sets often link image folders from elsewhere
        except OSError:
            yield rel, Path(entry.path), None
            continue
        if stat_module.S_ISDIR(st.st_mode):
            ident = (st.st_dev, st.st_ino)
            if ident in seen:  # a link back up the tree
                continue
            seen.add(ident)
            yield from _walk(Path(entry.path), f"{rel}/", seen)
        else:
            yield rel, Path(entry.path), st


def fingerprint_path(path: Path) -> dict[str, Any]:
    """A JSON-able fingerprint of a file or folder (see the module docstring for what is hashed).

    Args:
        path: the file or folder.

    Returns:
        `{"missing": true}`, a file's entry (`size` and a hash for text and weight files), or for a folder
        `{"files": {relative path: entry} for text and weight files, "other": {"count", "bytes", "blake2b"}}`.
    """
    if not path.exists():
        return {"missing": True}
    if not path.is_dir():
        return _file_entry(path, path.stat().st_size)
    files: dict[str, Any] = {}
    other = hashlib.blake2b(digest_size=16)
    count = total = 0
    root_stat = path.stat()
    for rel, file, st in _walk(path, "", {(root_stat.st_dev, root_stat.st_ino)}):
        if st is None:
            files[rel] = {"missing": True}
        elif _kind(rel) == "other":
            count += 1
            total += st.st_size
            other.update(f"{rel}\0{st.st_size}\n".encode())
        else:
            files[rel] = _file_entry(file, st.st_size)
    return {"files": files, "other": {"count": count, "bytes": total, "blake2b": other.hexdigest()}}


def _source(paths: ProjectPaths, configured: str) -> dict[str, Any]:
    return {"path": configured, **fingerprint_path(paths(configured))}


def _model_fingerprint(params: Params, paths: ProjectPaths, spec: MllmParams) -> dict[str, Any]:
    if spec.build_tiny is not None:
        return {}
    if spec.backend == "openai" and not spec.serve:
        from agegender.mllm.backends.openai_backend import OPENAI_BASE_URL, safe_url

        base_url = spec.options.get("base_url") or OPENAI_BASE_URL
        return {"backend": "openai", "model": spec.model or spec.options.get("model"), "base_url": safe_url(base_url)}
    out: dict[str, Any] = {"backend": spec.backend, "model": spec.model}
    if not spec.model:
        return out
    path = paths(spec.model)
    cfg = params.finetune_mllm
    if cfg is not None and _inside(path, paths(cfg.out)):
        return out  # made by finetune_mllm: DVC tracks it as that stage's output
    if not path.exists() and _is_hub_id(spec.model):
        snapshot = _hub_snapshot(spec.model)
        out["folder"] = fingerprint_path(snapshot) if snapshot is not None else {"missing": True}
    elif path.exists() or spec.backend in _LOCAL_BACKENDS:
        out["folder"] = fingerprint_path(path)
    return out


def fingerprints(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """What each stage reads from outside the project, fingerprinted, one JSON-able dict per consumer.

    Consumers: `prepare_data` (data set roots not generated by the stage, reader annotation files kept outside
    their root, subset exclude files), `train_mivolo` (pretrained weights), `predict` (`models`: the files the
    specialized models' options name, e.g. MiVOLO checkpoints not made by train_mivolo; `external`: prediction
    tables), `finetune_mllm` (base model folder, DeepSpeed config) and
    `query_mllms/<key>` (the model folder; for API models the backend, model and base_url, never the key).
    Consumers with nothing external get `{}`. Missing files are recorded as `{"missing": true}`.

    Args:
        params: validated params.
        paths: the project's paths.

    Returns:
        Consumer name -> fingerprint.
    """
    from agegender.specialized import resolve_model

    out: dict[str, dict] = {}
    cfg = params.prepare_data
    demo_root = paths(cfg.demo.root) if cfg.demo is not None else None
    datasets: dict[str, Any] = {}
    for name, ds in cfg.datasets.items():
        root = paths(ds.root)
        if demo_root is not None and _inside(root, demo_root):
            continue
        entry = {"reader": ds.reader, "root": _source(paths, ds.root)}
        for option in ("annotations", "csv"):  # reader files kept outside the data set's folder
            value = ds.options.get(option)
            if isinstance(value, str) and Path(value).is_absolute() and not _inside(Path(value), root):
                entry[option] = _source(paths, value)
        datasets[name] = entry
    subsets = {name: {"exclude": _source(paths, sub.exclude)} for name, sub in cfg.subsets.items() if sub.exclude}
    out["prepare_data"] = {k: v for k, v in (("datasets", datasets), ("subsets", subsets)) if v}

    train = params.train_mivolo
    pretrained = train.config.get("pretrained")
    out["train_mivolo"] = {"pretrained": _source(paths, str(pretrained))} if train.dataset and pretrained else {}

    models: dict[str, Any] = {}
    for name, spec in params.predict.models.items():
        try:
            cls = resolve_model(spec.model)
        except InputError:
            continue  # check_params reports it
        named = _model_files(params, paths, spec.options, cls)
        files = {option: _source(paths, str(spec.options[option])) for option, _ in named}
        if files:
            models[name] = files
    external = {name: _source(paths, ext.path) for name, ext in getattr(params.predict, "external", {}).items()}
    out["predict"] = {k: v for k, v in (("models", models), ("external", external)) if v}

    ft = params.finetune_mllm
    finetune: dict[str, Any] = {}
    if ft is not None and ft.build_tiny is None and ft.base_model is not None:
        finetune["base_model"] = _source(paths, ft.base_model)
        if ft.config.get("deepspeed"):
            finetune["deepspeed"] = _source(paths, str(ft.config["deepspeed"]))
    out["finetune_mllm"] = finetune

    for key, spec in params.query_mllms.models.items():
        out[f"query_mllms/{key}"] = _model_fingerprint(params, paths, spec)
    return out


def write_fingerprints(params: Params, paths: ProjectPaths, out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<consumer>.json` for every consumer the params define (DVC dependencies of the stages).

    A file is rewritten only when its content changed (its mtime stays put otherwise), and the files of models
    no longer in `query_mllms.models` are removed.

    Args:
        params: validated params.
        paths: the project's paths.
        out_dir: the folder (created), e.g. `data/sources`.

    Returns:
        Every consumer file, in consumer order (rewritten or not).
    """
    out_dir = Path(out_dir)
    files = []
    prints = fingerprints(params, paths)
    for consumer, data in prints.items():
        path = out_dir / f"{consumer}.json"
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)  # a reader never sees half a file
        files.append(path)
    models = out_dir / "query_mllms"
    if models.is_dir():
        for stale in sorted(models.glob("*.json")):
            if f"query_mllms/{stale.stem}" not in prints:
                stale.unlink()
    return files


# ----------------------------------------------------------------------------------------------
# Command line


def _cmd_check(args: argparse.Namespace) -> int:
    from agegender.params import load_params

    paths = ProjectPaths.at(args.root)
    params = load_params(paths(args.params))
    problems = check_params(params, paths, sections=args.section)
    if args.fingerprints:
        files = write_fingerprints(params, paths, paths(args.fingerprints))
        print(f"fingerprints: {len(files)} files in {paths(args.fingerprints)}")
    if problems:
        print(format_problems(problems))
        return 1
    print(f"OK: {problems.n_checks} checks")
    return 0


def add_check_parser(sub: Any) -> None:
    """Register `agegender check` on the CLI's subparsers."""
    parser = sub.add_parser("check", help="check every file and setting params.yaml names; list all problems")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to the project root")
    parser.add_argument("--root", default=None, help="project root (default: found above the working directory)")
    parser.add_argument(
        "--section", action="extend", nargs="+", choices=SECTIONS, default=None, help="check only these sections"
    )
    parser.add_argument("--fingerprints", default=None, help="also write the stages' fingerprints to this folder")
    parser.set_defaults(func=_cmd_check)


__all__ = [
    "SECTIONS",
    "SUPPORTED_MODEL_TYPES",
    "Problem",
    "Problems",
    "add_check_parser",
    "check_llava_folder",
    "check_mivolo_checkpoint",
    "check_params",
    "check_predictions_file",
    "fingerprint_path",
    "fingerprints",
    "format_problems",
    "write_fingerprints",
]
