"""Tiny stand-ins for every data set and model the paper profile names, in the folders its run-book gives.

`build_standins(root)` fills `root/data/raw/` and `root/models/` so that `profiles/paper.yaml` runs unchanged
on the CPU (apart from the size overrides of `STANDIN_OVERRIDES` and the API endpoint): each data set in the
layout of its real release (MiVOLO annotation CSVs for LAGENDA, IMDB-clean, Adience, FairFace and CACD with
their file names and class labels; a labelled photo folder for Wild104), MiVOLO checkpoints as an official
`.pth.tar` and as a Hugging Face folder, llava-hf folders for LLaVA-1.5 and LLaVA-NeXT, and ShareGPT4V in the
ORIGINAL LLaVA layout converted with `agegender convert-llava`, as a researcher would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

#: FairFace's nine age classes, as MiVOLO's annotations write them
FAIRFACE_CLASSES = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 120))

#: the fine-tuning runs of `profiles/paper.yaml` that the stand-ins train only a few steps
SHORT_RUNS = ("sharegpt4v-13b-ft", "llava15-7b-ft", "sharegpt4v-7b-ft-face")

#: params the stand-ins need beside `profiles/paper.yaml`: sizes for 2 CPU cores. One thing of the code path moves:
#: the runs of `SHORT_RUNS` report their last checkpoint, as a few steps teach a tiny model no answer that a selection
#: could score; `sharegpt4v-7b-ft` trains long enough to select its best and reports its last beside it.
STANDIN_OVERRIDES: tuple[str, ...] = (
    "prepare_data.subsets.nanolagenda.per_bin=2",
    # MiVOLO-384 trained here: the paper's recipe at a tiny size and two short stages
    "train_mivolo.config={variant: mivolo_tiny_64, stage1_epochs: 1, stage2_epochs: 1, batch_size: 16, "
    "face_blur_p2: 0.7, min_person_size: 50, threads: 1}",
    "finetune_mllm.runs.sharegpt4v-7b-ft.config={input_kind: body, learning_rate: 0.002, "
    "per_device_train_batch_size: 8, num_train_epochs: 25, save_steps: 60, warmup_ratio: 0.05, "
    "freeze_vision_tower: false, torch_threads: 1, deepspeed: null}",
    "finetune_mllm.select.min_coverage=0.0",
    "finetune_mllm.runs.sharegpt4v-7b-ft.backend_options={batch_size: 8}",
    *(
        override
        for run in SHORT_RUNS
        for override in (
            *(
                f"finetune_mllm.runs.{run}.config.{key}"
                for key in (
                    "max_steps=2",
                    "per_device_train_batch_size=8",
                    "freeze_vision_tower=false",
                    "torch_threads=1",
                )
            ),
            f"finetune_mllm.runs.{run}.backend_options={{batch_size: 8}}",
            f"finetune_mllm.runs.{run}.checkpoint=last",
        )
    ),
    "query_mllms.models.llava15-7b.options={batch_size: 8, pad_to_square: true}",
    # the paper's grid scaled to the stand-in's 112-pixel tile (336 / 3)
    "query_mllms.models.llava-next-34b.options={batch_size: 8, image_grid_pinpoints: [[112, 224], [224, 112]]}",
    "query_mllms.models.sharegpt4v-7b.options={batch_size: 8, pad_to_square: true}",
    "predict.batch_size=32",
    "evaluate.n_resamples=50",
    "report.gallery.n=3",
)


def api_overrides(base_urls: dict[str, str]) -> tuple[str, ...]:
    """Point API models (`gpt-4v`, `gpt-4o` -> URL) at local OpenAI-compatible servers instead of api.openai.com."""
    return tuple(f"query_mllms.models.{key}.options.base_url={url}" for key, url in base_urls.items())


def _generate(work: Path, seed: int) -> Path:
    from agegender.data.demo import DemoConfig, generate_demo

    generate_demo(work, DemoConfig(n_train=40, n_val=12, n_test=40, image_size=192, seed=seed), progress=False)
    return work


def _copy_images(src_root: Path, table: pd.DataFrame, dst_root: Path) -> None:
    for name in table["img_name"].unique():
        target = dst_root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src_root / name, target)


def _fairface_label(age: object) -> str:
    years = int(float(str(age)))
    for lo, hi in FAIRFACE_CLASSES:
        if lo <= years <= hi:
            return f"{lo};{hi}"
    return f"{FAIRFACE_CLASSES[-1][0]};{FAIRFACE_CLASSES[-1][1]}"


def build_datasets(root: Path, *, seed: int = 7) -> dict[str, Path]:
    """Write the seven data sets of the paper profile under `root/data/raw/` (MiVOLO / folder layouts)."""
    gen = _generate(root / "_generated", seed)
    csvs = {split: pd.read_csv(gen / "annotations" / f"demo_{split}.csv") for split in ("train", "val", "test")}
    raw = root / "data" / "raw"
    out: dict[str, Path] = {}

    lagenda = raw / "lagenda"  # one CSV in the root, images beside it
    _copy_images(gen, csvs["test"], lagenda)
    csvs["test"].to_csv(lagenda / "lagenda_annotation.csv", index=False)
    out["lagenda"] = lagenda

    imdb = raw / "imdb_clean"  # annotations/imdb_{train,valid,test}_new_1024.csv
    (imdb / "annotations").mkdir(parents=True)
    for split, token in (("train", "train"), ("val", "valid"), ("test", "test")):
        _copy_images(gen, csvs[split], imdb)
        csvs[split].to_csv(imdb / "annotations" / f"imdb_{token}_new_1024.csv", index=False)
    out["imdb_clean"] = imdb

    adience = raw / "adience"  # faces/ + annotations/adience_annotations.csv with 8 class labels
    (adience / "annotations").mkdir(parents=True)
    classes = pd.read_csv(gen / "annotations_adience" / "demoadience_test.csv")
    _copy_images(gen, classes, adience / "faces")
    classes.to_csv(adience / "annotations" / "adience_annotations.csv", index=False)
    out["adience"] = adience

    fairface = raw / "fairface"  # fairface-img-margin125-trainval/ + annotations/val_annotations.csv, 9 classes
    (fairface / "annotations").mkdir(parents=True)
    table = csvs["test"].copy()
    labelled = table["age"].astype(float) >= 0
    table["age"] = table["age"].astype(object)
    table.loc[labelled, "age"] = table.loc[labelled, "age"].map(_fairface_label)
    _copy_images(gen, table, fairface / "fairface-img-margin125-trainval")
    table.to_csv(fairface / "annotations" / "val_annotations.csv", index=False)
    out["fairface"] = fairface

    cacd = raw / "cacd"
    (cacd / "annotations").mkdir(parents=True)
    _copy_images(gen, csvs["test"], cacd)
    csvs["test"].to_csv(cacd / "annotations" / "cacd_test_annotations.csv", index=False)
    out["cacd"] = cacd

    wild = raw / "wild104"  # photos + labels.csv (image, age, gender, boxes): labelled people only
    people = csvs["test"][csvs["test"]["age"].astype(float) >= 0].head(20)
    _copy_images(gen, people, wild)
    labels = people.rename(columns={"img_name": "image"})
    labels.to_csv(wild / "labels.csv", index=False)
    out["wild104"] = wild

    shutil.rmtree(gen)
    return out


def build_mivolo(root: Path) -> dict[str, Path]:
    """MiVOLO-384 as a Hugging Face folder (iitolstykh/mivolo_v2's layout) and MiVOLO-224 as an official .pth.tar."""
    import torch
    from safetensors.torch import save_file

    from agegender.mivolo.checkpoint import save_checkpoint
    from agegender.mivolo.model import create_mivolo

    torch.manual_seed(0)
    model = create_mivolo("mivolo_tiny_64", in_chans=6, num_classes=3).eval()
    model.set_age_range(1, 95, 48)
    hf = root / "models" / "hf" / "mivolo_v2"
    hf.mkdir(parents=True)
    save_file({f"mivolo.model.{k}": v.contiguous() for k, v in model.state_dict().items()}, hf / "model.safetensors")
    # the real folder's weights are 384-sized, so the loader infers mivolo_d1_384; this tiny stand-in names its variant
    config = {"model_name": "mivolo_d1_384", "num_classes": 3, "in_chans": 6, "agegender_variant": "mivolo_tiny_64"}
    config |= {"with_persons_model": True, "only_age": False, "min_age": 1, "max_age": 95, "avg_age": 48.0}
    (hf / "config.json").write_text(json.dumps(config))
    pretrained = root / "models" / "pretrained"
    pretrained.mkdir(parents=True)
    torch.manual_seed(1)
    model224 = create_mivolo("mivolo_tiny_64", in_chans=6, num_classes=3).eval()
    model224.set_age_range(1, 95, 48)
    pth = save_checkpoint(pretrained / "model_imdb_cross_person_4.24_99.46.pth.tar", model224)
    return {"mivolo_d1_384": hf, "mivolo_d1_224_imdb": pth}


def build_mllms(root: Path) -> dict[str, Path]:
    """llava-hf folders for LLaVA-1.5 and LLaVA-NeXT; ShareGPT4V in the original layout, then converted."""
    from agegender.mllm.tools.convert import convert_llava
    from agegender.mllm.tools.tiny import build_tiny_llava

    hf = root / "models" / "hf"
    out = {
        "llava15-7b": build_tiny_llava(hf / "llava-1.5-7b-hf", kind="llava", seed=0, image_size=112),
        "llava-next-34b": build_tiny_llava(hf / "llava-v1.6-34b-hf", kind="llava_next", seed=1, image_size=112),
    }
    from llava_original import make_original  # tests/llava_original.py

    original = make_original(
        root / "models" / "original" / "ShareGPT4V-7B", tower_inside=False, seed=2, tokenizer="sentencepiece"
    )
    out["sharegpt4v-7b"] = convert_llava(
        original["src"], hf / "sharegpt4v-7b-hf", vision_tower=original["clip"], progress=False
    )
    original = make_original(
        root / "models" / "original" / "ShareGPT4V-13B", tower_inside=False, seed=3, tokenizer="sentencepiece"
    )
    out["sharegpt4v-13b"] = convert_llava(
        original["src"], hf / "sharegpt4v-13b-hf", vision_tower=original["clip"], progress=False
    )
    return out


def build_standins(root: Path) -> dict[str, Path]:
    """Every data set and model folder of the paper profile, under `root`."""
    return build_datasets(root) | build_mivolo(root) | build_mllms(root)


#: the modern profile's open models (`profiles/modern.yaml`), each a tiny model of its family in the entry's folder
MODERN_FAMILIES: dict[str, str] = {
    "qwen25-vl-7b": "qwen2_5_vl",
    "qwen3-vl-8b": "qwen3_vl",
    "internvl3-8b": "internvl",
    "gemma-3-12b": "gemma3",
    "llava-onevision-7b": "llava_onevision",
    "smolvlm2-2b": "smolvlm",
}

#: params the modern stand-ins need beside `profiles/modern.yaml`: float32 and batch 8 on the CPU, and each image
#: budget scaled to its tiny model (the profile's budgets would give the toy towers thousands of tokens a crop)
MODERN_OVERRIDES: tuple[str, ...] = (
    "prepare_data.subsets.nanolagenda.per_bin=2",
    *(f"query_mllms.models.{key}.options.{o}" for key in MODERN_FAMILIES for o in ("batch_size=8", "dtype=float32")),
    "query_mllms.models.qwen25-vl-7b.options.max_pixels=50176",  # 64 tokens of 28x28 pixels
    "query_mllms.models.qwen3-vl-8b.options.max_pixels=65536",  # 64 tokens of 32x32 pixels
    "query_mllms.models.internvl3-8b.options.max_patches=4",
    "query_mllms.models.smolvlm2-2b.options.image_longest_edge=128",  # 4 of the stand-in's 32-pixel tiles a side
    # the profile's grid of 384-pixel tiles scaled to the stand-in's 56-pixel tile
    "query_mllms.models.llava-onevision-7b.options.image_grid_pinpoints="
    "[[56, 56], [112, 56], [56, 112], [112, 112], [168, 56], [56, 168]]",
)


def build_modern_standins(root: Path, folders: dict[str, str]) -> dict[str, Path]:
    """The paper profile's stand-ins plus a tiny model of each open model's family (`MODERN_FAMILIES`) in the
    folder its entry names (`folders`: entry -> folder relative to `root`, as in the profile)."""
    from agegender.mllm.tools.tiny import build_tiny_family

    out = build_standins(root)
    for seed, (key, family) in enumerate(MODERN_FAMILIES.items()):
        out[key] = build_tiny_family(root / folders[key], family, seed=seed)  # type: ignore[arg-type]
    return out


def copy_project(src: Path, dst: Path) -> None:
    """The files a project needs to run its pipeline (code, notebooks, profiles, configs), from `src` to `dst`."""
    for name in ("dvc.yaml", "pyproject.toml", "params.yaml"):
        shutil.copy(src / name, dst / name)
    for folder in ("notebooks", "src", "profiles", "configs"):
        shutil.copytree(src / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
