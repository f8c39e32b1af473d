"""MiVOLO, the specialized model: architecture, official checkpoints, training, prediction and export.

    from agegender.mivolo import load_checkpoint
    model = load_checkpoint("mivolo_d1_384.pth.tar")   # eval mode, age range attached
    raw = model(x)                                      # x: [N, 6, H, W] face then body -> [N, 3]

Names are imported on first use, so that `agegender` commands that do not need torch start fast.
"""

import importlib
from typing import Any

_EXPORTS = {
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "make_input": "preprocess",
    "to_tensor": "preprocess",
    "export_onnx": "export",
    "export_torchscript": "export",
    "save_checkpoint": "checkpoint",
    "MODEL_SPECS": "config",
    "MiVOLOModel": "model",
    "MiVOLOSpec": "config",
    "TrainConfig": "config",
    "create_mivolo": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"agegender.mivolo.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'agegender.mivolo' has no attribute {name!r}")
