"""MiVOLO as a specialized model: a checkpoint file (official release, Hugging Face port, or trained here).

`predict_samples` hands the work to `agegender.mivolo.predict.predict_samples` (batched, crops made in a background
thread, neighbours masked, bf16 on CUDA); `predict_crops` letterboxes given crops for callers that already hold
them. torch is imported when the model is built, not when this module is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender.data.crops import letterbox
from agegender.data.schema import GENDERS, INPUT_KINDS
from agegender.specialized.base import ImageRoots, ModelContext, SpecializedModel, crop_predictions, register_model


@register_model("mivolo")
class MivoloModel(SpecializedModel):
    """A MiVOLO checkpoint: face + body (6 channels) answers every input kind, a face-only one answers `face`.

    Args:
        checkpoint: the checkpoint file or Hugging Face folder (relative to the project root in a pipeline).
        use_ema: prefer the EMA weights when the file has them.
        model_name: the model id in prediction tables.
        context: its `device` places the model; its `paths` resolve a relative checkpoint.

    Raises:
        InputError: a missing, untrusted or malformed checkpoint.
    """

    inputs = INPUT_KINDS
    file_options = ("checkpoint",)

    def __init__(
        self,
        checkpoint: str,
        use_ema: bool = True,
        *,
        model_name: str | None = None,
        context: ModelContext | None = None,
    ) -> None:
        from agegender.device import resolve_device
        from agegender.mivolo.checkpoint import load_checkpoint

        super().__init__(model_name=model_name, context=context)
        self.checkpoint: Path | None = self.context.path(checkpoint)
        device = resolve_device(self.context.device)
        self._attach(load_checkpoint(self.checkpoint, device=device, use_ema=use_ema), device)

    def _attach(self, model: Any, device: Any) -> None:
        self.model, self.device = model.to(device).eval(), device
        # a face-only checkpoint sees faces only: other input kinds are not its to answer
        self.inputs = INPUT_KINDS if self.model.with_persons else ("face",)

    @classmethod
    def from_model(
        cls, model: Any, *, model_name: str | None = None, context: ModelContext | None = None
    ) -> MivoloModel:
        """Wrap an already loaded `agegender.mivolo.model.MiVOLOModel` (moved to the context's device)."""
        from agegender.device import resolve_device

        self = cls.__new__(cls)
        SpecializedModel.__init__(self, model_name=model_name, context=context)
        self.checkpoint = None
        self._attach(model, resolve_device(self.context.device))
        return self

    @classmethod
    def check_file(cls, option: str, path: Path) -> list[str]:
        """The checks of `agegender.mivolo.checkpoint.check_mivolo_checkpoint` (keys read, no model built)."""
        from agegender.mivolo.checkpoint import check_mivolo_checkpoint

        return check_mivolo_checkpoint(path)

    def predict_crops(self, faces: Sequence[np.ndarray | None], bodies: Sequence[np.ndarray | None]) -> pd.DataFrame:
        """Letterbox the crops (a missing one is black) and run the model in one batch."""
        import torch

        from agegender.mivolo.predict import decode_outputs
        from agegender.mivolo.preprocess import normalize_uint8

        size, channels = int(self.model.spec.img_size), 6 if self.model.with_persons else 3
        if not len(faces):
            return crop_predictions([], [])
        buffer = np.zeros((len(faces), size, size, channels), dtype=np.uint8)
        for i, (face, body) in enumerate(zip(faces, bodies, strict=True)):
            if face is not None:
                buffer[i, :, :, :3] = letterbox(face, size)
            if body is not None and channels == 6:
                buffer[i, :, :, 3:] = letterbox(body, size)
        self.model.eval()
        with torch.inference_mode():
            decoded = decode_outputs(self.model, self.model(normalize_uint8(buffer, device=self.device).contiguous()))
        n = len(faces)
        if decoded["gender"] is None:
            return crop_predictions(list(decoded["age"]), [None] * n)
        return crop_predictions(
            list(decoded["age"]), [GENDERS[int(g)] for g in decoded["gender"]], list(decoded["score"])
        )

    def predict_samples(
        self,
        samples: pd.DataFrame,
        masked: pd.DataFrame | None,
        image_roots: ImageRoots,
        inputs: Sequence[str] | None = None,
        *,
        context: pd.DataFrame | None = None,
        batch_size: int = 64,
        progress: bool = True,
        model_name: str | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        """`agegender.mivolo.predict.predict_samples` with this model (`options`: its further keyword arguments,
        e.g. `num_workers`, `out` to resume)."""
        from agegender.mivolo.predict import predict_samples

        return predict_samples(
            self.model,
            samples.reset_index(drop=True),
            masked,
            image_roots,
            inputs=self.answerable(inputs),
            batch_size=batch_size,
            device=self.device,
            progress=progress,
            model_name=model_name or self.model_name,
            context=context,
            **options,
        )

    def describe(self) -> dict[str, Any]:
        """The checkpoint and what it takes."""
        return super().describe() | {"checkpoint": self.checkpoint and str(self.checkpoint),
                                     "with_persons": self.model.with_persons}  # fmt: skip

    def close(self) -> None:
        """Drop the model (frees GPU memory once nothing else holds it)."""
        self.model = None  # type: ignore[assignment]
