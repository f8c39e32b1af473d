"""SFT data: records per labelled person, answer-only labels, zero-shot-identical pixels and prompt, LLaVA JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from agegender.errors import InputError
from agegender.mllm.backends.base import Query
from agegender.mllm.backends.transformers_backend import TransformersBackend
from agegender.mllm.finetune.sft_data import (
    IGNORE_INDEX,
    SFTCollator,
    SFTDataset,
    SFTRecord,
    build_records,
    crop_file_name,
    export_llava_json,
)
from agegender.mllm.prompt import PROMPT
from agegender.mllm.tools.tiny import build_tiny_llava

torch.set_num_threads(2)


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def tiny(request, tmp_path_factory):
    folder = build_tiny_llava(tmp_path_factory.mktemp(request.param), kind=request.param, image_size=56)
    backend = TransformersBackend(str(folder), device="cpu")
    yield request.param, folder, backend
    backend.close()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _records() -> list[SFTRecord]:
    answers = [("female", 40), ("male", 5), ("male", 100), ("female", 0)]
    return [
        SFTRecord(f"s{i}", f"[{g}; {a}]", g, a, image=_image(40 + 9 * i, 20 + 5 * i, i))
        for i, (g, a) in enumerate(answers)
    ]


def test_labels_supervise_exactly_the_answer_and_eos(tiny):
    kind, _, backend = tiny
    collator = SFTCollator(backend.processor, model_type=backend.hf_model.config.model_type)
    data = SFTDataset(_records())
    batch = collator([data[i] for i in range(len(data))])
    tok = backend.processor.tokenizer
    assert batch["labels"].shape == batch["input_ids"].shape
    if kind == "llava_next":
        assert "image_sizes" in batch
    for row, record in enumerate(data.records):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX]
        assert kept[-1].item() == tok.eos_token_id
        # the template's separator space belongs to the answer turn (" ASSISTANT: " + answer + eos)
        assert tok.decode(kept[:-1]) == " " + record.answer
        assert tok.decode(kept, skip_special_tokens=True).strip() == record.answer
        # image and prompt tokens are masked
        image_id = backend.hf_model.config.image_token_id
        assert (labels[batch["input_ids"][row] == image_id] == IGNORE_INDEX).all()
        assert (labels[batch["attention_mask"][row] == 0] == IGNORE_INDEX).all()
    assert tok.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]) == " [female; 40]</s>"


def test_same_pixels_and_prompt_as_zero_shot(tiny):
    _, _, backend = tiny
    collator = SFTCollator(backend.processor, model_type=backend.hf_model.config.model_type)
    for record in _records()[:2]:
        zero_shot = backend.build_inputs([Query("q", record.image, PROMPT)])
        train = collator([SFTDataset([record])[0]])
        n = zero_shot["input_ids"].shape[1]
        assert torch.equal(train["input_ids"][0, :n], zero_shot["input_ids"][0])
        assert torch.equal(train["pixel_values"], zero_shot["pixel_values"])
        # right after the prompt come exactly the supervised tokens
        assert (train["labels"][0, :n] == IGNORE_INDEX).all()
        assert (train["labels"][0, n:] != IGNORE_INDEX).all()


def test_llava_pads_to_square_with_the_mean_colour(tiny):
    kind, _, backend = tiny
    if kind != "llava":
        pytest.skip("pad-to-square is LLaVA-1.5's")
    collator = SFTCollator(backend.processor, model_type="llava")
    tall = np.zeros((56, 14, 3), dtype=np.uint8)
    pixels = collator([{"image": tall, "prompt": PROMPT, "answer": "[male; 3]"}])["pixel_values"][0]
    # the padded margins are the normalised mean colour, i.e. ~0 after normalisation; the black body is not
    assert pixels[:, :, :8].abs().max() < 0.05
    assert pixels[:, :, 28].abs().min() > 1.0
    plain = SFTCollator(backend.processor, model_type="llava", pad_to_square=False)
    no_pad = plain([{"image": tall, "prompt": PROMPT, "answer": "[male; 3]"}])["pixel_values"][0]
    assert not torch.allclose(no_pad, pixels)
    collator.prepare_image(tall)  # the shared processor is left as the backend set it
    SFTCollator(backend.processor, model_type="llava")


def test_model_learns_from_batch_loss_masks_prompt(tiny):
    _, folder, backend = tiny
    collator = SFTCollator(backend.processor, model_type=backend.hf_model.config.model_type)
    batch = collator([SFTDataset(_records())[i] for i in range(2)])
    with torch.no_grad():
        out = backend.hf_model(**batch)
    assert torch.isfinite(out.loss)
    assert (
        np.log(len(backend.processor.tokenizer)) * 0.5 < out.loss.item() < np.log(len(backend.processor.tokenizer)) * 3
    )


def _table() -> pd.DataFrame:
    rows = []
    for i, (age, gender) in enumerate([(40.4, "female"), (None, "male"), (7.5, None), (3.5, "male"), (200.0, "male")]):
        rows.append(
            {
                "sample_id": f"d/img{i}.png/0",
                "dataset": "d",
                "split": "train",
                "image_path": f"img{i}.png",
                "face_x0": 2.0,
                "face_y0": 2.0,
                "face_x1": 10.0,
                "face_y1": 10.0,
                "person_x0": 0.0 if i != 3 else None,
                "person_y0": 0.0 if i != 3 else None,
                "person_x1": 20.0 if i != 3 else None,
                "person_y1": 30.0 if i != 3 else None,
                "age": age,
                "age_class": None,
                "gender": gender,
            }
        )
    return pd.DataFrame(rows)


def _write_images(root, n=5):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_image(32, 24, i)).save(root / f"img{i}.png")


def test_build_records_counts_skips_and_caches(tmp_path):
    _write_images(tmp_path / "img")
    table = _table()
    records, stats = build_records(table, None, tmp_path / "img", input_kind="body")
    assert [r.answer for r in records] == ["[female; 40]"]
    assert stats["skipped_no_age"] == 1 and stats["skipped_no_gender"] == 1
    assert stats["skipped_bad_label"] == 1 and stats["skipped_no_crop"] == 1 and stats["records"] == 1
    assert records[0].image.shape == (30, 20, 3)
    face, _ = build_records(table, None, tmp_path / "img", input_kind="face")
    assert [r.answer for r in face] == ["[female; 40]", "[male; 4]"]  # half up, as format_answer
    assert face[0].image.shape == (8, 8, 3)
    cached, stats = build_records(table, None, tmp_path / "img", input_kind="face", image_dir=tmp_path / "crops")
    assert stats["reused_crops"] == 0 and all(r.image is None for r in cached)
    assert np.array_equal(cached[0].load_image(), face[0].image)
    again, stats = build_records(table, None, tmp_path / "img", input_kind="face", image_dir=tmp_path / "crops")
    assert stats["reused_crops"] == 2 and [r.image_path for r in again] == [r.image_path for r in cached]
    with pytest.raises(InputError, match="input kind"):
        build_records(table, None, tmp_path / "img", input_kind="face_body")
    with pytest.raises(InputError, match="image file not found"):
        build_records(table, None, tmp_path / "missing", input_kind="body")


def test_export_llava_json(tmp_path):
    records = _records()[:2]
    info = export_llava_json(records, tmp_path / "out" / "train.json", tmp_path / "out" / "images")
    entries = json.loads((tmp_path / "out" / "train.json").read_text())
    assert info["entries"] == 2 and len(entries) == 2
    first = entries[0]
    assert set(first) == {"id", "image", "conversations"} and first["id"] == "s0"
    assert first["conversations"] == [
        {"from": "human", "value": "<image>\n" + PROMPT},
        {"from": "gpt", "value": "[female; 40]"},
    ]
    assert first["image"] == crop_file_name("s0", "crop")
    from agegender.data.crops import load_image

    assert np.array_equal(load_image(tmp_path / "out" / "images" / first["image"]), records[0].image)


def test_collator_rejects_a_template_less_processor(tiny):
    _, folder, _ = tiny
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    with pytest.raises(InputError, match="chat template"):
        SFTCollator(processor, model_type="llava")
