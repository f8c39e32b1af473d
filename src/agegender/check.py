"""The `check` stage's shared machinery: run every stage's checks, collect every problem at once, fingerprint inputs.

`check_params` runs the `check` of every registered stage (`agegender.stages.registered`), which examines
everything its params section points at outside the project (data set folders, annotation CSVs and the images they
name, MiVOLO checkpoints, external prediction tables, Hugging Face model folders, API settings), and returns ALL
problems at once, each naming its params key, what is wrong and the file. The checks of a format live beside the
code that reads it (`agegender.data.registry.check_dataset`, `agegender.faces.check_face_detector`,
`agegender.specialized.model_problems` and each model class's `check_file`,
`agegender.mivolo.checkpoint.check_mivolo_checkpoint`, `agegender.evaluate.check_predictions_file`,
`agegender.mllm.tools.convert.check_model_folder`);
a stage's `check` decides which apply to its section, and this module collects their lines (`Checker`).

What the pipeline makes itself is skipped: data sets inside the generated demo folder, checkpoints inside
`train_mivolo.out`, model folders inside `finetune_mllm.out`, and `build_tiny` models. API keys are checked
for presence in the environment only; their values are never read into a message, a fingerprint or a file.

`fingerprints` / `write_fingerprints` record, per consumer stage, what it reads from outside the project, so
that DVC (whose always-run `check` stage writes them to `data/sources/`) reruns a stage exactly when one of
those inputs changed. Each registered stage's `fingerprint` says what its consumers read (`query_mllms/<key>`:
one per configured model); this module fingerprints files and folders (`fingerprint_path`). Folders are walked
recursively in sorted order (hidden names, starting with ".", are left out: editor, OS and download-tool metadata):

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

import hashlib
import json
import os
import stat as stat_module
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agegender.files import atomic_write_text
from agegender.fingerprint import file_sha256
from agegender.params import Params
from agegender.paths import ProjectPaths
from agegender.stages import STAGES, registered

#: what `check_params(sections=...)` can limit the check to: the registered stages (each checks its params section)
SECTIONS: tuple[str, ...] = STAGES
#: recorded by size and the SHA-256 of their full contents in the fingerprints: text-like and weight files
#: (".pth.tar" ends with ".tar"); any other file by size only
HASHED_SUFFIXES: tuple[str, ...] = (
    *(".csv", ".txt", ".json", ".yaml", ".yml", ".tsv", ".jinja", ".model"),
    *(".safetensors", ".bin", ".pt", ".pth", ".tar", ".gguf"),
)


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


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it (both resolved, so `..` and symlinked roots compare right)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


# ----------------------------------------------------------------------------------------------
# The checker the stages' checks add to


class Checker:
    """Collects the problems of one check run; the stages' `check` functions add to it.

    Holds what every stage's checks share: the params, the paths, the environment API keys are looked up in, the
    problems found and how many things were checked, and the cross-reference checks between sections.
    """

    def __init__(self, params: Params, paths: ProjectPaths, env: Mapping[str, str]) -> None:
        self.params, self.paths, self.env = params, paths, env
        self.found = Problems()

    def add(self, where: str, message: str, path: Path | str | None = None) -> None:
        """Record one problem at params key `where` (about `path`, where there is one)."""
        self.found.append(Problem(where, message, None if path is None else str(path)))

    def ran(self, n: int = 1) -> None:
        """Count `n` things checked (`Problems.n_checks`, reported by the `check` stage)."""
        self.found.n_checks += n

    def dataset_ref(self, where: str, name: str | None, known: Collection[str], what: str) -> None:
        """`name` (if set) must be one of `known`, the data sets of params section `what`."""
        if name is None:
            return
        self.ran()
        if name not in known:
            self.add(where, f"{name!r} is not one of {what}: {sorted(known)}")

    def prepared_ref(self, where: str, name: str | None) -> None:
        """`name` (if set) must be a data set that `prepare_data` prepares."""
        self.dataset_ref(where, name, self.params.prepare_data.datasets, "prepare_data.datasets")


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
    checker = Checker(params, paths, os.environ if env is None else env)
    for stage in registered():
        if stage.NAME in wanted:
            stage.check(checker)
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


def source_fingerprint(paths: ProjectPaths, configured: str) -> dict[str, Any]:
    """The fingerprint of a configured path (resolved against the project root), with the path as configured."""
    return {"path": configured, **fingerprint_path(paths(configured))}


def fingerprints(params: Params, paths: ProjectPaths) -> dict[str, dict]:
    """What each stage reads from outside the project, fingerprinted, one JSON-able dict per consumer.

    Consumers, from each registered stage's `fingerprint`: the stage itself (`prepare_data`, `train_mivolo`,
    `predict`), or one per part (`query_mllms/<key>` for each configured model, `finetune_mllm/<run>` for each
    fine-tuning run); their docstrings say what each records. Consumers with nothing external get `{}`. Missing
    files are recorded as `{"missing": true}`.

    Args:
        params: validated params.
        paths: the project's paths.

    Returns:
        Consumer name -> fingerprint.
    """
    return {consumer: data for stage in registered() for consumer, data in stage.fingerprint(params, paths).items()}


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
    for name in STAGES:  # consumers per part (`query_mllms/<key>`) no longer configured
        parts = out_dir / name
        if parts.is_dir():
            for stale in sorted(parts.glob("*.json")):
                if f"{name}/{stale.stem}" not in prints:
                    stale.unlink()
    return files


__all__ = [
    "HASHED_SUFFIXES",
    "SECTIONS",
    "Checker",
    "Problem",
    "Problems",
    "check_params",
    "fingerprint_path",
    "fingerprints",
    "format_problems",
    "inside",
    "source_fingerprint",
    "write_fingerprints",
]
