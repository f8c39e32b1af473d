"""Checkpoint selection as the paper did it: query every saved checkpoint (here on a validation split), keep the best.

The paper (section 4.3) saved a checkpoint every 450 steps while fine-tuning ShareGPT4V-7B, evaluated each one
("evaluating every 450th iteration") and kept the best (at 40% of the epoch). On which split it does not say (table 6
reports the checkpoints on LAGENDA test); we choose on a validation split so that the test numbers stay unbiased.
`select_checkpoint` does that with the zero-shot protocol itself: every checkpoint of a fine-tuning run answers the
validation crops through `agegender.mllm.runner.query_samples` (same prompt, parser and `transformers` backend as
the zero-shot stage), the answers are scored with `agegender.metrics.evaluate`, and the best checkpoint by one metric
is chosen. `keep_best` copies it to a folder that the `transformers` and `vllm` backends serve unchanged, with the
table beside it.

Run folder (written by `agegender.mllm.finetune`)::

    run_dir/checkpoints.json   [{"step": 450, "epoch_fraction": 0.2, "path": "checkpoint-450"}, ...]
    run_dir/checkpoint-<step>/ complete HF folders (model, processor; training state files are ignored)
    run_dir/final/             the model at the end of training (evaluated too, when present)

An entry's folder is its `name` relative to `run_dir` when that exists (what `agegender.mllm.finetune` writes,
with `"final": true` on the final model), else its `path`, absolute or relative to `run_dir` (or to the working
directory). The final model may share its step with the last checkpoint. `final/` is added unless the index lists
it; its step and epoch fraction come from its `trainer_state.json` (`global_step`, `epoch`), else from the run
folder's, else the largest indexed step and 1.0.

Choice rules:

- `age_mae` and `age_mape`: lower is better; `age_cs5` and `gender_acc`: higher is better.
- A checkpoint whose coverage (share of its answers that parse, `ok`, among the samples that have a crop) is below
  `min_coverage` (default 0.5) cannot win: a model that answers only the easy half would otherwise look best on
  MAE. Nor can one whose metric is NaN (no answer to score).
- Ties (equal to 1e-9) go to the earlier step: less training for the same quality.
- When no checkpoint qualifies, `best` is None and `keep_best` raises.

Resuming: answers go to a response store (default `<run_dir>-selection/responses`, beside the run folder and not in
it, so that a DVC stage does not modify the fine-tuning stage's output), so a re-run sends no request.
The model of a checkpoint is loaded only when one of its queries misses the store: the store key (model folder,
weights digest, backend options) is computed from the folder, and checked against the loaded backend's own key
before anything is sent, so a re-run over a finished selection loads no model at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agegender.errors import InputError
from agegender.files import atomic_write_text
from agegender.metrics import METRICS_BY_NAME, evaluate
from agegender.mllm.backend_options import TransformersOptions
from agegender.mllm.backends.base import Answer, Backend, GenerationParams, Query

if TYPE_CHECKING:
    import pandas as pd

    from agegender.mllm.store import ResponseStore

INDEX_FILE = "checkpoints.json"
FINAL_DIR = "final"
#: the metrics a checkpoint can be chosen by (those of the paper that pooled data sets give) -> True when higher is
#: better (`agegender.metrics.METRICS`)
METRICS: dict[str, bool] = {
    name: METRICS_BY_NAME[name].higher_is_better for name in ("age_mae", "age_mape", "age_cs5", "gender_acc")
}
#: the default share of parsed answers below which a checkpoint cannot win
MIN_COVERAGE = 0.5
TABLE_COLUMNS: tuple[str, ...] = (
    "name",
    "step",
    "epoch_fraction",
    "path",
    "n",
    "n_no_crop",
    "coverage",
    "age_mae",
    "age_cs5",
    "age_mape",
    "gender_acc",
    "requests_sent",
    "model_loaded",
    "eligible",
    "best",
)
#: columns of the selection table that say how this run went (what the store already held), not what was measured:
#: left out of `selection.csv` / `selection.md` so that the same results write the same bytes
RUN_COLUMNS = ("requests_sent", "model_loaded")
#: files of a Trainer checkpoint that hold training state, not the model: never copied by `keep_best`
TRAINING_STATE = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "training_args.bin", "latest")
_TRAINING_STATE_PREFIXES = ("rng_state", "global_step", "zero_to_fp32", "pytorch_model_fsdp", "optimizer_")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
_TIE = 1e-9


# ---------------------------------------------------------------------------------------------------------------
# The run folder


@dataclass(frozen=True)
class Checkpoint:
    """One saved model of a fine-tuning run.

    Attributes:
        name: folder name (`checkpoint-450`, `final`); the `model` column of its predictions.
        step: optimizer step at which it was saved.
        epoch_fraction: the share of the epoch(s) trained, e.g. 0.4.
        path: the HF model folder.
        final: the model saved at the end of training (sorts after a checkpoint of the same step).
    """

    name: str
    step: int
    epoch_fraction: float
    path: Path
    final: bool = False


def _trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / "trainer_state.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_model_folder(folder: Path, index: Path, row: int | None = None) -> None:
    if not folder.is_dir():
        raise InputError(f"checkpoint folder {folder} does not exist", file=index, row=row, field="path")
    if not (folder / "config.json").is_file():
        raise InputError(
            f"checkpoint folder {folder} has no config.json (not a complete HF model folder)",
            file=index,
            row=row,
            field="path",
        )


def _entry_folder(run: Path, entry: Mapping[str, Any], index: Path, row: int) -> Path:
    """An index entry's folder: `name` relative to the run folder, else `path` (absolute, run-relative or as given).

    `agegender.mllm.finetune` writes `path` as `out_dir/<name>` with out_dir as the user spelled it (possibly
    relative to the working directory of training) and `name` relative to the index, so `name` is tried first.
    """
    name, path = entry.get("name"), entry.get("path")
    if isinstance(name, str) and name and not Path(name).is_absolute() and (run / name).is_dir():
        return run / name
    if not isinstance(path, str) or not path:
        raise InputError(f"path must be a folder name, got {path!r}", file=index, row=row, field="path")
    given = Path(path)
    if given.is_absolute() or given.is_dir() and not (run / given).is_dir():
        return given
    return run / given  # a missing folder is reported by the caller


def _name(run: Path, folder: Path, entry: Mapping[str, Any]) -> str:
    """A unique readable name: the folder relative to the run (`checkpoint-450`, `checkpoint-450/merged`)."""
    try:
        return folder.resolve().relative_to(run.resolve()).as_posix()
    except ValueError:
        name = entry.get("name")
        return name if isinstance(name, str) and name else folder.name


def read_checkpoints(run_dir: str | Path, *, include_final: bool = True) -> list[Checkpoint]:
    """The checkpoints of a fine-tuning run, by step (final last), from its `checkpoints.json`.

    Args:
        run_dir: the fine-tuning output folder.
        include_final: add `run_dir/final` when it exists and the index does not list it.

    Returns:
        The checkpoints, sorted by (step, final last).

    Raises:
        InputError: no index (and no `final/`), an unreadable index, an entry without an integer `step >= 0`, a
            number `epoch_fraction >= 0` or a `path`, two checkpoints with the same step, two entries with the same
            folder, or a folder that is
            missing or lacks config.json (naming the index, the 1-based entry and the field).
    """
    run = Path(run_dir)
    index = run / INDEX_FILE
    final = run / FINAL_DIR
    entries: list[Any] = []
    if index.is_file():
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot be read as JSON ({type(exc).__name__}: {exc})", file=index) from exc
        if not isinstance(entries, list):
            raise InputError("must hold a JSON list of {step, epoch_fraction, path}", file=index)
    elif not (include_final and final.is_dir()):
        raise InputError(f"no {INDEX_FILE} and no {FINAL_DIR}/ folder: not a fine-tuning run folder", file=run)
    out: list[Checkpoint] = []
    seen_steps: dict[int, int] = {}
    seen_paths: dict[Path, int] = {}
    for row, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise InputError("entry must be an object {step, epoch_fraction, path}", file=index, row=row)
        step, frac = entry.get("step"), entry.get("epoch_fraction")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InputError(f"step must be an integer >= 0, got {step!r}", file=index, row=row, field="step")
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not math.isfinite(frac) or frac < 0:
            raise InputError(
                f"epoch_fraction must be a number >= 0, got {frac!r}", file=index, row=row, field="epoch_fraction"
            )
        folder = _entry_folder(run, entry, index, row)
        _check_model_folder(folder, index, row)
        resolved = folder.resolve()
        is_final = bool(entry.get("final")) or resolved == final.resolve()
        # The final model may share its step with the last checkpoint (training ends on a save step).
        if step in seen_steps and not is_final:
            raise InputError(f"step {step} is also entry {seen_steps[step]}", file=index, row=row, field="step")
        if resolved in seen_paths:
            raise InputError(f"folder is also entry {seen_paths[resolved]}", file=index, row=row, field="path")
        if not is_final:
            seen_steps[step] = row
        seen_paths[resolved] = row
        out.append(Checkpoint(_name(run, folder, entry), step, float(frac), folder, is_final))
    if include_final and final.is_dir() and final.resolve() not in seen_paths:
        _check_model_folder(final, run / FINAL_DIR)
        state = _trainer_state(final) or _trainer_state(run)
        step = state.get("global_step")
        if isinstance(step, bool) or not isinstance(step, int):
            step = max((c.step for c in out), default=0)
        epoch = state.get("epoch")
        frac = float(epoch) if isinstance(epoch, int | float) and not isinstance(epoch, bool) else 1.0
        out.append(Checkpoint(FINAL_DIR, step, frac, final, True))
    # final sorts after a checkpoint of the same step: the tie rule then prefers the indexed checkpoint
    return sorted(out, key=lambda c: (c.step, c.final))


# ---------------------------------------------------------------------------------------------------------------
# A transformers backend that loads its model only when a query misses the store


class _LazyTransformers(Backend):
    """The `transformers` backend of one folder, loaded on the first request actually sent.

    `run_queries` reads the store key (model, revision, params, key options) before it sends anything; these are
    computed here from the folder the way `TransformersBackend` computes them, and compared with the loaded
    backend's before its first request, so a wrong prediction can never file an answer under the wrong key.
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
        from agegender.device import resolve_device
        from agegender.mllm.backends.transformers_backend import folder_revision, resolution_settings, resolve_dtype

        super().__init__(model, params=params)
        self._options = o = self.load_options(options, **kwargs)
        self.batch_size = o.batch_size
        folder = Path(model)
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read config.json ({type(exc).__name__}: {exc})", file=folder) from exc
        dtype = resolve_dtype(o.dtype, resolve_device(o.device))
        self._key = {
            "pad_to_square": config.get("model_type") == "llava" if o.pad_to_square is None else o.pad_to_square,
            "system_prompt": o.system_prompt,
            "dtype": str(dtype).removeprefix("torch."),
            **resolution_settings(o),
        }
        self._revision = o.model_revision or folder_revision(folder)
        self.real: Backend | None = None

    @property
    def model_revision(self) -> str | None:
        """The weights digest of the folder (or the `model_revision` option)."""
        return self._revision

    def key_options(self) -> dict[str, Any]:
        """What `TransformersBackend.key_options` will say once loaded."""
        return dict(self._key)

    def load(self) -> Backend:
        """Load the real backend (once) and check that its store key matches the predicted one.

        Raises:
            RuntimeError: the loaded backend's revision or key options differ from the prediction (a bug here).
        """
        if self.real is None:
            from agegender.mllm.backends.base import create_backend

            real = create_backend("transformers", self.model, params=self.params, options=self._options)
            got = (real.model_revision, real.key_options())  # type: ignore[attr-defined]
            if got != (self._revision, self._key):
                real.close()
                raise RuntimeError(
                    f"store key predicted for {self.model} ({self._revision}, {self._key}) differs from the loaded "
                    f"backend's {got}; agegender.mllm.finetune.select must follow TransformersBackend.key_options"
                )
            self.real = real
        return self.real

    def generate_batch(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer through the loaded backend."""
        return self.load().generate_batch(queries)

    async def astream(self, queries: Sequence[Query]) -> AsyncIterator[Answer]:
        """Answer through the loaded backend, as it streams."""
        async for answer in self.load().astream(queries):
            yield answer

    def describe(self) -> dict[str, Any]:
        """The loaded backend's description, or the predicted key when nothing had to be loaded."""
        if self.real is not None:
            return self.real.describe()
        return {**super().describe(), "loaded": False, "key_options": dict(self._key)}

    def close(self) -> None:
        """Free the loaded model, if any."""
        if self.real is not None:
            self.real.close()


# ---------------------------------------------------------------------------------------------------------------
# Selecting


@dataclass
class SelectionResult:
    """What `select_checkpoint` found.

    Attributes:
        table: one row per checkpoint (`TABLE_COLUMNS`), by step; `best` marks the chosen one.
        best: the chosen checkpoint, or None when none qualified.
        metric: the metric it was chosen by.
        higher_is_better: that metric's direction.
        min_coverage: the coverage a checkpoint needed to qualify.
        split, input_kind: what was queried.
        run_dir: the fine-tuning run folder.
        predictions: checkpoint name -> its prediction table.
        manifests: checkpoint name -> its run manifest.
    """

    table: pd.DataFrame
    best: Checkpoint | None
    metric: str
    higher_is_better: bool
    min_coverage: float
    split: str
    input_kind: str
    run_dir: Path
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def best_row(self) -> dict[str, Any] | None:
        """The table row of the best checkpoint, as a dict (None when none qualified)."""
        if self.best is None:
            return None
        return self.table.loc[self.table["best"]].iloc[0].to_dict()

    def summary(self) -> dict[str, Any]:
        """Flat numbers for a metrics JSON: the choice and the best checkpoint's scores."""
        row = self.best_row or {}
        out: dict[str, Any] = {
            "metric": self.metric,
            "min_coverage": self.min_coverage,
            "checkpoints": len(self.table),
            "best_name": row.get("name"),
            "best_step": None if not row else int(row["step"]),
            "best_epoch_fraction": None if not row else float(row["epoch_fraction"]),
        }
        out["best_n"] = None if not row else int(row["n"])
        for name in ("coverage", *METRICS):
            value = row.get(name)
            out[f"best_{name}"] = None if value is None or _isnan(value) else float(value)
        return out


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def score_predictions(samples: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, float]:
    """Score one checkpoint's predictions: n, coverage and the paper's metrics, pooled over data sets.

    Only the samples that were queried (have a prediction row) count: a sample without a crop is no fault of
    the checkpoint, and is the same for all of them.

    Args:
        samples: the validation sample table.
        predictions: one model's prediction table (`run_queries`).

    Returns:
        `n` (queried samples), `coverage` (share `ok`), `age_mae`, `age_cs5`, `age_mape`, `gender_acc` (NaN
        where nothing could be scored).
    """
    nan = float("nan")
    if len(predictions) == 0:
        return {"n": 0, "coverage": nan, **dict.fromkeys(METRICS, nan)}
    queried = samples.loc[samples["sample_id"].isin(set(predictions["sample_id"]))].copy()
    # One pooled row: the choice is made on the whole split. Class labels are dropped, as class metrics are not
    # used here and several data sets' class schemes would not mix.
    queried["dataset"] = "+".join(sorted(map(str, queried["dataset"].unique())))
    queried["age_class"] = None
    scored = evaluate(queried, predictions, views=("answered",))
    row = scored.iloc[0]
    return {
        "n": int(row["n_total"]),
        "coverage": float(row["coverage"]),
        **{name: float(row[name]) for name in METRICS},
    }


def _check_choice(metric: str, min_coverage: float) -> None:
    if metric not in METRICS:
        raise InputError(f"unknown selection metric {metric!r}; use one of {list(METRICS)}", field="metric")
    if isinstance(min_coverage, bool) or not isinstance(min_coverage, int | float) or not 0 <= min_coverage <= 1:
        raise InputError(f"min_coverage must be a number in [0, 1], got {min_coverage!r}", field="min_coverage")


def choose_best(
    table: pd.DataFrame, metric: str = "age_mae", *, min_coverage: float = MIN_COVERAGE
) -> tuple[int | None, list[bool]]:
    """Pick the best row of a checkpoint table (module rules: direction, coverage threshold, ties -> earlier step).

    Args:
        table: rows with `step`, `coverage` and the metric (in the order of `read_checkpoints`).
        metric: one of `METRICS`.
        min_coverage: rows with a lower coverage cannot win.

    Returns:
        (positional index of the best row or None, eligibility of every row).

    Raises:
        InputError: an unknown metric or a threshold outside [0, 1].
    """
    _check_choice(metric, min_coverage)
    sign = -1.0 if METRICS[metric] else 1.0
    eligible: list[bool] = []
    best: int | None = None
    best_key: tuple[float, int] | None = None
    for pos, (step, coverage, value) in enumerate(zip(table["step"], table["coverage"], table[metric], strict=True)):
        ok = not (_isnan(float(coverage)) or _isnan(float(value))) and float(coverage) >= float(min_coverage)
        eligible.append(ok)
        if not ok:
            continue
        key = (sign * float(value), int(step))
        # strictly better by more than the tie tolerance, or equal within it and earlier
        if (
            best_key is None
            or key[0] < best_key[0] - _TIE
            or (abs(key[0] - best_key[0]) <= _TIE and key[1] < best_key[1])
        ):
            best, best_key = pos, key
    return best, eligible


def _evaluate_checkpoint(
    checkpoint: Checkpoint,
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    input_kind: str,
    store: ResponseStore,
    backend_name: str,
    backend_options: Any,
    generation: GenerationParams,
    progress: bool,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Query one checkpoint through the zero-shot runner and score it: (numbers, predictions, manifest)."""
    from agegender.mllm.runner import BackendSpec, plan_queries, query_samples

    model = str(checkpoint.path.resolve())
    backend: Backend | BackendSpec = (
        _LazyTransformers(model, params=generation, options=backend_options)
        if backend_name == "transformers"
        else BackendSpec(backend_name, model, generation, backend_options)
    )
    run = query_samples(
        plan_queries(samples, [input_kind]), masked, image_roots, backend=backend, store=store,
        model_name=checkpoint.name, progress=progress,
    )  # fmt: skip
    result = run.results[input_kind]
    # whether the checkpoint's model had to be loaded (a lazy backend whose answers were all stored never loads)
    loaded = getattr(backend, "real", True) is not None
    numbers = score_predictions(samples, result.predictions)
    numbers.update(
        n_no_crop=len(result.no_crop_ids), requests_sent=int(result.manifest["requests_sent"]), model_loaded=loaded
    )
    return numbers, result.predictions, result.manifest


def default_store(run_dir: str | Path) -> Path:
    """The response store folder `select_checkpoint` uses by default: `<run_dir>-selection/responses`."""
    run = Path(run_dir).absolute()
    return run.with_name(f"{run.name}-selection") / "responses"


def select_checkpoint(
    run_dir: str | Path,
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    split: str = "val",
    input_kind: str = "body",
    metric: str = "age_mae",
    min_coverage: float = MIN_COVERAGE,
    store: ResponseStore | str | Path | None = None,
    backend: str = "transformers",
    backend_options: Any = None,
    generation: GenerationParams | None = None,
    include_final: bool = True,
    progress: bool = True,
) -> SelectionResult:
    """Query every checkpoint of a fine-tuning run on a validation split and choose the best (module docs).

    Args:
        run_dir: the fine-tuning output folder (`checkpoints.json`, `checkpoint-*/`, `final/`).
        samples: a sample table holding the split (other splits are ignored).
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        split: the split to select on (a validation split, never the test split; the paper names none).
        input_kind: `body` (the fine-tuning default), `face` or `body_wo_face`.
        metric: `age_mae` (default), `age_mape`, `age_cs5` or `gender_acc`.
        min_coverage: the share of parsed answers a checkpoint needs to be chosen.
        store: a ResponseStore or its folder; None = `<run_dir>-selection/responses` (beside the run folder).
        backend: a registered backend name; `transformers` (the default, as zero-shot) loads lazily.
        backend_options: options of the backend: typed (`TransformersOptions` for `transformers`: `device`,
            `batch_size`, `dtype`, ...) or a mapping of keyword arguments; None = the defaults.
        generation: generation settings (default: the zero-shot ones, greedy).
        include_final: also evaluate `run_dir/final`.
        progress: show progress bars (checkpoints, and queries within each).

    Returns:
        The table, the best checkpoint, and each checkpoint's predictions and manifest.

    Raises:
        InputError: a bad run folder or index (see `read_checkpoints`), no sample of the split, a bad metric,
            threshold or input kind, unreadable images.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from agegender.mllm.runner import _check_input
    from agegender.mllm.store import ResponseStore

    _check_input(input_kind)
    _check_choice(metric, min_coverage)  # before hours of queries, not after
    run = Path(run_dir)
    checkpoints = read_checkpoints(run, include_final=include_final)
    if not checkpoints:
        raise InputError(f"{INDEX_FILE} lists no checkpoint", file=run / INDEX_FILE)
    if "split" not in samples.columns:
        raise InputError("the sample table has no split column", field="split")
    val = samples.loc[samples["split"] == split]
    if len(val) == 0:
        found = sorted(map(str, samples["split"].dropna().unique()))
        raise InputError(f"no sample of split {split!r} (splits present: {found})", field="split")
    own_store = not isinstance(store, ResponseStore)
    the_store = store if isinstance(store, ResponseStore) else ResponseStore(store or default_store(run))
    params = generation or GenerationParams()
    rows: list[dict[str, Any]] = []
    predictions: dict[str, pd.DataFrame] = {}
    manifests: dict[str, dict[str, Any]] = {}
    try:
        for ckpt in tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=not progress):
            numbers, preds, manifest = _evaluate_checkpoint(
                ckpt,
                val,
                masked,
                image_roots,
                input_kind=input_kind,
                store=the_store,
                backend_name=backend,
                backend_options=backend_options,
                generation=params,
                progress=progress,
            )
            rows.append({"name": ckpt.name, "step": ckpt.step, "epoch_fraction": ckpt.epoch_fraction,
                         "path": str(ckpt.path), **numbers})  # fmt: skip
            predictions[ckpt.name], manifests[ckpt.name] = preds, manifest
    finally:
        if own_store:
            the_store.close()
    table = pd.DataFrame(rows)
    best, eligible = choose_best(table, metric, min_coverage=min_coverage)
    table["eligible"] = eligible
    table["best"] = [pos == best for pos in range(len(table))]
    table = table[list(TABLE_COLUMNS)]
    return SelectionResult(
        table=table,
        best=None if best is None else checkpoints[best],
        metric=metric,
        higher_is_better=METRICS[metric],
        min_coverage=float(min_coverage),
        split=split,
        input_kind=input_kind,
        run_dir=run,
        predictions=predictions,
        manifests=manifests,
    )


# ---------------------------------------------------------------------------------------------------------------
# Keeping the best


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def selection_markdown(result: SelectionResult, caption: str | None = None) -> str:
    """The selection table as markdown, with a caption that says how the best was chosen.

    Args:
        result: a selection.
        caption: a first line (e.g. "demo data: ..."); default: none.
    """
    direction = "higher" if result.higher_is_better else "lower"
    chosen = "none qualified"
    if result.best is not None:
        chosen = f"`{result.best.name}` (step {result.best.step}, {result.best.epoch_fraction:.0%} of the epoch)"
    lines = [caption, ""] if caption else []
    lines.append(
        f"Checkpoint selection on split `{result.split}` (input `{result.input_kind}`): best by `{result.metric}` "
        f"({direction} is better) among checkpoints whose coverage is at least {result.min_coverage:g}: {chosen}."
    )
    lines.append("")
    cols = [c for c in TABLE_COLUMNS if c != "path" and c not in RUN_COLUMNS]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" if c == "name" else "---:" for c in cols) + "|")
    for _, row in result.table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _is_training_state(name: str) -> bool:
    return name in TRAINING_STATE or name.startswith(_TRAINING_STATE_PREFIXES)


def _copy_tree(src: Path, dst: Path, link: bool) -> None:
    dst.mkdir(parents=True)
    for item in sorted(src.iterdir()):
        if _is_training_state(item.name):
            continue
        target = dst / item.name
        if item.is_dir():
            _copy_tree(item, target, link)
            continue
        if link:
            try:
                os.link(item.resolve(), target)
                continue
            except OSError:  # another file system, or links not allowed: copy instead
                pass
        shutil.copy2(item, target)


def keep_best(
    result: SelectionResult,
    dest: str | Path,
    *,
    link: bool = False,
    table_dir: str | Path | None = None,
    caption: str | None = None,
) -> Path:
    """Copy (or hard-link) the best checkpoint to `dest` and write the selection table beside it.

    `dest` becomes a complete HF model folder (training state such as optimizer.pt, rng_state*.pth and DeepSpeed
    `global_step*/` shards is left out) plus `agegender_selection.json` (which checkpoint, by what); the
    `transformers` and `vllm` backends serve it unchanged. The folder is built next to `dest` and renamed into
    place, so `dest` is either the old or the new complete folder. `selection.csv` and `selection.md` are written
    atomically to `table_dir` (default: the folder that holds `dest`).

    Hard links (`link=True`) save the copy of a 7B model but share the files with the run folder: a training
    run resumed into the same folder that rewrites a checkpoint in place would change the kept model too.

    Args:
        result: a selection with a best checkpoint.
        dest: the folder to create (replaced when it exists).
        link: hard-link files instead of copying them (falls back to a copy across file systems).
        table_dir: where `selection.csv` / `selection.md` go.
        caption: a first line for `selection.md` (e.g. that the numbers are on demo data).

    Returns:
        `dest`.

    Raises:
        InputError: no checkpoint qualified, or the best folder holds no weights file.
    """
    if result.best is None:
        raise InputError(
            f"no checkpoint reached coverage {result.min_coverage:g} with a finite {result.metric}; nothing to keep "
            f"(coverages: {dict(zip(result.table['name'], result.table['coverage'], strict=True))})",
            file=result.run_dir,
            field="coverage",
        )
    src = result.best.path
    if not any(p.is_file() and p.name.endswith(_WEIGHTS) and not _is_training_state(p.name) for p in src.iterdir()):
        raise InputError("holds no model weights file (.safetensors / .bin)", file=src)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    tmp = dest.with_name(f".{dest.name}.{token}.tmp")
    try:
        _copy_tree(src, tmp, link)
        info = {
            "source": str(src.resolve()),
            "name": result.best.name,
            "step": result.best.step,
            "epoch_fraction": result.best.epoch_fraction,
            "metric": result.metric,
            "value": result.best_row[result.metric] if result.best_row else None,
            "min_coverage": result.min_coverage,
            "split": result.split,
            "input": result.input_kind,
        }
        (tmp / "agegender_selection.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        old = dest.with_name(f".{dest.name}.{token}.old")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    tables = Path(table_dir) if table_dir is not None else dest.parent
    tables.mkdir(parents=True, exist_ok=True)
    from agegender.mllm.runner import write_table

    write_table(result.table.drop(columns=list(RUN_COLUMNS)), tables / "selection.csv")
    atomic_write_text(tables / "selection.md", selection_markdown(result, caption))
    return dest


__all__ = [
    "INDEX_FILE",
    "METRICS",
    "MIN_COVERAGE",
    "TABLE_COLUMNS",
    "Checkpoint",
    "SelectionResult",
    "choose_best",
    "default_store",
    "keep_best",
    "read_checkpoints",
    "score_predictions",
    "select_checkpoint",
    "selection_markdown",
]
