"""Age-assurance rates: how often an age estimator lets a minor through, as NIST IR 8525 reports them.

Age estimation's largest use is age assurance (keeping minors out of a service). NIST's FATE Age Estimation and
Verification track (NIST IR 8525) compares systems by rates over subsets of people, not by MAE:

- ``challenge<T>_fpr`` (Challenge-25, -21): of the people aged 14-17, the share estimated at T or older;
- ``minor_as_adult``: of the people under 18, the share estimated at 18 or older;
- ``child_band_tpr``: of the people aged 13-16, the share estimated inside the child-only band [13, 17);
- ``child_band_adult_fpr``: of the people aged 18 or more, the share estimated inside that band.

Each is the mean of a 0/1 score over the answered samples whose TRUE age lies in the rate's population, so it is a
`MetricDef` with a `population`: `agegender.metrics.evaluate` gives it its count column, bootstrap interval, flat
metric and tolerance with no second code path. The limits come from `evaluate.assurance` (`AssuranceParams`),
which is why the definitions are built here from params rather than listed in `agegender.metrics.METRICS`.
Comparisons are exact (no `TOLERANCE`): the ages are compared as given, with no arithmetic that could round.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from agegender.metrics import MetricDef
from agegender.params import AssuranceParams

#: the count columns of the rates' populations, in output order
CHALLENGE_N, MINOR_N, CHILD_BAND_N, ADULT_N = "challenge_n", "minor_n", "child_band_n", "adult_n"


def in_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Whether each value lies in [low, high) (NaN: False); a population or an estimate band."""
    with np.errstate(invalid="ignore"):
        return (values >= low) & (values < high)


def too_few_text(n: float | None, min_n: int) -> str:
    """What a table or figure says instead of a rate on fewer than `min_n` people (`MetricDef.min_n`): a rate a
    handful of people decide would read as a finding."""
    count = 0 if n is None else int(n)
    return "no people" if count == 0 else f"too few (n={count} < {min_n})"


def _estimated_in(pred: np.ndarray, gt: np.ndarray, low: float, high: float) -> np.ndarray:
    """Per-sample 1.0 where the estimate lies in [low, high): the score a rate averages over its population."""
    return in_range(pred, low, high).astype("float64")


def _rate(
    name: str,
    label: str,
    count: str,
    people: tuple[float, float],
    estimated: tuple[float, float],
    *,
    higher_is_better: bool,
    min_n: int,
) -> MetricDef:
    return MetricDef(
        name,
        label,
        "age",
        partial(_estimated_in, low=estimated[0], high=estimated[1]),
        percent=True,
        higher_is_better=higher_is_better,
        statistic="rate",
        in_paper=False,
        population=partial(in_range, low=people[0], high=people[1]),
        count=count,
        min_n=min_n,
    )


def assurance_metrics(cfg: AssuranceParams) -> tuple[MetricDef, ...]:
    """The age-assurance rates under `cfg`'s limits, in report order (grouped by population).

    Args:
        cfg: the `evaluate.assurance` section.

    Returns:
        ``challenge<T>_fpr`` per threshold T (as listed), ``minor_as_adult``, ``child_band_tpr`` and
        ``child_band_adult_fpr``; each a fraction of the people counted in its `MetricDef.count_column`.
    """
    low, high = cfg.challenge_ages
    band = (float(cfg.child_band[0]), float(cfg.child_band[1]))
    adult = float(cfg.adult_age)
    challenge = (float(low), float(high))
    return (
        *(
            _rate(
                f"challenge{t}_fpr",
                f"Challenge-{t} FPR (age {low}-{high - 1} as {t}+)",
                CHALLENGE_N,
                challenge,
                (float(t), math.inf),
                higher_is_better=False,
                min_n=cfg.min_n,
            )
            for t in cfg.challenge_thresholds
        ),
        _rate(
            "minor_as_adult",
            f"Minor as adult (under {cfg.adult_age} as {cfg.adult_age}+)",
            MINOR_N,
            (-math.inf, adult),
            (adult, math.inf),
            higher_is_better=False,
            min_n=cfg.min_n,
        ),
        _rate(
            "child_band_tpr",
            f"Child band TPR (age {band[0]:g}-{band[1] - 1:g} in band)",
            CHILD_BAND_N,
            band,
            band,
            higher_is_better=True,
            min_n=cfg.min_n,
        ),
        _rate(
            "child_band_adult_fpr",
            f"Child band adult FPR ({cfg.adult_age}+ in band)",
            ADULT_N,
            (adult, math.inf),
            band,
            higher_is_better=False,
            min_n=cfg.min_n,
        ),
    )
