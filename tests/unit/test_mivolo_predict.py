"""Batch prediction with a tiny MiVOLO: schema, the four input kinds' tensors, batching, skips, resume."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import write_empty, write_truncated_jpeg  # noqa: E402

from agegender.data.crops import body_without_face, crop, load_image  # noqa: E402
from agegender.data.schema import FACE_BOX, PERSON_BOX, PREDICTION_COLUMNS, validate_samples  # noqa: E402
from agegender.errors import InputError  # noqa: E402
from agegender.mivolo.model import create_mivolo  # noqa: E402
from agegender.mivolo.predict import CropDataset, decode_outputs, input_crops, predict_samples  # noqa: E402
from agegender.mivolo.preprocess import make_input  # noqa: E402

SIZE = 64  # mivolo_tiny_64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _model(in_chans: int = 6, num_classes: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = create_mivolo("mivolo_tiny_64", in_chans=in_chans, num_classes=num_classes)
    model.set_age_range(0, 100)
    return model.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Three noise images; people with face+body, face only, body only, nothing, a too-small body."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)).save(root / f"{name}.png")
    nan = np.nan
    rows = [
        # id, image, face box, person box
        ("a0", "a.png", (20, 10, 50, 40), (10, 5, 90, 150)),
        ("a1", "a.png", (110, 15, 140, 45), (95, 5, 180, 155)),  # overlaps a0's neighbour region
        ("b0", "b.png", (30, 30, 70, 80), (nan,) * 4),  # face only
        ("b1", "b.png", (nan,) * 4, (100, 20, 190, 150)),  # body only
        ("b2", "b.png", (nan,) * 4, (nan,) * 4),  # nothing at all
        ("c0", "c.png", (5, 5, 35, 35), (0, 0, 40, 140)),  # body narrower than 50 px: no body_wo_face crop
        ("c1", "c.png", (100, 40, 130, 70), (80, 20, 195, 158)),
    ]
    table = pd.DataFrame(
        {
            "sample_id": [r[0] for r in rows],
            "dataset": "toy",
            "split": "test",
            "image_path": [r[1] for r in rows],
            **{c: [r[2][i] for r in rows] for i, c in enumerate(("face_x0", "face_y0", "face_x1", "face_y1"))},
            **{c: [r[3][i] for r in rows] for i, c in enumerate(("person_x0", "person_y0", "person_x1", "person_y1"))},
            "age": 30.0,
            "gender": "male",
        }
    )
    return root, validate_samples(table)


def _capture(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen


def test_prediction_table_schema_and_values(data) -> None:
    root, samples = data
    pred = predict_samples(_model(), samples, None, root, progress=False, model_name="tiny", batch_size=4)
    assert list(pred.columns) == list(PREDICTION_COLUMNS)
    # b2 has no crop at all; every other sample has a face or a masked body
    assert pred["sample_id"].tolist() == ["a0", "a1", "b0", "b1", "c0", "c1"]
    assert pred.attrs["skipped"] == {"face_body": 1}
    assert pred.attrs["n_samples"] == 7
    assert (pred["model"] == "tiny").all() and (pred["input"] == "face_body").all() and (pred["status"] == "ok").all()
    assert pred["gender_pred"].isin(["male", "female"]).all()
    assert ((pred["gender_score"] >= 0) & (pred["gender_score"] <= 1)).all()
    assert (pred["age_pred"] >= 0).all() and pred["raw_answer"].isna().all()
    female = pred["gender_score"] > 0.5
    assert (pred.loc[female, "gender_pred"] == "female").all() and (pred.loc[~female, "gender_pred"] == "male").all()


@pytest.mark.parametrize("kind", ["face_body", "face", "body", "body_wo_face"])
def test_input_kinds_build_the_right_tensors(data, kind: str) -> None:
    root, samples = data
    model = _model()
    seen = _capture(model)
    sub = samples[samples["sample_id"].isin(["a0", "a1"])]
    predict_samples(model, sub, None, root, inputs=[kind], progress=False, batch_size=8)
    (x,) = seen
    image = load_image(root / "a.png")
    faces, bodies, full_bodies = [], [], []
    all_faces, all_persons = sub[list(FACE_BOX)].to_numpy(float), sub[list(PERSON_BOX)].to_numpy(float)
    for face_box, person_box in zip(all_faces, all_persons, strict=True):
        # a0's body-without-face crop also masks a1's face and box: they are on the same image
        wo = body_without_face(image, person_box, all_faces, all_persons)
        face_crop, body_crop = crop(image, face_box), crop(image, person_box)
        full_bodies.append(body_crop)
        face, body = {
            "face_body": (face_crop, wo),
            "face": (face_crop, None),
            "body": (None, body_crop),
            "body_wo_face": (None, wo),
        }[kind]
        faces.append(face)
        bodies.append(body)
    expected = make_input(faces, bodies, SIZE, with_persons=True)
    assert x.shape == (2, 6, SIZE, SIZE)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    black = make_input([None], [None], SIZE, with_persons=True)[0]
    face_black = torch.allclose(x[:, :3], black[:3].expand(2, -1, -1, -1))
    body_black = torch.allclose(x[:, 3:], black[3:].expand(2, -1, -1, -1))
    assert face_black == (kind in ("body", "body_wo_face"))
    assert body_black == (kind == "face")
    with_faces = make_input([None, None], full_bodies, SIZE, with_persons=True)[:, 3:]
    # `body` shows the person with the face; `body_wo_face` and `face_body` black it out
    assert torch.allclose(x[:, 3:], with_faces) == (kind == "body")


def test_batched_equals_one_at_a_time_and_workers(data) -> None:
    root, samples = data
    model = _model()
    kinds = ["face_body", "face", "body", "body_wo_face"]
    one = predict_samples(model, samples, None, root, inputs=kinds, batch_size=1, progress=False)
    many = predict_samples(model, samples, None, root, inputs=kinds, batch_size=5, progress=False)
    workers = predict_samples(model, samples, None, root, inputs=kinds, batch_size=3, num_workers=1, progress=False)
    plain = predict_samples(model, samples, None, root, inputs=kinds, batch_size=7, channels_last=False, progress=False)
    for other in (many, workers, plain):
        assert one[["sample_id", "input", "gender_pred"]].equals(other[["sample_id", "input", "gender_pred"]])
        np.testing.assert_allclose(one["age_pred"].to_numpy(float), other["age_pred"].to_numpy(float), atol=1e-4)
        np.testing.assert_allclose(
            one["gender_score"].to_numpy(float), other["gender_score"].to_numpy(float), atol=1e-5
        )
    # missing crops: b2 never answers; face needs a face (b1, b2 out); body kinds need a body box (b0, b2 out),
    # and body_wo_face also drops c0, whose body is narrower than 50 px
    assert one.attrs["skipped"] == {"face_body": 1, "face": 2, "body": 2, "body_wo_face": 3}
    by_kind = one.groupby("input")["sample_id"].apply(list).to_dict()
    assert by_kind["face"] == ["a0", "a1", "b0", "c0", "c1"]
    assert by_kind["body"] == ["a0", "a1", "b1", "c0", "c1"]
    assert by_kind["body_wo_face"] == ["a0", "a1", "b1", "c1"]
    assert one["input"].tolist() == sorted(one["input"], key=kinds.index)  # ordered by kind, then sample


def test_face_only_and_age_only_models(data) -> None:
    root, samples = data
    face_model = _model(in_chans=3)
    seen = _capture(face_model)
    pred = predict_samples(face_model, samples, None, root, inputs=["face"], progress=False)
    assert pred["sample_id"].tolist() == ["a0", "a1", "b0", "c0", "c1"]
    assert seen[0].shape[1] == 3
    for kind in ("face_body", "body", "body_wo_face"):
        with pytest.raises(InputError, match="face-only"):
            predict_samples(face_model, samples, None, root, inputs=[kind], progress=False)
    with pytest.raises(InputError, match="unknown input kind"):
        input_crops("selfie")
    age_only = predict_samples(_model(num_classes=1), samples, None, root, progress=False)
    assert age_only["gender_pred"].isna().all() and age_only["gender_score"].isna().all()
    assert age_only["age_pred"].notna().all()


def test_age_is_decoded_and_clamped_at_zero() -> None:
    model = _model()
    out = torch.tensor([[2.0, 0.0, 0.1], [0.0, 2.0, -0.9]])
    dec = decode_outputs(model, out)
    np.testing.assert_allclose(dec["age"], [60.0, 0.0])  # 0.1 * 100 + 50; -0.9 * 100 + 50 < 0 -> 0
    assert dec["gender"].tolist() == [0, 1]
    p_female = 1 / (1 + np.exp(2.0))  # softmax of (2, 0) at index 1
    np.testing.assert_allclose(dec["score"], [p_female, 1 - p_female], rtol=1e-6)


def test_resume_skips_finished_rows(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, samples = data
    model = _model()
    kinds = ["face_body", "face"]
    full = predict_samples(model, samples, None, root, inputs=kinds, batch_size=2, progress=False)
    parts = tmp_path / "parts"
    forward = type(model).forward
    seen = {"batches": 0, "images": 0, "crash_after": 2}

    def counting_forward(self, x):
        seen["batches"] += 1
        seen["images"] += len(x)
        if seen["batches"] > seen["crash_after"]:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(type(model), "forward", counting_forward)
    with pytest.raises(KeyboardInterrupt):
        predict_samples(model, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts, flush_rows=1)
    assert any(parts.iterdir())
    seen.update(batches=0, images=0, crash_after=10**6)
    resumed = predict_samples(model, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts)
    assert seen["images"] == len(full) - 4  # the two finished batches of 2 are not recomputed
    pd.testing.assert_frame_equal(resumed, full, check_exact=False, atol=1e-5)
    assert resumed.attrs["skipped"] == full.attrs["skipped"]
    seen.update(batches=0, images=0)
    again = predict_samples(model, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts)
    assert seen["images"] == 0
    pd.testing.assert_frame_equal(again, full, check_exact=False, atol=1e-5)
    # another model name in the same folder is predicted afresh, and the parts are not prediction tables
    other = predict_samples(model, samples, None, root, inputs=["face"], progress=False, out=parts, model_name="x")
    assert seen["images"] == len(other) and (other["model"] == "x").all()
    assert not list(parts.glob("*.parquet"))


def test_bad_inputs(data, tmp_path: Path) -> None:
    root, samples = data
    model = _model()
    with pytest.raises(InputError, match="no image folder"):
        predict_samples(model, samples, None, {"other": root}, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    # an image none of whose samples has the box an input kind needs is not even decoded
    (broken / "b.png").write_bytes(b"not a png")
    faceless = samples[samples["sample_id"].isin(["b1", "b2"])]
    pred = predict_samples(model, faceless, None, broken, inputs=["face"], progress=False)
    assert len(pred) == 0 and pred.attrs["skipped"] == {"face": 2} and pred.attrs["bad_images"]["images"] == 0
    with pytest.raises(InputError, match="batch size"):
        predict_samples(model, samples, None, root, batch_size=0, progress=False)


def _mixed(root: Path, folder: Path) -> Path:
    """The data set's images with b.png truncated (its header intact) and c.png empty."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "a.png", folder / "a.png")
    write_truncated_jpeg(folder / "b.png", 200, 160)  # a JPEG under a .png name: PIL goes by the content
    write_empty(folder / "c.png")
    return folder


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_bad_image_fails_its_samples_not_the_run(data, tmp_path: Path, num_workers: int) -> None:
    root, samples = data
    mixed = _mixed(root, tmp_path / "mixed")
    model, kinds = _model(), ["face_body", "face"]
    full = predict_samples(model, samples, None, root, inputs=kinds, batch_size=2, progress=False)
    parts = tmp_path / "parts"
    pred = predict_samples(
        model, samples, None, mixed, inputs=kinds, batch_size=2, num_workers=num_workers, progress=False, out=parts
    )
    rows = {(r.input, r.sample_id): r for r in pred.itertuples()}
    # b1 (body only) has no face crop and b2 no box at all: no row, as with a good file; the rest of b and c fail
    failed = {("face_body", s) for s in ("b0", "b1", "c0", "c1")} | {("face", s) for s in ("b0", "c0", "c1")}
    assert {k for k, r in rows.items() if r.status == "failed"} == failed
    assert all(pd.isna(rows[k].age_pred) and pd.isna(rows[k].gender_pred) for k in failed)
    assert pred[["input", "sample_id"]].values.tolist() == full[["input", "sample_id"]].values.tolist()  # same order
    ok = pred[pred["status"] == "ok"]
    assert set(ok["sample_id"]) == {"a0", "a1"}
    reference = full.set_index(["input", "sample_id"]).loc[list(zip(ok["input"], ok["sample_id"], strict=True))]
    # other batch companions than in `full`: the batching tolerance of test_batched_equals_one_at_a_time_and_workers
    np.testing.assert_allclose(ok["age_pred"].to_numpy(float), reference["age_pred"].to_numpy(float), atol=1e-4)
    bad = pred.attrs["bad_images"]
    assert (
        bad["images"] == 2
        and bad["samples"] == 4
        and list(bad["examples"]) == [str(mixed / "b.png"), str(mixed / "c.png")]
    )
    assert "truncated" in bad["examples"][str(mixed / "b.png")] and "empty" in bad["examples"][str(mixed / "c.png")]
    # The failed rows are not kept in the resume parts: mended files are predicted by the next run, and only they.
    shutil.copy(root / "b.png", mixed / "b.png")
    shutil.copy(root / "c.png", mixed / "c.png")
    seen = _capture(model)
    again = predict_samples(model, samples, None, mixed, inputs=kinds, batch_size=2, progress=False, out=parts)
    assert sum(len(x) for x in seen) == len(failed)
    assert (again["status"] == "ok").all() and again["sample_id"].tolist() == full["sample_id"].tolist()
    assert again.attrs["bad_images"]["images"] == 0


def test_mivolo_predict_command_names_bad_images_and_exits_3(
    data, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.cli.mivolo import add_mivolo_predict_parser
    from agegender.mivolo.checkpoint import save_checkpoint

    root, samples = data
    mixed = _mixed(root, tmp_path / "mixed")
    samples.to_parquet(tmp_path / "samples.parquet")
    ckpt = save_checkpoint(tmp_path / "tiny.pt", _model())
    out = tmp_path / "pred.parquet"
    parser = argparse.ArgumentParser(prog="agegender")
    add_mivolo_predict_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["mivolo-predict", "--checkpoint", str(ckpt), "--samples", str(tmp_path / "samples.parquet"), "--out",
         str(out), "--device", "cpu", "--no-progress", "--data-root", str(mixed)]
    )  # fmt: skip
    assert args.func(args) == 3  # a run with failed rows, written all the same
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "4 samples marked failed: 2 images cannot be loaded" in printed
    assert str(mixed / "b.png") in printed and "image file is empty" in printed
    table = pd.read_parquet(out)
    assert table.loc[table["status"] == "failed", "sample_id"].tolist() == ["b0", "b1", "c0", "c1"]


def test_masked_side_table_is_blacked_out(data) -> None:
    root, samples = data
    sub = samples[samples["sample_id"] == "b1"]
    masked = pd.DataFrame({"dataset": ["toy"], "split": ["test"], "image_path": ["b.png"]})
    masked[list(FACE_BOX)] = [[120.0, 30.0, 150.0, 60.0]]
    masked[list(PERSON_BOX)] = np.nan
    plain = CropDataset(sub, None, root, "body_wo_face", SIZE, True)[0][2]
    with_masked = CropDataset(sub, masked, root, "body_wo_face", SIZE, True)[0][2]
    assert plain.shape == with_masked.shape == (1, SIZE, SIZE, 6)
    assert (with_masked[..., 3:] == 0).sum() > (plain[..., 3:] == 0).sum()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_matches_cpu(data) -> None:
    root, samples = data
    cpu = predict_samples(_model(), samples, None, root, progress=False, device="cpu")
    gpu = predict_samples(_model(), samples, None, root, progress=False, device="cuda")
    assert cpu["sample_id"].tolist() == gpu["sample_id"].tolist()
    np.testing.assert_allclose(cpu["age_pred"].to_numpy(float), gpu["age_pred"].to_numpy(float), atol=2.0)
    np.testing.assert_allclose(cpu["gender_score"].to_numpy(float), gpu["gender_score"].to_numpy(float), atol=0.05)


def test_mivolo_predict_command_output_goes_through_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.cli.mivolo import add_mivolo_predict_parser
    from agegender.data.demo import DemoConfig, generate_demo
    from agegender.data.readers import read_mivolo
    from agegender.evaluate import evaluate_files
    from agegender.mivolo.checkpoint import save_checkpoint

    demo = tmp_path / "demo"
    generate_demo(demo, DemoConfig(n_train=0, n_val=0, n_test=5, image_size=96, p_masked_bystander=0.5))
    read = read_mivolo(demo, "demo", splits={"test": "_test"})
    samples, masked = tmp_path / "samples.parquet", tmp_path / "masked.parquet"
    read.samples.to_parquet(samples)
    read.masked.to_parquet(masked)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", _model())
    out = tmp_path / "pred" / "tiny.parquet"
    parser = argparse.ArgumentParser(prog="agegender")
    add_mivolo_predict_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["mivolo-predict", "--checkpoint", str(ckpt), "--samples", str(samples), "--masked", str(masked),
            "--inputs", "face_body", "body", "--out", str(out), "--model-name", "tiny", "--batch-size", "4",
            "--device", "cpu", "--no-progress", "--data-root"]  # fmt: skip
    args = parser.parse_args([*argv, f"demo={demo}"])
    assert args.func(args) == 0
    assert f"-> {out}" in capsys.readouterr().out
    assert not out.with_name(out.name + ".parts").exists()
    pred = pd.read_parquet(out)
    assert set(pred["input"]) == {"face_body", "body"} and (pred["model"] == "tiny").all()
    result = evaluate_files(samples, [out.parent], split="test")
    assert {"face_body", "body"} <= set(result.rows["input"])
    args = parser.parse_args([*argv, str(demo), "x=y"])
    with pytest.raises(InputError, match="--data-root mixes a bare folder with dataset=folder pairs"):
        args.func(args)


def test_age_is_clamped_to_the_possible_range() -> None:
    """A regression head can overshoot; the table must stay valid (`validate_predictions` rejects ages > 130)."""
    from agegender.data.schema import AGE_RANGE

    model = _model()  # age = out * 100 + 50
    dec = decode_outputs(model, torch.tensor([[0.0, 1.0, 0.9], [1.0, 0.0, 0.79]]))
    np.testing.assert_allclose(dec["age"], [AGE_RANGE[1], 129.0], rtol=1e-6)  # 140 -> 130; 129 stays


class _Stopped(Exception):
    """Stands for a run stopped from outside (Ctrl-C, a lost node); not KeyboardInterrupt, which would end pytest."""


def _interrupted(model, monkeypatch: pytest.MonkeyPatch, after: int) -> dict[str, int]:
    """Count the images `model`'s class runs, and stop the run after `after` forward passes."""
    forward = type(model).forward
    seen = {"batches": 0, "images": 0, "crash_after": after}

    def counting_forward(self, x):
        seen["batches"] += 1
        seen["images"] += len(x)
        if seen["batches"] > seen["crash_after"]:
            raise _Stopped
        return forward(self, x)

    monkeypatch.setattr(type(model), "forward", counting_forward)
    return seen


def test_resume_with_another_model_is_refused_or_restarted(data, tmp_path: Path, monkeypatch) -> None:
    """The issue's scenario: parts left by checkpoint A are never served as checkpoint B's predictions."""
    root, samples = data
    a, b = _model(seed=0), _model(seed=1)
    kinds = ["face_body", "face"]
    expect_b = predict_samples(b, samples, None, root, inputs=kinds, batch_size=2, progress=False)
    parts = tmp_path / "parts"
    seen = _interrupted(a, monkeypatch, after=2)
    with pytest.raises(_Stopped):
        predict_samples(a, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts, flush_rows=1)
    seen.update(batches=0, images=0, crash_after=10**6)
    with pytest.raises(InputError, match="another producer") as info:
        predict_samples(b, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts)
    message = str(info.value)
    assert str(parts) in message and "model.weights_sha256" in message and "restart" in message
    assert seen["images"] == 0  # refused before any work
    # restart discards A's rows: every row comes from B
    restarted = predict_samples(
        b, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts, restart=True
    )
    assert seen["images"] == len(expect_b)  # nothing of A's was reused
    pd.testing.assert_frame_equal(restarted, expect_b, check_exact=False, atol=1e-5)
    seen.update(batches=0, images=0)
    again = predict_samples(b, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts)
    assert seen["images"] == 0
    pd.testing.assert_frame_equal(again, expect_b, check_exact=False, atol=1e-5)
    # the same weights with another age range decode other ages: another producer too
    a.load_state_dict(b.state_dict())
    a.set_age_range(0, 90)
    with pytest.raises(InputError, match=r"model\.age_range"):
        predict_samples(a, samples, None, root, inputs=kinds, batch_size=2, progress=False, out=parts)


def test_resume_over_parts_without_a_producer_is_refused(data, tmp_path: Path) -> None:
    """Parts written before rows recorded their producer cannot be vouched for: refused, or discarded on restart."""
    root, samples = data
    model = _model()
    parts = tmp_path / "parts"
    parts.mkdir()
    legacy = predict_samples(model, samples.iloc[:2], None, root, inputs=["face"], progress=False)
    legacy.assign(skipped=pd.array([False] * len(legacy), dtype="boolean")).to_parquet(
        parts / "part-000000.parquet-part", index=False
    )
    with pytest.raises(InputError, match="before parts recorded their producer"):
        predict_samples(model, samples, None, root, inputs=["face"], progress=False, out=parts)
    done = predict_samples(model, samples, None, root, inputs=["face"], progress=False, out=parts, restart=True)
    rows = pd.concat([pd.read_parquet(p) for p in parts.glob("part-*")])
    assert len(rows) == len(done) + done.attrs["skipped"]["face"]  # the legacy rows are gone, not kept beside
    assert rows["producer"].notna().all() and rows["producer"].nunique() == 1
    assert (
        done["sample_id"].tolist()
        == predict_samples(model, samples, None, root, inputs=["face"], progress=False)["sample_id"].tolist()
    )


def test_mivolo_predict_command_refuses_to_resume_with_another_checkpoint(
    tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegender.cli import main
    from agegender.mivolo.checkpoint import save_checkpoint

    root, samples = data
    table = tmp_path / "samples.parquet"
    samples.to_parquet(table)
    ckpt_a = save_checkpoint(tmp_path / "a.pt", _model(seed=0))
    ckpt_b = save_checkpoint(tmp_path / "b.pt", _model(seed=1))
    out = tmp_path / "pred.parquet"
    argv = ["mivolo-predict", "--samples", str(table), "--data-root", str(root), "--out", str(out),
            "--inputs", "face_body", "face", "--batch-size", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    seen = _interrupted(_model(), monkeypatch, after=2)  # the finished batches are flushed as the run stops
    with pytest.raises(_Stopped):
        main([*argv, "--checkpoint", str(ckpt_a)])
    parts = out.with_name(out.name + ".parts")
    assert any(parts.glob("part-*"))
    seen.update(crash_after=10**6)
    capsys.readouterr()
    assert main([*argv, "--checkpoint", str(ckpt_b)]) == 2
    err = capsys.readouterr().err
    assert "another producer" in err and str(parts) in err and "Traceback" not in err
    assert not out.exists()
    assert main([*argv, "--checkpoint", str(ckpt_b), "--restart"]) == 0
    expect_b = predict_samples(_model(seed=1), samples, None, root, inputs=["face_body", "face"], progress=False)
    got = pd.read_parquet(out)
    np.testing.assert_allclose(got["age_pred"].to_numpy(float), expect_b["age_pred"].to_numpy(float), atol=1e-4)
