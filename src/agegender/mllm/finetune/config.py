"""Fine-tuning settings (`finetune_mllm.config` of params.yaml), torch-free so they are checked with the params.

`agegender.params` builds `FinetuneConfig` when params.yaml is loaded (every stage, `agegender check`), so a bad
setting is reported by its key path (`finetune_mllm.config.learning_rate: must be a positive number, got -1`)
before any stage runs, not when fine-tuning starts. The training code is `agegender.mllm.finetune`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agegender.errors import InputError
from agegender.settings import build_settings

#: crops a fine-tuning record can show (the MLLM input kinds of the runner)
SFT_INPUTS: tuple[str, ...] = ("body", "face", "body_wo_face")
#: Llama-style projections of the language model (LLaVA's LoRA targets; the vision tower is left alone)
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings; the defaults are the paper's (section 4.3: full fine-tuning of ShareGPT4V-7B).

    Attributes:
        learning_rate: peak learning rate (paper: 2e-6).
        per_device_train_batch_size: batch per process (paper: 32; its GPU count for training is not given).
        gradient_accumulation_steps: batches per optimizer step.
        num_train_epochs: epochs (paper: 1).
        max_steps: stop after this many optimizer steps (> 0 overrides num_train_epochs; -1 = off).
        warmup_ratio: linear warm-up share of the steps (paper: 0.03).
        lr_scheduler_type: transformers scheduler name (paper: cosine).
        weight_decay: AdamW weight decay (LLaVA: 0).
        max_grad_norm: gradient clipping.
        save_steps: a checkpoint every this many steps (paper: 450), and one at the end.
        save_total_limit: keep at most this many checkpoints (None = all, needed for the paper's selection).
        logging_steps: log the loss every this many steps.
        input_kind: the crop the model sees: `body` (paper's default), `face` or `body_wo_face`.
        max_side: downscale crops so the longer side is at most this (None = as zero-shot, original size).
        pad_to_square: LLaVA-1.5's pad-to-square; None = the zero-shot backend's default (on for `llava`).
        system_prompt: system turn, as the backend's option (None = the template's).
        lora: train LoRA adapters (peft) instead of all weights; merged into the saved models.
        lora_r, lora_alpha, lora_dropout: LoRA rank, scale and dropout (LLaVA's LoRA: 128, 256, 0.05).
        lora_target_modules: module names of the LANGUAGE model that get adapters.
        freeze_vision_tower: keep the vision encoder fixed. Our reading of the paper's "full fine-tuning"
            (section 4.3's table: "LoRA disabled (full fine-tuning)"): every weight of the language model and the
            projector, with the vision tower frozen as in the code the paper trained with ("LLaVa-v1.5's training
            code ... used with minor modifications", section 4.3), whose CLIP tower is loaded with
            `requires_grad_(False)`. The paper does not say whether the tower was trained; the other reading,
            every weight the vision tower included, is `freeze_vision_tower: false`. Which weights are the tower
            per family: `agegender.mllm.finetune.train.is_vision_tower_parameter` (Qwen-VL's mergers stay trained).
        bf16: bf16 mixed precision; `auto` = on CUDA with bf16 support, off on the CPU.
        gradient_checkpointing: `auto` = on CUDA (LLaVA-1.5's fine-tuning script; the paper does not say), off on
            the CPU.
        deepspeed: a DeepSpeed config file (e.g. configs/deepspeed_zero3.json), used under `accelerate launch`.
        seed: seeds weights' dropout, data order and the Trainer.
        cache_crops: write the crops as PNG files under out_dir (large data sets; resumable) instead of memory.
        dataloader_num_workers: DataLoader worker processes.
        torch_threads: CPU threads per process (None = torch's default).
        max_length: refuse rows longer than this many tokens (None = no limit).
    """

    learning_rate: float = 2e-6
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_steps: int = 450
    save_total_limit: int | None = None
    logging_steps: int = 10
    input_kind: str = "body"
    max_side: int | None = None
    pad_to_square: bool | None = None
    system_prompt: str | None = None
    lora: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    freeze_vision_tower: bool = True
    bf16: bool | str = "auto"
    gradient_checkpointing: bool | str = "auto"
    deepspeed: str | None = None
    seed: int = 42
    cache_crops: bool = True
    dataloader_num_workers: int = 0
    torch_threads: int | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        """Check every value; an `InputError` names the field (`build_settings` adds the key path)."""

        def bad(name: str, why: str) -> InputError:
            return InputError(f"{why}, got {getattr(self, name)!r}", field=name)

        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be a positive integer")
        if not isinstance(self.max_steps, int) or self.max_steps == 0 or self.max_steps < -1:
            raise bad("max_steps", "must be -1 (off) or a positive integer")
        for name in ("learning_rate", "num_train_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise bad(name, "must be a positive number")
        for name in ("warmup_ratio", "lora_dropout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise bad(name, "must lie in [0, 1)")
        if self.input_kind not in SFT_INPUTS:
            raise bad("input_kind", f"must be one of {list(SFT_INPUTS)}")
        for name in ("bf16", "gradient_checkpointing"):
            if getattr(self, name) not in (True, False, "auto"):
                raise bad(name, "must be true, false or 'auto'")
        if self.lora and (self.lora_r < 1 or self.lora_alpha < 1 or not self.lora_target_modules):
            raise bad("lora_r", "needs lora_r >= 1, lora_alpha >= 1 and target modules when lora is on")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 1):
            raise bad("max_side", "must be a positive integer or null")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise bad("torch_threads", "must be a positive integer or null")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "finetune_mllm.config") -> FinetuneConfig:
        """Build a config from a mapping (e.g. a config file of `python -m agegender.mllm.finetune`).

        Missing keys keep their defaults; `lora_target_modules` may be one name instead of a list.

        Raises:
            InputError: `<where>.<setting>: ...` for an unknown key (a typo would otherwise be ignored), a wrongly
                typed or a bad value.
        """
        values = dict(d)
        if isinstance(values.get("lora_target_modules"), str):
            values["lora_target_modules"] = [values["lora_target_modules"]]
        try:
            return build_settings(cls, values, where)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain, JSON-serialisable dict (the inverse of `from_dict`)."""
        out = asdict(self)
        out["lora_target_modules"] = list(self.lora_target_modules)
        return out
