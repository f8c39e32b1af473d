"""The constant baseline: train-set mean age and majority gender, the floor every table shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import pandas as pd

from agegender.data.schema import PREDICTION_COLUMNS, validate_predictions
from agegender.errors import InputError


@dataclass(frozen=True)
class ConstantBaseline:
    """Predicts the same age and gender for everybody.

    Attributes:
        age: the mean age of the training samples.
        gender: the majority gender of the training samples.
        p_female: share of females in the training samples (reported as `gender_score`).
        name: the model id in prediction tables.
    """

    age: float
    gender: str
    p_female: float
    name: str = "baseline"

    @classmethod
    def fit(cls, samples: pd.DataFrame, *, name: str = "baseline") -> Self:
        """Fit on a sample table: mean of the known ages, majority of the known genders.

        Raises:
            InputError: no training sample has an age or no training sample has a gender.
        """
        ages = samples["age"].dropna().astype("float64")
        genders = samples["gender"].dropna()
        if ages.empty or genders.empty:
            raise InputError(
                f"the constant baseline needs training samples with ages and genders "
                f"(got {len(ages)} ages, {len(genders)} genders of {len(samples)} samples)"
            )
        p_female = float((genders == "female").mean())
        return cls(age=float(ages.mean()), gender="female" if p_female > 0.5 else "male", p_female=p_female, name=name)

    def predict(self, samples: pd.DataFrame, inputs: tuple[str, ...]) -> pd.DataFrame:
        """Prediction table (DESIGN.md) with one row per sample and input kind."""
        n = len(samples)
        frames = [
            pd.DataFrame(
                {
                    "sample_id": samples["sample_id"].to_numpy(),
                    "model": self.name,
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
        return validate_predictions(table, source=f"model {self.name}")
