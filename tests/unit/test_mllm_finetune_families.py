"""Fine-tuning today's model families, on tiny models built here (`agegender.mllm.tools.tiny.build_tiny_family`).

Per family: the collator supervises exactly the answer and the end of the turn, and its prompt part is what the
zero-shot backend feeds for the same crop (same template, same image tokens, one BOS); a few full fine-tuning
and LoRA steps train the language model, keep the vision encoder fixed and save a final folder the zero-shot
backend loads and answers with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.data.demo import DemoConfig, generate_demo
from agegender.data.readers import read_mivolo
from agegender.mllm.backend_options import TransformersOptions
from agegender.mllm.backends.base import Query
from agegender.mllm.backends.transformers_backend import TransformersBackend
from agegender.mllm.finetune.sft_data import IGNORE_INDEX, SFTCollator, SFTDataset, SFTRecord
from agegender.mllm.finetune.train import (
    LANGUAGE_MODULES,
    PROJECTOR_MODULES,
    FinetuneConfig,
    finetune,
    is_vision_tower_parameter,
)
from agegender.mllm.prompt import PROMPT
from agegender.mllm.tools.tiny import FAMILY_TOKENS, build_tiny_family

torch.set_num_threads(1)  # one thread per process: the machine is shared

#: the text each family's template closes an assistant turn with (what the model must learn to stop with)
END_OF_TURN = {family: "<|im_end|>" for family in FAMILY_TOKENS} | {
    "gemma3": "<end_of_turn>",
    "smolvlm": "<end_of_utterance>",
}
#: what a family's template writes between the generation prompt and the answer where byte-level BPE merges it into
#: the answer's first token (SmolVLM's `Assistant:` + space + answer): generation produces that token, so it is
#: supervised with the answer
ANSWER_SEPARATOR = {"smolvlm": " "}
_FAST = {
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 2,
    "max_steps": 2,
    "save_steps": 2,
    "warmup_ratio": 0.0,
    "logging_steps": 1,
    "torch_threads": 1,
    "seed": 7,
}


@pytest.fixture(scope="module", params=sorted(FAMILY_TOKENS))
def family_folder(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny_family(tmp_path_factory.mktemp(family), family, seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(root, DemoConfig(n_train=2, n_val=0, n_test=0, image_size=64, seed=5), workers=1)
    read = read_mivolo(root, "demo", annotations="annotations", splits={"train": "train"})
    return read.samples, read.masked, root


def _records() -> list[SFTRecord]:
    rng = np.random.default_rng(3)
    labels = [("female", 40), ("male", 5)]
    return [
        SFTRecord(f"s{i}", f"[{g}; {a}]", g, a, image=rng.integers(0, 256, (60 + 10 * i, 40, 3), dtype=np.uint8))
        for i, (g, a) in enumerate(labels)
    ]


def _backend(folder: Path, system_prompt: str | None = None) -> TransformersBackend:
    options = TransformersOptions(device="cpu", batch_size=2, system_prompt=system_prompt)
    return TransformersBackend(str(folder), options=options)


@pytest.mark.parametrize("system", [None, "Answer briefly."], ids=["template", "system"])
def test_labels_are_the_answer_and_the_prompt_is_zero_shots(family_folder, system):
    family, folder = family_folder
    backend = _backend(folder, system)  # Gemma 3 folds a system turn into the user turn
    model_type = backend.hf_model.config.model_type
    collator = SFTCollator(backend.processor, model_type=model_type, system_prompt=system)
    data = SFTDataset(_records())
    batch = collator([data[i] for i in range(len(data))])
    zero_shot = backend.build_inputs([Query(r.sample_id, r.image, r.prompt) for r in data.records])
    tok = backend.tokenizer
    for row, record in enumerate(data.records):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        supervised = ANSWER_SEPARATOR.get(family, "") + record.answer + END_OF_TURN[family]
        assert tok.decode(kept, skip_special_tokens=False) == supervised
        # the prompt part: every attended token before the answer, as the backend feeds it (one BOS included)
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        prompt = ids[: len(ids) - len(kept)]
        fed = zero_shot["input_ids"][row][zero_shot["attention_mask"][row].bool()]
        assert prompt.tolist() == fed.tolist()
    # the same pixels and image layout (pixel_values, image_grid_thw, image_sizes, ...); the per-token inputs differ
    for key in set(zero_shot) - {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}:
        assert torch.equal(batch[key], zero_shot[key].to(batch[key].dtype)), key


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """A saved model's weights by their in-memory parameter names (the checkpoint may store them otherwise)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_few_steps_save_a_model_the_backend_answers_with(family_folder, demo, tmp_path, lora):
    family, folder = family_folder
    samples, masked, root = demo
    config = FinetuneConfig.from_dict({**_FAST, "lora": lora, "lora_r": 4, "lora_alpha": 8})
    summary = finetune(samples, masked, root, folder, tmp_path / "run", config, progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["train_loss"])
    before, after = _weights(folder), _weights(Path(summary["final"]))
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(decoder in name for name in changed for decoder in LANGUAGE_MODULES)
    assert any(projector in name for name in changed for projector in PROJECTOR_MODULES)  # LoRA trains it fully
    # the vision encoder stays as it was (`freeze_vision_tower`, the default), whatever the family calls it
    assert not {name for name in changed if is_vision_tower_parameter(name)}
    answers = _backend(Path(summary["final"])).generate_batch([Query(r.sample_id, r.image, PROMPT) for r in _records()])
    assert [a.status for a in answers] == ["answered", "answered"]


@pytest.mark.parametrize(
    ("name", "frozen"),
    [
        ("model.vision_tower.encoder.layers.0.self_attn.q_proj.weight", True),  # LLaVA, OneVision, InternVL, Gemma 3
        ("model.visual.blocks.0.attn.qkv.weight", True),  # Qwen-VL's encoder
        ("base_model.model.model.visual.patch_embed.proj.weight", True),  # under peft
        ("model.visual.merger.mlp.0.weight", False),  # Qwen-VL's projector
        ("model.visual.deepstack_merger_list.0.norm.weight", False),  # Qwen3-VL's other projectors
        ("model.multi_modal_projector.linear_1.weight", False),
        ("model.vision_model.encoder.layers.0.self_attn.q_proj.weight", True),  # SmolVLM's encoder
        ("model.connector.modality_projection.proj.weight", False),  # SmolVLM's projector
        ("model.text_model.layers.0.self_attn.q_proj.weight", False),
        ("model.language_model.layers.0.self_attn.q_proj.weight", False),
    ],
)
def test_vision_tower_parameters_by_family(name, frozen):
    assert is_vision_tower_parameter(name) is frozen
