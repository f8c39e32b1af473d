"""MiVOLO checkpoints: official layout, parity with the official model, safety, Hugging Face safetensors."""

from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.errors import InputError
from agegender.mivolo.checkpoint import (
    SPEC_KEY,
    VARIANT_KEY,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    variant_name,
)
from agegender.mivolo.model import MiVOLOModel, MiVOLOSpec, create_mivolo
from agegender.mivolo.preprocess import make_input

torch.set_num_threads(min(2, torch.get_num_threads()))

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mivolo_parity_tiny.pt"


@pytest.fixture(scope="module")
def parity() -> dict:
    # weights_only: the fixture holds only tensors and plain types
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def _spec(config: dict) -> MiVOLOSpec:
    return MiVOLOSpec(
        layers=tuple(config["layers"]),
        embed_dims=tuple(config["embed_dims"]),
        num_heads=tuple(config["num_heads"]),
        img_size=config["img_size"],
        stem_hidden_dim=config["stem_hidden_dim"],
    )


def _tiny(in_chans: int = 6, num_classes: int = 3, seed: int = 0) -> MiVOLOModel:
    torch.manual_seed(seed)
    model = create_mivolo("mivolo_tiny_64", in_chans=in_chans, num_classes=num_classes).eval()
    model.set_age_range(1, 95, 48)
    return model


def _official_file(path: Path, state: dict, **meta) -> Path:
    ckpt = {"state_dict": state, "min_age": 1, "max_age": 95, "avg_age": 48.0, "no_gender": False, **meta}
    torch.save(ckpt, path)
    return path


def _same(a: torch.nn.Module, b: torch.nn.Module, in_chans: int = 6) -> None:
    x = torch.randn(2, in_chans, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


# --- parity with the official implementation (fixture built from the official code) ------------------------------


@pytest.mark.parametrize("case", ["in6", "in3"])
def test_same_outputs_as_official_model(parity: dict, case: str) -> None:
    data = parity["cases"][case]
    model = MiVOLOModel(_spec(parity["config"]), in_chans=data["in_chans"], num_classes=data["num_classes"])
    model.load_state_dict(data["state_dict"], strict=True)
    model.eval()
    with torch.inference_mode():
        out = model(data["input"].float())
    assert torch.allclose(out, data["output"], atol=1e-5), (out - data["output"]).abs().max()
    # the outputs depend on the input, so the comparison is not vacuous
    assert (data["output"] - data["output"][0]).abs().max() > 1e-3


def test_official_layout_file_loads_to_same_outputs(parity: dict, tmp_path: Path) -> None:
    data = parity["cases"]["in6"]
    # a released-style file: DataParallel prefix, a training-only FDS module, the run's argparse args
    state = {f"module.{k}": v for k, v in data["state_dict"].items()}
    state["module.fds.running_mean"] = torch.zeros(3)
    path = _official_file(tmp_path / "official.pth.tar", state, args=argparse.Namespace(lr=1e-5, model="mivolo"))
    model = load_checkpoint(path, variant=_spec(parity["config"]))
    assert model.with_persons and not model.no_gender and not model.training
    assert (model.min_age, model.max_age, model.avg_age) == (1.0, 95.0, 48.0)
    with torch.inference_mode():
        out = model(data["input"].float())
    assert torch.allclose(out, data["output"], atol=1e-5)


def test_preprocessing_matches_official(parity: dict) -> None:
    pre = parity["preprocess"]
    crops = [None if i in pre["none"] else t.numpy() for i, t in enumerate(pre["crops"])]
    assert any(c is None for c in crops)
    got = make_input(crops, None, pre["size"], with_persons=False)
    torch.testing.assert_close(got, pre["expected"], atol=1e-5, rtol=0)
    both = make_input(crops, crops[::-1], pre["size"], with_persons=True)
    torch.testing.assert_close(both, torch.cat([pre["expected"], pre["expected"].flip(0)], dim=1), atol=1e-5, rtol=0)


# --- our files ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_chans", "num_classes"), [(6, 3), (3, 1)])
def test_save_load_roundtrip(tmp_path: Path, in_chans: int, num_classes: int) -> None:
    model = _tiny(in_chans, num_classes)
    path = save_checkpoint(tmp_path / "sub" / "m.pth.tar", model, extra={"epoch": 4, "metric": 3.5})
    assert sorted(os.listdir(path.parent)) == ["m.pth.tar"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)  # loadable by the official code's torch.load
    for key in ("state_dict", "min_age", "max_age", "avg_age", "no_gender", "with_persons_model"):
        assert key in raw
    assert raw[VARIANT_KEY] == "mivolo_tiny_64" and raw["with_persons_model"] == (in_chans == 6)
    assert raw["no_gender"] == (num_classes == 1)
    loaded = load_checkpoint(path)
    assert (loaded.in_chans, loaded.num_classes) == (in_chans, num_classes)
    assert read_checkpoint(path).extra == {"epoch": 4, "metric": 3.5}
    _same(model, loaded, in_chans)


def test_custom_spec_is_recorded(tmp_path: Path) -> None:
    spec = MiVOLOSpec(layers=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), img_size=32, stem_hidden_dim=8)
    assert variant_name(spec) is None
    model = MiVOLOModel(spec, in_chans=6).eval()
    model.set_age_range(0, 100)
    path = save_checkpoint(tmp_path / "c.pt", model)
    assert SPEC_KEY in torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert loaded.spec == spec
    x = torch.randn(1, 6, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), loaded(x))


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    model = create_mivolo("mivolo_tiny_64", in_chans=3)
    with pytest.raises(ValueError, match="age range"):
        save_checkpoint(tmp_path / "x.pt", model)
    model.set_age_range(0, 100)
    with pytest.raises(ValueError, match="overwrite"):
        save_checkpoint(tmp_path / "x.pt", model, extra={"min_age": 3})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))
    assert not list(tmp_path.iterdir())


def test_save_unwraps_compiled_or_ddp_style_wrappers(tmp_path: Path) -> None:
    model = _tiny(3)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    path = save_checkpoint(tmp_path / "w.pt", Wrapper(model))
    assert not any(k.startswith("module.") for k in torch.load(path, weights_only=True)["state_dict"])


# --- which weights, which architecture ----------------------------------------------------------------------------


def test_ema_weights_preferred_like_the_official_loader(tmp_path: Path) -> None:
    plain, ema = _tiny(3, seed=1), _tiny(3, seed=2)
    path = _official_file(
        tmp_path / "e.pt", plain.state_dict(), state_dict_ema=ema.state_dict(), **{VARIANT_KEY: "mivolo_tiny_64"}
    )
    _same(load_checkpoint(path), ema, 3)
    _same(load_checkpoint(path, use_ema=False), plain, 3)


@pytest.mark.parametrize("key", ["model", "model_ema"])
def test_other_state_keys(tmp_path: Path, key: str) -> None:
    model = _tiny(3)
    ckpt = {key: model.state_dict(), "min_age": 1, "max_age": 95, "avg_age": 48.0, "no_gender": False}
    torch.save(ckpt, tmp_path / "k.pt")
    _same(load_checkpoint(tmp_path / "k.pt", variant="mivolo_tiny_64"), model, 3)


def test_with_persons_inferred_when_flag_absent(tmp_path: Path) -> None:
    for in_chans in (6, 3):
        model = _tiny(in_chans)
        path = _official_file(tmp_path / f"p{in_chans}.pt", model.state_dict())
        data = read_checkpoint(path)
        assert data.with_persons == (in_chans == 6)
        assert data.input_size == 64 and data.num_classes == 3
        assert load_checkpoint(path, variant="mivolo_tiny_64").in_chans == in_chans


def test_variant_follows_position_grid(tmp_path: Path) -> None:
    # a D1 position grid of 14 -> mivolo_d1_224 is built; the tiny weights then fail the strict load
    state = _tiny(3).state_dict()
    state["pos_embed"] = torch.zeros(1, 14, 14, 384)
    path = _official_file(tmp_path / "g.pt", state)
    with pytest.raises(InputError, match="missing keys") as err:
        load_checkpoint(path)
    assert "(16,) != (64,)" in str(err.value)  # D1's stem is 64 wide, the tiny one 16
    state["pos_embed"] = torch.zeros(1, 5, 5, 64)
    with pytest.raises(InputError, match="input size 80 .*matches no registered variant"):
        load_checkpoint(_official_file(tmp_path / "h.pt", state))
    with pytest.raises(InputError, match="input size 80 .* takes 64"):
        load_checkpoint(tmp_path / "h.pt", variant="mivolo_tiny_64")
    with pytest.raises(InputError, match="unknown MiVOLO variant"):
        load_checkpoint(tmp_path / "h.pt", variant="mivolo_huge")


def test_strict_load_lists_bad_keys(tmp_path: Path) -> None:
    state = _tiny(6).state_dict()
    del state["head.weight"], state["patch_embed.map.qkv_f.weight"]
    state["head.weight"] = torch.zeros(3, 64)
    state["extra.thing"] = torch.zeros(1)
    state["norm.bias"] = torch.zeros(7)
    path = _official_file(tmp_path / "s.pt", state, with_persons_model=True)
    with pytest.raises(InputError) as err:
        load_checkpoint(path, variant="mivolo_tiny_64")
    text = str(err.value)
    assert str(path) in text
    assert "1 missing keys: patch_embed.map.qkv_f.weight" in text
    assert "1 unexpected keys: extra.thing" in text
    assert "norm.bias (7,) != (64,)" in text


def test_strict_load_lists_at_most_ten(tmp_path: Path) -> None:
    state = {k: v for k, v in _tiny(6).state_dict().items() if not k.startswith("network.")}
    path = _official_file(tmp_path / "t.pt", state)
    with pytest.raises(InputError, match=r"missing keys: .*\(\+\d+ more\)"):
        load_checkpoint(path, variant="mivolo_tiny_64")


def test_meta_errors(tmp_path: Path) -> None:
    state = _tiny(3).state_dict()
    torch.save({"state_dict": state, "max_age": 95, "avg_age": 48.0, "no_gender": False}, tmp_path / "a.pt")
    with pytest.raises(InputError, match="age range") as err:
        read_checkpoint(tmp_path / "a.pt")
    assert err.value.field == "min_age"
    with pytest.raises(InputError, match="no_gender=True but the head has 3 outputs"):
        read_checkpoint(_official_file(tmp_path / "b.pt", state, no_gender=True))
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(InputError, match="bare state dict"):
        read_checkpoint(tmp_path / "bare.pt")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "min_age": 0, "max_age": 1}, tmp_path / "c.pt")
    with pytest.raises(InputError, match="not a MiVOLO"):
        read_checkpoint(tmp_path / "c.pt")
    torch.save([1, 2], tmp_path / "d.pt")
    with pytest.raises(InputError, match="expected a dict"):
        read_checkpoint(tmp_path / "d.pt")


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as err:
        load_checkpoint(tmp_path / "nope.pth.tar")
    assert err.value.file == str(tmp_path / "nope.pth.tar")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError) as err:
        load_checkpoint(tmp_path / "junk.pt")
    assert err.value.file == str(tmp_path / "junk.pt")


# --- untrusted pickles ----------------------------------------------------------------------------------------------


class Payload:
    """An arbitrary class: a checkpoint holding it must not be unpickled."""

    def __init__(self) -> None:
        self.value = 1


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_refuses_arbitrary_classes(tmp_path: Path) -> None:
    path = _official_file(tmp_path / "evil.pt", _tiny(3).state_dict(), args=Payload())
    with pytest.raises(InputError, match="could run code") as err:
        load_checkpoint(path)
    assert "test_mivolo_checkpoint.Payload" in str(err.value)
    assert err.value.file == str(path)


def test_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "exploit.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {}, "x": Exploit(marker)}, handle, protocol=2)
    with pytest.raises(InputError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()


# --- Hugging Face safetensors ---------------------------------------------------------------------------------------


def _hf_folder(folder: Path, model: MiVOLOModel, config: dict | None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(
        {f"mivolo.model.{k}": v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


HF_CONFIG = {
    "model_name": "mivolo_d1_384",
    "num_classes": 3,
    "in_chans": 6,
    "input_size": 384,
    "with_persons_model": True,
    "only_age": False,
    "min_age": 0,
    "max_age": 122,
    "avg_age": 61.0,
}


def test_hugging_face_folder_and_file(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    model = _tiny(6)
    folder = _hf_folder(tmp_path / "hf", model, HF_CONFIG)
    for source in (folder, folder / "model.safetensors"):
        loaded = load_checkpoint(source, variant="mivolo_tiny_64")
        assert (loaded.min_age, loaded.max_age, loaded.avg_age) == (0.0, 122.0, 61.0)
        assert loaded.with_persons
        _same(model, loaded)


def test_hugging_face_age_only_and_errors(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    model = _tiny(3, num_classes=1)
    config = {**HF_CONFIG, "with_persons_model": False, "only_age": True, "num_classes": 1, "in_chans": 3}
    loaded = load_checkpoint(_hf_folder(tmp_path / "a", model, config), variant="mivolo_tiny_64")
    assert loaded.no_gender and loaded.in_chans == 3
    with pytest.raises(InputError, match="config.json"):
        read_checkpoint(_hf_folder(tmp_path / "b", model, None))
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError, match="no model.safetensors"):
        read_checkpoint(tmp_path / "c")
    (tmp_path / "d.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="safetensors"):
        read_checkpoint(tmp_path / "d.safetensors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_to_cuda(tmp_path: Path) -> None:
    model = _tiny(6)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "g.pt", model), device="cuda")
    assert next(loaded.parameters()).is_cuda
    x = torch.randn(2, 6, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x.cuda()).cpu().numpy(), model(x).numpy(), atol=1e-4)
