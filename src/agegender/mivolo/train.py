"""MiVOLO training in the paper's two stages, resumable, on one device or many through torchrun.

Stage 1 trains a face-only model (3 input channels). Stage 2 trains the face+body model (6 channels),
initialised from stage 1: the face stem and projection are copied into BOTH stems (`conv1`/`proj1` for the
face and `conv2`/`proj2` for the body, so the body stem starts from trained low-level filters instead of
noise), and every VOLO block, the position embedding, the class token, the norms and both heads are copied.
Only the fusion block `patch_embed.map` starts from random weights (it has no stage-1 counterpart).

Each stage: AdamW, linear warm-up then cosine decay per step (timm's scheduler); age loss = MSE or L1 on
the normalised age, optionally weighted by label-distribution smoothing (inverse of the Gaussian-smoothed
age histogram, mean weight 1 over the training samples); gender loss = cross-entropy over the labelled
samples; loss = age + gender. Optional EMA (timm's ModelEmaV3) provides the weights that are evaluated and
saved. bf16 autocast on CUDA only.

Files under `out_dir`::

    stage{1,2}/last.pth.tar     raw weights after the last finished epoch (official MiVOLO layout)
    stage{1,2}/last.state.pt    everything needed to resume (weights, optimizer, EMA, RNG, history)
    mivolo.pth.tar              the final model (EMA weights when EMA is on), official layout
    history.csv                 one row per epoch: losses, lr, val age MAE and gender accuracy
    train_summary.json          the returned summary
    run-log.json                how the run went: each epoch's wall-clock time and throughput (not an output: the
                                files above are the same bytes for the same training, `agegender.files.RUN_LOG_FILE`)

Resume: a call with an `out_dir` that holds a training state made with the same settings, training data and
pretrained weights (compared by content: new weights under the same path are refused) continues after the last
finished epoch and ends with the same weights, bit for bit on the CPU, as a run that was never interrupted: the
data order depends only on (seed, stage, epoch), augmentations on (seed, stage, epoch, sample) and the torch RNG
(dropout, drop-path) is re-seeded from (seed, stage, epoch, step, rank) before every step.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from agegender.data.schema import validate_samples
from agegender.errors import InputError
from agegender.files import RUN_LOG_FILE, atomic_path, atomic_write_text, save_torch, write_run_log
from agegender.fingerprint import file_sha256
from agegender.mivolo.checkpoint import save_checkpoint
from agegender.mivolo.config import TrainConfig
from agegender.mivolo.dataset import Augment, CropRules, ImageRoot, MiVOLODataset
from agegender.mivolo.model import MiVOLOModel, create_mivolo
from agegender.settings import read_config_file

STATE_FILE = "last.state.pt"
LAST_CHECKPOINT = "last.pth.tar"
FINAL_CHECKPOINT = "mivolo.pth.tar"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "train_summary.json"
STATE_VERSION = 1

# Fields that may change between an interrupted run and its resumption without changing the result
# (or that only change speed); any other difference makes the resumed run a different run.
_OPERATIONAL_FIELDS = frozenset({"num_workers", "threads", "eval_batch_size", "cache_crops", "out_dir", "device"})


# ----------------------------------------------------------------------------------------------
# Seeds, devices, processes


def derive_seed(*keys: int) -> int:
    """A 31-bit seed that depends only on the integer keys (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint32)[0] >> 1)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> DistEnv:
        """Read RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun sets them."""

        def num(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                raise InputError(f"environment variable {name} is not an integer", field=name) from None

        world = num("WORLD_SIZE", 1)
        return cls(num("RANK", 0), world, num("LOCAL_RANK", 0), num("LOCAL_WORLD_SIZE", world))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _device(config: TrainConfig, env: DistEnv) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but CUDA is not available", field="device")
    torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    return torch.device("cuda", env.local_rank % torch.cuda.device_count())


def _init_distributed(env: DistEnv, device: torch.device) -> bool:
    """Start the process group when run by torchrun with several processes; True when this call started it."""
    if not env.distributed or torch.distributed.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return True


def _barrier(env: DistEnv) -> None:
    if env.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch of all processes.

    torch's SyncBatchNorm refuses CPU tensors (torch 2.14: "expected input tensor to be on GPU"), so on the
    CPU with gloo the stems' BatchNorm layers get this class instead: the per-channel mean and then the
    variance are summed over processes with autograd-aware all-reduces (`torch.distributed.nn`), so the
    forward pass and the gradients equal BatchNorm over the concatenated batch. Outside training, or with
    one process, it is plain BatchNorm2d. Parameters and buffers (and so checkpoints) are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with global-batch statistics when training in a process group of several processes."""
        if not (self.training and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        count = all_reduce(count)
        mean = all_reduce(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.square().sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.detach() * (n / max(n - 1.0, 1.0)), alpha=momentum)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make BatchNorm use global-batch statistics: SyncBatchNorm on CUDA, `GlobalBatchNorm2d` on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model


# ----------------------------------------------------------------------------------------------
# Weights: ImageNet VOLO, stage 1 -> stage 2


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors or torch file (weights only), unwrapping common containers."""
    path = Path(path)
    if not path.is_file():
        raise InputError("pretrained weights file not found", file=path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals and corrupt files come in many types
        raise InputError(f"cannot be read as a weights file ({type(exc).__name__}: {exc})", file=path) from exc
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError("holds no state dict of tensors", file=path)
    return {k.removeprefix("module."): v for k, v in obj.items()}


def transfer_weights(source: Mapping[str, torch.Tensor], model: MiVOLOModel, *, skip_heads: bool) -> dict[str, Any]:
    """Copy compatible weights into a MiVOLO model; the face-only stem goes to both stems of a 6-channel model.

    `patch_embed.conv.*` / `patch_embed.proj.*` (VOLO's and the stage-1 model's stem) are copied to
    `conv1`/`proj1` and `conv2`/`proj2` when the model takes face and body. A position embedding of another
    grid size is resampled (bicubic). Tensors of another shape are skipped, never forced.

    Args:
        source: a state dict (timm VOLO or a MiVOLO model).
        model: the model to fill (in place).
        skip_heads: leave `head.*` and `aux_head.*` as they are (ImageNet heads have 1000 classes).

    Returns:
        `loaded` (target keys filled), `skipped` (source key -> reason) and `missing` (target keys not filled).
    """
    from timm.layers import resample_abs_pos_embed_nhwc

    target = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for key, value in source.items():
        if key.startswith("fds."):
            skipped[key] = "fds"
            continue
        if skip_heads and key.startswith(("head.", "aux_head.")):
            skipped[key] = "head"
            continue
        names = [key]
        if model.with_persons:
            for old, new in (("patch_embed.conv.", ("conv1.", "conv2.")), ("patch_embed.proj.", ("proj1.", "proj2."))):
                if key.startswith(old):
                    names = [f"patch_embed.{n}{key[len(old) :]}" for n in new]
        for name in names:
            if name not in target:
                skipped[key] = "not in model"
                continue
            if value.shape != target[name].shape:
                if name == "pos_embed" and value.ndim == 4 and value.shape[-1] == target[name].shape[-1]:
                    value = resample_abs_pos_embed_nhwc(value.float(), list(target[name].shape[1:3]))
                else:
                    skipped[key] = f"shape {tuple(value.shape)} != {tuple(target[name].shape)}"
                    continue
            loaded[name] = value.to(target[name].dtype)
    model.load_state_dict(loaded, strict=False)
    missing = sorted(k for k in target if k not in loaded and not k.endswith("num_batches_tracked"))
    return {"loaded": sorted(loaded), "skipped": skipped, "missing": missing}


def load_pretrained(model: MiVOLOModel, path: str | Path) -> dict[str, Any]:
    """Start a model from timm ImageNet VOLO weights in a local file (stem, blocks; the heads are skipped).

    Args:
        model: a MiVOLO model (3 or 6 input channels), filled in place.
        path: a state dict saved by torch (.pth/.pt/.bin, weights only) or safetensors.

    Returns:
        The report of `transfer_weights`, plus `file`.

    Raises:
        InputError: the file is missing, unreadable, not weights-only, or shares no tensor with the model.
    """
    report = transfer_weights(_read_state_dict(path), model, skip_heads=True)
    if not report["loaded"]:
        raise InputError("no weight fits the model (is it a VOLO state dict?)", file=path)
    return {"file": str(path), **report}


# ----------------------------------------------------------------------------------------------
# Losses


def lds_weights(ages: np.ndarray, lo: int, hi: int, *, sigma: float, power: float) -> np.ndarray:
    """Label-distribution-smoothing weights per integer age lo..hi.

    Args:
        ages: the training ages (years; NaN ignored), rounded to integers here.
        lo: lowest age of the table.
        hi: highest age of the table.
        sigma: Gaussian smoothing of the histogram, in years.
        power: weight = smoothed density ** -power.

    Returns:
        float32 weights of length hi - lo + 1, scaled so that their mean over the training samples is 1.
    """
    ages = np.round(ages[np.isfinite(ages)]).astype(np.int64)
    hist = np.bincount(np.clip(ages - lo, 0, hi - lo), minlength=hi - lo + 1).astype(np.float64)
    radius = max(1, int(math.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    smooth = np.convolve(hist, kernel / kernel.sum(), mode="same")
    weights = np.power(np.maximum(smooth, 1e-3 * smooth.max()), -power)
    weights /= (hist * weights).sum() / max(hist.sum(), 1.0)
    return weights.astype(np.float32)


def _losses(
    out: torch.Tensor,
    age: torch.Tensor,
    gender: torch.Tensor,
    age_weights: torch.Tensor | None,
    age_range: tuple[float, float, float],
    config: TrainConfig,
    env: DistEnv,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(age loss, gender loss), each a mean over the labelled samples of the GLOBAL batch.

    The label counts are summed over processes and each process scales its sum by world_size / count,
    so DDP's gradient averaging yields the gradient of the global mean, whatever the labels per process.
    """
    out = out.float()
    age_ok = ~torch.isnan(age)
    gender_ok = gender >= 0
    counts = torch.stack([age_ok.sum(), gender_ok.sum()]).to(torch.float64)
    if env.distributed:
        torch.distributed.all_reduce(counts)
    scale = env.world_size / counts.clamp(min=1.0)
    pred = out[:, -1]
    target = torch.where(age_ok, age, torch.zeros_like(age))
    err = (pred - target).square() if config.age_loss == "mse" else (pred - target).abs()
    if age_weights is not None:
        lo, hi, avg = age_range
        years = torch.round(target * (hi - lo) + avg).long() - int(lo)
        err = err * age_weights[years.clamp(0, len(age_weights) - 1)]
    age_loss = (err * age_ok).sum() * scale[0].float()
    if out.shape[1] < 3:
        return age_loss, torch.zeros((), device=out.device)
    ce = F.cross_entropy(out[:, :2], gender.clamp(min=0), reduction="none")
    return age_loss, (ce * gender_ok).sum() * scale[1].float()


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.inference_mode()
def predict_dataset(
    model: MiVOLOModel,
    dataset: MiVOLODataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    bf16: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a model over a dataset in order.

    Args:
        model: a MiVOLO model with its age range set.
        dataset: an evaluation dataset (no augmentation) whose channels match the model.
        batch_size: samples per forward pass.
        device: where to run.
        bf16: bf16 autocast when the device is CUDA.
        progress: show a progress bar.

    Returns:
        (age in years clamped at 0, P(female) or NaN for an age-only model), one per dataset item.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    ages, p_female = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else nullcontext()
    try:
        for x, _, _ in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
            with autocast:
                out = model(x.to(device, non_blocking=True)).float()
            ages.append(model.decode_age(out[:, -1]).clamp(min=0).cpu().numpy())
            if out.shape[1] >= 3:
                p_female.append(out[:, :2].softmax(dim=1)[:, 1].cpu().numpy())
            else:
                p_female.append(np.full(len(out), np.nan, dtype=np.float32))
    finally:
        model.train(was_training)
    if not ages:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ages).astype(np.float64), np.concatenate(p_female).astype(np.float64)


def val_metrics(ages: np.ndarray, p_female: np.ndarray, dataset: MiVOLODataset, age_range: tuple) -> dict[str, float]:
    """Age MAE (years) and gender accuracy of predictions against a dataset's targets."""
    lo, hi, avg = age_range
    gt_age = dataset.ages.astype(np.float64) * (hi - lo) + avg
    ok = np.isfinite(gt_age)
    mae = float(np.abs(ages[ok] - gt_age[ok]).mean()) if ok.any() else float("nan")
    g_ok = (dataset.genders >= 0) & np.isfinite(p_female)
    hits = (p_female[g_ok] > 0.5).astype(np.int64) == dataset.genders[g_ok]
    acc = float(hits.mean()) if g_ok.any() else float("nan")
    return {"age_mae": mae, "gender_acc": acc}


# ----------------------------------------------------------------------------------------------
# Files


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    columns = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _log_epoch_timing(out_dir: Path, stage: int, epoch: int, timing: dict[str, float]) -> None:
    """Add one epoch's wall-clock time to the run log (`RUN_LOG_FILE`), not to the history, state or summary:
    those are outputs, the same bytes for the same training; the time an epoch took is a fact of this run."""
    path = out_dir / RUN_LOG_FILE
    epochs = json.loads(path.read_text(encoding="utf-8")).get("epochs", []) if path.is_file() else []
    epochs = [e for e in epochs if (e["stage"], e["epoch"]) != (stage, epoch)]
    epochs.append({"stage": stage, "epoch": epoch, **timing})
    write_run_log(out_dir, {"epochs": sorted(epochs, key=lambda e: (e["stage"], e["epoch"]))})


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        # Our own file, but still read without arbitrary unpickling; numpy RNG state is kept as plain types.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"training state cannot be read ({type(exc).__name__}: {exc})", file=path) from exc


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state, which libraries may draw from
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": repr(random.getstate()),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    legacy = (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    np.random.set_state(legacy)  # noqa: NPY002
    random.setstate(ast.literal_eval(state["python"]))


def _check_resume(state: Mapping[str, Any], run: _Run, path: Path) -> None:
    """Refuse to continue a state made with other settings, other training data or other pretrained weights.

    The pretrained file is compared by content (`pretrained_sha256`): new weights saved under the same path make
    another run. States written before the digest was kept carry none; they resume with a warning.
    """
    config, fingerprint = run.config, run.fingerprint
    if state.get("version") != STATE_VERSION:
        raise InputError(f"training state version {state.get('version')} is not {STATE_VERSION}", file=path)
    old = state.get("config", {})
    new = config.to_dict()
    changed = sorted(k for k in new if k not in _OPERATIONAL_FIELDS and old.get(k) != new[k])
    if changed:
        raise InputError(
            f"out_dir holds a run with other settings {changed}; use a new out_dir or delete it to start over",
            file=path,
            field=changed[0],
        )
    if state.get("data") != fingerprint:
        raise InputError("out_dir holds a run on other training data; use a new out_dir", file=path)
    if "pretrained_sha256" in state:
        if state["pretrained_sha256"] != run.pretrained_sha256:
            raise InputError(
                f"out_dir holds a run started from other pretrained weights (SHA-256 {state['pretrained_sha256']}, "
                f"now {run.pretrained_sha256} at {config.pretrained!r}); use a new out_dir or delete it to start over",
                file=path,
                field="pretrained",
            )
    elif config.pretrained:
        warnings.warn(
            f"{path}: this training state does not record which pretrained weights it started from (written by an "
            f"older version); resuming assumes they are the ones now at {config.pretrained!r}",
            stacklevel=2,
        )


def pretrained_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of a pretrained weights file (`agegender.fingerprint.file_sha256`, cached), None for no file.

    Raises:
        InputError: the file is missing or unreadable.
    """
    if not path:
        return None
    try:
        return file_sha256(path)
    except OSError as exc:
        raise InputError(f"pretrained weights file cannot be read ({exc.strerror or exc})", file=path) from exc


def _fingerprint(train: pd.DataFrame) -> str:
    import hashlib

    digest = hashlib.sha256()
    for col in ("sample_id", "age", "gender"):
        digest.update("\x1f".join(train[col].astype("string").fillna("<NA>").tolist()).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class _Run:
    """What both stages share."""

    config: TrainConfig
    env: DistEnv
    device: torch.device
    out_dir: Path
    samples: pd.DataFrame
    masked: pd.DataFrame | None
    image_roots: ImageRoot
    train: pd.DataFrame
    val: pd.DataFrame | None
    age_range: tuple[float, float, float]
    age_weights: torch.Tensor | None
    fingerprint: str
    progress: bool
    history: list[dict[str, Any]]
    #: SHA-256 of the `pretrained` file's contents (None without one): part of what the run resumes from
    pretrained_sha256: str | None = None


def _rules(config: TrainConfig) -> CropRules:
    return CropRules(
        min_face_size=config.min_face_size,
        min_person_size=config.min_person_size,
        min_person_nonzero=config.min_person_nonzero,
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # No decay for biases, norms and the learned embeddings, as timm's optimizer factory does.
        skip = param.ndim <= 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _eval_weights(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return state["ema"] if state.get("ema") is not None else state["model"]


def _make_model(run: _Run, stage: int) -> tuple[MiVOLOModel, dict[str, Any]]:
    """A fresh stage model: stage 1 from ImageNet VOLO weights or scratch, stage 2 from stage 1."""
    cfg = run.config
    torch.manual_seed(derive_seed(cfg.seed, stage, 0xB11D))
    model = create_mivolo(
        cfg.variant,
        in_chans=3 if stage == 1 else 6,
        num_classes=3,
        drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate,
    )
    model.set_age_range(*run.age_range[:2], run.age_range[2])
    init: dict[str, Any] = {"from": "scratch"}
    stage1_state = run.out_dir / "stage1" / STATE_FILE
    if stage == 2 and cfg.stage1_epochs > 0:
        state = _load_state(stage1_state)
        if state is None:
            raise InputError("stage 1 training state is missing", file=stage1_state)
        report = transfer_weights(_eval_weights(state), model, skip_heads=False)
        init = {"from": "stage1", "missing": report["missing"], "skipped": report["skipped"]}
    elif cfg.pretrained:
        report = load_pretrained(model, cfg.pretrained)
        init = {"from": "pretrained", **report}
    return model, init


def _stage_datasets(run: _Run, stage: int) -> tuple[Subset, MiVOLODataset | None, dict[str, Any]]:
    cfg = run.config
    with_persons = stage == 2
    kind = "face_body" if with_persons else "face"
    augment = Augment(
        flip_p=cfg.flip_p,
        scale_jitter=cfg.scale_jitter,
        translate_jitter=cfg.translate_jitter,
        face_blur_p=cfg.face_blur_p1 if stage == 1 else cfg.face_blur_p2,
        drop_face_p=cfg.drop_face_p if with_persons else 0.0,
        drop_body_p=cfg.drop_body_p if with_persons else 0.0,
    )
    common = {
        "size": cfg.img_size,
        "with_persons": with_persons,
        "input_kind": kind,
        "rules": _rules(cfg),
        "age_range": run.age_range,
        "cache": cfg.cache_crops,
        "context": run.samples,
        "progress": run.progress and run.env.main,
    }
    train = MiVOLODataset(run.train, run.masked, run.image_roots, augment=augment, seed=cfg.seed, stage=stage, **common)
    usable = np.flatnonzero(train.usable())
    info = {"train_samples": len(train), "train_used": len(usable), "train_skipped_no_input": len(train) - len(usable)}
    val = None
    if run.val is not None and len(run.val) and run.env.main:
        # Only rank 0 validates; the other processes wait at the barrier that ends the epoch.
        val = MiVOLODataset(run.val, run.masked, run.image_roots, **common)
        info["val_samples"] = len(val)
    return Subset(train, usable.tolist()), val, info


def _train_stage(run: _Run, stage: int, budget: list[int]) -> dict[str, Any] | None:
    """Train one stage to its last epoch, resuming from its state; None when stopped by the epoch budget."""
    cfg, env, device = run.config, run.env, run.device
    epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
    stage_dir = run.out_dir / f"stage{stage}"
    state_path = stage_dir / STATE_FILE
    state = _load_state(state_path)
    if state is not None:
        _check_resume(state, run, state_path)
        if state["epoch"] >= epochs:
            run.history[:] = state["history"]
            return state["summary"]
    if budget[0] <= 0:
        return None
    if env.main:
        stage_dir.mkdir(parents=True, exist_ok=True)

    train_set, val_set, info = _stage_datasets(run, stage)
    per_process = cfg.batch_size
    sampler = DistributedSampler(
        train_set,
        num_replicas=env.world_size,
        rank=env.rank,
        shuffle=True,
        seed=derive_seed(cfg.seed, stage, 0xDA7A),
        drop_last=True,
    )
    steps_per_epoch = len(sampler) // per_process
    if steps_per_epoch == 0:
        raise InputError(
            f"stage {stage}: {len(train_set)} usable training samples do not fill one global batch of "
            f"{per_process * env.world_size}; lower batch_size",
            field="batch_size",
        )
    model, init = _make_model(run, stage)
    model.to(device)
    if env.distributed:
        model = _sync_batchnorm(model, device)
    lr = cfg.lr if stage == 1 or cfg.stage2_lr is None else cfg.stage2_lr
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=lr)
    from timm.scheduler import CosineLRScheduler

    total = epochs * steps_per_epoch
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total - warmup),
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    start_epoch, global_step = 0, 0
    history: list[dict[str, Any]] = [h for h in run.history if h["stage"] < stage]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        history = list(state["history"])
        init = state["init"]
    run.history[:] = history

    ddp: nn.Module = model
    if env.distributed:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, stage, 0x10AD))
    loader = DataLoader(
        train_set,
        batch_size=per_process,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        generator=loader_gen,
    )
    base: MiVOLODataset = train_set.dataset  # type: ignore[assignment]
    use_bf16 = device.type == "cuda" and cfg.bf16
    weights = None if run.age_weights is None else run.age_weights.to(device)
    summary: dict[str, Any] = {}

    for epoch in range(start_epoch, epochs):
        if budget[0] <= 0:
            return None
        sampler.set_epoch(epoch)
        base.set_epoch(epoch)
        ddp.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            desc=f"stage {stage} epoch {epoch + 1}/{epochs}",
            unit="step",
            disable=not (run.progress and env.main),
            leave=False,
        )
        for x, age, gender in bar:
            torch.manual_seed(derive_seed(cfg.seed, stage, epoch, global_step, env.rank))
            scheduler.step_update(global_step)
            x, age, gender = x.to(device, non_blocking=True), age.to(device), gender.to(device)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
            with autocast:
                out = ddp(x)
            age_loss, gender_loss = _losses(out, age, gender, weights, run.age_range, cfg, env)
            loss = age_loss + gender_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            if ema is not None:
                ema.update(model, step=global_step)
            sums += torch.tensor([loss.item(), age_loss.item(), gender_loss.item()], dtype=torch.float64)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        if env.distributed:
            # Each process's loss is its share of the global mean (see _losses): the sum over processes,
            # divided by the world size, is the global batch's loss.
            sums = sums.to(device)
            torch.distributed.all_reduce(sums)
            sums = sums.cpu() / env.world_size
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch + 1,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / steps_per_epoch),
            "train_age_loss": float(sums[1] / steps_per_epoch),
            "train_gender_loss": float(sums[2] / steps_per_epoch),
        }
        timing = {"seconds": round(seconds, 3)}
        timing["samples_per_s"] = round(steps_per_epoch * per_process * env.world_size / max(seconds, 1e-9), 2)
        eval_model = ema.module if ema is not None else model
        if val_set is not None:
            ages, p_female = predict_dataset(
                eval_model, val_set, batch_size=cfg.eval_batch_size, device=device, bf16=cfg.bf16
            )
            row.update({f"val_{k}": v for k, v in val_metrics(ages, p_female, val_set, run.age_range).items()})
        history.append(row)
        run.history[:] = history
        summary = {
            "epochs": epochs,
            "steps": global_step,
            # where the weights came from and, for pretrained / stage-1 starts, what was skipped or left random
            "init": {k: v for k, v in plain_data(init).items() if k != "loaded"},
            **info,
            **{k: row[k] for k in row if k.startswith("val_")},
        }
        if env.main:
            # save_checkpoint writes atomically; the state below is the commit point of the epoch.
            save_checkpoint(stage_dir / LAST_CHECKPOINT, model, extra={"stage": stage, "epoch": epoch + 1})
            save_torch(
                {
                    "version": STATE_VERSION,
                    "stage": stage,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "config": cfg.to_dict(),
                    "data": run.fingerprint,
                    "pretrained_sha256": run.pretrained_sha256,
                    "age_range": list(run.age_range),
                    "model": model.state_dict(),
                    "ema": None if ema is None else ema.module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "history": history,
                    "init": plain_data(init),
                    "summary": summary,
                },
                state_path,
            )
            _write_history(run.out_dir / HISTORY_FILE, history)
            _log_epoch_timing(run.out_dir, stage, epoch + 1, timing)
        _barrier(env)
        budget[0] -= 1
    return summary


def plain_data(obj: Any) -> Any:
    """Keep only types that `torch.load(weights_only=True)` reads back."""
    if isinstance(obj, Mapping):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain_data(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def _age_range(train: pd.DataFrame) -> tuple[float, float, float]:
    ages = np.round(train["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan))
    ages = ages[np.isfinite(ages)]
    if len(ages) == 0:
        raise InputError("no training sample has an age", field="age")
    lo, hi = float(ages.min()), float(ages.max())
    if hi <= lo:
        raise InputError(f"all training ages are {lo:g}; the age normalisation needs at least two ages", field="age")
    return lo, hi, (lo + hi) / 2


def _threads(config: TrainConfig, env: DistEnv) -> None:
    n = config.threads or max(1, (os.cpu_count() or 1) // max(1, env.local_world_size))
    torch.set_num_threads(n)


def train_mivolo(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: ImageRoot,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train MiVOLO in two stages (face, then face+body), resuming from `out_dir` when it holds a state.

    Args:
        samples: sample table with at least the `config.train_split` rows (and `val_split` for validation).
        masked: the masked-persons side table of the reader (or None).
        image_roots: the image folder, or dataset -> folder.
        config: the settings.
        out_dir: output folder (default `config.out_dir`).
        progress: tqdm bars (rank 0 only).
        stop_after: stop, as an interruption would, after this many epochs have been trained by this call
            (for time-limited sessions and the resume test); the next call resumes.

    Returns:
        A summary: `status` (`done` / `stopped`), `checkpoint` (the final file), `age_range`, `stages`
        (`stage1` / `stage2` -> steps, init source and what it skipped, sample counts, last val metrics), the
        `history` rows and the final `val_age_mae` / `val_gender_acc`.

    Raises:
        InputError: no training rows or ages, a state in `out_dir` from other settings or data, unreadable
            images or weights.
    """
    out = Path(out_dir if out_dir is not None else (config.out_dir or ""))
    if not str(out):
        raise InputError("no output folder: pass out_dir or set out_dir in the config", field="out_dir")
    samples = validate_samples(samples)
    env = DistEnv.from_env()
    device = _device(config, env)
    started = _init_distributed(env, device)
    _threads(config, env)
    try:
        train = samples[samples["split"] == config.train_split].reset_index(drop=True)
        if train.empty:
            raise InputError(f"the sample table has no rows of split {config.train_split!r}", field="split")
        val = None
        if config.val_split is not None:
            val = samples[samples["split"] == config.val_split].reset_index(drop=True)
        age_range = _age_range(train)
        age_weights = None
        if config.age_weighting:
            ages = train["age"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
            age_weights = torch.from_numpy(
                lds_weights(ages, int(age_range[0]), int(age_range[1]), sigma=config.lds_sigma, power=config.lds_power)
            )
        run = _Run(
            config, env, device, out, samples, masked, image_roots, train, val, age_range, age_weights,
            _fingerprint(train), progress, [], pretrained_sha256(config.pretrained),
        )  # fmt: skip
        if env.main:
            out.mkdir(parents=True, exist_ok=True)
        budget = [stop_after if stop_after is not None else 1 << 30]
        stages: dict[str, Any] = {}
        last_stage = 2 if config.stage2_epochs > 0 else 1
        for stage in (1, 2):
            if (config.stage1_epochs, config.stage2_epochs)[stage - 1] == 0:
                continue
            summary = _train_stage(run, stage, budget)
            if summary is None:
                return {"status": "stopped", "out_dir": str(out), "history": list(run.history)}
            stages[f"stage{stage}"] = summary
        final_state = _load_state(out / f"stage{last_stage}" / STATE_FILE)
        assert final_state is not None
        result = {
            "status": "done",
            "out_dir": str(out),
            "checkpoint": str(out / FINAL_CHECKPOINT),
            "variant": config.variant,
            "age_range": list(age_range),
            "stages": stages,
            "history": final_state["history"],
            "val_age_mae": stages[f"stage{last_stage}"].get("val_age_mae", float("nan")),
            "val_gender_acc": stages[f"stage{last_stage}"].get("val_gender_acc", float("nan")),
        }
        if env.main and not (out / FINAL_CHECKPOINT).is_file():
            model = create_mivolo(config.variant, in_chans=6 if last_stage == 2 else 3, num_classes=3)
            model.load_state_dict(_eval_weights(final_state))
            model.set_age_range(*age_range)
            save_checkpoint(out / FINAL_CHECKPOINT, model, extra={"train_config": plain_data(config.to_dict())})
            atomic_write_text(out / SUMMARY_FILE, json.dumps(plain_data(result), indent=2, allow_nan=True) + "\n")
        _barrier(env)
        return result
    finally:
        if started:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Config file and overrides (the settings of `python -m agegender.mivolo.train`, parsed in agegender.cli)


def read_config(path: str | None, section: str | None, overrides: Sequence[str]) -> TrainConfig:
    """The settings of a YAML file's section (a params.yaml: `train_mivolo.config`), then the `--set` overrides.

    Raises:
        InputError: unreadable file, missing section, malformed override, unknown or bad setting.
    """
    data, where = read_config_file(path, section, overrides, default_section="train_mivolo")
    try:
        return TrainConfig.from_dict(data, where=where)
    except ValueError as exc:
        raise InputError(str(exc), file=path) from exc


if __name__ == "__main__":
    from agegender.cli.mivolo_train import main

    sys.exit(main())
