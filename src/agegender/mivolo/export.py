"""Export a MiVOLO model to ONNX or TorchScript and check the export against PyTorch.

ONNX: VOLO's outlook attention folds patches back with `F.fold` (aten::col2im), which ONNX has as
`Col2Im` from opset 18. With torch 2.14 the TorchScript-based exporter (`dynamo=False`) has a col2im
symbolic but it fails on traced models ("'NoneType' object is not subscriptable (Occurred when translating
col2im)") because it reads the rank of `output_size` from static shape information the trace does not
carry. We register a replacement that takes the rank from the dilation list (always given by `F.fold`);
with it the export runs and onnxruntime 1.32 matches PyTorch to ~2e-7 on the tiny variants. The
torch.export-based exporter (`dynamo=True`) needs the `onnxscript` package; pass `dynamo=True` to use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agegender.errors import AgegenderError

_EXPORT_HINT = "pip install agegender[export]"
_COL2IM_OPSETS = range(18, 25)
_col2im_registered = False


class ExportError(AgegenderError):
    """An export failed or its output does not match PyTorch."""


def _require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"exporting needs {', '.join(missing)}: {_EXPORT_HINT}")


def _register_col2im() -> None:
    """Register a Col2Im symbolic that works on traced models (see the module docstring)."""
    global _col2im_registered
    if _col2im_registered:
        return
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "is", "is", "is")
    def col2im(g, self, output_size, kernel_size, dilation, padding, stride):
        rank = len(dilation) if dilation else 2
        pads = [p for p in padding for _ in range(2)] if padding else [0] * (2 * rank)
        return g.op(
            "Col2Im",
            self,
            output_size,
            kernel_size,
            dilations_i=list(dilation) if dilation else [1] * rank,
            pads_i=pads,
            strides_i=list(stride) if stride else [1] * rank,
        )

    for opset in _COL2IM_OPSETS:
        torch.onnx.register_custom_op_symbolic("aten::col2im", col2im, opset)
    _col2im_registered = True


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    # The tracer warns about VOLO's shape arithmetic (fixed input size: harmless) and about its own deprecation.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(deprecated|legacy TorchScript-based ONNX).*")
        warnings.filterwarnings("ignore", message=".*(Constant folding|The feature will be removed).*")
        yield


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    size = getattr(getattr(model, "spec", None), "img_size", None)
    chans = getattr(model, "in_chans", None)
    if size is None or chans is None:
        raise ExportError("expected a MiVOLOModel (with .spec.img_size and .in_chans)")
    return int(chans), int(size), int(size)


def _example(model: nn.Module, batch: int, seed: int) -> torch.Tensor:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *_input_shape(model), generator=gen).to(device)


def _compare(name: str, got: np.ndarray, want: np.ndarray, atol: float) -> float:
    if got.shape != want.shape:
        raise ExportError(f"{name}: output shape {got.shape} differs from PyTorch's {want.shape}")
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    if not np.isfinite(diff) or diff > atol:
        raise ExportError(f"{name}: outputs differ from PyTorch by {diff:.3g} (> atol {atol:g})")
    return diff


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    batch_dynamic: bool = True,
    opset: int = 18,
    check: bool = True,
    atol: float = 1e-4,
    dynamo: bool = False,
) -> Path:
    """Export to ONNX (input `input` [N, C, S, S] float32, output `output` [N, 3|1]).

    Args:
        model: a `MiVOLOModel` (exported in eval mode, on its device; the file holds float32 weights).
        path: the `.onnx` file to write.
        batch_dynamic: make the batch dimension dynamic (the spatial size is fixed by the model).
        opset: ONNX opset; at least 18 (Col2Im).
        check: run the file with onnxruntime on a random batch of 3 and compare with PyTorch.
        atol: largest accepted absolute difference.
        dynamo: use the torch.export-based exporter (needs `onnxscript`) instead of the TorchScript one.

    Returns:
        The path written.

    Raises:
        ExportError: when onnx / onnxruntime are missing, the export fails, or the check fails.
    """
    if opset < 18:
        raise ExportError(f"opset {opset} has no Col2Im (VOLO's fold): use opset >= 18")
    _require("onnx", *(["onnxruntime"] if check else []), *(["onnxscript"] if dynamo else []))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = _example(model, 2, seed=0)
    try:
        with _quiet_export(), torch.no_grad():
            if dynamo:
                shapes = ({0: torch.export.Dim("batch", min=1)},) if batch_dynamic else None
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_shapes=shapes,
                    external_data=False,
                )
            else:
                _register_col2im()
                axes = {"input": {0: "batch"}, "output": {0: "batch"}} if batch_dynamic else None
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes=axes,
                )
        if check:
            import onnx
            import onnxruntime as ort

            onnx.checker.check_model(str(path))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            probe = _example(model, 3 if batch_dynamic else 2, seed=1)
            with torch.no_grad():
                want = model(probe).float().cpu().numpy()
            got = session.run(["output"], {"input": probe.float().cpu().numpy()})[0]
            _compare(f"ONNX export {path}", got, want, atol)
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many types; the user needs one clear message
        raise ExportError(f"ONNX export to {path} failed ({type(exc).__name__}: {exc})") from exc
    finally:
        model.train(was_training)
    return path


def export_torchscript(model: nn.Module, path: str | Path, *, check: bool = True, atol: float = 1e-4) -> Path:
    """Trace the model to TorchScript (batch size stays dynamic; the input size is fixed).

    Args:
        model: a `MiVOLOModel` (traced in eval mode on its device).
        path: the `.pt` file to write (`torch.jit.load` reads it).
        check: reload the file and compare with PyTorch on a random batch of 3.
        atol: largest accepted absolute difference.

    Returns:
        The path written.

    Raises:
        ExportError: when tracing fails or the check fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with _quiet_export(), torch.no_grad():
            # check_trace would trace a second time; the check below compares the saved file instead
            traced = torch.jit.trace(model, (_example(model, 2, seed=0),), check_trace=False)
            traced.save(str(path))
        if check:
            # the profiling executor's first calls optimise the graph (seconds); not needed for one comparison
            with _quiet_export(), torch.no_grad(), torch.jit.optimized_execution(False):
                loaded = torch.jit.load(str(path), map_location=next(model.parameters()).device)
                probe = _example(model, 3, seed=1)
                _compare(
                    f"TorchScript export {path}",
                    loaded(probe).float().cpu().numpy(),
                    model(probe).float().cpu().numpy(),
                    atol,
                )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"TorchScript export to {path} failed ({type(exc).__name__}: {exc})") from exc
    finally:
        model.train(was_training)
    return path
