"""API cost estimates: OpenAI's image-token rule, crop sizes as the runner sends them, USD, the `cost` command."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/mllm_fakes.py

from mllm_fakes import make_dataset  # noqa: E402

from agegender.cli import main  # noqa: E402
from agegender.data.schema import validate_samples  # noqa: E402
from agegender.errors import InputError  # noqa: E402
from agegender.mllm.prompt import PROMPT  # noqa: E402
from agegender.mllm.runner import crop_queries, downscale, plan_queries  # noqa: E402
from agegender.mllm.tools.cost import (  # noqa: E402
    MESSAGE_OVERHEAD_TOKENS,
    PRICE_TABLE,
    PRICES,
    PatchRule,
    Price,
    crop_sizes,
    downscaled_size,
    estimate_cost,
    estimate_from_sizes,
    high_detail_size,
    image_patches,
    image_tokens,
    model_price,
    prompt_tokens,
    read_price_table,
    vision_rule,
)

# ---------------------------------------------------------------------------------------------------------------
# The tile rule


@pytest.mark.parametrize(
    ("size", "detail", "model", "tokens"),
    [
        ((1024, 1024), "high", "gpt-4o", 765),  # the guide's worked examples
        ((2048, 4096), "high", "gpt-4o", 1105),
        ((4096, 8192), "low", "gpt-4o", 85),
        ((1024, 1024), "high", "gpt-4o-mini", 2833 + 4 * 5667),
        ((4096, 8192), "low", "gpt-4o-mini-2024-07-18", 2833),
        ((500, 500), "high", "gpt-4o", 255),  # one tile, two tiles, four tiles
        ((513, 500), "high", "gpt-4o", 425),
        ((513, 513), "high", "gpt-4o", 765),
        ((128, 64), "high", "gpt-4o-2024-05-13", 255),  # small images are not enlarged (measured on the API)
        ((128, 64), "high", "gpt-4o-mini", 8500),
        ((1024, 1024), "auto", "gpt-4-turbo", 765),  # auto counts as high
        ((1024, 1024), None, "gpt-4-vision-preview", 765),
    ],
)
def test_image_tokens_follow_the_documented_rule(size, detail, model, tokens):
    assert image_tokens(*size, detail=detail, model=model) == tokens


def test_the_literal_reading_enlarges_small_images():
    assert high_detail_size(256, 512) == (256, 512)
    assert high_detail_size(256, 512, upscale=True) == (768, 1536)
    assert image_tokens(256, 512) == 255
    assert image_tokens(256, 512, upscale=True) == 1105
    # both readings agree once the shortest side reaches 768
    assert image_tokens(1024, 2048) == image_tokens(1024, 2048, upscale=True) == 1105


def test_high_detail_size_fits_2048_then_shrinks_the_short_side():
    assert high_detail_size(2048, 4096) == (768, 1536)
    assert high_detail_size(4096, 8192) == (768, 1536)
    assert high_detail_size(3000, 1000) == (2048, 682)  # fitted; the short side is then below 768
    assert high_detail_size(768, 768) == (768, 768)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: image_tokens(100, 100, model="llava-1.5"), "model"),
        (lambda: image_tokens(100, 100, detail="medium"), "detail"),
        (lambda: image_tokens(0, 100), "size"),
        (lambda: image_tokens(100.5, 100), "size"),
        (lambda: model_price("claude-3"), "model"),
    ],
)
def test_bad_arguments_are_named(call, field):
    with pytest.raises(InputError) as err:
        call()
    assert err.value.field == field


def test_prices_resolve_snapshots_to_their_family():
    assert model_price("gpt-4o-2024-08-06") == Price(2.50, 10.00)
    assert model_price("gpt-4o-2024-05-13") == Price(5.00, 15.00)
    assert model_price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)
    assert model_price("gpt-4-turbo-2024-04-09") == Price(10.00, 30.00)
    assert model_price("gpt-4o", {"gpt-4o": Price(1.0, 2.0)}) == Price(1.0, 2.0)


# ---------------------------------------------------------------------------------------------------------------
# Text tokens


def test_prompt_tokens_estimate_without_tiktoken(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    tokens, method = prompt_tokens(PROMPT, "gpt-4o")
    assert tokens == math.ceil(len(PROMPT) / 4) + MESSAGE_OVERHEAD_TOKENS
    assert method.startswith("estimate")


def _fake_tiktoken(monkeypatch, *, cached: bool) -> list[str]:
    """A stand-in tiktoken whose encoding is in its cache or would have to be downloaded."""
    fetched: list[str] = []
    load = types.ModuleType("tiktoken.load")

    def read_file(blobpath: str) -> bytes:
        fetched.append(blobpath)
        return b""

    load.read_file = read_file
    module = types.ModuleType("tiktoken")
    module.load = load

    class Encoding:
        def encode(self, text: str) -> list[int]:
            return list(range(len(text.split())))

    def encoding_for_model(model: str) -> Encoding:
        if not cached:
            module.load.read_file("https://example.invalid/o200k_base.tiktoken")
        return Encoding()

    module.encoding_for_model = encoding_for_model
    monkeypatch.setitem(sys.modules, "tiktoken", module)
    monkeypatch.setitem(sys.modules, "tiktoken.load", load)
    return fetched


def test_prompt_tokens_use_a_cached_tiktoken_encoding(monkeypatch):
    _fake_tiktoken(monkeypatch, cached=True)
    tokens, method = prompt_tokens("four words of text", "gpt-4o")
    assert (tokens, method.split()[0]) == (4 + MESSAGE_OVERHEAD_TOKENS, "tiktoken")


def test_prompt_tokens_never_download_an_encoding(monkeypatch):
    fetched = _fake_tiktoken(monkeypatch, cached=False)
    tokens, method = prompt_tokens("four words of text", "gpt-4o")
    assert fetched == []  # the download was refused before it reached the network code
    assert method.startswith("estimate") and tokens == math.ceil(18 / 4) + MESSAGE_OVERHEAD_TOKENS
    assert sys.modules["tiktoken.load"].read_file.__name__ == "read_file"  # restored


# ---------------------------------------------------------------------------------------------------------------
# Estimates


def test_usd_arithmetic():
    est = estimate_from_sizes([(1024, 1024)] * 10, text_tokens=100, output_tokens=8, price_in=2.5, price_out=10)
    assert (est.requests, est.image_tokens, est.text_tokens, est.output_tokens) == (10, 7650, 1000, 80)
    assert est.usd() == pytest.approx((8650 * 2.5 + 80 * 10) / 1e6)
    assert est.by_input["image"].tiles == 40
    low = estimate_from_sizes([(1024, 1024)] * 10, detail="low", text_tokens=100, price_in=2.5, price_out=10)
    assert low.image_tokens == 850 and low.by_input["image"].tiles == 0
    # one price overridden, the other from the table
    assert estimate_from_sizes([(10, 10)], model="gpt-4o-mini", price_in=1.0).price == Price(1.0, 0.60)
    # max_side applies before the tile rule: 1024x2048 -> 256x512, one tile
    assert estimate_from_sizes([(1024, 2048)], max_side=512).image_tokens == 255
    data = est.as_dict()
    assert data["usd"] == pytest.approx(est.usd()) and data["by_input"]["image"]["requests"] == 10
    assert "check the current price list" in est.table()


def test_duration_bounds():
    est = estimate_from_sizes([(512, 512)] * 100, text_tokens=45, output_tokens=0, price_in=1, price_out=1)
    assert est.duration_s(concurrency=4, latency_s=2.0) == pytest.approx(50.0)
    assert est.duration_s(concurrency=4, latency_s=2.0, rpm=60) == pytest.approx(100.0)
    # (255 + 45) tokens x 100 requests at 3000 TPM = 10 minutes
    assert est.duration_s(concurrency=4, latency_s=2.0, tpm=3000) == pytest.approx(600.0)
    with pytest.raises(InputError):
        est.duration_s(concurrency=0)


@pytest.mark.parametrize("max_side", [7, 50, 64, 95, 100, 513])
def test_downscaled_size_is_the_runners(max_side):
    for width, height in [(96, 96), (58, 92), (92, 58), (30, 30), (1, 95), (1000, 333)]:
        shape = downscale(np.zeros((height, width, 3), np.uint8), max_side).shape
        assert downscaled_size(width, height, max_side) == (shape[1], shape[0])
    assert downscaled_size(1000, 333, None) == (1000, 333)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("fake_data")
    return root, make_dataset(root, n_images=9)


@pytest.mark.parametrize("kind", ["body", "face", "body_wo_face"])
@pytest.mark.parametrize("max_side", [None, 40])
def test_crop_sizes_are_the_sizes_the_runner_sends(fake_data, kind, max_side):
    root, samples = fake_data
    sent = {
        q.request_id.rsplit("|", 1)[0]: (q.image.shape[1], q.image.shape[0])
        for q in crop_queries(samples, None, root, kind, max_side=max_side)
    }
    sizes = dict(crop_sizes(samples, None, root, kind, max_side=max_side))
    assert list(sizes) == samples["sample_id"].tolist()
    assert {k: v for k, v in sizes.items() if v is not None} == sent
    assert any(v is None for v in sizes.values())  # every kind has samples without a crop here


def test_crop_sizes_name_a_missing_image_root(fake_data):
    _, samples = fake_data
    with pytest.raises(InputError) as err:
        list(crop_sizes(samples, None, {"other": "x"}, "body"))
    assert err.value.field == "dataset" and "row 1" in str(err.value)


def _known_sizes(root: Path) -> pd.DataFrame:
    """One 1600 x 2400 photo with three people: crops of known size."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1600, 2400), (120, 90, 60)).save(root / "img" / "a.png")
    rows = [
        # body 1000 x 2000 -> 768 x 1536, 6 tiles; face 400 x 400, 1 tile
        {"face": (300, 250, 700, 650), "person": (100, 200, 1100, 2200)},
        {"face": (1200, 100, 1300, 200), "person": None},  # no body crop
        {"face": None, "person": (1400, 0, 1800, 600)},  # clamped to 200 x 600: 2 tiles
    ]
    table = []
    for i, r in enumerate(rows):
        row = {"sample_id": f"s{i}", "dataset": "photos", "split": "test", "image_path": "img/a.png"}
        for name, box in (("face", r["face"]), ("person", r["person"])):
            if box is not None:
                row.update({f"{name}_{c}": float(v) for c, v in zip(("x0", "y0", "x1", "y1"), box, strict=True)})
        table.append(row)
    return validate_samples(pd.DataFrame(table))


def test_estimate_cost_over_crops_of_known_size(tmp_path):
    samples = _known_sizes(tmp_path)
    est = estimate_cost(
        plan_queries(samples, ("body", "face")), None, {"photos": tmp_path}, model="gpt-4o-2024-05-13",
        text_tokens=100, output_tokens=8,
    )  # fmt: skip
    body, face = est.by_input["body"], est.by_input["face"]
    assert (body.requests, body.no_crop, body.image_tokens, body.tiles) == (2, 1, 1105 + 425, 8)
    assert (face.requests, face.no_crop, face.image_tokens) == (2, 1, 255 + 255)
    assert est.requests == 4 and est.text_tokens == 400 and est.output_tokens == 32
    assert est.usd() == pytest.approx(((1530 + 510 + 400) * 5.0 + 32 * 15.0) / 1e6)
    assert est.usd("body") + est.usd("face") == pytest.approx(est.usd())
    # the paper-style masked body goes through the runner's own cropping
    wo = estimate_cost(plan_queries(samples, ("body_wo_face",)), None, tmp_path, text_tokens=0, max_side=512)
    assert wo.by_input["body_wo_face"].requests == 2
    assert wo.by_input["body_wo_face"].image_tokens == 255 + 255  # 256 x 512 and 171 x 512 after max_side


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cost_command_with_samples(tmp_path, capsys):
    samples = _known_sizes(tmp_path / "photos")
    samples.to_parquet(tmp_path / "samples.parquet", index=False)
    out = tmp_path / "cost.json"
    argv = ["cost", "--samples", str(tmp_path / "samples.parquet"), "--data-root", f"photos={tmp_path / 'photos'}"]
    argv += ["--input", "body", "--price-in", "2", "--price-out", "8", "--text-tokens", "50", "--json", str(out)]
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| body | 2 | 1 | 1,530 (765) |" in printed and "time: about" in printed
    result = json.loads(out.read_text())["gpt-4o"]
    assert result["requests"] == 2 and result["image_tokens"] == 1530
    assert result["usd"] == pytest.approx(((1530 + 100) * 2 + 16 * 8) / 1e6)
    assert result["price_per_million"] == {"input": 2.0, "output": 8.0}


def _project(root: Path) -> Path:
    samples = _known_sizes(root / "data" / "photos")
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    samples.to_parquet(prepared / "samples.parquet", index=False)
    samples.iloc[0:0].to_parquet(prepared / "masked.parquet", index=False)
    (prepared / "datasets.json").write_text(json.dumps({"photos": {"root": "data/photos", "source": None}}))
    params = {
        "profile": "paper",
        "study": {"split": "test", "datasets": ["photos"], "inputs": ["body", "face"]},
        "prepare_data": {"out": "data/prepared", "datasets": {"photos": {"reader": "mivolo", "root": "data/photos"}}},
        "query_mllms": {
            "generation": {"detail": "high"},
            "models": {
                "gpt4o": {"backend": "openai", "model": "gpt-4o-2024-05-13", "inputs": ["body", "face"]},
                "llava": {"backend": "transformers", "model": "models/llava", "inputs": ["body"], "max_side": 512},
            },
        },
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return path


def test_cost_command_from_params(tmp_path, capsys):
    params = _project(tmp_path)
    out = tmp_path / "cost.json"
    base = ["cost", "--params", str(params), "--root", str(tmp_path), "--quiet", "--text-tokens", "0"]
    assert main([*base, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["gpt4o"]  # only the openai entries by default
    assert result["gpt4o"]["model"] == "gpt-4o-2024-05-13"
    assert result["gpt4o"]["by_input"]["body"]["image_tokens"] == 1530
    assert result["gpt4o"]["by_input"]["face"]["image_tokens"] == 510
    assert "**gpt4o**" in capsys.readouterr().out
    # a local model needs an OpenAI model to be priced as; its max_side applies
    assert main([*base, "--model-key", "llava"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main([*base, "--model-key", "llava", "--model", "gpt-4o", "--json", str(out)]) == 0
    llava = json.loads(out.read_text())["llava"]
    assert llava["max_side"] == 512 and llava["by_input"]["body"]["image_tokens"] == 255 + 255
    assert main([*base, "--model-key", "nope"]) == 2


def _two_data_sets(root: Path) -> Path:
    """The paper profile's shape: one model asked body and body_wo_face on `photos`, body only on `wild` (as
    gpt-4v/gpt-4o on wild104); each data set is `_known_sizes` (2 body crops, 2 masked bodies, 3 samples)."""
    photos = _known_sizes(root / "data" / "photos")
    wild = _known_sizes(root / "data" / "wild").assign(dataset="wild", sample_id=lambda t: "w" + t["sample_id"])
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    pd.concat([photos, wild], ignore_index=True).to_parquet(prepared / "samples.parquet", index=False)
    photos.iloc[0:0].to_parquet(prepared / "masked.parquet", index=False)
    roots = {name: {"root": f"data/{name}", "source": None} for name in ("photos", "wild")}
    (prepared / "datasets.json").write_text(json.dumps(roots))
    model = {"backend": "test-scripted", "model": "fake-model", "inputs": ["body", "body_wo_face"]}
    params = {
        "profile": "paper",
        "study": {"split": "test", "datasets": ["photos", "wild"], "inputs": ["body", "body_wo_face"]},
        "prepare_data": {
            "out": "data/prepared",
            "datasets": {name: {"reader": "mivolo", "root": f"data/{name}"} for name in ("photos", "wild")},
        },
        "query_mllms": {"models": {"m": model | {"inputs_by_dataset": {"wild": ["body"]}}}},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    return path


def test_cost_prices_exactly_the_queries_the_stage_sends(tmp_path):
    from agegender.mllm.runner import model_plan
    from agegender.mllm.tools.cost import estimate_params
    from agegender.stages import common, query_mllms

    params, paths = common.setup(tmp_path, _two_data_sets(tmp_path))
    samples = pd.read_parquet(tmp_path / "data" / "prepared" / "samples.parquet")
    plan = model_plan(params, "m", samples)
    assert plan.datasets == {"body": ("photos", "wild"), "body_wo_face": ("photos",)}
    asked = {kind: sorted(sid for sid, k in plan.pairs() if k == kind) for kind in plan.samples}
    assert asked == {"body": ["s0", "s1", "s2", "ws0", "ws1", "ws2"], "body_wo_face": ["s0", "s1", "s2"]}

    estimate = estimate_params(params, paths, model_key="m", model="gpt-4o", text_tokens=0)["m"]
    requests = {kind: k.requests for kind, k in estimate.by_input.items()}
    # by hand: 2 body crops in each data set (s1 has no person box); 2 masked bodies, in `photos` only
    assert requests == {"body": 4, "body_wo_face": 2}
    assert {kind: k.no_crop for kind, k in estimate.by_input.items()} == {"body": 2, "body_wo_face": 1}
    # and the stage, run on the same plan, asks exactly these queries
    query_mllms.run(params, paths, "m", progress=False)
    runs = json.loads((tmp_path / "predictions" / "query_mllms" / "m" / "manifest.json").read_text())["runs"]
    assert {kind: run["queries"] for kind, run in runs.items()} == requests
    # full-size crops of 1000 x 2000 (1105 tokens) and 200 x 600 (425): per data set for body, `photos` only masked
    assert estimate.by_input["body"].image_tokens == 2 * (1105 + 425)
    assert estimate.by_input["body_wo_face"].image_tokens == 1105 + 425


def test_the_price_table_is_dated_data_with_todays_models():
    assert read_price_table() == PRICES and PRICE_TABLE.name == "prices.csv"
    for model in ("gpt-4.1", "gpt-4.1-mini", "gpt-4o-mini", "gemini-2.5-flash"):
        assert PRICES[model].as_of and PRICES[model].source, model
    assert model_price("gpt-4.1-mini-2025-04-14") == Price(0.40, 1.60)  # the longest prefix, not gpt-4.1
    assert model_price("gpt-4.1-2025-04-14") == Price(2.00, 8.00)
    assert model_price("gemini-2.5-flash") == Price(0.30, 2.50)
    # the printed table says the date of the price it used, or that the price was given
    est = estimate_from_sizes([(512, 512)], model="gpt-4o-2024-08-06", text_tokens=10)
    assert f"price table as of {PRICES['gpt-4o'].as_of}" in est.table()
    assert est.as_dict()["price_as_of"] == PRICES["gpt-4o"].as_of
    given = estimate_from_sizes([(512, 512)], model="gpt-4o", text_tokens=10, price_in=1.0)
    assert "prices given" in given.table() and given.as_dict()["price_as_of"] is None


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("openai,m,abc,1,unverified,2026-01-01,s", "input_usd_per_1m"),
        ("openai,m,1,-1,unverified,2026-01-01,s", "output_usd_per_1m"),
        ("openai,m,1,1,unverified,January 2026,s", "as_of"),
        ("openai,gpt-4o,1,1,unverified,2026-01-01,s", "model"),  # listed twice
    ],
)
def test_a_bad_price_table_row_is_named(tmp_path, row, field):
    header = "provider,model,input_usd_per_1m,output_usd_per_1m,image_token_rule,as_of,source"
    path = tmp_path / "prices.csv"
    path.write_text(f"{header}\nopenai,gpt-4o,2.5,10,tile 85+170,2026-01-01,s\n{row}\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_price_table(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 3, field)
    path.write_text("model,input\n", encoding="utf-8")
    with pytest.raises(InputError, match="lacks columns"):
        read_price_table(path)


def test_patch_models_follow_the_guides_worked_examples():
    """GPT-4.1 mini / nano and o4-mini: 32-px patches (capped at 1,536 after a shrink) times the multiplier."""
    assert image_patches(1024, 1024) == 1024
    assert image_patches(1800, 2400) == 1452  # shrunk to 1056 x 1408 = 33 x 44 patches
    assert image_patches(2048, 768) == 1536  # exactly at the cap: no shrink
    assert image_patches(20, 20) == 1
    assert image_tokens(1024, 1024, model="gpt-4.1-mini-2025-04-14") == round(1024 * 1.62)
    assert image_tokens(1800, 2400, model="gpt-4.1-nano") == round(1452 * 2.46)
    # over the cap, the documented shrink (OpenAI's own calculator: ~2,348); one API measurement billed the cap
    assert image_tokens(4000, 1474, model="gpt-4.1-mini") == round(1449 * 1.62) < round(1536 * 1.62)
    # detail changes nothing for a patch model; gpt-4.1 itself bills tiles, as gpt-4o does
    assert image_tokens(512, 512, model="o4-mini", detail="low") == image_tokens(512, 512, model="o4-mini")
    assert image_tokens(1024, 1024, model="gpt-4.1-2025-04-14") == image_tokens(1024, 1024, model="gpt-4o") == 765
    # an estimate counts no tiles for a patch model
    est = estimate_from_sizes([(512, 512)], model="gpt-4.1-mini", text_tokens=10)
    assert est.image_tokens == round(256 * 1.62) and est.by_input and all(k.tiles == 0 for k in est.by_input.values())


def test_the_price_tables_image_token_rules_are_the_codes():
    """prices.csv's `image_token_rule` column says what `VISION_RULES` does, model by model: `unverified` exactly
    for the models without a rule, so the data a user reads cannot drift from what the code bills."""
    import csv

    with open(PRICE_TABLE, encoding="utf-8", newline="") as handle:
        rows = {row["model"]: row["image_token_rule"] for row in csv.DictReader(handle)}
    for model, written in rows.items():
        try:
            rule = vision_rule(model)  # a snapshot row (gpt-4o-2024-05-13) has its family's rule
        except InputError:
            rule = None
        if rule is None:
            assert written == "unverified", model
        elif isinstance(rule, PatchRule):
            assert written == f"patch x{rule.multiplier}", model
        else:
            assert written == f"tile {rule.base}+{rule.per_tile}", model
