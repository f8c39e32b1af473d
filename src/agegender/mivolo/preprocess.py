"""Crops -> MiVOLO input tensors, as the official evaluation pipeline prepares them.

Each crop is letterboxed (aspect kept, centred on black padding, see `agegender.data.crops.letterbox`),
scaled to [0, 1] and normalised with ImageNet mean/std. A missing crop is a black image that is then
normalised (so it holds -mean/std, not zeros). Face-and-body models take 6 channels, face first.

Crops are RGB uint8 arrays (H, W, 3) as everywhere in `agegender.data`; the official code reads BGR
and converts, so feeding it the BGR of our RGB gives the same tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from agegender.data.crops import letterbox
from agegender.errors import InputError

IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)

Crop = np.ndarray | None


def _check_crop(crop: np.ndarray, index: int, field: str) -> None:
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        got = f"{type(crop).__name__}" if not isinstance(crop, np.ndarray) else f"{crop.dtype} array {crop.shape}"
        raise InputError(f"a crop must be an RGB uint8 array (H, W, 3), got {got}", row=index, field=field)
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise InputError(f"empty crop {crop.shape}", row=index, field=field)


def _scale_shift(channels: int, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel a, b with (x / 255 - mean) / std == x * a + b, repeated for face and body."""
    mean = torch.tensor(IMAGENET_MEAN * (channels // 3), dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD * (channels // 3), dtype=torch.float64)
    # Folded in float64 so the float32 result stays within ~1e-7 of the official float64 arithmetic.
    scale, shift = 1.0 / (255.0 * std), -mean / std
    shape = (1, channels, 1, 1)
    return scale.float().reshape(shape).to(device), shift.float().reshape(shape).to(device)


def normalize_uint8(batch: np.ndarray | torch.Tensor, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalise a stack of letterboxed uint8 images in one pass.

    Args:
        batch: uint8 (N, H, W, C) with C = 3 (face) or 6 (face then body), RGB per image.
        device: where the result lives; the uint8 data is moved first (4x less to copy than floats).

    Returns:
        float32 tensor [N, C, H, W] in channels-last memory layout (values are those of a contiguous
        tensor; `.contiguous()` gives the usual layout at the cost of a copy).
    """
    data = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
    if data.dtype != torch.uint8 or data.ndim != 4 or data.shape[-1] not in (3, 6):
        raise ValueError(f"expected uint8 (N, H, W, 3|6), got {data.dtype} {tuple(data.shape)}")
    data = data.to(device, non_blocking=True).permute(0, 3, 1, 2)
    scale, shift = _scale_shift(data.shape[1], data.device)
    return torch.addcmul(shift, data.float(), scale)


def _fill(out: np.ndarray, crops: Sequence[Crop], size: int, channel0: int, field: str) -> None:
    for i, crop in enumerate(crops):
        if crop is None:
            continue  # stays black: normalised to -mean/std like the official missing input
        _check_crop(crop, i, field)
        out[i, :, :, channel0 : channel0 + 3] = letterbox(crop, size)


def to_tensor(crop: Crop, size: int) -> torch.Tensor:
    """One crop -> a normalised [3, size, size] float32 tensor.

    Args:
        crop: RGB uint8 array (H, W, 3), or None for a missing crop (a normalised black image).
        size: side of the model input.

    Returns:
        The contiguous tensor [3, size, size].

    Raises:
        InputError: when the crop is not an RGB uint8 array or is empty.
    """
    return make_input([crop], None, size, with_persons=False)[0].contiguous()


def make_input(
    faces: Sequence[Crop],
    bodies: Sequence[Crop] | None,
    size: int,
    with_persons: bool,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Crops of N samples -> the model input [N, 6 | 3, size, size].

    The crops are letterboxed into one uint8 buffer and normalised once (this runs on the inference
    hot path). Channels 0-2 hold the face, 3-5 the body; face-only models get only the faces.

    Args:
        faces: N face crops (RGB uint8 (H, W, 3) or None).
        bodies: N body crops (or None); ignored when `with_persons` is False.
        size: side of the model input.
        with_persons: build 6 channels (face, body) instead of 3 (face).
        device: where the tensor lives.

    Returns:
        float32 tensor [N, C, size, size] in channels-last memory layout.

    Raises:
        InputError: when a crop is not an RGB uint8 array, or faces and bodies differ in length.
    """
    if size <= 0:
        raise ValueError(f"input size must be positive, got {size}")
    n = len(faces)
    if with_persons:
        if bodies is None:
            bodies = [None] * n
        if len(bodies) != n:
            raise InputError(f"{n} face crops but {len(bodies)} body crops", field="bodies")
    buffer = np.zeros((n, size, size, 6 if with_persons else 3), dtype=np.uint8)
    _fill(buffer, faces, size, 0, "face")
    if with_persons:
        _fill(buffer, bodies, size, 3, "body")
    return normalize_uint8(buffer, device=device)
