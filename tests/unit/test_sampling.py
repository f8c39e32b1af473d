"""NanoLAGENDA-style sampling: per-bin draws, seeding, exclusion after the draw, renaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agegender.data.sampling import age_bins, bin_counts, bin_label, nano_sample, read_id_list
from agegender.errors import InputError

# id -> age; bins of 5 years: [0,5) has 3, [5,10) has 1, [85,90) has 2; 90 and null are not eligible.
AGES = {"d/a": 0.0, "d/b": 2.5, "d/c": 4.99, "d/d": 5.0, "d/e": 85.0, "d/f": 89.9, "d/g": 90.0, "d/h": None}
BIN_OF = {"d/a": "0-5", "d/b": "0-5", "d/c": "0-5", "d/d": "5-10", "d/e": "85-90", "d/f": "85-90"}


def _samples(order: list[str] | None = None) -> pd.DataFrame:
    ids = order or list(AGES)
    return pd.DataFrame(
        {
            "sample_id": pd.array(ids, dtype="string"),
            "dataset": pd.array(["d"] * len(ids), dtype="string"),
            "age": pd.array([AGES[i] for i in ids], dtype="Float64"),
            "gender": pd.array(["male"] * len(ids), dtype="string"),
        }
    )


def test_age_bins_and_labels() -> None:
    assert age_bins(np.array([0, 4.999, 5, 89.99, 90, -1, np.nan])).tolist() == [0, 0, 1, 17, -1, -1, -1]
    assert age_bins(pd.Series([3, None], dtype="Float64"), bin_width=2, max_age=10).tolist() == [1, -1]
    assert [bin_label(i) for i in (0, 1, 17)] == ["0-5", "5-10", "85-90"]
    assert bin_label(18, 5, 92) == "90-92"


def test_bin_counts() -> None:
    counts = bin_counts(_samples())
    assert len(counts) == 18 and counts["bin"].iloc[0] == "0-5" and counts["bin"].iloc[-1] == "85-90"
    assert counts["n"].tolist() == [3, 1] + [0] * 15 + [2]
    assert counts[["age_min", "age_max"]].iloc[1].tolist() == [5, 10]
    odd = bin_counts(_samples(), max_age=92)  # the last bin is shorter
    assert len(odd) == 19 and odd["bin"].iloc[-1] == "90-92" and odd["n"].iloc[-1] == 1


def test_nano_sample_counts_per_bin_and_sorted() -> None:
    out = nano_sample(_samples(), per_bin=2, seed=0)
    ids = out["sample_id"].tolist()
    assert ids == sorted(ids) and len(ids) == 5
    drawn_bins = pd.Series([BIN_OF[i] for i in ids]).value_counts().to_dict()
    assert drawn_bins == {"0-5": 2, "5-10": 1, "85-90": 2}
    assert {"d/d", "d/e", "d/f"} <= set(ids)  # bins with <= 2 samples give all they have
    assert "d/g" not in ids and "d/h" not in ids
    assert out.attrs["per_bin_available"]["0-5"] == 3 and out.attrs["per_bin_drawn"]["0-5"] == 2
    assert out.attrs["per_bin"] == {bin_label(b): n for b, n in enumerate([2, 1] + [0] * 15 + [2])}
    assert out.attrs["n_excluded"] == 0
    assert list(out.columns) == ["sample_id", "dataset", "age", "gender"] and out.index.tolist() == list(range(5))
    everything = nano_sample(_samples(), per_bin=10, seed=0)
    assert everything["sample_id"].tolist() == ["d/a", "d/b", "d/c", "d/d", "d/e", "d/f"]


def test_nano_sample_seeded_and_independent_of_row_order() -> None:
    base = nano_sample(_samples(), per_bin=1, seed=7)["sample_id"].tolist()
    shuffled = _samples(list(reversed(list(AGES))))
    assert nano_sample(shuffled, per_bin=1, seed=7)["sample_id"].tolist() == base
    draws = {tuple(nano_sample(_samples(), per_bin=1, seed=s)["sample_id"]) for s in range(12)}
    assert len(draws) > 1  # the seed matters
    assert all(len(d) == 3 for d in draws)


def test_nano_sample_exclude_after_draw_not_replaced(tmp_path: Path) -> None:
    drawn = nano_sample(_samples(), per_bin=1, seed=3)
    first_bin = [i for i in drawn["sample_id"] if BIN_OF[i] == "0-5"]
    assert len(first_bin) == 1
    # Exclude the drawn one of [0,5), an undrawn id and an unknown id: only the first matters.
    others = sorted({"d/a", "d/b", "d/c"} - set(first_bin))
    out = nano_sample(_samples(), per_bin=1, seed=3, exclude=[first_bin[0], others[0], "zzz"])
    assert out["sample_id"].tolist() == [i for i in drawn["sample_id"] if i != first_bin[0]]
    assert out.attrs["per_bin"]["0-5"] == 0 and out.attrs["per_bin_drawn"]["0-5"] == 1
    assert out.attrs["n_excluded"] == 1

    text = tmp_path / "refused.txt"
    text.write_text(f"sample_id\n\n{first_bin[0]}\n  d/e  \n")
    from_text = nano_sample(_samples(), per_bin=1, seed=3, exclude=str(text))
    assert set(from_text["sample_id"]) == set(drawn["sample_id"]) - {first_bin[0], "d/e"}
    table = tmp_path / "refused.csv"
    table.write_text(f"model,sample_id\ngpt4v,{first_bin[0]}\ngpt4v,\n")
    assert nano_sample(_samples(), per_bin=1, seed=3, exclude=table)["sample_id"].tolist() == out["sample_id"].tolist()


def test_nano_sample_name_makes_a_new_dataset() -> None:
    out = nano_sample(_samples(), per_bin=3, seed=0, name="nano", exclude=["nano/d/a", "d/b"])
    assert out["sample_id"].tolist() == ["nano/d/c", "nano/d/d", "nano/d/e", "nano/d/f"]
    assert out["dataset"].unique().tolist() == ["nano"] and str(out["dataset"].dtype) == "string"
    assert out.attrs["n_excluded"] == 2


def test_read_id_list_and_errors(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n\nb\n")
    assert read_id_list(ids) == ["a", "b"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id\nx\n")
    with pytest.raises(InputError, match="sample_id column") as err:
        read_id_list(bad)
    assert err.value.field == "sample_id" and err.value.file == str(bad)
    with pytest.raises(InputError, match="not found"):
        nano_sample(_samples(), per_bin=1, seed=0, exclude=str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="per_bin"):
        nano_sample(_samples(), per_bin=-1, seed=0)
    with pytest.raises(InputError, match="bin_width"):
        nano_sample(_samples(), per_bin=1, seed=0, bin_width=0)
    with pytest.raises(InputError) as err:
        nano_sample(_samples().drop(columns="age"), per_bin=1, seed=0)
    assert err.value.field == "age"
    with pytest.raises(InputError, match="duplicate"):
        nano_sample(pd.concat([_samples(), _samples()]), per_bin=1, seed=0)
