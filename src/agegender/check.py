"""The `check` stage's shared machinery: walk the params, collect every problem at once, fingerprint inputs.

`check_params` walks everything params.yaml points at outside the project (data set folders, annotation CSVs and
the images they name, MiVOLO checkpoints, external prediction tables, Hugging Face model folders, API settings)
and returns ALL problems at once, each naming its params key, what is wrong and the file. The checks of a format
live beside the code that reads it; this module decides which apply where, and collects their lines:

- data sets: `agegender.data.readers.check_dataset` (each reader's own `check`), face detectors:
  `agegender.faces.check_face_detector`;
- specialized models: `agegender.specialized.model_problems` and each class's `check_file` (MiVOLO checkpoints:
  `agegender.mivolo.checkpoint.check_mivolo_checkpoint`);
- external prediction tables: `agegender.evaluate.check_predictions_file`;
- LLaVA model folders: `agegender.mllm.convert.check_llava_folder`.

What the pipeline makes itself is skipped: data sets inside the generated demo folder, checkpoints inside
`train_mivolo.out`, model folders inside `finetune_mllm.out`, and `build_tiny` models. API keys are checked
for presence in the environment only; their values are never read into a message, a fingerprint or a file.

`fingerprints` / `write_fingerprints` record, per consumer stage, what it reads from outside the project, so
that DVC (whose always-run `check` stage writes them to `data/sources/`) reruns a stage exactly when one of
those inputs changed. Consumers: `prepare_data`, `train_mivolo`, `predict`, `finetune_mllm` and
`query_mllms/<key>` for each configured model. Folders are walked recursively in sorted order (hidden names,
starting with ".", are left out: editor, OS and download-tool metadata):

- text-like and weight files (`HASHED_SUFFIXES`) are recorded by size and the SHA-256 of their full contents
  (`agegender.fingerprint.file_sha256`, the one home of file digests): a model retrained in place keeps its sizes
  and may keep its first and last megabytes, and must still rerun the stages that read it. Digests of files of
  1 MiB and more are cached by the file's identity, so a 7B model is read once (~10 s), not on every `dvc repro`;
- every other file (images above all) is recorded by relative path and size only, folded into one digest per
  folder with the file count and total bytes, so that LAGENDA's 67k images cost 67k `stat` calls and a few
  bytes of JSON.

Limitation: an image (or any other file not in `HASHED_SUFFIXES`) replaced by a different file of exactly the
same size is not noticed. Touch the params (or delete the fingerprint file) to force a rerun after such an edit.
"""

from __future__ import annotations

import argparse
import hashlib
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
from agegender.fingerprint import file_sha256
from agegender.params import MllmParams, Params
from agegender.paths import ProjectPaths

#: top-level params sections that `check_params(sections=...)` can limit the check to
SECTIONS: tuple[str, ...] = ("prepare_data", "train_mivolo", "predict", "query_mllms", "finetune_mllm", "report")
#: recorded by size and the SHA-256 of their full contents in the fingerprints: text-like and weight files
#: (".pth.tar" ends with ".tar"); any other file by size only
HASHED_SUFFIXES: tuple[str, ...] = (
    *(".csv", ".txt", ".json", ".yaml", ".yml", ".tsv", ".jinja", ".model"),
    *(".safetensors", ".bin", ".pt", ".pth", ".tar", ".gguf"),
)

_LOCAL_BACKENDS = ("transformers", "vllm")


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
        pretrained = cfg.config.pretrained
        if pretrained:
            self.ran()
            path = self.paths(str(pretrained))
            if not path.is_file():
                self.add("train_mivolo.config.pretrained", "pretrained weights file not found", path)

    def predict(self) -> None:
        from agegender.evaluate import check_predictions_file
        from agegender.specialized import dataset_option_values, model_problems, resolve_model

        cfg = self.params.predict
        for name, spec in cfg.models.items():
            where = f"predict.models.{name}"
            self.ran()
            try:
                cls = resolve_model(spec.model)
            except InputError as exc:
                self.add(f"{where}.model", exc.message)
                continue
            for field, line in model_problems(cls, spec.model, spec.options, spec.inputs):
                self.add(f"{where}.{field}", line)
            for option, value in dataset_option_values(cls, spec.options).items():
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
        from agegender.mllm.backends.transformers_backend import cached_snapshot, is_hub_id

        if is_hub_id(model):
            snapshot = cached_snapshot(model)
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
                    from agegender.mllm.convert import check_llava_folder  # torch: imported only when needed

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
        """What the environment must give an API model; its options were checked when params were loaded."""
        from agegender.mllm.backend_options import OpenAIOptions, is_loopback_url

        if not spec.model:
            self.add(f"{where}.model", "the openai backend needs a model id (e.g. gpt-4o-2024-08-06)")
        base_url = spec.options.get("base_url")
        loopback = is_loopback_url(base_url)
        key_env = spec.options.get("api_key_env", OpenAIOptions.api_key_env)
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
        from agegender.mllm.convert import check_llava_folder

        self.ran()
        folder = self.paths(cfg.base_model)
        if not folder.is_dir():
            self.add("finetune_mllm.base_model", "base model folder not found", folder)
        else:
            for line in check_llava_folder(folder):
                self.add("finetune_mllm.base_model", line, folder)
        deepspeed = cfg.config.deepspeed
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


def _hashed(name: str) -> bool:
    """Whether a file's fingerprint holds a digest of its contents (`HASHED_SUFFIXES`), not only its size."""
    return name.lower().endswith(HASHED_SUFFIXES)


def _file_entry(path: Path, size: int) -> dict[str, Any]:
    return {"size": size, "sha256": file_sha256(path)} if _hashed(path.name) else {"size": size}


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
        `{"missing": true}`, a file's entry (`size`, and `sha256` for a file in `HASHED_SUFFIXES`), or for a
        folder `{"files": {relative path: entry} of its hashed files, "other": {"count", "bytes", "blake2b"}}`.
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
        elif not _hashed(rel):
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
        from agegender.mllm.backend_options import OPENAI_BASE_URL, safe_url

        base_url = spec.options.get("base_url") or OPENAI_BASE_URL
        return {"backend": "openai", "model": spec.model or spec.options.get("model"), "base_url": safe_url(base_url)}
    out: dict[str, Any] = {"backend": spec.backend, "model": spec.model}
    if not spec.model:
        return out
    path = paths(spec.model)
    cfg = params.finetune_mllm
    if cfg is not None and _inside(path, paths(cfg.out)):
        return out  # made by finetune_mllm: DVC tracks it as that stage's output
    from agegender.mllm.backends.transformers_backend import cached_snapshot, is_hub_id

    if not path.exists() and is_hub_id(spec.model):
        snapshot = cached_snapshot(spec.model)
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
    pretrained = train.config.pretrained
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
        if ft.config.deepspeed:
            finetune["deepspeed"] = _source(paths, ft.config.deepspeed)
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
    "HASHED_SUFFIXES",
    "SECTIONS",
    "Problem",
    "Problems",
    "add_check_parser",
    "check_params",
    "fingerprint_path",
    "fingerprints",
    "format_problems",
    "write_fingerprints",
]
