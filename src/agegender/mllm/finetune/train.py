"""Fine-tune an image-text-to-text model on `[gender; age]` answers: the paper's recipe (section 4.3), any scale.

The paper (section 4.3) fine-tuned ShareGPT4V-7B for one epoch on ~800k persons (LAGENDA_ext, section 3.2):
learning rate 2e-6, per-device batch 32, warm-up ratio 0.03, cosine schedule, a checkpoint every 450 steps (the best
at 40% of the epoch), "LoRA disabled (full fine-tuning)", "about 11 hours for one epoch" (its test runs took "8 A6000
NVidia GPUs"; the training GPUs it does not count). `FinetuneConfig()` holds those values; bf16 and gradient
checkpointing on CUDA come from LLaVA-1.5's fine-tuning script, not the paper; LoRA (peft) is an option.

`finetune` builds the records (`agegender.mllm.finetune.sft_data`: body crop by default, the paper's prompt, answer
`[female; 40]`, only the answer tokens supervised, LLaVA-1.5's pad-to-square as in zero-shot) and trains any
image-text-to-text model in Hugging Face format from a local folder with transformers' `Trainer`.

Outputs (`out_dir`)::

    checkpoint-<step>/      Trainer checkpoints, each a complete HF model folder (weights, config, processor,
                            tokenizer, chat template) plus optimizer/scheduler/RNG state for resuming;
                            with LoRA the servable merged model is in checkpoint-<step>/merged/
    final/                  the final model, complete HF folder (LoRA merged), served unchanged by the
                            transformers and vllm backends
    checkpoints.json        index: [{"step", "epoch_fraction", "path", "name", "final"}, ...] in step order;
                            "path" is out_dir/<name> as given, "name" is relative to this file's folder
    finetune_config.json    the config, the data fingerprint and the base model's revision (a resumed run must
                            match them)
    finetune_summary.json   what `finetune` returns, less how the run went (`RUN_SUMMARY_FIELDS`)
    run-log.json            how the run went: timings, throughput, whether it resumed (`agegender.files.RUN_LOG_FILE`)
    sft_crops/              the training crops as PNG files (cache_crops; reused on resume)

Resuming: run the same command again. With checkpoints in `out_dir` the Trainer resumes from the last one
(weights, optimizer, scheduler, RNG, data order); a run with another config, other data or another base model
(compared by its weights' revision, `folder_revision`: a base retrained in place is another base) is refused. A run
that already finished is not touched again: its summary is returned as it was written.

One process (CPU or one GPU)::

    python -m agegender.mllm.finetune --samples S.parquet --masked M.parquet --image-root data/demo \\
        --base-model models/llava --out models/llava_ft --config params.yaml --section finetune_mllm.runs.llava_ft

Several GPUs or nodes, DDP, or DeepSpeed ZeRO-3 (sharded weights, gradients and optimizer state; the engine to
move to when a 7B model's full fine-tuning does not fit one GPU); the same command under `accelerate launch`::

    accelerate launch --num_processes 8 -m agegender.mllm.finetune ... --set deepspeed=configs/deepspeed_zero3.json
    # multi-node: add --num_machines N --machine_rank R --main_process_ip HOST --main_process_port 29500
    # CPU, 2 processes (gloo; what the tests run): accelerate launch --config_file configs/accelerate_cpu_2proc.yaml
    #   -m agegender.mllm.finetune ...   (or: torchrun --nproc_per_node 2 -m agegender.mllm.finetune ...)

`per_device_train_batch_size` is per process: the global batch is it x processes x gradient_accumulation_steps
(32 x 8 = 256 on 8 GPUs such as the paper's 8 A6000). The ZeRO-3 config uses "auto" values that the Trainer
fills from this config and gathers 16-bit weights on save, so its checkpoints are ordinary HF folders too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from agegender.errors import InputError
from agegender.files import RUN_LOG_FILE, atomic_write_text, write_run_log
from agegender.mllm.finetune.config import FinetuneConfig
from agegender.settings import read_config_file

CHECKPOINT_INDEX = "checkpoints.json"
CONFIG_FILE = "finetune_config.json"
SUMMARY_FILE = "finetune_summary.json"
FINAL_DIR = "final"
MERGED_DIR = "merged"
CROPS_DIR = "sft_crops"

#: summary keys that say how the run went rather than what it learnt: written to the run log, not the summary file
RUN_SUMMARY_FIELDS = ("runtime_s", "train_runtime_s", "train_samples_per_second", "resumed")

#: config keys that do not change what is learnt: a resumed run may change them
_RESUME_FREE = frozenset({"logging_steps", "dataloader_num_workers", "torch_threads", "save_total_limit"})


@dataclass
class _RunInfo:
    out_dir: Path
    config: FinetuneConfig
    lora: bool
    processor: Any
    num_train_epochs: float
    entries: list[dict[str, Any]] = field(default_factory=list)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve_bf16(config: FinetuneConfig) -> bool:
    import torch

    if config.bf16 == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if config.bf16 and not torch.cuda.is_available():
        raise InputError("bf16 asks for a CUDA GPU (CPU bf16 is slow; LLaVA's recipe is bf16 on GPUs)", field="bf16")
    return bool(config.bf16)


def _resolve_checkpointing(config: FinetuneConfig) -> bool:
    return _cuda() if config.gradient_checkpointing == "auto" else bool(config.gradient_checkpointing)


def _fingerprint(records: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.sample_id}\0{r.answer}\n".encode())
    return digest.hexdigest()[:16]


def _is_zero3(path: str | None) -> bool:
    if not path:
        return False
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the DeepSpeed config ({exc})", file=path, field="deepspeed") from exc
    return int((data.get("zero_optimization") or {}).get("stage", 0)) == 3


def _atomic_json(data: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")  # insertion order kept


def load_model(base_model_dir: str | Path, config: FinetuneConfig) -> tuple[Any, Any]:
    """Load an image-text-to-text model and its processor from a local folder, prepared for training.

    Full fine-tuning trains every weight (the vision tower too unless `freeze_vision_tower`); with `lora` the
    language model's `lora_target_modules` get adapters and the multimodal projector is trained fully (as in
    LLaVA's LoRA recipe).

    Args:
        base_model_dir: a save_pretrained folder (llava-hf checkpoints, a converted ShareGPT4V, a tiny model).
        config: the fine-tuning settings.

    Returns:
        (model, processor); the model is float32 (the Trainer's bf16 autocast keeps float32 master weights).

    Raises:
        InputError: the folder is missing or does not load as an image-text-to-text model.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = Path(base_model_dir)
    if not (folder / "config.json").is_file():
        raise InputError("not a Hugging Face model folder (no config.json)", file=folder)
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot load as an image-text-to-text model: {exc}", file=folder) from exc
    unused = _unused_vision_parameters(model)
    for name, param in model.named_parameters():
        # Layers after `vision_feature_layer` (and CLIP's post-layernorm) never get a gradient; left trainable
        # they would make DDP wait for gradients that never come.
        if name in unused or (config.freeze_vision_tower and is_vision_tower_parameter(name)):
            param.requires_grad_(False)
    if config.lora:
        from peft import LoraConfig, get_peft_model

        # Only language-model projections: the vision tower's q/k/v projections share the names.
        pattern = r".*(" + "|".join(LANGUAGE_MODULES) + r").*\.(" + "|".join(config.lora_target_modules) + r")$"
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=pattern,
            modules_to_save=list(PROJECTOR_MODULES),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, processor


#: the multimodal projectors LoRA trains fully (peft matches the ends of module names): LLaVA's, OneVision's,
#: InternVL's and Gemma 3's `multi_modal_projector`, Qwen-VL's `visual.merger` (Qwen3-VL's deepstack mergers, a
#: module list peft cannot wrap, stay as they are under LoRA), SmolVLM's `connector` (pixel shuffle + linear: the
#: one piece between its vision tower and its decoder, as LLaVA's projector is)
PROJECTOR_MODULES = ("multi_modal_projector", "visual.merger", "connector")
#: the decoders LoRA puts adapters on: `language_model` in every family but SmolVLM, which calls it `text_model`
LANGUAGE_MODULES = ("language_model", "text_model")
#: Qwen-VL's vision encoder (`visual`) holds its projector (`merger`; Qwen3-VL's `deepstack_merger_list` too)
_QWEN_VISUAL = re.compile(r"(^|\.)visual\.(?!merger\.|deepstack_merger_list\.)")


def is_vision_tower_parameter(name: str) -> bool:
    """Whether a parameter belongs to the vision encoder that `freeze_vision_tower` keeps fixed.

    LLaVA, LLaVA-OneVision, InternVL and Gemma 3 call it `vision_tower` (their projector is apart, as
    `multi_modal_projector`); SmolVLM calls it `vision_model` (its projector is apart, as `connector`); Qwen2.5-VL
    and Qwen3-VL call it `visual` and keep their projector inside it (the mergers), which stays trainable as LLaVA's
    projector does.
    """
    return "vision_tower" in name or "vision_model" in name or bool(_QWEN_VISUAL.search(name))


def _unused_vision_parameters(model: Any) -> set[str]:
    """Names of vision-tower parameters whose outputs LLaVA never reads (after `vision_feature_layer`)."""
    cfg = getattr(model, "config", None)
    layer = getattr(cfg, "vision_feature_layer", None)
    n_layers = getattr(getattr(cfg, "vision_config", None), "num_hidden_layers", None)
    if not isinstance(layer, int) or not isinstance(n_layers, int):
        return set()
    used = layer % (n_layers + 1)  # hidden_states[0] is the embeddings, [k] the output of layer k - 1
    if used == n_layers:
        return set()
    out = set()
    pattern = re.compile(r"vision_tower\..*encoder\.layers\.(\d+)\.")
    for name, _ in model.named_parameters():
        m = pattern.search(name)
        if (m and int(m.group(1)) >= used) or ("vision_tower" in name and "post_layernorm" in name):
            out.add(name)
    return out


def save_servable(model: Any, processor: Any, folder: str | Path, *, lora: bool) -> Path:
    """Write a complete HF model folder (weights, config, generation config, processor, chat template).

    With LoRA the adapters are merged into a copy of the weights (the training model keeps its adapters).

    Args:
        model: the trained model (plain or peft-wrapped).
        processor: its processor.
        folder: target folder.
        lora: whether `model` is a peft model whose adapters must be merged.

    Returns:
        The folder.
    """
    import copy

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if lora:
        # A deep copy keeps the live model's adapters for further training; fine for the sizes LoRA is used at
        # on one device. (Merging under ZeRO-3 would need the sharded weights gathered first: refused earlier.)
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out)
    else:
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _scan_checkpoints(run: _RunInfo) -> list[dict[str, Any]]:
    entries = []
    for folder in run.out_dir.glob("checkpoint-*"):
        state_file = folder / "trainer_state.json"
        if not folder.is_dir() or not state_file.is_file():
            continue
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # being written by the Trainer right now; the next save lists it
        servable = folder / MERGED_DIR if run.lora else folder
        if not (servable / "config.json").is_file():
            continue
        step = int(state.get("global_step", folder.name.split("-")[-1]))
        entries.append(
            {
                "step": step,
                "epoch_fraction": round(float(state.get("epoch") or 0.0), 6),
                "path": str(run.out_dir / servable.relative_to(run.out_dir)),
                "name": servable.relative_to(run.out_dir).as_posix(),
                "final": False,
            }
        )
    return sorted(entries, key=lambda e: e["step"])


def write_index(run: _RunInfo, final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rewrite `checkpoints.json` from the checkpoint folders present (and the final model, when given)."""
    entries = _scan_checkpoints(run)
    if final is not None:
        entries.append(final)
    _atomic_json(entries, run.out_dir / CHECKPOINT_INDEX)
    run.entries = entries
    return entries


def _callback(run: _RunInfo) -> Any:
    from transformers import TrainerCallback

    class CompleteCheckpoints(TrainerCallback):
        """After each Trainer save: make the checkpoint a complete servable HF folder and index it."""

        def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if run.lora:
                save_servable(model, run.processor, folder / MERGED_DIR, lora=True)
            else:
                # The Trainer saved weights + processor; the processor again makes sure the chat template is there.
                run.processor.save_pretrained(folder)
            write_index(run)

    return CompleteCheckpoints()


def _check_resume(out_dir: Path, config: FinetuneConfig, fingerprint: str, base: Path, base_revision: str) -> bool:
    """Whether to resume; refuses a checkpointed run whose config, data or base model differ.

    The base model is compared by its revision (`folder_revision`: every byte of its weights and definition), so
    a base retrained or replaced in the same folder is refused and the same weights in a moved folder are not.
    Runs recorded before the revision was kept are compared by the folder path, as they were.
    """
    checkpoints = [p for p in out_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not checkpoints:
        return False
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError(
            f"{len(checkpoints)} checkpoints but no {CONFIG_FILE}; remove the folder to restart", file=path
        )
    old = json.loads(path.read_text(encoding="utf-8"))
    new = config.to_dict()
    changed = sorted(
        k for k in set(old.get("config", {})) | set(new) if k not in _RESUME_FREE and old["config"].get(k) != new.get(k)
    )
    if changed:
        raise InputError(f"cannot resume: settings changed since the checkpoints were made: {changed}", file=path)
    if old.get("data_fingerprint") != fingerprint:
        raise InputError("cannot resume: the training records differ from the checkpointed run's", file=path)
    recorded = old.get("base_model_revision")
    if recorded is not None and recorded != base_revision:
        raise InputError(
            f"cannot resume: the base model's weights changed since the checkpoints were made (revision {recorded}, "
            f"now {base_revision} in {str(base)!r}); use another output folder, or remove it to start over",
            file=path,
        )
    if recorded is None and old.get("base_model") != str(base):
        raise InputError(f"cannot resume: base model was {old.get('base_model')!r}, now {str(base)!r}", file=path)
    return True


def read_summary(out_dir: str | Path) -> dict[str, Any]:
    """A run's summary as `finetune` returned it: `finetune_summary.json` with its run log's fields.

    Raises:
        InputError: no summary in `out_dir` (the run did not finish).
    """
    path = Path(out_dir) / SUMMARY_FILE
    if not path.is_file():
        raise InputError("no fine-tuning summary: the run did not finish", file=path)
    summary = json.loads(path.read_text(encoding="utf-8"))
    log = Path(out_dir) / RUN_LOG_FILE
    run = json.loads(log.read_text(encoding="utf-8")) if log.is_file() else {}
    return summary | {k: run.get(k) for k in RUN_SUMMARY_FIELDS}


def _finished(out: Path, fingerprint: str) -> bool:
    """Whether a run `_check_resume` accepted has finished: its final model, and a summary of the same data."""
    path = out / SUMMARY_FILE
    if not (path.is_file() and (out / FINAL_DIR).is_dir()):
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("data_fingerprint") == fingerprint


def finetune(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    base_model_dir: str | Path,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    progress: bool = True,
    context: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Fine-tune an image-text-to-text model on the labelled persons of a sample table (module docstring).

    Args:
        samples: the training samples (every row is used; select the split before). Rows without an age or
            a gender, or without a crop of `config.input_kind`, are skipped and counted.
        masked: the reader's masked-persons side table (for `body_wo_face`), or None.
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        base_model_dir: local HF model folder to start from.
        out_dir: output folder (checkpoints, final model, index); an existing run there is resumed.
        config: settings (default: the paper's).
        progress: tqdm bars for crops and training.
        context: a larger sample table whose boxes also count as neighbours for `body_wo_face`.

    Returns:
        Summary: `records`, `data` (record stats), `steps`, `epochs`, `train_loss`, `loss_history`,
        `runtime_s`, `train_samples_per_second`, `resumed`, `world_size`, `checkpoints` (the index), `final`.

    Raises:
        InputError: bad data, no trainable records, a model folder that does not load, a run in `out_dir`
            made with other settings or data, LoRA under ZeRO-3.
    """
    import torch
    from transformers import Trainer, set_seed

    from agegender.mllm.backends.transformers_backend import folder_revision
    from agegender.mllm.finetune.sft_data import SFTCollator, SFTDataset, build_records

    config = config or FinetuneConfig()
    if config.lora and _is_zero3(config.deepspeed):
        raise InputError("LoRA with ZeRO-3 is not supported (merging needs the full weights)", field="deepspeed")
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    out = Path(out_dir)
    base = Path(base_model_dir)
    t0 = time.perf_counter()
    args = _training_args(config, out, progress)
    # Rank 0 cuts and writes the crops first; the others then find them on disk (no duplicate work or races).
    with args.main_process_first(desc="sft crops"):
        records, data_stats = build_records(
            samples,
            masked,
            image_roots,
            input_kind=config.input_kind,
            image_dir=out / CROPS_DIR / config.input_kind if config.cache_crops else None,
            max_side=config.max_side,
            context=context,
            progress=progress and args.process_index == 0,
        )
        # rank 0 reads the weights once and caches the digest; the other ranks then find it in the cache
        base_revision = folder_revision(base)
    if not records:
        raise InputError(f"no trainable records (age and gender known, with a {config.input_kind} crop): {data_stats}")
    fingerprint = _fingerprint(records)
    out.mkdir(parents=True, exist_ok=True)
    resume = _check_resume(out, config, fingerprint, base, base_revision)
    if resume and _finished(out, fingerprint):
        # nothing left to do: the summary as written (rewriting the final model would only change its bytes)
        return read_summary(out) | {"resumed": True}
    if args.process_index == 0 and not resume:
        meta = {
            "config": config.to_dict(),
            "data_fingerprint": fingerprint,
            "base_model": str(base),
            "base_model_revision": base_revision,
        }
        _atomic_json(meta, out / CONFIG_FILE)

    set_seed(config.seed)
    start = base
    if resume and not config.lora:
        from transformers.trainer_utils import get_last_checkpoint

        # The Trainer's own weight restore matches state-dict keys without transformers' checkpoint key
        # conversion, which misses LLaVA's renamed modules (measured: the weights silently stayed the base
        # model's); from_pretrained on the checkpoint folder converts them. Optimizer, scheduler, RNG and data
        # position still come from the Trainer's resume.
        start = Path(get_last_checkpoint(str(out)))
    model, processor = load_model(start, config)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    collator = SFTCollator(
        processor,
        model_type=model_type,
        pad_to_square=config.pad_to_square,
        system_prompt=config.system_prompt,
        max_length=config.max_length,
    )
    if _resolve_checkpointing(config) and (config.freeze_vision_tower or config.lora):
        # Checkpointed blocks need an input that requires grad when the first layers are frozen.
        model.enable_input_require_grads()
    run = _RunInfo(out, config, config.lora, processor, config.num_train_epochs)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=SFTDataset(records),
        data_collator=collator,
        processing_class=processor,
        callbacks=[_callback(run)],
    )
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    state = trainer.state
    final_entry = None
    if trainer.is_world_process_zero():
        final_dir = out / FINAL_DIR
        if final_dir.exists():
            shutil.rmtree(final_dir)
    trainer.accelerator.wait_for_everyone()
    if config.lora:
        if trainer.is_world_process_zero():
            save_servable(trainer.accelerator.unwrap_model(trainer.model), processor, out / FINAL_DIR, lora=True)
    else:
        trainer.save_model(str(out / FINAL_DIR))  # all ranks: ZeRO-3 gathers the shards
        if trainer.is_world_process_zero():
            processor.save_pretrained(out / FINAL_DIR)
    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        final_entry = {
            "step": int(state.global_step),
            "epoch_fraction": round(float(state.epoch or 0.0), 6),
            "path": str(out / FINAL_DIR),
            "name": FINAL_DIR,
            "final": True,
        }
        index = write_index(run, final_entry)
        losses = [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h]
        metrics = dict(result.metrics)
        summary = {
            "records": len(records),
            "data": data_stats,
            "data_fingerprint": fingerprint,
            "base_model": str(base),
            "steps": int(state.global_step),
            "epochs": float(state.epoch or 0.0),
            "train_loss": float(metrics.get("train_loss", math.nan)),
            "loss_history": losses,
            "runtime_s": round(time.perf_counter() - t0, 3),
            "train_runtime_s": float(metrics.get("train_runtime", math.nan)),
            "train_samples_per_second": float(metrics.get("train_samples_per_second", math.nan)),
            "resumed": resume,
            "world_size": int(args.world_size),
            "global_batch": int(args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps),
            "device": str(args.device),
            "bf16": bool(args.bf16),
            "gradient_checkpointing": _resolve_checkpointing(config),
            "checkpoints": index,
            "final": str(out / FINAL_DIR),
            "config": config.to_dict(),
        }
        _atomic_json({k: v for k, v in summary.items() if k not in RUN_SUMMARY_FIELDS}, out / SUMMARY_FILE)
        write_run_log(out, {k: summary[k] for k in RUN_SUMMARY_FIELDS})
    trainer.accelerator.wait_for_everyone()
    return summary


def _training_args(config: FinetuneConfig, out: Path, progress: bool) -> Any:
    from transformers import TrainingArguments

    bf16 = _resolve_bf16(config)
    checkpointing = _resolve_checkpointing(config)
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    prefix = "activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient"
    ckpt = {f"{prefix}_checkpointing": checkpointing, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
    return TrainingArguments(
        output_dir=str(out),
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        # transformers 5: a float in [0, 1) is a ratio of the total steps (warmup_ratio is gone)
        warmup_steps=float(config.warmup_ratio) if config.warmup_ratio > 0 else 0,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        bf16=bf16,
        **ckpt,
        deepspeed=config.deepspeed,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not _cuda(),
        dataloader_num_workers=config.dataloader_num_workers,
        remove_unused_columns=False,  # the collator needs the image and the texts
        report_to="none",
        disable_tqdm=not progress,
        ddp_find_unused_parameters=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Evaluation helper (demo goal, notebooks)


def evaluate_model(
    model_dir: str | Path,
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    store_dir: str | Path,
    input_kind: str = "body",
    model_name: str = "finetuned",
    batch_size: int = 16,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Query a (fine-tuned) model folder with the zero-shot runner and score it (`agegender.metrics.evaluate`).

    Args:
        model_dir: a complete HF model folder (e.g. out_dir/final or a checkpoint).
        samples: the samples to evaluate (e.g. the test split).
        masked: masked-persons side table, or None.
        image_roots: image folder(s).
        store_dir: response store folder.
        input_kind: crop kind (as trained).
        model_name: the prediction table's model column.
        batch_size: generation batch.
        max_new_tokens: answer length limit.
        progress: tqdm bar.

    Returns:
        (prediction table, evaluation table of the `answered` view).
    """
    from agegender.metrics import evaluate
    from agegender.mllm.backend_options import TransformersOptions
    from agegender.mllm.backends.base import GenerationParams
    from agegender.mllm.runner import BackendSpec, plan_queries, query_samples

    params = GenerationParams(max_new_tokens=max_new_tokens)
    backend = BackendSpec("transformers", str(model_dir), params, TransformersOptions(batch_size=batch_size))
    run = query_samples(
        plan_queries(samples, [input_kind]), masked, image_roots, backend=backend, store=store_dir,
        model_name=model_name, progress=progress,
    )  # fmt: skip
    result = run.results[input_kind]
    table = evaluate(samples, result.predictions, views=("answered",))
    return result.predictions, table


# ---------------------------------------------------------------------------------------------------------------
# Config file and overrides (the settings of `python -m agegender.mllm.finetune`, parsed in agegender.cli)


def read_config(path: str | Path | None, section: str | None = None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """A config from a YAML file (optionally one section, and its `config` key), then `key=value` overrides.

    Raises:
        InputError: unreadable file, missing section, malformed override, unknown or bad setting.
    """
    data, where = read_config_file(path, section, overrides)
    try:
        return FinetuneConfig.from_dict(data, where=where)
    except InputError as exc:
        raise InputError(exc.message, file=path) from exc
