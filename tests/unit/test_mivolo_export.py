"""MiVOLO export: ONNX (opset 18, Col2Im) and TorchScript, each checked against PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender.mivolo import export as export_mod
from agegender.mivolo.export import ExportError, export_onnx, export_torchscript
from agegender.mivolo.model import MiVOLOModel, create_mivolo

torch.set_num_threads(min(2, torch.get_num_threads()))


def _tiny(in_chans: int) -> MiVOLOModel:
    torch.manual_seed(in_chans)
    return create_mivolo("mivolo_tiny_64", in_chans=in_chans).eval()


def _reference(model: MiVOLOModel, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("in_chans", [6, 3])
def test_onnx_export_matches_pytorch_for_any_batch(tmp_path: Path, in_chans: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _tiny(in_chans)
    path = export_onnx(model, tmp_path / "m.onnx")
    assert path.is_file() and not model.training
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, in_chans, 64, 64)).astype(np.float32)
        got = session.run(["output"], {"input": x})[0]
        np.testing.assert_allclose(got, _reference(model, x), atol=1e-4, rtol=0)


def test_onnx_static_batch_and_training_mode_restored(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _tiny(6).train()
    export_onnx(model, tmp_path / "s.onnx", batch_dynamic=False)
    assert model.training  # export switched to eval for the trace only
    shape = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape == [2, 6, 64, 64]


def test_onnx_check_can_fail(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_onnx(_tiny(3), tmp_path / "f.onnx", atol=-1.0)  # no difference passes a negative tolerance


def test_onnx_needs_opset_18(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="Col2Im"):
        export_onnx(_tiny(3), tmp_path / "o.onnx", opset=17)


def test_missing_onnx_packages_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        export_mod.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a)
    )
    with pytest.raises(ExportError, match=r"onnxruntime.*pip install agegender\[export\]"):
        export_onnx(_tiny(3), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("in_chans", [6, 3])
def test_torchscript_export_matches_pytorch(tmp_path: Path, in_chans: int) -> None:
    model = _tiny(in_chans)
    path = export_torchscript(model, tmp_path / "m.ts.pt")
    x = np.random.default_rng(0).standard_normal((5, in_chans, 64, 64)).astype(np.float32)
    with torch.jit.optimized_execution(False), torch.inference_mode():
        got = torch.jit.load(str(path))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _reference(model, x), atol=1e-5, rtol=0)


def test_torchscript_check_can_fail(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_torchscript(_tiny(3), tmp_path / "f.pt", atol=-1.0)


def test_export_rejects_other_models(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="MiVOLOModel"):
        export_torchscript(torch.nn.Linear(2, 2), tmp_path / "l.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_export_from_cuda_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = _tiny(6).cuda()
    export_onnx(model, tmp_path / "g.onnx")
    export_torchscript(model, tmp_path / "g.pt")
