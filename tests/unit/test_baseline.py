import pandas as pd
import pytest

from agegender.baseline import ConstantBaseline
from agegender.errors import InputError


def test_fit_and_predict():
    train = pd.DataFrame({"age": [10.0, 20.0, None, 36.0], "gender": ["female", "female", "male", None]})
    model = ConstantBaseline.fit(train)
    assert model.age == pytest.approx(22.0)
    assert model.gender == "female"
    assert model.p_female == pytest.approx(2 / 3)
    targets = pd.DataFrame({"sample_id": ["a", "b"]})
    out = model.predict(targets, ("body", "face"))
    assert len(out) == 4
    assert set(out["input"]) == {"body", "face"}
    assert (out["status"] == "ok").all()
    assert out["age_pred"].eq(22.0).all()


def test_fit_needs_labels():
    with pytest.raises(InputError, match="ages and genders"):
        ConstantBaseline.fit(pd.DataFrame({"age": [None], "gender": ["male"]}))
