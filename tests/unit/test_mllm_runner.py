"""The query runner with fake backends: one row per sample, resuming, retries, sharding, merging, CLI glue."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/mllm_fakes.py, tests/bad_images.py

from bad_images import write_empty, write_truncated_jpeg  # noqa: E402
from mllm_fakes import BatchBackend, ScriptedBackend, make_dataset  # noqa: E402

from agegender.cli.mllm import add_merge_parser, add_query_parser  # noqa: E402
from agegender.data.schema import PREDICTION_COLUMNS  # noqa: E402
from agegender.errors import IncompleteRunError, InputError  # noqa: E402
from agegender.mllm.backends.base import GenerationParams, create_backend  # noqa: E402
from agegender.mllm.prompt import PROMPT, PROMPT_VERSION, prompt_hash  # noqa: E402
from agegender.mllm.runner import (  # noqa: E402
    BackendSpec,
    crop_queries,
    downscale,
    merge_manifests,
    merge_predictions,
    parse_shard,
    plan_queries,
    query_samples,
    run_queries,
    select_shard,
    shard_of,
    write_run,
)
from agegender.mllm.store import ResponseStore  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("fake_data")
    samples = make_dataset(root, n_images=12)
    samples.to_parquet(root / "samples.parquet", index=False)
    return root, samples


def run(data, store, backend, *, input_kind: str = "body", shard: tuple[int, int] = (0, 1), **kw):
    """One input kind over the whole fake data set, through the one query path (`query_samples`)."""
    root, samples = data
    plan = plan_queries(samples, [input_kind], shard=shard)
    return query_samples(plan, None, root, backend=backend, store=store, progress=False, **kw).results[input_kind]


def with_crop(data, kind: str) -> list[str]:
    root, samples = data
    stats: dict = {}
    ids = [q.request_id.rsplit("|", 1)[0] for q in crop_queries(samples, None, root, kind, stats=stats)]
    assert len(ids) == stats["queries"] and len(ids) + stats["no_crop"] == len(samples)
    return ids


# -- crops -> queries ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["body", "face", "body_wo_face"])
def test_crop_queries(data, kind: str) -> None:
    root, samples = data
    stats: dict = {}
    queries = list(crop_queries(samples, None, root, kind, stats=stats))
    assert 0 < len(queries) < len(samples)  # the data set has samples without each kind of box
    assert stats["no_crop"] == len(samples) - len(queries) == len(stats["no_crop_ids"])
    assert all(q.request_id.endswith(f"|{kind}") and q.prompt == PROMPT for q in queries)
    assert all(q.image.dtype == np.uint8 and q.image.ndim == 3 and len(q.image_hash) == 64 for q in queries)
    small = list(crop_queries(samples, None, root, kind, max_side=32))
    assert [q.request_id for q in small] == [q.request_id for q in queries]
    assert all(max(q.image.shape[:2]) <= 32 for q in small)


def test_downscale_never_enlarges() -> None:
    image = np.zeros((100, 40, 3), dtype=np.uint8)
    assert downscale(image, None) is image and downscale(image, 200) is image
    assert downscale(image, 50).shape == (50, 20, 3)


def test_crop_queries_rejects_bad_arguments(data) -> None:
    root, samples = data
    with pytest.raises(InputError, match="input kind"):
        list(crop_queries(samples, None, root, "face_body"))
    with pytest.raises(InputError, match="max_side"):
        list(crop_queries(samples, None, root, "body", max_side=0))
    with pytest.raises(InputError, match="no image folder"):
        list(crop_queries(samples, None, {"other": root}, "body"))


# -- running ------------------------------------------------------------------------------------------------------


def test_every_sample_gets_one_row_with_the_right_status(data, tmp_path: Path) -> None:
    ids = with_crop(data, "body")
    script = {
        ids[0]: "I'm sorry, I can't help with that.",
        ids[1]: "[non-binary; 30]",
        ids[2]: {"text": None, "refusal": "I can't assist with that request."},
        ids[3]: {"text": "[female; 3", "finish_reason": "content_filter"},
        ids[4]: "Sure: [female; 30-40] years",
    }
    backend = ScriptedBackend("fake-model", script=script, fail=[ids[5]], drop=[ids[6]], leak=True)
    with ResponseStore(tmp_path / "store") as store:
        result = run(data, store, backend)
    preds = result.predictions
    assert list(preds.columns) == list(PREDICTION_COLUMNS)
    assert preds["sample_id"].tolist() == ids  # exactly one row per sample with a crop, in order
    status = dict(zip(preds["sample_id"], preds["status"], strict=True))
    assert [status[i] for i in ids[:7]] == ["refused", "unparsed", "refused", "refused", "ok", "failed", "failed"]
    assert all(status[i] == "ok" for i in ids[7:])
    row = preds.set_index("sample_id").loc[ids[4]]
    assert (
        row["age_pred"] == 35.0
        and row["gender_pred"] == "female"
        and row["raw_answer"] == "Sure: [female; 30-40] years"
    )
    assert preds.set_index("sample_id").loc[ids[2], "raw_answer"] == "I can't assist with that request."
    failed = preds[preds["status"] == "failed"]
    assert failed["age_pred"].isna().all() and failed["raw_answer"].isna().all()
    assert (preds["model"] == "fake-model").all() and (preds["input"] == "body").all()
    assert preds["gender_score"].isna().all()

    m = result.manifest
    assert m["counts"] == {"ok": len(ids) - 6, "refused": 3, "unparsed": 1, "failed": 2}
    assert sum(m["counts"].values()) == m["rows"] == m["queries"] == len(ids)
    assert m["samples"] == len(data[1]) and m["no_crop"] == len(data[1]) - len(ids)
    assert m["requests_sent"] == len(ids) and m["cache_hits"] == 0
    answered = len(ids) - 2
    assert m["tokens"] == {"prompt": 100 * answered, "completion": 6 * answered}
    assert m["fingerprints"] == ["fp_fake"]
    assert m["prompt"] == {"version": PROMPT_VERSION, "sha256": prompt_hash()}
    assert m["backend"]["model"] == "fake-model" and m["backend"]["model_revision"] == "rev-1"
    assert m["shard"] == {"index": 0, "count": 1, "spec": "1/1"}
    assert m["started_at"] <= m["finished_at"] and m["duration_s"] >= 0
    assert "HTTP 500: injected by the fake" in m["errors"] and m["store"]["answers_written"] == answered
    text = json.dumps(m)
    assert "sk-secret" not in text and "api_key" not in text  # describe() leaked a key: scrubbed
    assert "base_url" in text


def _with_bad_images(tmp_path: Path) -> tuple[Path, pd.DataFrame, dict[str, Path]]:
    """The fake data set with a truncated JPEG in the middle (image 6 of 12) and a zero-byte one (image 9)."""
    root = tmp_path / "data"
    samples = make_dataset(root, n_images=12)
    bad = {"images/img006.png": root / "images" / "cut.jpg", "images/img009.png": root / "images" / "empty.jpg"}
    write_truncated_jpeg(bad["images/img006.png"], 96, 96)
    write_empty(bad["images/img009.png"])
    samples["image_path"] = samples["image_path"].replace({k: f"images/{v.name}" for k, v in bad.items()})
    samples.to_parquet(root / "samples.parquet", index=False)
    return root, samples, bad


def test_a_bad_image_fails_its_samples_not_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, samples, bad = _with_bad_images(tmp_path)
    on_bad = samples["image_path"].isin([f"images/{p.name}" for p in bad.values()])
    # the samples on a bad file that would have had a body crop (the others have no row either way)
    bad_ids = samples.loc[on_bad & samples["person_x0"].notna(), "sample_id"].tolist()
    good_ids = [i for i in with_crop((root, samples[~on_bad]), "body")]
    backend = ScriptedBackend("fake-model")
    with ResponseStore(tmp_path / "store") as store:  # small chunks: the run goes on past the bad images
        result = run((root, samples), store, backend, chunk_size=4)
    preds = result.predictions.set_index("sample_id")
    assert sorted(backend.requests) == sorted(f"{i}|body" for i in good_ids)  # nothing sent for a bad image
    assert (preds.loc[good_ids, "status"] == "ok").all()
    marked = preds.loc[bad_ids]
    assert (marked["status"] == "failed").all() and marked[["age_pred", "gender_pred", "raw_answer"]].isna().all().all()
    order = [i for i in samples["sample_id"] if i in set(good_ids) | set(bad_ids)]
    assert result.predictions["sample_id"].tolist() == order  # the samples' order, bad ones where they stand
    m = result.manifest
    assert m["counts"]["failed"] == len(bad_ids) and m["counts"]["ok"] == len(good_ids) == m["queries"]
    assert m["rows"] == len(good_ids) + len(bad_ids)
    assert m["bad_images"]["images"] == 2 and m["bad_images"]["samples"] == len(bad_ids)
    examples = m["bad_images"]["examples"]
    assert "truncated" in examples[str(bad["images/img006.png"])]
    assert "empty (0 bytes)" in examples[str(bad["images/img009.png"])]
    merged = merge_manifests([m, {**m, "shard": {"index": 1, "count": 1}}])["bad_images"]
    assert merged["images"] == 4 and merged["samples"] == 2 * len(bad_ids) and merged["examples"] == examples

    # Mended files are tried again by the next run (a failed row is never stored as an answer).
    for seed, path in enumerate(bad.values()):  # noise, so that no two crops are alike and share a request
        pixels = np.random.default_rng(seed).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG")
    again = ScriptedBackend("fake-model")
    with ResponseStore(tmp_path / "store") as store:
        second = run((root, samples), store, again)
    retried = set(bad_ids) & set(with_crop((root, samples), "body"))
    assert retried and sorted(again.requests) == sorted(f"{i}|body" for i in retried)
    assert second.manifest["bad_images"] == {"images": 0, "samples": 0, "examples": {}}
    assert second.manifest["counts"]["failed"] == 0


def test_cli_query_names_the_bad_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, _, bad = _with_bad_images(tmp_path)
    argv = ["query", "--samples", str(root / "samples.parquet"), "--data-root", str(root), "--input", "face"]
    argv += ["--backend", "test-scripted", "--model", "m", "--out", str(tmp_path / "p.parquet"), "--quiet"]
    with pytest.raises(IncompleteRunError, match="3 of 13 rows failed") as info:  # exit 3, after writing
        cli(argv)
    assert "the image cannot be loaded" in str(info.value)
    out = capsys.readouterr().out
    assert "2 images cannot be loaded" in out and str(bad["images/img006.png"]) in out and "empty.jpg" in out
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert (table.loc[table["sample_id"].str.contains("img006|img009"), "status"] == "failed").all()


def test_rerun_sends_nothing_and_retries_the_failed(data, tmp_path: Path) -> None:
    ids = with_crop(data, "body")
    first = ScriptedBackend("fake-model", fail=ids[:3], script={ids[3]: "I cannot determine that."})
    with ResponseStore(tmp_path / "store") as store:
        r1 = run(data, store, first)
        assert r1.manifest["counts"]["failed"] == 3 and len(first.requests) == len(ids)
        second = ScriptedBackend("fake-model")
        r2 = run(data, store, second)  # same store object
    assert sorted(second.requests) == sorted(f"{i}|body" for i in ids[:3])
    assert r2.manifest["requests_sent"] == 3 and r2.manifest["cache_hits"] == len(ids) - 3
    assert r2.manifest["counts"]["failed"] == 0 and r2.manifest["counts"]["refused"] == 1  # a refusal is an answer
    third = ScriptedBackend("fake-model")
    r3 = run(data, ResponseStore(tmp_path / "store"), third)  # a fresh process: the store is read from disk
    assert third.requests == [] and r3.manifest["requests_sent"] == 0 and r3.manifest["cache_hits"] == len(ids)
    pd.testing.assert_frame_equal(r2.predictions, r3.predictions)
    assert r3.manifest["tokens"] == {"prompt": 0, "completion": 0}
    assert r3.manifest["tokens_cached"]["prompt"] == 100 * len(ids)


def test_other_model_prompt_or_params_are_not_served_from_the_cache(data, tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "store")
    run(data, store, ScriptedBackend("fake-model"))
    n = len(with_crop(data, "body"))
    for backend, kw in [
        (ScriptedBackend("other-model"), {}),
        (ScriptedBackend("fake-model", revision="rev-2"), {}),
        (ScriptedBackend("fake-model", params=GenerationParams(seed=1)), {}),
        (ScriptedBackend("fake-model"), {"max_side": 32}),
    ]:
        assert run(data, store, backend, **kw).manifest["requests_sent"] == n
    hot = ScriptedBackend("fake-model", params=GenerationParams(temperature=0.7))
    assert run(data, store, hot).manifest["requests_sent"] == n
    again = ScriptedBackend("fake-model", params=GenerationParams(temperature=0.7))
    assert run(data, store, again).manifest["requests_sent"] == n  # non-deterministic: never reused
    assert run(data, store, ScriptedBackend("fake-model"), model_name="shown-name").manifest["requests_sent"] == 0


def test_identical_crops_share_one_request(data, tmp_path: Path) -> None:
    root, samples = data
    twin = samples.iloc[[0]].copy()
    twin["sample_id"] = "fake/test/twin"
    both = pd.concat([samples, twin], ignore_index=True)
    backend = ScriptedBackend("fake-model")
    result = run_queries(
        both, None, root, input_kind="face", backend=backend, store=ResponseStore(tmp_path), progress=False
    )
    rows = result.predictions.set_index("sample_id")
    assert rows.loc["fake/test/twin", "age_pred"] == rows.loc[samples["sample_id"].iloc[0], "age_pred"]
    assert result.manifest["shared_requests"] == 1 and len(backend.requests) == result.manifest["rows"] - 1


def test_batch_backend_and_small_chunks(data, tmp_path: Path) -> None:
    backend = create_backend("test-batch", "local-folder")
    assert isinstance(backend, BatchBackend)
    result = run(data, ResponseStore(tmp_path), backend, input_kind="body_wo_face", chunk_size=5)
    ids = with_crop(data, "body_wo_face")
    assert result.predictions["sample_id"].tolist() == ids and (result.predictions["status"] == "ok").all()
    assert max(backend.batches) <= 3 and sum(backend.batches) == len(ids)


def test_runs_inside_a_running_event_loop(data, tmp_path: Path) -> None:
    async def notebook_cell() -> pd.DataFrame:  # Jupyter and papermill run cells inside an event loop
        return run(data, ResponseStore(tmp_path), ScriptedBackend("fake-model")).predictions

    assert len(asyncio.run(notebook_cell())) == len(with_crop(data, "body"))


def test_backend_exceptions_propagate_after_storing_what_arrived(data, tmp_path: Path) -> None:
    class Broken(ScriptedBackend):
        async def astream(self, queries):
            async for answer in super().astream(queries[:4]):
                yield answer
            raise RuntimeError("401 Unauthorized")

    store = ResponseStore(tmp_path)
    with pytest.raises(RuntimeError, match="401"):
        run(data, store, Broken("fake-model", concurrency=1))
    assert len(ResponseStore(tmp_path)) == 4


# -- the plan and the one query path ------------------------------------------------------------------------------


def test_plan_queries_honours_inputs_by_dataset_split_and_shards(data) -> None:
    _, samples = data
    other = samples.assign(dataset="other", sample_id="o" + samples["sample_id"])
    both = pd.concat([samples, other], ignore_index=True)
    both.loc[both.index % 4 == 3, "split"] = "val"
    plan = plan_queries(
        both, ["body", "body_wo_face"], split="test", datasets=["other", "fake"], inputs_by_dataset={"other": ["face"]}
    )
    # kinds in the order they first appear going through the data sets; samples in the table's order
    assert plan.datasets == {"face": ("other",), "body": ("fake",), "body_wo_face": ("fake",)}
    test = both[both["split"] == "test"]
    assert plan.samples["face"]["sample_id"].tolist() == test.loc[test["dataset"] == "other", "sample_id"].tolist()
    assert plan.samples["body"]["sample_id"].tolist() == test.loc[test["dataset"] == "fake", "sample_id"].tolist()
    assert len(plan.sample_ids()) == len(test) + len(plan.samples["body_wo_face"])
    # every data set, in table order, when none are named; shards split the pairs without overlap
    assert plan_queries(both, ["body"]).datasets == {"body": ("fake", "other")}
    shards = [plan_queries(both, ["body", "face"], shard=(k, 3)).pairs() for k in range(3)]
    assert sorted(p for pairs in shards for p in pairs) == sorted(plan_queries(both, ["body", "face"]).pairs())
    assert all(shard_of(sid, 3) == k for k, pairs in enumerate(shards) for sid, _ in pairs)
    assert plan_queries(both.iloc[:0], ["body"]).sample_ids() == []  # an empty table plans every kind, empty
    for bad, match in [({"datasets": ["nope"]}, r"data sets \['nope'\]"), ({"shard": (3, 3)}, "shard")]:
        with pytest.raises(InputError, match=match):
            plan_queries(both, ["body"], **bad)
    with pytest.raises(InputError, match="input kind"):
        plan_queries(both, ["body"], inputs_by_dataset={"fake": ["face_body"]})


def test_query_samples_runs_the_plan_and_closes_what_it_holds(data, tmp_path: Path) -> None:
    root, samples = data
    plan = plan_queries(samples, ["body", "face"])
    failing = next(i for i in with_crop(data, "face") if i not in with_crop(data, "body"))  # one failed row
    backend = ScriptedBackend("fake-model", fail=[failing])
    closed: list[str] = []
    backend.close = lambda: closed.append("backend")  # type: ignore[method-assign]
    store = tmp_path / "store"
    run = query_samples(
        plan, None, root, backend=backend, store=store, store_tag="t1", progress=False, max_failed=1, budget_name="b"
    )
    assert closed == ["backend"] and list(run.results) == ["body", "face"]
    assert run.predictions["input"].tolist() == ["body"] * len(with_crop(data, "body")) + ["face"] * len(
        with_crop(data, "face")
    )
    assert (run.outcome.failed, run.outcome.allowed, run.outcome.budget_name) == (1, 1, "b")
    assert [m["input"] for m in run.manifests] == ["body", "face"]
    assert {p.name.split("-")[1] for p in store.glob("*.jsonl")} == {"t1"}  # the writer tag names its files
    # the store was closed (flushed): a backend made from a spec finds every answer but the failed one
    again = query_samples(plan, None, root, backend=BackendSpec("test-scripted", "fake-model"), store=store)
    assert sum(m["requests_sent"] for m in again.manifests) == 1 and again.outcome.failed == 0

    class Broken(ScriptedBackend):
        async def astream(self, queries):
            raise RuntimeError("401 Unauthorized")
            yield  # pragma: no cover

    broken = Broken("other-model")
    broken.close = lambda: closed.append("broken")  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="401"):
        query_samples(plan, None, root, backend=broken, store=store, progress=False)
    assert closed[-1] == "broken"
    # a malformed budget is reported before anything starts (this backend name would fail next)
    with pytest.raises(InputError, match="max_failed must be a count"):
        query_samples(plan, None, root, backend=BackendSpec("no-such-backend", "m"), store=store, max_failed="x%")


# -- sharding and merging -----------------------------------------------------------------------------------------


def test_parse_shard() -> None:
    assert parse_shard("1/4") == (0, 4) and parse_shard(" 4 / 4 ") == (3, 4) and parse_shard("1/1") == (0, 1)
    for bad in ["0/4", "5/4", "1/0", "a/b", "1", "1/2/3", "-1/2"]:
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)


def test_shard_assignment_is_stable_and_complete() -> None:
    ids = [f"ds/test/img{i}/0" for i in range(2000)]
    shards = [shard_of(i, 4) for i in ids]
    assert shards == [shard_of(i, 4) for i in ids]
    assert all(350 < shards.count(k) < 650 for k in range(4))  # roughly balanced
    frame = pd.DataFrame({"sample_id": ids})
    parts = [select_shard(frame, (k, 4)) for k in range(4)]
    assert sorted(pd.concat(parts)["sample_id"]) == sorted(ids)
    grown = pd.DataFrame({"sample_id": ids + [f"new{i}" for i in range(500)]})
    assert select_shard(grown, (2, 4))["sample_id"].tolist()[: len(parts[2])] == parts[2]["sample_id"].tolist()
    with pytest.raises(InputError):
        select_shard(frame, (4, 4))


def test_shards_merge_to_the_unsharded_run(data, tmp_path: Path) -> None:
    full = run(data, ResponseStore(tmp_path / "full"), ScriptedBackend("fake-model"), input_kind="body_wo_face")
    tables, manifests = [], []
    for k in range(3):
        store = ResponseStore(tmp_path / "shared", tag=f"s{k + 1}of3")  # shards share one store folder
        result = run(data, store, ScriptedBackend("fake-model"), input_kind="body_wo_face", shard=(k, 3))
        store.close()
        preds, manifest = write_run(result, tmp_path / f"part{k}.parquet")
        assert manifest == tmp_path / f"part{k}.manifest.json"
        tables.append(preds)
        manifests.append(manifest)
    merged = merge_predictions(tables, tmp_path / "merged.csv")
    assert (tmp_path / "merged.csv").is_file()
    key = ["sample_id", "model", "input"]
    pd.testing.assert_frame_equal(
        merged.sort_values(key).reset_index(drop=True), full.predictions.sort_values(key).reset_index(drop=True)
    )
    m = merge_manifests(manifests)
    assert m["complete"] and m["shards"] == ["1/3", "2/3", "3/3"]
    assert m["counts"] == full.manifest["counts"] and m["rows"] == len(full.predictions)
    assert m["samples"] == len(data[1]) and m["requests_sent"] == full.manifest["requests_sent"]
    assert not merge_manifests(manifests[:2])["complete"]
    with pytest.raises(InputError, match="twice"):
        merge_manifests([manifests[0], manifests[0]])
    with pytest.raises(InputError, match="differs"):
        merge_manifests([manifests[0], {**json.loads(manifests[1].read_text()), "input": "face"}])
    with pytest.raises(InputError, match="part0.parquet") as err:
        merge_predictions([tables[0], tables[1], tables[0]])
    assert "also in" in str(err.value)


# -- writing and CLI glue -----------------------------------------------------------------------------------------


def test_write_run_formats(data, tmp_path: Path) -> None:
    result = run(data, ResponseStore(tmp_path / "s"), ScriptedBackend("fake-model"))
    preds, manifest = write_run(result, tmp_path / "out" / "p.csv", tmp_path / "m.json")
    assert len(pd.read_csv(preds)) == len(result.predictions)
    assert json.loads(manifest.read_text())["rows"] == len(result.predictions)
    with pytest.raises(InputError, match="format"):
        write_run(result, tmp_path / "p.txt")


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="agegender")
    sub = parser.add_subparsers(dest="command", required=True)
    add_query_parser(sub)
    add_merge_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_query_shards_and_merge(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, samples = data
    base = ["query", "--samples", str(root / "samples.parquet"), "--data-root", f"fake={root}", "--input", "face"]
    base += ["--backend", "test-scripted", "--model", "fake-model", "--store", str(tmp_path / "store"), "--quiet"]
    for k in (1, 2):
        out = tmp_path / f"p{k}.parquet"
        assert cli([*base, "--out", str(out), "--shard", f"{k}/2", "--option", "latency_s=0.001"]) == 0
        assert (tmp_path / f"p{k}.manifest.json").is_file()
    assert "rows ->" in capsys.readouterr().out
    merged = tmp_path / "all.parquet"
    manifests = [str(tmp_path / f"p{k}.manifest.json") for k in (1, 2)]
    assert cli(["merge", "--predictions", str(tmp_path / "p1.parquet"), str(tmp_path / "p2.parquet")]
               + ["--out", str(merged), "--manifests", *manifests]) == 0  # fmt: skip
    table = pd.read_parquet(merged)
    assert sorted(table["sample_id"]) == sorted(with_crop(data, "face"))
    assert json.loads((tmp_path / "all.manifest.json").read_text())["complete"] is True
    # a re-run of the whole set is served from the store
    assert cli([*base, "--out", str(tmp_path / "again.csv")]) == 0
    again = json.loads((tmp_path / "again.manifest.json").read_text())
    assert again["requests_sent"] == 0 and again["cache_hits"] == len(table)


def test_cli_misspelt_option_gets_the_params_message(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt `--option` names the option and the known ones, as params.yaml's error does (key path aside)."""
    from agegender import cli as agegender_cli
    from agegender.params import params_from_dict

    root, _ = data
    argv = ["query", "--samples", str(root / "samples.parquet"), "--data-root", str(root), "--input", "body"]
    argv += ["--backend", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    argv += ["--out", str(tmp_path / "p.csv")]
    with pytest.raises(InputError) as from_cli:
        cli([*argv, "--option", "concurency=4"])
    assert from_cli.value.field == "concurency"
    spec = {"backend": "openai", "model": "m", "options": {"concurency": 4}}
    with pytest.raises(InputError) as from_params:
        params_from_dict({"query_mllms": {"models": {"g": spec}}})
    assert str(from_params.value).endswith(f"query_mllms.models.g.options.concurency: {from_cli.value.message}")
    assert "(known: base_url, api_key_env, concurrency," in from_cli.value.message
    assert agegender_cli.main([*argv, "--option", "concurency=4"]) == 2
    err = capsys.readouterr().err
    assert "concurency" in err and "known: base_url" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_cli_never_takes_a_key(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = data
    base = ["query", "--samples", str(root / "samples.parquet"), "--data-root", str(root), "--input", "body"]
    base += ["--backend", "test-scripted", "--model", "m", "--out", str(tmp_path / "p.csv")]
    with pytest.raises(InputError, match="AGEGENDER_TEST_KEY"):
        cli([*base, "--api-key-env", "AGEGENDER_TEST_KEY"])
    with pytest.raises(InputError, match="never given on the command line"):
        cli([*base, "--option", "api_key=sk-123"])
    with pytest.raises(InputError, match="shard"):
        cli([*base, "--shard", "0/2"])
    with pytest.raises(InputError, match="unknown MLLM backend"):
        cli([*base[:-6], "--backend", "nope", "--model", "m", "--out", str(tmp_path / "p.csv")])
    monkeypatch.setenv("AGEGENDER_TEST_KEY", "sk-very-secret")
    assert cli([*base, "--api-key-env", "AGEGENDER_TEST_KEY", "--store", str(tmp_path / "st")]) == 0
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".json", ".jsonl"})
    assert "sk-very-secret" not in written and written


# -- how a run ends: nothing to do, failed rows, the failure budget (exit codes through agegender.cli.main) ----------


def query_argv(data, tmp_path: Path, *extra: str, samples: Path | None = None) -> list[str]:
    root, _ = data
    argv = ["query", "--samples", str(samples or root / "samples.parquet"), "--data-root", str(root)]
    argv += ["--input", "body", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "p.parquet"), "--quiet"]
    if "--backend" not in extra:
        argv += ["--backend", "test-scripted", "--model", "fake-model"]
    return [*argv, *extra]


def outputs(tmp_path: Path) -> dict[str, bytes]:
    return {name: (tmp_path / name).read_bytes() for name in ("p.parquet", "p.manifest.json")}


def test_failure_budget() -> None:
    from agegender.errors import failure_budget

    assert failure_budget(0, 100) == 0 and failure_budget(7, 3) == 7 and failure_budget("12", 0) == 12
    assert failure_budget("25%", 14) == 3 and failure_budget("20%", 14) == 2  # rounded down
    assert failure_budget("2.5%", 200) == 5 and failure_budget("100%", 9) == 9  # exact, no 4.999...
    for bad in (-1, "-1", "0.05", 0.05, "101%", "five", "", True):
        with pytest.raises(InputError, match="max_failed"):
            failure_budget(bad, 10)  # type: ignore[arg-type]


def test_query_exits_3_when_rows_stay_failed_and_a_rerun_resends_only_those(
    data, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.cli import main

    ids = with_crop(data, "body")
    fail = ["--option", f"fail={json.dumps(ids[:3])}"]
    assert main(query_argv(data, tmp_path, *fail)) == 3
    err = capsys.readouterr().err
    assert f"3 of {len(ids)} rows failed after retries" in err and "'HTTP 500: injected by the fake' x3" in err
    assert "only the failed requests are sent again" in err and str(tmp_path / "p.parquet") in err
    assert "exit code 3" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # nothing lost: the answered and the failed rows are written, the answers are in the store
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert table["sample_id"].tolist() == ids and (table["status"] == "failed").sum() == 3
    assert json.loads((tmp_path / "p.manifest.json").read_text())["counts"]["failed"] == 3
    # a budget the failures fit in: exit 0, the summary as a note (20% of 14 rows is 2, 25% is 3)
    assert main(query_argv(data, tmp_path, *fail, "--max-failed", "20%")) == 3
    assert main(query_argv(data, tmp_path, *fail, "--max-failed", "25%")) == 0
    err = capsys.readouterr().err
    assert "note: 3 of" in err and "within what --max-failed 25% allows (3 of" in err
    assert main(query_argv(data, tmp_path, *fail, "--max-failed", "0.05")) == 2  # refused before anything is sent
    assert "max_failed must be a count N or a percentage" in capsys.readouterr().err
    assert json.loads((tmp_path / "p.manifest.json").read_text())["requests_sent"] == 3  # from the 25% run
    # the server is back: only the three failures are sent again
    assert main(query_argv(data, tmp_path)) == 0
    manifest = json.loads((tmp_path / "p.manifest.json").read_text())
    assert manifest["requests_sent"] == 3 and manifest["cache_hits"] == len(ids) - 3
    assert manifest["counts"]["failed"] == 0


def test_query_that_answers_nothing_writes_nothing_and_exits_3(
    data, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from agegender.cli import main

    ids = with_crop(data, "body")
    assert main(query_argv(data, tmp_path)) == 0  # earlier, good results
    before = outputs(tmp_path)
    with socket.socket() as sock:  # a loopback port nobody listens on: every request gets "connection refused"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = ["--backend", "openai", "--model", "gpt-none", "--base-url", f"http://127.0.0.1:{port}/v1"]
    server += ["--option", "max_retries=1", "--option", "backoff_s=0.01", "--option", "timeout_s=5"]
    assert main(query_argv(data, tmp_path, *server)) == 3
    err = capsys.readouterr().err
    assert f"{len(ids)} of {len(ids)} rows failed after retries" in err and "no error note" not in err
    assert "nothing was written" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert outputs(tmp_path) == before  # the earlier results are untouched
    # a budget does not make a run that answered nothing a success
    assert main(query_argv(data, tmp_path, *server, "--max-failed", "100%")) == 3
    assert outputs(tmp_path) == before


def test_query_with_nothing_to_ask_is_an_error_and_keeps_earlier_results(
    data, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.cli import main

    _, samples = data
    assert main(query_argv(data, tmp_path)) == 0
    before = outputs(tmp_path)
    capsys.readouterr()
    header_only = tmp_path / "header_only.csv"
    samples.iloc[:0].to_csv(header_only, index=False)
    no_body = tmp_path / "no_body.parquet"
    samples.assign(**{c: pd.NA for c in ("person_x0", "person_y0", "person_x1", "person_y1")}).to_parquet(no_body)
    cases = [
        (query_argv(data, tmp_path, samples=header_only), [str(header_only), "the table has no data rows"]),
        (query_argv(data, tmp_path, "--split", "val"), ["none in split 'val'", "nothing to do"]),
        (query_argv(data, tmp_path, "--datasets", "other"), ["data sets ['other']", "nothing to do"]),
        (query_argv(data, tmp_path, samples=no_body), [str(no_body), f"none of the {len(samples)} samples has a crop"]),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert all(e in err for e in expected), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert outputs(tmp_path) == before


# -- the query_mllms stage ends the same way --------------------------------------------------------------------------


def stage_project(data, tmp_path: Path, samples: pd.DataFrame | None = None, **model: object):
    """A project whose prepared data is the fake data set, and one MLLM `flaky` of the scripted backend."""
    from agegender.params import params_from_dict
    from agegender.paths import ProjectPaths

    root, fake = data
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    (fake if samples is None else samples).to_parquet(prepared / "samples.parquet", index=False)
    pd.DataFrame().to_parquet(prepared / "masked.parquet")
    (prepared / "datasets.json").write_text(json.dumps({"fake": {"root": str(root)}}))
    spec = {"backend": "test-scripted", "model": "fake-model", "inputs": ["body"], **model}
    params = params_from_dict(
        {
            "profile": "paper",
            "prepare_data": {"demo": None, "datasets": {"fake": {"reader": "folder", "root": str(root)}}},
            "study": {"datasets": ["fake"]},
            "query_mllms": {"models": {"flaky": spec}},
        }
    )
    return params, ProjectPaths(tmp_path)


def test_query_mllms_stage_fails_on_failed_rows_after_writing_them(
    data, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.errors import AgegenderError
    from agegender.stages import query_mllms

    ids = with_crop(data, "body")
    params, paths = stage_project(data, tmp_path, options={"fail": ids[:2]})
    with pytest.raises(AgegenderError, match=f"2 of {len(ids)} rows failed") as info:
        query_mllms.run(params, paths, "flaky", progress=False)
    assert type(info.value).__name__ == "IncompleteRunError" and info.value.exit_code == 3
    assert "query_mllms.models.flaky.max_failed 0 allows" in str(info.value)
    assert "stage query_mllms@flaky again resumes" in str(info.value)
    out = tmp_path / "predictions" / "query_mllms" / "flaky"
    assert (pd.read_parquet(out / "predictions.parquet")["status"] == "failed").sum() == 2
    assert json.loads((tmp_path / "metrics" / "query_mllms" / "flaky.json").read_text())["body.failed"] == 2
    # within the model's budget the stage succeeds, and says what failed
    params, paths = stage_project(data, tmp_path, options={"fail": ids[:2]}, max_failed=2)
    assert query_mllms.run(params, paths, "flaky", progress=False)["body.failed"] == 2
    assert "note: 2 of" in capsys.readouterr().err
    params, paths = stage_project(data, tmp_path)
    summary = query_mllms.run(params, paths, "flaky", progress=False)
    assert summary["requests_sent"] == 2 and "body.failed" not in summary


def test_query_mllms_stage_with_nothing_to_ask_keeps_earlier_results(data, tmp_path: Path) -> None:
    from agegender.stages import query_mllms

    _, samples = data
    params, paths = stage_project(data, tmp_path)
    query_mllms.run(params, paths, "flaky", progress=False)
    out = tmp_path / "predictions" / "query_mllms" / "flaky" / "predictions.parquet"
    before = out.read_bytes()
    params, paths = stage_project(data, tmp_path, samples=samples.assign(split="train"))  # none in study.split
    with pytest.raises(InputError, match="nothing to do") as info:
        query_mllms.run(params, paths, "flaky", progress=False)
    assert info.value.file.endswith("samples.parquet")
    assert out.read_bytes() == before


def test_max_failed_in_params() -> None:
    from agegender.params import params_from_dict

    def model(value: object) -> object:
        spec = {"backend": "openai", "model": "m", "max_failed": value}
        cfg = {"profile": "paper", "study": {"datasets": []}, "query_mllms": {"models": {"m": spec}}}
        return params_from_dict(cfg).query_mllms.models["m"].max_failed

    assert model(5) == 5 and model("0.5%") == "0.5%"
    for bad in (0.05, "-3", "half", True):
        with pytest.raises(InputError, match="max_failed"):
            model(bad)


def test_query_samples_starts_from_what_an_earlier_run_learned_about_the_endpoint(data, tmp_path: Path) -> None:
    class Learning(ScriptedBackend):
        """Learns that its endpoint rejects `seed` unless told so before its first request."""

        started_from: dict | None = None

        def endpoint(self) -> str:
            return "https://example.test/v1 fake-model"

        def start_from(self, learned) -> None:
            self.started_from = dict(learned)

        def learned(self) -> dict:
            return {"rejected_params": ["seed"]}

    store = tmp_path / "store"
    first = Learning("fake-model")
    run(data, store, first, input_kind="face")
    assert first.started_from == {}
    second = Learning("fake-model")
    run(data, store, second, input_kind="face")
    assert second.started_from == {"rejected_params": ["seed"]}
    # a backend that learns nothing leaves no file
    plain = tmp_path / "plain"
    run(data, plain, ScriptedBackend("fake-model"), input_kind="face")
    assert not (plain / "endpoints.json").exists()
