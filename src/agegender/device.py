"""Which torch device "auto" means: CUDA when available, unless `AGEGENDER_DEVICE` says otherwise.

One rule for every model (MiVOLO, local MLLMs, checkpoint selection). `AGEGENDER_DEVICE=cpu` keeps a run (or the
CPU test suite on a GPU machine) on the CPU without hiding the GPU from the process.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agegender.errors import InputError

if TYPE_CHECKING:
    import torch

#: environment variable that decides what "auto" (or None) resolves to, e.g. `cpu` or `cuda:1`
DEVICE_ENV = "AGEGENDER_DEVICE"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device to run on.

    Args:
        device: `auto` or None (the `AGEGENDER_DEVICE` variable when set, else CUDA when available, else the CPU),
            or a device such as `cpu`, `cuda`, `cuda:1`.

    Returns:
        The device.

    Raises:
        InputError: an unknown device string, or CUDA asked for but not available.
    """
    import torch

    if device is None or device == "auto":
        device = os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"not a torch device: {device!r}", field="device") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(dev)!r} asked for, but CUDA is not available", field="device")
    return dev
