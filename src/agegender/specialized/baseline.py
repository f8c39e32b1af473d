"""The constant baseline: train-set mean age and majority gender, the floor every table shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import pandas as pd

from agegender.data.schema import INPUT_KINDS, PREDICTION_COLUMNS, validate_predictions
from agegender.errors import InputError
from agegender.specialized.base import ImageRoots, ModelContext, SpecializedModel, crop_predictions, register_model


@register_model("baseline")
class ConstantBaseline(SpecializedModel):
    """Predicts the same age and gender for everybody, fitted on one data set's split of the prepared samples.

    It answers every input kind, and every sample whatever its crops (it never looks at a pixel).

    Args:
        train_dataset: the data set it is fitted on (None: every data set of the samples).
        train_split: the split it is fitted on (None: every split).
        model_name: the model id in prediction tables.
        context: `context.samples` holds the prepared sample table.

    Attributes:
        age: the mean age of the training samples.
        gender: the majority gender of the training samples.
        p_female: share of females in the training samples (reported as `gender_score`).

    Raises:
        InputError: no samples in the context, or no training sample with an age or with a gender.
    """

    inputs = INPUT_KINDS
    dataset_options = ("train_dataset",)

    def __init__(
        self,
        train_dataset: str | None = "demo",
        train_split: str | None = "train",
        *,
        model_name: str | None = None,
        context: ModelContext | None = None,
    ) -> None:
        super().__init__(model_name=model_name, context=context)
        samples = self.context.samples
        if samples is None:
            raise InputError("the constant baseline is fitted on the prepared samples: the context holds none")
        keep = pd.Series(True, index=samples.index)
        if train_dataset is not None:
            keep &= samples["dataset"] == train_dataset
        if train_split is not None:
            keep &= samples["split"] == train_split
        train = samples[keep.fillna(False).astype(bool)]
        ages = train["age"].dropna().astype("float64")
        genders = train["gender"].dropna()
        if ages.empty or genders.empty:
            where = f" of data set {train_dataset!r}, split {train_split!r}" if train_dataset or train_split else ""
            raise InputError(
                f"the constant baseline needs training samples{where} with ages and genders "
                f"(got {len(ages)} ages, {len(genders)} genders of {len(train)} samples)",
                field="train_dataset",
            )
        self.p_female = float((genders == "female").mean())
        self.age = float(ages.mean())
        self.gender = "female" if self.p_female > 0.5 else "male"

    @classmethod
    def fit(cls, samples: pd.DataFrame, *, name: str = "baseline") -> Self:
        """Fit on a whole sample table: mean of the known ages, majority of the known genders.

        Raises:
            InputError: no sample has an age or no sample has a gender.
        """
        return cls(None, None, model_name=name, context=ModelContext(samples=samples))

    def predict(self, samples: pd.DataFrame, inputs: Sequence[str]) -> pd.DataFrame:
        """Prediction table (DESIGN.md) with one row per sample and input kind."""
        n = len(samples)
        frames = [
            pd.DataFrame(
                {
                    "sample_id": samples["sample_id"].to_numpy(),
                    "model": self.model_name,
                    "input": kind,
                    "age_pred": np.full(n, self.age),
                    "gender_pred": self.gender,
                    "gender_score": np.full(n, self.p_female),
                    "status": "ok",
                    "raw_answer": pd.NA,
                }
            )
            for kind in inputs
        ]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
        return validate_predictions(table, source=f"model {self.model_name}")

    def predict_crops(self, faces: Sequence[np.ndarray | None], bodies: Sequence[np.ndarray | None]) -> pd.DataFrame:
        """The constant for every crop pair."""
        n = len(faces)
        return crop_predictions([self.age] * n, [self.gender] * n, [self.p_female] * n)

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
    ) -> pd.DataFrame:
        """Every sample for each input kind, without reading an image (the answer does not depend on it)."""
        kinds = self.answerable(inputs)
        table = self.predict(samples, kinds)
        if model_name is not None:
            table["model"] = model_name
        table.attrs["skipped"] = dict.fromkeys(kinds, 0)
        table.attrs["n_samples"] = len(samples)
        return table

    def describe(self) -> dict:
        """The fitted constants."""
        return super().describe() | {"age": self.age, "gender": self.gender, "p_female": self.p_female}
