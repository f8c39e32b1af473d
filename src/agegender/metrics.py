"""Age and gender metrics, age-class mapping, per-age-group MAE and bootstrap confidence intervals.

The paper's metrics (section 3): age MAE, CS@5 (share of samples with an absolute error of at most
5 years), MAPE with eps = 1 in the denominator (eq. 1), gender accuracy; for class data sets
(Adience, FairFace) a regression output is mapped to its class and scored with class accuracy and
the MAE over class indices (table 7). CE@20 (share of errors of 20 years or more) is an extra.

Everything is vectorised: `evaluate` turns the tables into integer codes once and sums every metric
per (dataset, input, model) group with `np.bincount`, so a million predictions take well under a
second. All rates are fractions (0.1686, not 16.86 %).

Three views of the same predictions (`VIEWS`):

- ``answered``: each model is scored on the samples it answered (status ``ok``) out of all the data
  set's samples; coverage says how many that was.
- ``kept`` (the view of the paper's table 8 and figure 3, only for data sets with a refusal exclusion,
  `agegender.exclusion`): the samples a named model refused leave the data set for every model, and each
  model is scored on the samples it answered among those kept. Section 4.1: "> 21% of these images had to
  be removed because ChatGPT refused to provide answers"; the other models' own failures are not removed
  (section 4.2 takes the midpoint of an answered range instead), so their coverage may stay below 1.
- ``common`` (the refusal-aware view the paper lacks): within a (dataset, input) group every model is
  scored on the kept samples that every model of the group answered, so a model cannot look better by
  refusing the hard cases.
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import ArrayLike

from agegender.data.schema import GENDERS
from agegender.errors import InputError

#: Float tolerance of the threshold metrics: 30.000000001 vs 25 still counts as an error of 5 years.
TOLERANCE: float = 1e-9

VIEWS: tuple[str, ...] = ("answered", "common", "kept")

# Bound on the elements of one resample-weight matrix (float64), so that 84k samples x 1000 resamples
# are processed in chunks of ~16 MB instead of one 670 MB matrix.
_MAX_BOOTSTRAP_ELEMENTS = 2**21


# --------------------------------------------------------------------------------------------------
# Elementwise metrics
# --------------------------------------------------------------------------------------------------


def _floats(values: ArrayLike, name: str) -> np.ndarray:
    """Return a 1-D float64 array; pandas nulls become NaN."""
    if isinstance(values, pd.Series | pd.Index | pd.api.extensions.ExtensionArray):
        arr = pd.Series(values).to_numpy(dtype="float64", na_value=np.nan)
    else:
        arr = np.asarray(values, dtype="float64")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, g = _floats(pred, "pred"), _floats(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in length ({p.size} vs {g.size})")
    return p, g


def _mean(values: np.ndarray) -> float:
    # np.mean of an empty array warns; an empty selection is a normal outcome here (NaN, quietly).
    return float(values.mean()) if values.size else float("nan")


def absolute_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-sample |pred - gt|: years for ages, classes for class indices (the MAEs average it)."""
    return np.abs(pred - gt)


def within(pred: np.ndarray, gt: np.ndarray, k: float) -> np.ndarray:
    """Per-sample 1.0 where |pred - gt| <= k (inclusive, with `TOLERANCE`), else 0.0: CS@k averages it."""
    return (np.abs(pred - gt) <= k + TOLERANCE).astype("float64")


def beyond(pred: np.ndarray, gt: np.ndarray, k: float) -> np.ndarray:
    """Per-sample 1.0 where |pred - gt| >= k (inclusive, with `TOLERANCE`), else 0.0: CE@k averages it."""
    return (np.abs(pred - gt) >= k - TOLERANCE).astype("float64")


def relative_error(pred: np.ndarray, gt: np.ndarray, eps: float = 1.0) -> np.ndarray:
    """Per-sample |pred - gt| / (gt + eps), the term of the paper's eq. 1 (MAPE averages it); eps = 1 keeps
    infants (gt near 0) from dominating the mean."""
    return np.abs(pred - gt) / (gt + eps)


def equal(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-sample 1.0 where the prediction is the ground truth (gender or class codes), else 0.0: accuracies
    average it."""
    return (pred == gt).astype("float64")


def age_mae(pred: ArrayLike, gt: ArrayLike) -> float:
    """Mean absolute age error in years.

    Args:
        pred: predicted ages.
        gt: ground-truth ages, same length.

    Returns:
        mean |pred - gt|; NaN for empty input (a NaN in the input gives NaN: mask first).
    """
    return _mean(absolute_error(*_pair(pred, gt)))


def cs_at(pred: ArrayLike, gt: ArrayLike, k: float = 5.0) -> float:
    """Cumulative score: share of samples with |pred - gt| <= k (inclusive, with a 1e-9 tolerance).

    Args:
        pred: predicted ages.
        gt: ground-truth ages, same length.
        k: the error threshold in years (CS@5: k = 5).

    Returns:
        A fraction in [0, 1]; NaN for empty input.
    """
    p, g = _pair(pred, gt)
    if np.isnan(p).any() or np.isnan(g).any():
        return float("nan")
    return _mean(within(p, g, k))


def ce_at(pred: ArrayLike, gt: ArrayLike, k: float = 20.0) -> float:
    """Cumulative error: share of samples with |pred - gt| >= k (inclusive, with a 1e-9 tolerance).

    Args:
        pred: predicted ages.
        gt: ground-truth ages, same length.
        k: the error threshold in years (CE@20: k = 20).

    Returns:
        A fraction in [0, 1]; NaN for empty input.
    """
    p, g = _pair(pred, gt)
    if np.isnan(p).any() or np.isnan(g).any():
        return float("nan")
    return _mean(beyond(p, g, k))


def mape(pred: ArrayLike, gt: ArrayLike, eps: float = 1.0) -> float:
    """Mean absolute percentage error of the paper's eq. 1: mean |pred - gt| / (gt + eps).

    Args:
        pred: predicted ages.
        gt: ground-truth ages (>= 0), same length.
        eps: added to the denominator.

    Returns:
        A FRACTION (0.1686 for the paper's 16.86 %); NaN for empty input.
    """
    return _mean(relative_error(*_pair(pred, gt), eps))


def gender_accuracy(pred: ArrayLike, gt: ArrayLike) -> float:
    """Share of samples whose predicted gender equals the ground truth.

    Args:
        pred: predicted genders (``male`` / ``female``).
        gt: ground-truth genders, same length.

    Returns:
        A fraction in [0, 1]; NaN for empty input or when any value is missing (mask first).
    """
    p = pd.array(np.asarray(pred, dtype=object) if not isinstance(pred, pd.Series) else pred, dtype="string")
    g = pd.array(np.asarray(gt, dtype=object) if not isinstance(gt, pd.Series) else gt, dtype="string")
    if len(p) != len(g):
        raise ValueError(f"pred and gt differ in length ({len(p)} vs {len(g)})")
    if len(p) == 0 or p.isna().any() or g.isna().any():
        return float("nan")
    return float(np.asarray(p == g, dtype=bool).mean())


# --------------------------------------------------------------------------------------------------
# The metric table
# --------------------------------------------------------------------------------------------------

#: The ground truth a metric scores. Its samples are the answered ones with that label and a prediction
#: of it; `evaluate` counts them in the column `<target>_n`.
Target = Literal["age", "gender", "class"]
TARGETS: tuple[Target, ...] = ("age", "gender", "class")


@dataclass(frozen=True)
class MetricDef:
    """One metric: how a sample scores, how the reports show it, and how far it may move between runs.

    Everything that reads metrics (evaluation, bootstrap intervals, flat metrics, report tables and
    figures, checkpoint selection, the tolerance table) reads this, so that adding or changing a metric
    is one entry of `METRICS`.

    Attributes:
        name: column of `evaluate`'s table and last part of a flat metrics key.
        label: our name in tables and figures (``Age MAE``); a percent metric's header adds ``, %``.
        target: the ground truth it scores; None for coverage (answered / evaluated samples).
        per_sample: (prediction, ground truth) arrays -> each sample's score; the metric is its mean
            over the target's samples, which is also what the bootstrap resamples. None for coverage,
            which is a ratio of counts and has no bootstrap interval.
        percent: a fraction (0.1686) that the reports print as percent (16.86).
        higher_is_better: its direction (the arrows of the paper's headers, checkpoint selection).
        statistic: how its sampling noise behaves without a bootstrap: ``rate`` for a share of samples
            (Wilson's interval), ``mean_error`` for a mean of per-sample errors (the normal interval of a
            mean absolute error); `agegender.tolerances` judges moved results by it.
        digits: decimals printed, in display units (percent for percent metrics).
        paper_label: the paper's wording where it differs from `label` (its tables call class accuracy
            "Age Acc").
        in_paper: whether the paper reports it (`paper_results.csv` may hold it).
        population: ground truth -> whether a sample belongs to the people a rate is over (the age-assurance
            rates of `agegender.assurance`: people aged 14-17, ...); None: every sample with the target's label.
        count: the column counting the metric's samples; None: ``<target>_n``. Rates over the same population
            share it.
        min_n: the fewest samples the metric is given on; below it `evaluate` leaves it (and its interval)
            NaN, so that no table prints a rate a handful of people decide.
    """

    name: str
    label: str
    target: Target | None
    per_sample: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    percent: bool
    higher_is_better: bool
    statistic: Literal["rate", "mean_error"]
    digits: int = 2
    paper_label: str | None = None
    in_paper: bool = True
    population: Callable[[np.ndarray], np.ndarray] | None = None
    count: str | None = None
    min_n: int = 1

    @property
    def count_column(self) -> str:
        """The column of `evaluate`'s table that counts the samples the metric stands on (``age_n``)."""
        return self.count or f"{self.target}_n"

    @property
    def bootstrapped(self) -> bool:
        """Whether `evaluate` gives it a percentile bootstrap interval (every per-sample mean)."""
        return self.per_sample is not None

    @property
    def column_label(self) -> str:
        """Our column header: the label with its unit (``Age CS@5, %``)."""
        return f"{self.label}, %" if self.percent else self.label

    @property
    def paper_header(self) -> str:
        """The paper's column header: its wording, unit and direction arrow (``Age CS@5, % ↑``)."""
        unit = ", %" if self.percent else ""
        return f"{self.paper_label or self.label}{unit} {'↑' if self.higher_is_better else '↓'}"

    def format(self, value: float | None) -> str:
        """The value as the paper prints it: percent metrics times 100; `digits` decimals; "-" when missing."""
        if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
            return "-"
        value = float(value)
        return f"{100.0 * value if self.percent else value:.{self.digits}f}"

    def format_delta(self, ours: float, paper: float) -> str:
        """ours - paper in display units (percentage points for percent metrics), with an explicit sign (+0.07)."""
        scale = 100.0 if self.percent else 1.0
        delta = round(scale * (float(ours) - float(paper)), self.digits)
        # round() may leave -0.0, which would print as "-0.00" for a perfect match
        return f"{delta + 0.0:+.{self.digits}f}"


METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "coverage", "Coverage", None, None, percent=True, higher_is_better=True, statistic="rate", in_paper=False
    ),
    MetricDef(
        "age_mae", "Age MAE", "age", absolute_error, percent=False, higher_is_better=False, statistic="mean_error"
    ),
    MetricDef(
        "age_cs5", "Age CS@5", "age", partial(within, k=5.0), percent=True, higher_is_better=True, statistic="rate"
    ),
    MetricDef(
        "age_mape", "Age MAPE", "age", relative_error, percent=True, higher_is_better=False, statistic="mean_error"
    ),
    MetricDef(
        "age_ce20",
        "Age CE@20",
        "age",
        partial(beyond, k=20.0),
        percent=True,
        higher_is_better=False,
        statistic="rate",
        in_paper=False,
    ),
    MetricDef("gender_acc", "Gender Acc", "gender", equal, percent=True, higher_is_better=True, statistic="rate"),
    MetricDef(
        "class_acc",
        "Class Acc",
        "class",
        equal,
        percent=True,
        higher_is_better=True,
        statistic="rate",
        paper_label="Age Acc",
    ),
    MetricDef(
        "class_mae",
        "Class MAE",
        "class",
        absolute_error,
        percent=False,
        higher_is_better=False,
        statistic="mean_error",
        digits=3,
        paper_label="Age class MAE",
    ),
)

METRICS_BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}

#: Metrics with a bootstrap interval (and a paired bootstrap), in output order.
CI_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.bootstrapped)

#: Metrics that are fractions, printed as percent.
PERCENT_METRICS: frozenset[str] = frozenset(m.name for m in METRICS if m.percent)

#: Count columns of `evaluate`'s output: evaluated and answered samples, and the samples of each target.
COUNT_COLUMNS: tuple[str, ...] = ("n_total", "n_answered", *(f"{t}_n" for t in TARGETS))

#: Text columns of `evaluate`'s output: the row's key and the class scheme of its data set.
TEXT_COLUMNS: tuple[str, ...] = ("dataset", "input", "model", "view", "class_scheme")


def _evaluation_columns() -> tuple[str, ...]:
    """Key and counts, coverage, then per target its count and metrics; the class scheme heads the class block."""
    columns = [*TEXT_COLUMNS[:4], "n_total", "n_answered", *(m.name for m in METRICS if m.target is None)]
    for target in TARGETS:
        columns += ["class_scheme"] if target == "class" else []
        columns += [f"{target}_n", *(m.name for m in METRICS if m.target == target)]
    return tuple(columns)


#: Columns of `evaluate`'s output without confidence intervals, in order.
EVAL_COLUMNS: tuple[str, ...] = _evaluation_columns()


def metric_def(name: str) -> MetricDef:
    """The entry of `METRICS` called `name`.

    Raises:
        ValueError: naming the known metrics.
    """
    try:
        return METRICS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; expected one of {list(METRICS_BY_NAME)}") from None


# --------------------------------------------------------------------------------------------------
# Class schemes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScheme:
    """Age classes of a class data set.

    Attributes:
        name: ``adience`` or ``fairface``.
        labels: the class labels as the data set writes them, in class-index order.
        bounds: lower bound in years of the interval that each class owns for regression outputs
            (class i owns [bounds[i], bounds[i + 1]); the last class is open).
    """

    name: str
    labels: tuple[str, ...]
    bounds: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.bounds):
            raise ValueError(f"scheme {self.name!r}: {len(self.labels)} labels but {len(self.bounds)} bounds")
        if list(self.bounds) != sorted(set(self.bounds)) or self.bounds[0] != 0:
            raise ValueError(f"scheme {self.name!r}: bounds must increase strictly from 0")


CLASS_SCHEMES: dict[str, ClassScheme] = {
    "adience": ClassScheme(
        name="adience",
        labels=("0;2", "4;6", "8;12", "15;20", "25;32", "38;43", "48;53", "60;100"),
        bounds=(0, 4, 7, 14, 24, 36, 46, 57),
    ),
    "fairface": ClassScheme(
        name="fairface",
        labels=("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"),
        bounds=(0, 3, 10, 20, 30, 40, 50, 60, 70),
    ),
}

_RANGE_LABEL = re.compile(r"^\(?\s*(\d+)\s*[;,\-\u2013]\s*(\d+)\s*\)?$")
_OPEN_LABEL = re.compile(r"^(?:(\d+)\s*\+|more\s+than\s+(\d+))$")


def _label_key(label: object) -> tuple[int, int | None]:
    """Parse a class label into (lower end, upper end or None for an open class)."""
    if label is None or label is pd.NA or (isinstance(label, float) and np.isnan(label)):
        raise ValueError("age class label is missing")
    text = str(label).strip().lower()
    m = _RANGE_LABEL.match(text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise ValueError(f"age class label {label!r}: upper end below lower end")
        return lo, hi
    m = _OPEN_LABEL.match(text)
    if m:
        return int(m.group(1) or m.group(2)), None
    raise ValueError(f"age class label {label!r} is not of the form 'a;b', 'a-b', 'a+' or 'more than a'")


def _class_of_key(key: tuple[int, int | None], scheme: ClassScheme) -> int:
    lo, hi = key
    bounds = np.asarray(scheme.bounds)
    cls = int(np.searchsorted(bounds, lo, side="right") - 1)
    last = len(bounds) - 1
    # A label must sit inside one class's interval; "(8, 23)" spans two Adience classes and "30+" spans
    # four FairFace classes, so guessing one of them would quietly corrupt the ground truth.
    ok = cls == last if hi is None else int(np.searchsorted(bounds, hi, side="right") - 1) == cls
    if not ok:
        raise ValueError(f"age class label spans more than one {scheme.name} class")
    return cls


def _unique_labels(labels: Iterable[object] | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Factorise labels: (codes per label, unique labels). Missing labels raise ValueError."""
    series = labels if isinstance(labels, pd.Series) else pd.Series(list(labels), dtype="object")
    if series.isna().any():
        raise ValueError(f"age class label is missing (position {int(np.flatnonzero(series.isna())[0])})")
    codes, uniques = pd.factorize(series.astype("object"))
    return codes, np.asarray(uniques, dtype=object)


def label_to_class(labels: Iterable[object] | pd.Series, scheme: ClassScheme) -> np.ndarray:
    """Map class labels to class indices of a scheme.

    Accepted forms: ``a;b``, ``a-b``, ``(a, b)``, ``a+`` and ``more than a`` (FairFace writes
    ``more than 70``). A label is mapped by its lower end through the scheme's bounds, and its upper
    end must fall in the same class, so ``38;42`` is Adience ``38;43`` and ``0-2`` is class 0 in both
    schemes.

    Args:
        labels: the labels.
        scheme: the class scheme.

    Returns:
        int64 class indices, one per label.

    Raises:
        ValueError: naming the first label that is missing, unparseable or matches no class.
    """
    codes, uniques = _unique_labels(labels)
    classes = np.empty(len(uniques), dtype=np.int64)
    for i, label in enumerate(uniques):  # over distinct labels (a handful), not samples
        try:
            classes[i] = _class_of_key(_label_key(label), scheme)
        except ValueError as exc:
            raise ValueError(f"age class label {label!r} matches no {scheme.name} class: {exc}") from None
    return classes[codes] if len(codes) else np.empty(0, dtype=np.int64)


def _in_scheme(key: tuple[int, int | None], scheme: ClassScheme) -> bool:
    """Whether a parsed label is one of the scheme's classes. The last class is open-ended, however its upper end
    is written: FairFace's `70+`, `more than 70` and MiVOLO's annotation `70;120` are the same class."""
    if key in {_label_key(x) for x in scheme.labels}:
        return True
    lo, hi = key
    return lo == scheme.bounds[-1] and (hi is None or hi >= lo)


def detect_class_scheme(labels: Iterable[object] | pd.Series) -> ClassScheme:
    """Find the class scheme of a data set from its labels.

    The scheme is the one whose label set contains every given label after normalisation (``25-32``,
    ``(25, 32)`` and ``25;32`` are the same label). Where that leaves several schemes (only ``0;2`` or
    ``0-2`` labels), the one that spells every label exactly as given wins.

    Args:
        labels: the (non-null) age class labels of one data set.

    Returns:
        The matching scheme from `CLASS_SCHEMES`.

    Raises:
        ValueError: no labels, a label of no scheme (named), or an unresolvable tie.
    """
    _, uniques = _unique_labels(labels)
    if len(uniques) == 0:
        raise ValueError("no age class labels to detect a class scheme from")
    keys: dict[str, tuple[int, int | None]] = {}
    for label in uniques:
        try:
            keys[str(label)] = _label_key(label)
        except ValueError as exc:
            raise ValueError(f"{exc}; it matches no class scheme of {list(CLASS_SCHEMES)}") from None
    candidates = [s for s in CLASS_SCHEMES.values() if all(_in_scheme(k, s) for k in keys.values())]
    if not candidates:
        foreign = [lab for lab, k in keys.items() if not any(_in_scheme(k, s) for s in CLASS_SCHEMES.values())]
        what = f"labels {foreign[:5]} are in no" if foreign else "the labels mix"
        raise ValueError(f"age class {what} class scheme of {list(CLASS_SCHEMES)}")
    if len(candidates) > 1:
        exact = [s for s in candidates if all(lab.strip() in s.labels for lab in keys)]
        if len(exact) != 1:
            raise ValueError(
                f"age class labels {sorted(keys)} fit several class schemes: {[s.name for s in candidates]}"
            )
        candidates = exact
    return candidates[0]


def age_to_class(age_pred: ArrayLike, scheme: ClassScheme) -> np.ndarray:
    """Map regression ages to class indices: round, clamp at 0, find the interval.

    Rounding is half away from zero (6.5 -> 7, so Adience class ``8;12``); `np.round` and
    `torch.round` round half to even (6.5 -> 6) and differ only on exact halves, which regression
    outputs practically never hit but MLLM range midpoints do. Negative ages clamp to 0; ages past the
    last bound fall in the last (open) class.

    Args:
        age_pred: predicted ages in years.
        scheme: the class scheme.

    Returns:
        int64 class indices; -1 where the age is missing (NaN).
    """
    x = _floats(age_pred, "age_pred")
    missing = np.isnan(x)
    # Clamping before rounding equals rounding then clamping here: every negative value ends at 0.
    rounded = np.floor(np.maximum(np.where(missing, 0.0, x), 0.0) + 0.5)
    cls = np.searchsorted(np.asarray(scheme.bounds, dtype="float64"), rounded, side="right") - 1
    return np.where(missing, -1, cls).astype(np.int64)


def _ints(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def class_accuracy(pred_idx: ArrayLike, gt_idx: ArrayLike) -> float:
    """Share of samples whose predicted class index equals the ground truth.

    Args:
        pred_idx: predicted class indices.
        gt_idx: ground-truth class indices, same length.

    Returns:
        A fraction in [0, 1]; NaN for empty input.
    """
    p, g = _ints(pred_idx, "pred_idx"), _ints(gt_idx, "gt_idx")
    if p.shape != g.shape:
        raise ValueError(f"pred_idx and gt_idx differ in length ({p.size} vs {g.size})")
    return _mean(equal(p, g))


def class_mae(pred_idx: ArrayLike, gt_idx: ArrayLike) -> float:
    """Mean absolute difference of class indices (table 7's "MAE on classification labels").

    Args:
        pred_idx: predicted class indices.
        gt_idx: ground-truth class indices, same length.

    Returns:
        Mean |pred_idx - gt_idx| in classes; NaN for empty input.
    """
    p, g = _ints(pred_idx, "pred_idx"), _ints(gt_idx, "gt_idx")
    if p.shape != g.shape:
        raise ValueError(f"pred_idx and gt_idx differ in length ({p.size} vs {g.size})")
    return _mean(absolute_error(p, g).astype("float64"))


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def _resample_weights(n: int, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield (chunk, n) float64 matrices: how often each sample is drawn in each resample.

    A resample's weighted sum is then one matrix product, and memory stays bounded by chunking. The
    same buffer is refilled for every chunk (fresh 16 MB pages per chunk cost more than the counting):
    use each matrix before asking for the next.
    """
    chunk = max(1, min(n_resamples, _MAX_BOOTSTRAP_ELEMENTS // max(n, 1)))
    buffer = np.empty((chunk, n), dtype="float64")
    done = 0
    while done < n_resamples:
        c = min(chunk, n_resamples - done)
        draws = rng.integers(0, n, size=(c, n))
        for r in range(c):  # one bincount per resample stays in cache; a single flat one is 2-4x slower
            buffer[r] = np.bincount(draws[r], minlength=n)
        yield buffer[:c]
        done += c


def _rng(seed: int | np.random.SeedSequence, key: str = "") -> np.random.Generator:
    # Each row seeds from (seed, its name) so its interval does not change when other models are added.
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def bootstrap_ratios(
    numerators: ArrayLike,
    denominators: ArrayLike | None = None,
    *,
    n_resamples: int = 1000,
    seed: int | np.random.SeedSequence = 0,
    key: str = "",
) -> np.ndarray:
    """Bootstrap distribution of ratio-of-sums statistics, all from the same resamples.

    Each resample draws n samples with replacement; statistic j of it is
    sum(numerators[:, j]) / sum(denominators[:, j]) over the drawn samples. With 0/1 denominators
    marking the samples that have a metric's label, this is the metric's mean over the labelled
    samples of the resample, so metrics with different label masks share the resamples.

    Args:
        numerators: (n,) or (n, k) per-sample values (0 where the denominator is 0).
        denominators: same shape; None means all ones (plain means).
        n_resamples: number of resamples.
        seed: an int (combined with `key`) or a SeedSequence.
        key: a name mixed into an int seed, so that different rows draw different resamples.

    Returns:
        (n_resamples, k) array; NaN where a resample has a zero denominator.
    """
    num = np.asarray(numerators, dtype="float64")
    if num.ndim == 1:
        num = num[:, None]
    den = np.ones_like(num) if denominators is None else np.asarray(denominators, dtype="float64").reshape(num.shape)
    n, k = num.shape
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if n == 0:
        return np.full((n_resamples, k), np.nan)
    both = np.concatenate([num, den], axis=1)
    rng = _rng(seed, key)
    sums = np.concatenate([w @ both for w in _resample_weights(n, n_resamples, rng)], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, :k] / sums[:, k:]


def _quantiles(stats: np.ndarray, ci_level: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    alpha = (1.0 - ci_level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: the metric has no labels
        q = np.nanquantile(stats, [alpha, 1.0 - alpha], axis=0)
    return q[0], q[1]


def bootstrap_ci(
    numerators: ArrayLike,
    denominators: ArrayLike | None = None,
    *,
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int | np.random.SeedSequence = 0,
    key: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence intervals of ratio-of-sums metrics (see `bootstrap_ratios`).

    Resamples whose denominator is 0 (no labelled sample drawn) are left out of the percentiles.

    Args:
        numerators: (n,) or (n, k) per-sample values, e.g. absolute errors times a label mask.
        denominators: same shape (label masks); None means plain means.
        n_resamples: number of resamples.
        ci_level: e.g. 0.95 for the 2.5 and 97.5 percentiles.
        seed: an int (combined with `key`) or a SeedSequence; same seed, same interval.
        key: a name mixed into an int seed.

    Returns:
        (low, high), each of shape (k,); NaN for a statistic that no resample defines.
    """
    stats = bootstrap_ratios(numerators, denominators, n_resamples=n_resamples, seed=seed, key=key)
    return _quantiles(stats, ci_level)


# --------------------------------------------------------------------------------------------------
# Table preparation shared by evaluate, age_group_mae and paired_bootstrap
# --------------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Per-prediction-row arrays, all aligned with the prediction table's rows."""

    datasets: np.ndarray  # names, sorted
    inputs: np.ndarray
    models: np.ndarray
    n_per_dataset: np.ndarray
    sample_ds: np.ndarray  # data set code of each sample-table row
    scheme_of_dataset: list[ClassScheme | None]
    n_samples: int
    pos: np.ndarray  # row of the sample table
    ds: np.ndarray
    inp: np.ndarray
    mod: np.ndarray
    group: np.ndarray  # dense code of (dataset, input, model), sorted order
    ok: np.ndarray
    # per target (`TARGETS`): prediction, ground truth, and whether the row is scored on it (answered, both known)
    age_pred: np.ndarray
    age_gt: np.ndarray
    age_valid: np.ndarray
    gender_pred: np.ndarray  # codes into GENDERS, -1 missing
    gender_gt: np.ndarray
    gender_valid: np.ndarray
    class_pred: np.ndarray  # class indices, -1 missing
    class_gt: np.ndarray
    class_valid: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.datasets) * len(self.inputs) * len(self.models)

    def unpack(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense group codes -> (dataset code, input code, model code)."""
        n_inp, n_mod = len(self.inputs), len(self.models)
        return group // (n_inp * n_mod), (group // n_mod) % n_inp, group % n_mod

    def values(self, metric: str | MetricDef) -> tuple[np.ndarray, np.ndarray]:
        """(per-row score, per-row validity) of a bootstrapped metric (a name of `CI_METRICS`, or a definition
        such as an age-assurance rate); scores are 0 where not valid."""
        definition = metric if isinstance(metric, MetricDef) else metric_def(metric)
        if definition.per_sample is None or definition.target is None:
            raise ValueError(f"metric {definition.name!r} has no per-sample score; expected one of {list(CI_METRICS)}")
        target = definition.target
        valid = getattr(self, f"{target}_valid")
        if definition.population is not None:
            truth = getattr(self, f"{target}_gt")
            with np.errstate(invalid="ignore"):  # NaN ground truth is off the target's mask anyway
                valid = valid & definition.population(truth)
        with np.errstate(invalid="ignore", divide="ignore"):  # rows off the mask may hold NaN or -1 codes
            score = definition.per_sample(getattr(self, f"{target}_pred"), getattr(self, f"{target}_gt"))
        return np.where(valid, score, 0.0).astype("float64", copy=False), valid


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what} lacks columns {missing}", field=missing[0])


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, dtype=object)


def _arrow_strings(values: pd.Series) -> pa.Array:
    """The column as one pyarrow large_string array (zero-copy for the schema's pyarrow strings)."""
    arr = pa.array(values.astype("string"), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.large_string())


def _lookup(values: pd.Series, vocabulary: pa.Array) -> np.ndarray:
    """Position of each value in `vocabulary` (-1 where absent or null).

    Arrow's hash lookup is ~10x faster than a pandas Index over object strings, which is what keeps
    a million predictions under a second. Values that repeat a lot (several models predicting the
    same samples) are encoded first so that each distinct value is looked up once.
    """
    arr = _arrow_strings(values)
    if len(arr) < 2 * len(vocabulary):
        return pc.index_in(arr, value_set=vocabulary).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(arr)
    found = pc.index_in(encoded.dictionary, value_set=vocabulary).fill_null(-1).to_numpy(zero_copy_only=False)
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.where(indices >= 0, found.astype(np.int64)[np.maximum(indices, 0)], -1) if len(found) else indices
    return out.astype(np.int64, copy=False)


def _gender_codes(values: pd.Series) -> np.ndarray:
    # -1 for null; anything outside GENDERS also -1 (validated tables hold none)
    return _lookup(values, pa.array(list(GENDERS), type=pa.large_string())).astype(np.int8)


def _duplicated(keys: np.ndarray) -> np.ndarray:
    """True for every repeat of an earlier key (non-negative int64 keys)."""
    # dense keys: counting is a few ms where hashing a million keys takes ~100 ms
    if keys.size and int(keys.max()) < 8 * keys.size + 2**20 and np.bincount(keys).max() <= 1:
        return np.zeros(keys.size, dtype=bool)
    return pd.Index(keys).duplicated()


def _prepare(samples: pd.DataFrame, predictions: pd.DataFrame) -> _Prepared:
    _require(samples, ("sample_id", "dataset", "age", "age_class", "gender"), "the sample table")
    _require(predictions, ("sample_id", "model", "input", "age_pred", "gender_pred", "status"), "the prediction table")
    if samples["sample_id"].isna().any():
        raise InputError("sample_id is missing in the sample table", field="sample_id")
    sample_ids = _arrow_strings(samples["sample_id"])
    if len(pc.unique(sample_ids)) != len(sample_ids):  # count_distinct is ~3x slower
        dup = samples["sample_id"][samples["sample_id"].duplicated()].iloc[0]
        raise InputError("duplicate sample_id in the sample table", row=f"sample_id {dup}", field="sample_id")
    pos = _lookup(predictions["sample_id"], sample_ids)
    if (pos < 0).any():
        first = int(np.flatnonzero(pos < 0)[0])
        raise InputError(
            f"{int((pos < 0).sum())} prediction rows name samples outside the evaluated sample table "
            f"(first: {predictions['sample_id'].iloc[first]!r}); restrict the predictions to the evaluated samples",
            row=first + 1,
            field="sample_id",
        )

    ds_of_sample, datasets = _codes(samples["dataset"])
    if (ds_of_sample < 0).any():
        raise InputError("value is missing", row=int(np.flatnonzero(ds_of_sample < 0)[0]) + 1, field="dataset")
    n_per_dataset = np.bincount(ds_of_sample, minlength=len(datasets))
    age_gt_s = samples["age"].to_numpy(dtype="float64", na_value=np.nan)
    gender_gt_s = _gender_codes(samples["gender"])

    # Class ground truth, with one scheme per data set that carries class labels.
    class_gt_s = np.full(len(samples), -1, dtype=np.int64)
    scheme_of_dataset: list[ClassScheme | None] = [None] * len(datasets)
    has_class = samples["age_class"].notna().to_numpy(dtype=bool)
    if has_class.any():
        for d in np.unique(ds_of_sample[has_class]):
            rows = np.flatnonzero(has_class & (ds_of_sample == d))
            labels = samples["age_class"].iloc[rows].reset_index(drop=True)
            try:
                scheme = detect_class_scheme(labels)
                class_gt_s[rows] = label_to_class(labels, scheme)
            except ValueError as exc:
                raise InputError(f"data set {datasets[d]!r}: {exc}", field="age_class") from None
            scheme_of_dataset[d] = scheme

    inp, inputs = _codes(predictions["input"])
    mod, models = _codes(predictions["model"])
    for field, codes in (("input", inp), ("model", mod)):
        if (codes < 0).any():
            raise InputError("value is missing", row=int(np.flatnonzero(codes < 0)[0]) + 1, field=field)
    ds = ds_of_sample[pos]
    group = (ds * len(inputs) + inp) * len(models) + mod
    dup = _duplicated(group * len(samples) + pos)
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        raise InputError("duplicate prediction row for (sample_id, model, input)", row=first + 1, field="sample_id")

    ok = (predictions["status"] == "ok").to_numpy(dtype=bool, na_value=False)
    age_pred = predictions["age_pred"].to_numpy(dtype="float64", na_value=np.nan)
    age_gt = age_gt_s[pos]
    age_valid = ok & ~np.isnan(age_gt) & ~np.isnan(age_pred)

    gender_gt = gender_gt_s[pos]
    gender_pred = _gender_codes(predictions["gender_pred"])
    gender_valid = ok & (gender_gt >= 0) & (gender_pred >= 0)

    class_gt = class_gt_s[pos]
    class_pred = np.full(len(predictions), -1, dtype=np.int64)
    for d, scheme in enumerate(scheme_of_dataset):
        if scheme is not None:
            rows = np.flatnonzero(ds == d)
            class_pred[rows] = age_to_class(age_pred[rows], scheme)
    class_valid = ok & (class_gt >= 0) & (class_pred >= 0)

    return _Prepared(
        datasets=datasets,
        inputs=inputs,
        models=models,
        n_per_dataset=n_per_dataset,
        sample_ds=ds_of_sample,
        scheme_of_dataset=scheme_of_dataset,
        n_samples=len(samples),
        pos=pos,
        ds=ds,
        inp=inp,
        mod=mod,
        group=group,
        ok=ok,
        age_pred=age_pred,
        age_gt=age_gt,
        age_valid=age_valid,
        gender_pred=gender_pred,
        gender_gt=gender_gt,
        gender_valid=gender_valid,
        class_pred=class_pred,
        class_gt=class_gt,
        class_valid=class_valid,
    )


def _common_mask(prep: _Prepared, answered: np.ndarray) -> np.ndarray:
    """Rows of `answered` samples that every model of their (dataset, input) group answered."""
    n_inp, n_mod = len(prep.inputs), len(prep.models)
    has_rows = np.bincount(prep.group, minlength=prep.n_groups).reshape(-1, n_mod) > 0
    models_per_pair = has_rows.sum(axis=1)  # per (dataset, input)
    # A sample belongs to one data set, so (input, sample) identifies its (dataset, input) group.
    key = prep.inp * prep.n_samples + prep.pos
    answered_by = np.bincount(key[answered], minlength=n_inp * prep.n_samples)
    pair = prep.ds * n_inp + prep.inp
    return answered & (answered_by[key] == models_per_pair[pair])


@dataclass
class _Exclusion:
    """A refusal exclusion laid onto the prepared arrays (nothing removed when no data set has one)."""

    removed: np.ndarray  # per prediction row: its sample left its data set
    n_removed: np.ndarray  # per data set code: samples removed
    has_rule: np.ndarray  # per data set code: the data set has an exclusion (so a `kept` view)


def _exclusion(prep: _Prepared, samples: pd.DataFrame, excluded: Mapping[str, Collection[str]] | None) -> _Exclusion:
    removed_s = np.zeros(prep.n_samples, dtype=bool)
    for dataset, ids in (excluded or {}).items():
        removed_s |= (samples["dataset"] == dataset).to_numpy(dtype=bool) & samples["sample_id"].isin(
            list(ids)
        ).to_numpy(dtype=bool)
    return _Exclusion(
        removed=removed_s[prep.pos],
        n_removed=np.bincount(prep.sample_ds[removed_s], minlength=len(prep.datasets)),
        has_rule=np.isin(prep.datasets.astype(str), list(excluded or {})),
    )


def _view_mask(prep: _Prepared, view: str, exclusion: _Exclusion) -> np.ndarray:
    """The prediction rows a view scores (`VIEWS`)."""
    if view == "answered":
        return prep.ok
    kept = prep.ok & ~exclusion.removed
    return kept if view == "kept" else _common_mask(prep, kept)


def scored_samples(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    view: str,
    excluded: Mapping[str, Collection[str]] | None = None,
) -> pd.DataFrame:
    """Which samples a view scores for each (dataset, input, model): the audit trail behind `evaluate`'s counts.

    Args:
        samples: validated sample table (evaluated samples).
        predictions: validated prediction table.
        view: one of `VIEWS`; for ``kept``, every data set is listed (its answered samples where it has no
            exclusion), unlike `evaluate`, which gives ``kept`` rows only to data sets in `excluded`.
        excluded: data set -> the sample ids its refusal exclusion removes.

    Returns:
        Columns dataset, input, model, sample_id, sorted; one row per answered sample the view keeps.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    columns = ["dataset", "input", "model", "sample_id"]
    if len(predictions) == 0:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
    prep = _prepare(samples, predictions)
    rows = np.flatnonzero(_view_mask(prep, view, _exclusion(prep, samples, excluded)))
    out = pd.DataFrame(
        {
            "dataset": prep.datasets[prep.ds[rows]].astype(str),
            "input": prep.inputs[prep.inp[rows]].astype(str),
            "model": prep.models[prep.mod[rows]].astype(str),
            "sample_id": predictions["sample_id"].to_numpy(dtype=object)[rows].astype(str),
        }
    )
    return out.sort_values(columns, kind="stable").reset_index(drop=True)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _row_key(dataset: str, input_kind: str, model: str, view: str) -> str:
    return f"{dataset}|{input_kind}|{model}|{view}"


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def evaluate(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    ci: bool = False,
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    views: Sequence[str] = VIEWS,
    excluded: Mapping[str, Collection[str]] | None = None,
    extra_metrics: Sequence[MetricDef] = (),
) -> pd.DataFrame:
    """Score every (dataset, input, model) of a prediction table against a sample table.

    Answered = a prediction row exists and its status is ``ok``. Age metrics use the answered samples
    with a ground-truth age and a non-null ``age_pred``; gender metrics those with a ground-truth and a
    predicted gender; class metrics (data sets whose samples carry ``age_class``, scheme detected per
    data set) those with a class label and an ``age_pred``. The ``kept`` view (data sets in `excluded`
    only) scores each model on its answers among the samples its data set keeps, and ``n_total`` counts
    those; the ``common`` view scores each model of a (dataset, input) group on the kept samples that
    every model of the group answered (all samples where nothing is excluded).

    Args:
        samples: validated sample table restricted to the evaluated samples (it defines n_total).
        predictions: validated prediction table; all its sample ids must be in `samples`.
        ci: add percentile bootstrap intervals ``<metric>_ci_low`` / ``_ci_high`` for `CI_METRICS`.
        n_resamples: bootstrap resamples per row.
        ci_level: confidence level of the intervals.
        seed: bootstrap seed (each row mixes in its own name, so rows are independent of each other).
        views: any of `VIEWS`.
        excluded: data set -> the sample ids its refusal exclusion removes (`agegender.exclusion`); the
            data sets named here get ``kept`` rows, even when nothing is removed.
        extra_metrics: bootstrapped metrics outside `METRICS` whose definition depends on params (the
            age-assurance rates, `agegender.assurance.assurance_metrics`); each adds its count column
            (`MetricDef.count_column`, once per population), its value, and with `ci` its interval, after
            the columns of `METRICS`. A value on fewer than its `min_n` samples is NaN.

    Returns:
        One row per (dataset, input, model, view), sorted, with columns `EVAL_COLUMNS` (+ CI columns, + the
        extra metrics' columns). Rates are fractions; a metric without samples is NaN.

    Raises:
        InputError: unknown sample ids, duplicate prediction rows, unusable class labels.
        ValueError: an unknown view or bad bootstrap settings.
    """
    views = tuple(views)
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ValueError(f"views must be a non-empty subset of {list(VIEWS)}, got {list(views)}")
    scored = (*(metric_def(name) for name in CI_METRICS), *extra_metrics)
    clash = [m.name for m in extra_metrics if m.name in METRICS_BY_NAME or m.per_sample is None]
    if clash:
        raise ValueError(f"extra_metrics {clash} clash with METRICS or have no per-sample score")

    def bounds(defs: Iterable[MetricDef]) -> list[str]:
        return [f"{m.name}_ci_{side}" for m in defs for side in ("low", "high")] if ci else []

    extra_columns = list(dict.fromkeys(c for m in extra_metrics for c in (m.count_column, m.name)))
    columns = [*EVAL_COLUMNS, *bounds(scored[: len(CI_METRICS)]), *extra_columns, *bounds(extra_metrics)]
    if len(predictions) == 0:
        return _empty_rows(columns)

    prep = _prepare(samples, predictions)
    exclusion = _exclusion(prep, samples, excluded)
    present = np.bincount(prep.group, minlength=prep.n_groups) > 0
    all_groups = np.flatnonzero(present)  # dense codes increase with (dataset, input, model) names
    metric_values = {m.name: prep.values(m) for m in scored}

    frames = []
    for view in views:
        groups = all_groups
        if view == "kept":  # elsewhere it would repeat the answered view
            groups = all_groups[exclusion.has_rule[prep.unpack(all_groups)[0]]]
            if not len(groups):
                continue
        d, i, m = prep.unpack(groups)
        mask = _view_mask(prep, view, exclusion)
        rows = np.flatnonzero(mask)
        g = prep.group[rows]
        n_answered = np.bincount(g, minlength=prep.n_groups)[groups]
        n_total = prep.n_per_dataset[d] - (0 if view == "answered" else exclusion.n_removed[d])
        out = {
            "dataset": prep.datasets[d].astype(str),
            "input": prep.inputs[i].astype(str),
            "model": prep.models[m].astype(str),
            "view": np.full(len(groups), view, dtype=object),
            "n_total": n_total.astype(np.int64),
            "n_answered": n_answered.astype(np.int64),
            "coverage": _ratio(n_answered, n_total),  # a data set may keep no sample
        }
        counts = {}
        for target in TARGETS:  # the metrics of a target share its mask
            valid = getattr(prep, f"{target}_valid")
            counts[f"{target}_n"] = np.bincount(g[valid[rows]], minlength=prep.n_groups)[groups].astype(np.int64)
            out[f"{target}_n"] = counts[f"{target}_n"]
        for m in extra_metrics:  # an age-assurance rate counts the people of its population
            counts[m.count_column] = np.bincount(g[metric_values[m.name][1][rows]], minlength=prep.n_groups)[
                groups
            ].astype(np.int64)
            out[m.count_column] = counts[m.count_column]
        for definition in scored:
            # values are 0 off their target's mask, so summing over all rows of the view sums the scored ones
            name, n = definition.name, counts[definition.count_column]
            total = np.bincount(g, weights=metric_values[name][0][rows], minlength=prep.n_groups)[groups]
            out[name] = np.where(n >= definition.min_n, _ratio(total, n), np.nan)
        # object dtype keeps None (pandas 3 would turn a str column's None into NaN)
        out["class_scheme"] = pd.Series(
            [None if (s := prep.scheme_of_dataset[k]) is None else s.name for k in d], dtype="object"
        )
        frame = pd.DataFrame(out)
        if ci:
            lows, highs = _row_intervals(prep, groups, mask, metric_values, n_resamples, ci_level, seed, view)
            for j, name in enumerate(metric_values):
                defined = frame[name].notna().to_numpy()
                frame[f"{name}_ci_low"] = np.where(defined, lows[:, j], np.nan)
                frame[f"{name}_ci_high"] = np.where(defined, highs[:, j], np.nan)
        frames.append(frame)

    if not frames:  # only the kept view was asked for, and no data set has an exclusion
        return _empty_rows(columns)
    result = pd.concat(frames, ignore_index=True)[columns]
    return result.sort_values(["dataset", "input", "model", "view"], kind="stable").reset_index(drop=True)


def _empty_rows(columns: Sequence[str], text: Collection[str] = TEXT_COLUMNS) -> pd.DataFrame:
    """A table with no rows and these columns: `text` ones hold strings, the others floats."""
    return pd.DataFrame({c: pd.Series(dtype="object" if c in text else "float64") for c in columns})


def _row_intervals(
    prep: _Prepared,
    groups: np.ndarray,
    mask: np.ndarray,
    metric_values: dict[str, tuple[np.ndarray, np.ndarray]],
    n_resamples: int,
    ci_level: float,
    seed: int,
    view: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap every output row of one view over its answered rows; returns (rows, metrics) bounds, the metrics
    in the order of `metric_values`."""
    num = np.stack([score for score, _ in metric_values.values()], axis=1)
    den = np.stack([valid for _, valid in metric_values.values()], axis=1).astype("float64")
    rows = np.flatnonzero(mask)
    order = rows[np.argsort(prep.group[rows], kind="stable")]
    starts = np.searchsorted(prep.group[order], groups, side="left")
    ends = np.searchsorted(prep.group[order], groups, side="right")
    d, i, m = prep.unpack(groups)
    lows = np.full((len(groups), len(metric_values)), np.nan)
    highs = np.full_like(lows, np.nan)
    for r in range(len(groups)):  # over output rows, not samples
        sel = order[starts[r] : ends[r]]
        if sel.size == 0:
            continue
        key = _row_key(str(prep.datasets[d[r]]), str(prep.inputs[i[r]]), str(prep.models[m[r]]), view)
        lows[r], highs[r] = bootstrap_ci(
            num[sel], den[sel], n_resamples=n_resamples, ci_level=ci_level, seed=seed, key=key
        )
    return lows, highs


def paired_bootstrap(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    dataset: str,
    input: str,
    model_a: str,
    model_b: str,
    metric: str,
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Paired bootstrap of the difference of one metric between two models on the same samples.

    Uses the samples of `dataset` that both models answered and that have the metric's label (and a
    prediction of both). Each resample draws those samples with replacement and takes the difference
    of the two models' means on it.

    The p-value is the two-sided bootstrap sign test: twice the share of resampled differences on the
    other side of zero from the observed one (zero counts as the other side), capped at 1; 1 when the
    observed difference is 0 or undefined.

    Args:
        samples: validated sample table (evaluated samples).
        predictions: validated prediction table.
        dataset: the data set.
        input: the input kind.
        model_a: first model.
        model_b: second model.
        metric: one of `CI_METRICS` (e.g. ``age_mae``).
        n_resamples: number of resamples.
        ci_level: confidence level of the difference's interval.
        seed: seed of the resamples.

    Returns:
        dict with metric, n, value_a, value_b, diff (a - b), ci_low, ci_high, p_value (NaN values when
        n is 0).

    Raises:
        ValueError: unknown metric, or a dataset/input/model that has no prediction rows.
    """
    if metric not in CI_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(CI_METRICS)}")
    prep = _prepare(samples, predictions)
    value, valid = prep.values(metric)
    per_model = []
    for model in (model_a, model_b):
        rows = np.flatnonzero(
            (prep.datasets[prep.ds] == dataset) & (prep.inputs[prep.inp] == input) & (prep.models[prep.mod] == model)
        )
        if rows.size == 0:
            raise ValueError(f"no predictions of model {model!r} for data set {dataset!r}, input {input!r}")
        v = np.full(prep.n_samples, np.nan)
        keep = rows[valid[rows]]
        v[prep.pos[keep]] = value[keep]
        per_model.append(v)
    a, b = per_model
    both = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[both], b[both]
    n = int(both.sum())
    result: dict[str, float | int | str] = {"metric": metric, "n": n}
    if n == 0:
        nan = float("nan")
        result.update(value_a=nan, value_b=nan, diff=nan, ci_low=nan, ci_high=nan, p_value=nan)
        return result
    key = _paired_key(dataset, input, model_a, model_b, metric)
    result.update(_paired_difference(a, b, key=key, n_resamples=n_resamples, ci_level=ci_level, seed=seed))
    return result


def _paired_key(dataset: str, input_kind: str, model_a: str, model_b: str, metric: str) -> str:
    """The seed key of a paired bootstrap; it ignores the order of the two models, so that swapping them mirrors
    the interval exactly, and it is the same wherever the pair is compared (`paired_bootstrap`, `versus_best`)."""
    return "|".join(["paired", dataset, input_kind, *sorted((model_a, model_b)), metric])


def _paired_difference(
    a: np.ndarray, b: np.ndarray, *, key: str, n_resamples: int, ci_level: float, seed: int
) -> dict[str, float]:
    """Mean difference a - b of paired per-sample scores (n > 0), its percentile interval and two-sided p-value."""
    diff = float(a.mean() - b.mean())
    boot = bootstrap_ratios(a - b, n_resamples=n_resamples, seed=seed, key=key)[:, 0]
    low, high = _quantiles(boot[:, None], ci_level)
    if diff == 0.0:
        p = 1.0
    else:
        other_side = boot <= 0.0 if diff > 0 else boot >= 0.0
        p = min(1.0, 2.0 * float(other_side.mean()))
    return {
        "value_a": float(a.mean()),
        "value_b": float(b.mean()),
        "diff": diff,
        "ci_low": float(low[0]),
        "ci_high": float(high[0]),
        "p_value": p,
    }


def age_group_mae(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    width: float = 5.0,
    max_age: float | None = None,
    view: str = "answered",
    excluded: Mapping[str, Collection[str]] | None = None,
) -> pd.DataFrame:
    """Age MAE per ground-truth age group (the paper's figure 3).

    Group k holds ground-truth ages in [age_lo, age_hi) = [k * width, (k + 1) * width); with `max_age`,
    ages >= max_age share one open group [max_age, inf) labelled ``"{max_age}+"``. Only groups with
    samples appear.

    Args:
        samples: validated sample table (evaluated samples).
        predictions: validated prediction table.
        width: group width in years.
        max_age: start of the open last group; None for no open group.
        view: ``answered`` (each model's answered samples), ``kept`` (those among the samples kept after
            the refusal exclusion: the paper's figure 3; the answered ones where nothing is excluded) or
            ``common`` (kept samples all models of the (dataset, input) group answered).
        excluded: data set -> the sample ids its refusal exclusion removes (`agegender.exclusion`).

    Returns:
        Long table with columns dataset, input, model, age_lo, age_hi, group, n, mae, sorted.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    if max_age is not None and not max_age > 0:
        raise ValueError(f"max_age must be > 0, got {max_age}")
    columns = ["dataset", "input", "model", "age_lo", "age_hi", "group", "n", "mae"]
    empty = pd.DataFrame(
        {c: pd.Series(dtype="object" if c in ("dataset", "input", "model", "group") else "float64") for c in columns}
    )
    if len(predictions) == 0:
        return empty.astype({"n": "int64"})
    prep = _prepare(samples, predictions)
    mask = _view_mask(prep, view, _exclusion(prep, samples, excluded)) & prep.age_valid
    if not mask.any():
        return empty.astype({"n": "int64"})
    age = prep.age_gt[mask]
    top = float(age.max()) if max_age is None else float(max_age)
    edges = np.arange(0.0, top + width, width)
    edges = edges[edges <= top] if max_age is None else np.append(edges[edges < top], top)
    bins = np.searchsorted(edges, age, side="right") - 1
    his = np.append(edges[1:], np.inf) if max_age is not None else edges + width
    n_bins = len(edges)
    key = prep.group[mask] * n_bins + bins
    n = np.bincount(key, minlength=prep.n_groups * n_bins)
    err = np.bincount(key, weights=prep.values("age_mae")[0][mask], minlength=prep.n_groups * n_bins)
    cells = np.flatnonzero(n)
    group, b = cells // n_bins, cells % n_bins
    d, i, m = prep.unpack(group)
    lo, hi = edges[b], his[b]
    labels = np.array([f"{x:g}+" if np.isinf(y) else f"{x:g}-{y:g}" for x, y in zip(lo, hi, strict=True)], dtype=object)
    return pd.DataFrame(
        {
            "dataset": prep.datasets[d].astype(str),
            "input": prep.inputs[i].astype(str),
            "model": prep.models[m].astype(str),
            "age_lo": lo,
            "age_hi": hi,
            "group": labels,
            "n": n[cells].astype(np.int64),
            "mae": err[cells] / n[cells],
        }
    )


# --------------------------------------------------------------------------------------------------
# Fairness view: metrics per demographic group, and the spread between groups
# --------------------------------------------------------------------------------------------------

#: Sample columns the fairness view groups by: the ground-truth gender, and race where a data set labels it (the
#: optional ``race`` column of `agegender.data.schema.OPTIONAL_SAMPLE_COLUMNS`; UTKFace and FairFace have it).
FAIRNESS_ATTRIBUTES: tuple[str, ...] = ("gender", "race")

#: Metrics of the fairness view: NIST IR 8525 reports age MAE by sex and region; gender accuracy is our other task.
FAIRNESS_METRICS: tuple[str, ...] = ("age_mae", "gender_acc")

#: Columns of `group_metrics`, in order: per metric its target's sample count, value and bootstrap interval.
FAIRNESS_COLUMNS: tuple[str, ...] = (
    "dataset",
    "input",
    "model",
    "attribute",
    "group",
    *(
        col
        for name in FAIRNESS_METRICS
        for col in (f"{metric_def(name).target}_n", name, f"{name}_ci_low", f"{name}_ci_high")
    ),
)

#: Columns of `group_spread`, in order.
SPREAD_COLUMNS: tuple[str, ...] = (
    "dataset",
    "input",
    "model",
    "attribute",
    "metric",
    "n_groups",
    "min_group",
    "min",
    "max_group",
    "max",
    "difference",
    "ratio",
)


def group_metrics(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    attributes: Sequence[str] = FAIRNESS_ATTRIBUTES,
    view: str = "answered",
    excluded: Mapping[str, Collection[str]] | None = None,
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`FAIRNESS_METRICS` per demographic group of every (dataset, input, model), with bootstrap intervals.

    A group is one value of a sample column (``gender``, ``race``); a sample without a value of it is in no group
    of that attribute, and an attribute that a data set never labels (or the sample table lacks) gives that data
    set no rows for it, so a race-less data set has gender rows only. Each group's metric is the mean over the
    group's samples that the view scores, exactly as `evaluate` computes it over all of them; its interval
    resamples the group's samples (`bootstrap_ci`, seeded by the seed and the cell's name).

    Args:
        samples: validated sample table (evaluated samples).
        predictions: validated prediction table.
        attributes: sample columns to group by.
        view: one of `VIEWS` (`age_group_mae`'s meaning).
        excluded: data set -> the sample ids its refusal exclusion removes (`agegender.exclusion`).
        n_resamples: bootstrap resamples per cell.
        ci_level: confidence level of the intervals.
        seed: bootstrap seed.

    Returns:
        Columns `FAIRNESS_COLUMNS`, one row per (dataset, input, model, attribute, group) with samples, sorted;
        ``<target>_n`` counts the samples a metric stands on (NaN metric where it is 0).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    empty = _empty_rows(FAIRNESS_COLUMNS, text=("dataset", "input", "model", "attribute", "group"))
    present = [a for a in attributes if a in samples.columns]
    if len(predictions) == 0 or not present:
        return empty
    prep = _prepare(samples, predictions)
    mask = _view_mask(prep, view, _exclusion(prep, samples, excluded))
    values = {name: prep.values(name) for name in FAIRNESS_METRICS}
    num = np.stack([values[name][0] for name in FAIRNESS_METRICS], axis=1)
    den = np.stack([values[name][1] for name in FAIRNESS_METRICS], axis=1).astype("float64")
    frames = []
    for attribute in present:
        level_of_sample, levels = _codes(samples[attribute].astype("string"))  # missing -> -1
        level = level_of_sample[prep.pos]
        rows = np.flatnonzero(mask & (level >= 0))
        if rows.size == 0:
            continue
        n_levels = len(levels)
        cell = prep.group[rows] * n_levels + level[rows]
        size = prep.n_groups * n_levels
        cells = np.flatnonzero(np.bincount(cell, minlength=size))
        d, i, m = prep.unpack(cells // n_levels)
        names = (prep.datasets[d].astype(str), prep.inputs[i].astype(str), prep.models[m].astype(str))
        group_names = levels[cells % n_levels].astype(str)
        out: dict[str, object] = {
            "dataset": names[0],
            "input": names[1],
            "model": names[2],
            "attribute": np.full(len(cells), attribute, dtype=object),
            "group": group_names,
        }
        order = np.argsort(cell, kind="stable")
        starts, ends = np.searchsorted(cell[order], cells, "left"), np.searchsorted(cell[order], cells, "right")
        lows = np.full((len(cells), len(FAIRNESS_METRICS)), np.nan)
        highs = np.full_like(lows, np.nan)
        for r in range(len(cells)):  # over output cells (models x groups), not samples
            sel = rows[order[starts[r] : ends[r]]]
            key = f"fairness|{_row_key(names[0][r], names[1][r], names[2][r], view)}|{attribute}|{group_names[r]}"
            lows[r], highs[r] = bootstrap_ci(
                num[sel], den[sel], n_resamples=n_resamples, ci_level=ci_level, seed=seed, key=key
            )
        for j, name in enumerate(FAIRNESS_METRICS):
            n = np.bincount(cell, weights=den[rows, j], minlength=size)[cells]
            value = _ratio(np.bincount(cell, weights=num[rows, j], minlength=size)[cells], n)
            out[f"{metric_def(name).target}_n"] = n.astype(np.int64)
            out[name] = value
            out[f"{name}_ci_low"] = np.where(np.isnan(value), np.nan, lows[:, j])
            out[f"{name}_ci_high"] = np.where(np.isnan(value), np.nan, highs[:, j])
        frames.append(pd.DataFrame(out))
    if not frames:
        return empty
    result = pd.concat(frames, ignore_index=True)[list(FAIRNESS_COLUMNS)]
    keys = ["dataset", "input", "model", "attribute", "group"]
    return result.sort_values(keys, kind="stable").reset_index(drop=True)


def group_spread(groups: pd.DataFrame) -> pd.DataFrame:
    """The spread of each metric between the groups of an attribute, as NIST IR 8525 compares demographic groups.

    For every (dataset, input, model, attribute) and metric of `FAIRNESS_METRICS` with a value in at least two
    groups: the groups with the lowest and highest value, their ``difference`` (max - min, in the metric's units)
    and ``ratio`` (max / min; NaN where min is 0).

    Args:
        groups: `group_metrics` output (or the CSV it was written to).

    Returns:
        Columns `SPREAD_COLUMNS`, in the order of `groups` and then `FAIRNESS_METRICS`.
    """
    records = []
    keys = ["dataset", "input", "model", "attribute"]
    for key, block in groups.groupby(keys, sort=False):  # over (model, attribute) blocks, not samples
        for name in FAIRNESS_METRICS:
            scored = block[block[name].notna()]
            if len(scored) < 2:
                continue
            values = scored[name].to_numpy(dtype="float64")
            low, high = int(np.argmin(values)), int(np.argmax(values))
            records.append(
                (
                    *key,
                    name,
                    len(scored),
                    str(scored["group"].iloc[low]),
                    values[low],
                    str(scored["group"].iloc[high]),
                    values[high],
                    values[high] - values[low],
                    values[high] / values[low] if values[low] > 0 else float("nan"),
                )
            )
    return pd.DataFrame.from_records(records, columns=list(SPREAD_COLUMNS)).astype(
        {"n_groups": "int64", "min": "float64", "max": "float64", "difference": "float64", "ratio": "float64"}
    )


# --------------------------------------------------------------------------------------------------
# Significance: each model against the best of its data set and input
# --------------------------------------------------------------------------------------------------

#: Columns of `versus_best`, in order.
VERSUS_BEST_COLUMNS: tuple[str, ...] = (
    "view",
    "dataset",
    "input",
    "metric",
    "model",
    "best",
    "n",
    "value",
    "best_value",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "significant",
)


def versus_best(
    samples: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("age_mae",),
    view: str = "answered",
    excluded: Mapping[str, Collection[str]] | None = None,
    n_resamples: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare every model of a (dataset, input) with the best one on the same samples (paired bootstrap).

    Within each (dataset, input) and metric, the best model is the one with the best value (`MetricDef`'s
    direction; the first name on a tie) on the samples the view scores, which is `evaluate`'s value of that
    view. Every other model is compared with it as `paired_bootstrap` does, on the samples both have scored in
    the view (the same resamples: `paired_bootstrap` in the ``answered`` view gives the same numbers). The
    difference is significant when its interval excludes 0.

    Args:
        samples: validated sample table (evaluated samples).
        predictions: validated prediction table.
        metrics: metrics of `CI_METRICS` to compare on.
        view: one of `VIEWS`.
        excluded: data set -> the sample ids its refusal exclusion removes (`agegender.exclusion`).
        n_resamples: bootstrap resamples per pair.
        ci_level: confidence level of the difference's interval.
        seed: bootstrap seed.

    Returns:
        Columns `VERSUS_BEST_COLUMNS`, one row per (dataset, input, metric, model) with a value, sorted; the best
        model's own row has diff 0, no interval and ``significant`` False. ``value`` and ``best_value`` are each
        model's own value; ``diff`` (model - best), its interval and p-value are on the ``n`` samples both scored.
    """
    bad = [m for m in metrics if m not in CI_METRICS]
    if bad:
        raise ValueError(f"unknown metrics {bad}; expected some of {list(CI_METRICS)}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    records: list[tuple] = []
    if len(predictions):
        prep = _prepare(samples, predictions)
        mask = _view_mask(prep, view, _exclusion(prep, samples, excluded))
        pair = prep.ds * len(prep.inputs) + prep.inp
        for p in np.unique(pair):  # over (dataset, input) pairs and their models, not samples
            dataset, input_kind = str(prep.datasets[p // len(prep.inputs)]), str(prep.inputs[p % len(prep.inputs)])
            for metric in metrics:
                score, valid = prep.values(metric)
                per_model: dict[str, np.ndarray] = {}
                for model_code in np.unique(prep.mod[pair == p]):
                    rows = np.flatnonzero((pair == p) & (prep.mod == model_code) & mask & valid)
                    if rows.size:
                        v = np.full(prep.n_samples, np.nan)
                        v[prep.pos[rows]] = score[rows]
                        per_model[str(prep.models[model_code])] = v
                records += _versus_best_rows(
                    per_model, view, dataset, input_kind, metric, n_resamples=n_resamples, ci_level=ci_level, seed=seed
                )
    out = pd.DataFrame.from_records(records, columns=list(VERSUS_BEST_COLUMNS))
    return out.astype({"n": "int64", "significant": "bool"}).reset_index(drop=True)


def _versus_best_rows(
    per_model: Mapping[str, np.ndarray],
    view: str,
    dataset: str,
    input_kind: str,
    metric: str,
    **bootstrap: int | float,
) -> list[tuple]:
    """`versus_best`'s rows of one (dataset, input, metric): per model its per-sample scores (NaN: not scored)."""
    if not per_model:
        return []
    names = sorted(per_model)
    means = np.array([np.nanmean(per_model[name]) for name in names])
    top = int(np.argmax(means) if metric_def(metric).higher_is_better else np.argmin(means))
    best, best_value, best_scores = names[top], float(means[top]), per_model[names[top]]
    nan = float("nan")
    rows = []
    for name, value in zip(names, means, strict=True):
        head = (view, dataset, input_kind, metric, name, best)
        if name == best:
            n = int((~np.isnan(best_scores)).sum())
            rows.append((*head, n, best_value, best_value, 0.0, nan, nan, 1.0, False))
            continue
        both = ~np.isnan(per_model[name]) & ~np.isnan(best_scores)
        if not both.any():  # nothing to pair: no evidence either way
            rows.append((*head, 0, float(value), best_value, nan, nan, nan, nan, False))
            continue
        key = _paired_key(dataset, input_kind, name, best, metric)
        paired = _paired_difference(per_model[name][both], best_scores[both], key=key, **bootstrap)  # type: ignore[arg-type]
        significant = paired["ci_low"] > 0.0 or paired["ci_high"] < 0.0
        stats = (paired["diff"], paired["ci_low"], paired["ci_high"], paired["p_value"], significant)
        rows.append((*head, int(both.sum()), float(value), best_value, *stats))
    return rows


def flat_metrics(table: pd.DataFrame, *, views: Sequence[str] = ("answered",)) -> dict[str, float | int]:
    """Flatten an `evaluate` table into DESIGN.md's ``metrics/<stage>.json`` form.

    Keys are ``dataset.input.model.name`` for the ``answered`` view and ``dataset.input.model.<view>.name``
    for the others (``.common``, ``.kept``); names are the count, coverage and
    metric columns (CI bounds included when present). NaN values are left out because JSON has no NaN.

    Args:
        table: output of `evaluate`.
        views: which views to include.

    Returns:
        A flat dict, keys sorted, ints for counts and floats for everything else.
    """
    names = [c for c in table.columns if c not in TEXT_COLUMNS]
    # the extra metrics' population counts (`challenge_n`) are integer columns like `COUNT_COLUMNS`
    counts = set(COUNT_COLUMNS) | {c for c in names if pd.api.types.is_integer_dtype(table[c])}
    out: dict[str, float | int] = {}
    rows = table[table["view"].isin(list(views))]
    for row in rows.itertuples(index=False):  # over table rows (models x inputs), not samples
        rec = row._asdict()
        prefix = f"{rec['dataset']}.{rec['input']}.{rec['model']}" + (
            "" if rec["view"] == "answered" else f".{rec['view']}"
        )
        for name in names:
            value = rec[name]
            if pd.isna(value):
                continue
            out[f"{prefix}.{name}"] = int(value) if name in counts else float(value)
    return dict(sorted(out.items()))
