"""Supervised fine-tuning data for image-text-to-text models (LLaVA, today's families): records, a Dataset, a collator.

One record per labelled person (age AND gender known): the crop the model sees (the body crop by default, the
face crop as an option - the paper tried both), the paper's prompt as the user turn and the answer the prompt
asks for, `format_answer(gender, age)`, e.g. `"[female; 40]"`. People without an age or a gender, or without a
crop of the asked kind, are skipped and counted (never silently dropped).

The collator makes exactly what the zero-shot transformers backend makes for the same crop, plus the answer:

- the image goes through LLaVA-1.5's mean-colour pad-to-square where the backend would apply it (same rule:
  on by default for `model_type == "llava"`, through the image processor's own `do_pad` when it has one, else
  `pad_to_square` with `square_pad_color` before the processor), so the pixels equal zero-shot's;
- the prompt text is `chat_prompt(processor, PROMPT, system)` (the model's own chat template with the
  generation prompt), the same string the backend generates from, tokenized as the backend does: one image list
  per example (Gemma 3's processor reads a flat list as all images of the first text) and no second BOS where
  the template writes one;
- the training text is that prompt followed by the assistant turn as the template renders it: its separator,
  the answer and the turn's end (`<|im_end|>` for the ChatML families, Gemma's `<end_of_turn>`, vicuna's EOS;
  the tokenizer's EOS when the template closes no turn), without the whitespace the template writes after it;
- labels are -100 everywhere except the answer tokens and the end of the turn: prompt and image tokens are
  masked.

The number of answer tokens is found by tokenizing the prompt string and the full string with the tokenizer
alone (the `<image>` placeholder is one special token there, so nothing merges across it) and checking that
the prompt's ids are a prefix of the full ids; the processor then expands the placeholder into image tokens,
and the answer is the last `n_answer` attended tokens of each row, whatever the padding side.

`export_llava_json` writes the original LLaVA conversation format (`id`, `image`, `conversations` with
`human`/`gpt` turns, `<image>\\n` before the prompt) and the crops as PNG files, for users of the original
LLaVA training code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from agegender.errors import InputError
from agegender.files import atomic_path, atomic_write_text
from agegender.mllm.backends.transformers_backend import chat_prompt, check_image, pad_to_square, square_pad_color
from agegender.mllm.finetune.config import SFT_INPUTS
from agegender.mllm.prompt import PROMPT, format_answer

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SFTRecord:
    """One training example.

    Attributes:
        sample_id: the person's sample id.
        answer: the target text, e.g. `"[female; 40]"`.
        gender: `male` / `female`.
        age: the integer age in the answer.
        image: the crop (RGB uint8) when kept in memory, else None.
        image_path: the crop's PNG file when written to disk, else None.
        prompt: the user turn's text (the paper's prompt).
    """

    sample_id: str
    answer: str
    gender: str
    age: int
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    image_path: str | None = None
    prompt: str = PROMPT

    def load_image(self) -> np.ndarray:
        """The crop as an RGB uint8 array (from memory or from its file).

        Raises:
            InputError: the crop file is missing or unreadable.
        """
        if self.image is not None:
            return self.image
        if self.image_path is None:
            raise InputError(f"record {self.sample_id!r} has neither an image nor an image file", row=self.sample_id)
        from agegender.data.crops import load_image

        return load_image(self.image_path)


def crop_file_name(sample_id: str, input_kind: str) -> str:
    """A file name for a sample's crop that is safe on every file system (sample ids hold `/` and `|`)."""
    digest = hashlib.sha256(f"{sample_id}|{input_kind}".encode()).hexdigest()[:24]
    return f"{input_kind}_{digest}.png"


def _write_png(image: np.ndarray, path: Path) -> None:
    # Atomic: several training processes may write the same crop; a reader never sees half a file.
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")


def build_records(
    samples: pd.DataFrame,
    masked: pd.DataFrame | None,
    image_roots: str | Path | Mapping[str, str | Path],
    *,
    input_kind: str = "body",
    image_dir: str | Path | None = None,
    max_side: int | None = None,
    context: pd.DataFrame | None = None,
    prompt: str = PROMPT,
    progress: bool = False,
) -> tuple[list[SFTRecord], dict[str, Any]]:
    """Make one fine-tuning record per labelled person of a sample table.

    Crops follow the runner's rules (`agegender.mllm.runner.crop_queries`: official crop rules, optional
    downscale), so training sees what zero-shot inference sees.

    Args:
        samples: sample table (DESIGN.md); rows without an age or a gender are skipped and counted.
        masked: the reader's side table of persons that exist only to be masked (or None).
        image_roots: the folder image paths are relative to, or a mapping dataset -> folder.
        input_kind: `body` (default, the paper's best), `face` or `body_wo_face`.
        image_dir: write the crops here as PNG files and keep only their paths (for large data sets; crops
            already there are reused, so an interrupted preparation resumes); None keeps crops in memory.
        max_side: downscale crops so the longer side is at most this (None = original size, as zero-shot).
        context: a larger sample table whose boxes also count as neighbours for `body_wo_face`.
        prompt: the user turn's text (default: the paper's prompt).
        progress: show a tqdm bar.

    Returns:
        (records in the samples' order, stats) with stats `samples`, `records`, `skipped_no_age`,
        `skipped_no_gender`, `skipped_bad_label`, `skipped_no_crop`, `reused_crops`, `input_kind`.

    Raises:
        InputError: unknown input kind, missing columns, a data set without an image root, unreadable images.
    """
    from agegender.mllm.runner import crop_queries

    if input_kind not in SFT_INPUTS:
        raise InputError(f"unknown input kind {input_kind!r}; known: {list(SFT_INPUTS)}", field="input_kind")
    for col in ("sample_id", "age", "gender"):
        if col not in samples.columns:
            raise InputError("required column is missing from the sample table", field=col)
    stats: dict[str, Any] = {"input_kind": input_kind, "samples": len(samples), "records": 0}
    for key in ("skipped_no_age", "skipped_no_gender", "skipped_bad_label", "skipped_no_crop", "reused_crops"):
        stats[key] = 0
    labels: dict[str, tuple[str, int, str]] = {}
    keep = np.zeros(len(samples), dtype=bool)
    ages = pd.to_numeric(samples["age"], errors="coerce").astype("float64").to_numpy()
    genders = samples["gender"].astype("object").to_numpy()
    for pos, sample_id in enumerate(samples["sample_id"].astype(str)):
        age, gender = ages[pos], genders[pos]
        if not np.isfinite(age):
            stats["skipped_no_age"] += 1
            continue
        if gender is None or gender is pd.NA or (isinstance(gender, float) and np.isnan(gender)):
            stats["skipped_no_gender"] += 1
            continue
        try:
            answer = format_answer(str(gender), float(age))
        except InputError:
            stats["skipped_bad_label"] += 1
            continue
        labels[sample_id] = (str(gender).strip().lower(), int(np.floor(age + 0.5)), answer)
        keep[pos] = True
    labelled = samples.loc[keep]
    out_dir = None if image_dir is None else Path(image_dir)
    done: dict[str, str] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sample_id in labelled["sample_id"].astype(str):
            path = out_dir / crop_file_name(sample_id, input_kind)
            if path.is_file():
                done[sample_id] = str(path)
        stats["reused_crops"] = len(done)
    todo = labelled[~labelled["sample_id"].astype(str).isin(done)]
    crops: dict[str, np.ndarray | str] = dict(done)
    neighbours = samples if context is None else pd.concat([samples, context], ignore_index=True)
    crop_stats: dict[str, Any] = {}
    queries = crop_queries(
        todo, masked, image_roots, input_kind, max_side=max_side, context=neighbours, prompt=prompt, stats=crop_stats
    )
    for query in tqdm(queries, total=len(todo), desc=f"sft crops ({input_kind})", disable=not progress):
        sample_id = query.request_id[: -len(input_kind) - 1]
        if out_dir is None:
            crops[sample_id] = query.image
        else:
            path = out_dir / crop_file_name(sample_id, input_kind)
            _write_png(query.image, path)
            crops[sample_id] = str(path)
    stats["skipped_no_crop"] = int(crop_stats.get("no_crop", 0))
    records = []
    for sample_id in labelled["sample_id"].astype(str):
        if sample_id not in crops:
            continue
        gender, age, answer = labels[sample_id]
        value = crops[sample_id]
        if isinstance(value, str):
            records.append(SFTRecord(sample_id, answer, gender, age, image_path=value, prompt=prompt))
        else:
            records.append(SFTRecord(sample_id, answer, gender, age, image=value, prompt=prompt))
    stats["records"] = len(records)
    return records, stats


class SFTDataset(torch.utils.data.Dataset):
    """Records as processor-ready examples: `{"sample_id", "image" (RGB uint8), "prompt", "answer"}`.

    The collator does the tokenizing and image preprocessing in batches (NeXT's any-res tiles and padding need
    the whole batch).

    Args:
        records: from `build_records`.
    """

    def __init__(self, records: Sequence[SFTRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "sample_id": record.sample_id,
            "image": record.load_image(),
            "prompt": record.prompt,
            "answer": record.answer,
        }


def square_padding(processor: Any, model_type: str, pad_to_square: bool | None = None) -> tuple[int, int, int] | None:
    """Set up LLaVA-1.5's pad-to-square on a processor exactly as the zero-shot transformers backend does.

    Args:
        processor: the model's processor (its image processor's `do_pad` may be switched, as the backend does).
        model_type: the model config's `model_type`.
        pad_to_square: None = on for `llava`, off otherwise (the backend's default).

    Returns:
        The colour to pad with before the processor, or None when the processor pads itself (or no padding).
    """
    enabled = model_type == "llava" if pad_to_square is None else bool(pad_to_square)
    ip = getattr(processor, "image_processor", None)
    if not enabled:
        if ip is not None and hasattr(ip, "pad_to_square") and getattr(ip, "do_pad", False):
            ip.do_pad = False
        return None
    if ip is not None and hasattr(ip, "pad_to_square") and hasattr(ip, "do_pad"):
        ip.do_pad = True
        return None
    return square_pad_color(processor)


class SFTCollator:
    """Batch examples of `SFTDataset` into model inputs with answer-only labels (module docstring).

    Args:
        processor: the model's processor (tokenizer with a chat template, image processor).
        model_type: the model config's `model_type` (decides the pad-to-square default).
        pad_to_square: None = the backend's default; True/False force it.
        system_prompt: a system turn before each query, as the backend's `system_prompt` (None = template's).
        max_length: raise when a row is longer (image tokens included); None = no limit. Rows are never cut:
            a cut answer would teach the model to stop early.

    Raises:
        InputError: the model has no chat template.
    """

    def __init__(
        self,
        processor: Any,
        *,
        model_type: str,
        pad_to_square: bool | None = None,
        system_prompt: str | None = None,
        max_length: int | None = None,
    ) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None:
            raise InputError("the processor has no tokenizer", field="processor")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.pad_color = square_padding(processor, model_type, pad_to_square)
        self._answer_cache: dict[tuple[str, str], tuple[str, int]] = {}
        chat_prompt(processor, "", system_prompt)  # fail now, not in the middle of an epoch

    def prepare_image(self, image: np.ndarray) -> Image.Image:
        """The PIL image handed to the processor: the backend's `prepare_image`, same pixels."""
        check_image(image)
        if self.pad_color is not None:
            image = pad_to_square(image, self.pad_color)
        return Image.fromarray(np.ascontiguousarray(image))

    def _conversation(self, prompt: str, answer: str) -> list[dict[str, Any]]:
        conv: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        if self.system_prompt:
            conv.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return conv

    def _special_tokens(self, text: str) -> dict[str, bool]:
        """Tokenizer/processor keywords that keep exactly one BOS: the zero-shot backend's rule (`build_inputs`) -
        a template that writes the BOS itself (Gemma 3) must not get a second one from the tokenizer."""
        bos = self.tokenizer.bos_token
        return {"add_special_tokens": not (bos and text.startswith(bos))}

    def _answer_turn(self, head: str, rendered: str, answer: str) -> str:
        """What follows the generation prompt `head` in training: the template's separator, the answer, the end of
        the turn (the template's, e.g. `<|im_end|>`, Gemma's `<end_of_turn>` or vicuna's `</s>`, else the tokenizer's
        EOS).

        Whitespace the template writes after the turn's end (ChatML's and Gemma's newline) is left out: it belongs
        to the next turn, and generation stops before it. Where the template heads the assistant turn differently
        from its generation prompt only by whitespace (LLaVA-OneVision: `assistant \n` vs `assistant\n`), the
        answer follows the generation prompt directly, as at inference.

        Raises:
            InputError: the rendering of the conversation holds no answer, or its text before the answer is not the
                generation prompt (the boundary would be unclear).
        """
        at = rendered.rfind(answer)
        if at < 0:
            raise InputError(f"the chat template's conversation does not hold the answer {answer!r}", field="answer")
        before = rendered[:at]
        if before.startswith(head):
            separator = before[len(head) :]
        elif before.rstrip() == head.rstrip():
            separator = ""
        else:
            raise InputError(
                "the chat template's conversation does not start with its generation prompt; cannot tell the answer "
                f"apart (prompt ends {head[-40:]!r}, conversation ends {rendered[-60:]!r})",
                field="chat_template",
            )
        tail = rendered[at + len(answer) :]
        end = tail.rstrip()
        if not end and self.tokenizer.eos_token:
            # The template closes no turn (llava-hf's LLaVA-1.5 writes `answer `): the end of the answer must be
            # learnt, or generation never stops; the template's own text stays as it wrote it.
            end = tail + self.tokenizer.eos_token
        return separator + answer + end

    def texts(self, prompt: str, answer: str) -> tuple[str, int]:
        """(full training text, number of supervised tokens at its end) for one prompt and answer.

        Raises:
            InputError: the template's rendering of the conversation does not start with the generation prompt,
                or the prompt's tokens are not a prefix of the full text's tokens (the boundary would be unclear).
        """
        key = (prompt, answer)
        if key in self._answer_cache:
            return self._answer_cache[key]
        head = chat_prompt(self.processor, prompt, self.system_prompt)
        template_owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        rendered = template_owner.apply_chat_template(self._conversation(prompt, answer), tokenize=False)
        full = head + self._answer_turn(head, rendered, answer)
        special = self._special_tokens(head)
        ids_head = self.tokenizer(head, **special)["input_ids"]
        ids_full = self.tokenizer(full, **special)["input_ids"]
        # Tokenizers that append EOS themselves would put it after the answer, i.e. still inside the answer part.
        if ids_full[: len(ids_head)] != ids_head and ids_head[-1:] == [self.tokenizer.eos_token_id]:
            ids_head = ids_head[:-1]
        if ids_full[: len(ids_head)] != ids_head:
            raise InputError(
                "the prompt's tokens are not a prefix of the prompt+answer tokens (a merge across the boundary); "
                f"answer {answer!r}",
                field="answer",
            )
        n_answer = len(ids_full) - len(ids_head)
        if n_answer < 1:
            raise InputError(f"the answer {answer!r} tokenizes to nothing", field="answer")
        self._answer_cache[key] = (full, n_answer)
        return full, n_answer

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Tokenize and preprocess a batch; labels supervise only the answers (+ end-of-turn)."""
        if not examples:
            raise InputError("empty batch", field="batch")
        texts, n_answers = zip(*(self.texts(e["prompt"], e["answer"]) for e in examples), strict=True)
        # One list per example, as the zero-shot backend: Gemma 3's processor reads a flat list as all images of the
        # first text.
        images = [[self.prepare_image(e["image"])] for e in examples]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"  # training: padding after the answer; labels follow the mask anyway
        try:
            batch = self.processor(
                images=images, text=list(texts), padding=True, return_tensors="pt", **self._special_tokens(texts[0])
            )
        finally:
            self.tokenizer.padding_side = side
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            longest = int(mask.sum(dim=1).max())
            if longest > self.max_length:
                raise InputError(f"a row has {longest} tokens > max_length {self.max_length}", field="max_length")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, n_answer in enumerate(n_answers):
            attended = torch.nonzero(mask[row], as_tuple=False).flatten()
            answer_pos = attended[-n_answer:]
            labels[row, answer_pos] = input_ids[row, answer_pos]
        out = dict(batch)
        out["labels"] = labels
        return out


def export_llava_json(
    records: Iterable[SFTRecord],
    out_json: str | Path,
    image_dir: str | Path,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Write records in the original LLaVA conversation format, with the crops as PNG files.

    Each entry: `{"id": sample_id, "image": <file name relative to image_dir>, "conversations":
    [{"from": "human", "value": "<image>\\n" + prompt}, {"from": "gpt", "value": "[female; 40]"}]}`; the original
    LLaVA code takes `--data_path out_json --image_folder image_dir`.

    Args:
        records: from `build_records`.
        out_json: the JSON file to write (a list of entries).
        image_dir: folder for the crop files (created).
        progress: show a tqdm bar.

    Returns:
        `{"entries": n, "json": path, "image_dir": path}`.
    """
    folder = Path(image_dir)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for record in tqdm(list(records), desc="llava json", disable=not progress):
        name = crop_file_name(record.sample_id, "crop")
        target = folder / name
        if record.image_path is not None and Path(record.image_path).resolve() == target.resolve():
            pass
        else:
            _write_png(record.load_image(), target)
        entries.append(
            {
                "id": record.sample_id,
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + record.prompt},
                    {"from": "gpt", "value": record.answer},
                ],
            }
        )
    out = atomic_write_text(out_json, json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    return {"entries": len(entries), "json": str(out), "image_dir": str(folder)}
