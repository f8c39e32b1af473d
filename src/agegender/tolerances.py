"""How far each metric of a fresh run may move from the committed one, and the comparison behind
`agegender compare-metrics`.

A fresh `dvc repro` on the machine that made the committed outputs reproduces them bit for bit. On another machine,
float rounding differs: outputs computed from data with exact operations (sample tables, counts, the evaluation of
given predictions, the tables made from them) still match exactly, but training and generation take another
trajectory, as another seed would, and what they produce moves. A moved metric is acceptable when the evaluation
that measured it cannot tell the two runs apart: when the 95% intervals of the committed and the fresh value
overlap. The intervals are those the metric's own sample gives, not one machine's measurement:

- `ci`: the percentile bootstrap interval the `evaluate` stage commits beside the metric (`<key>_ci_low`,
  `<key>_ci_high`); a bound follows its metric.
- `rate`: a fraction (or a count out of `n`) on `n` samples, Wilson's score interval (it stays wide at 0 and 1).
- `mean_error`: a mean absolute error on `n` samples without a bootstrap, the normal interval
  `z * sqrt(pi/2 - 1) * value / sqrt(n)` (for normal errors the spread of |error| is sqrt(pi/2 - 1) of its mean).

`exact` metrics must not move at all; `timing` (wall clock) and `cache` (what earlier runs left in a response
store) are never judged; `free` metrics follow from others (which checkpoint won, the training loss) and are judged
only by `--exact`, the same-machine check in which every judged metric must match exactly.

The rules are `TOLERANCES`, matched in order against `<metrics file>:<key>` (`fnmatch` patterns); the first match
decides. The committed and fresh values come from DVC's own `dvc metrics diff --json --all <rev>`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

from agegender.errors import InputError
from agegender.metrics import METRICS

Kind = Literal["exact", "ci", "rate", "mean_error", "free", "timing", "cache"]

#: two-sided 95%: the level of the committed bootstrap intervals (`evaluate.ci_level` of every profile)
Z95 = NormalDist().inv_cdf(0.975)

#: sd(|e|) / mean(|e|) for normally distributed errors e
MAE_SPREAD = math.sqrt(math.pi / 2 - 1)

#: `Tolerance.n` for counts of statuses: n is the sum of the keys beside it (`body.ok` + `body.unparsed` + ...)
SIBLINGS = "*"


@dataclass(frozen=True)
class Tolerance:
    """How one group of metrics may move.

    Args:
        pattern: `fnmatch` pattern over `<metrics file>:<key>`.
        kind: see the module docstring.
        n: the sample count of `rate` and `mean_error` metrics: the last part of a key beside the metric
            (`n_total`: `demo.face.m.age_n` -> `demo.face.m.n_total`), or `SIBLINGS`.
        why: one line for the README and the output.
    """

    pattern: str
    kind: Kind
    n: str | None = None
    why: str = ""


_EVAL = "metrics/evaluate.json"
_FT = "metrics/finetune_mllm/*.json"
_TRAIN = "metrics/train_mivolo.json"
_QUERY = "metrics/query_mllms/*.json"

TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance("*:*seconds*", "timing", why="wall-clock time"),
    Tolerance("*:*per_second*", "timing", why="wall-clock throughput"),
    Tolerance(f"{_QUERY}:requests_sent", "cache", why="what the response store held before the run"),
    Tolerance(f"{_QUERY}:cache_hits", "cache", why="what the response store held before the run"),
    Tolerance(f"{_QUERY}:no_crop", "exact", why="crops are cut from the data with integer boxes"),
    Tolerance(f"{_QUERY}:*.*", "rate", SIBLINGS, why="answer statuses of a generating model, out of its queries"),
    # a metric without a bootstrap interval is judged by the interval its statistic (`MetricDef.statistic`) has
    *(
        Tolerance(f"{_TRAIN}:val_{m.name}", m.statistic, "val_n", why=f"{m.label} of the trained MiVOLO on val")
        for m in METRICS
        if m.bootstrapped
    ),
    Tolerance(f"{_FT}:train_loss", "free", why="a training diagnostic: the model is judged by its held-out metrics"),
    Tolerance(f"{_FT}:selection.best_name", "free", why="which checkpoint won follows the selection metrics"),
    Tolerance(f"{_FT}:selection.best_step", "free", why="which checkpoint won follows the selection metrics"),
    Tolerance(f"{_FT}:selection.best_epoch_fraction", "free", why="which checkpoint won follows the selection metrics"),
    *(
        Tolerance(f"{_FT}:selection.best_{m.name}", m.statistic, "best_n", why=f"{m.label} of the kept checkpoint")
        for m in METRICS
        if m.statistic == "mean_error"
    ),
    Tolerance(f"{_FT}:selection.best_*", "rate", "best_n", why="rates and answered count of the kept checkpoint"),
    Tolerance(f"{_FT}:selection.*", "exact", why="the selection's settings and number of checkpoints"),
    Tolerance(f"{_FT}:last.*", "exact", why="the end of training: its step count follows from the settings"),
    Tolerance(f"{_FT}:*.*", "rate", SIBLINGS, why="answer statuses of a fine-tuned model, out of its queries"),
    Tolerance(f"{_EVAL}:*.exclusion.*.n_drawn", "exact", why="the drawn subset: data, not model output"),
    Tolerance(f"{_EVAL}:*.exclusion.*", "rate", "n_drawn", why="refused (or kept) samples, of those drawn"),
    Tolerance(f"{_EVAL}:*.n_total", "exact", why="the evaluated samples: data, not model output"),
    Tolerance(f"{_EVAL}:*_n", "rate", "n_total", why="labelled answers of a model, out of the evaluated samples"),
    Tolerance(f"{_EVAL}:*.n_answered", "rate", "n_total", why="answers of a model, out of the evaluated samples"),
    Tolerance(f"{_EVAL}:*.coverage", "rate", "n_total", why="answered share of the evaluated samples"),
    Tolerance(f"{_EVAL}:*", "ci", why="a metric with its committed 95% bootstrap interval"),
    # check, prepare_data, predict (statuses follow from the crops; the baseline is the training mean, rounded),
    # report, train_mivolo's step count and every metric this table does not name yet
    Tolerance("*", "exact", why="computed from data and params with exact operations"),
)

#: `exact`: identical; `within`: moved, inside its tolerance; `OUTSIDE`: moved beyond it; the rest: not judged
Verdict = Literal["exact", "within", "OUTSIDE", "timing", "cache", "free"]


@dataclass(frozen=True)
class Comparison:
    """One metric: committed (`old`) and fresh (`new`) value, the rule that judged it and the verdict."""

    path: str
    key: str
    old: Any
    new: Any
    rule: Tolerance
    verdict: Verdict
    #: how far the value may move here (None: not a number or not judged), and a word on how it was derived
    allowed: float | None = None
    note: str = ""

    @property
    def diff(self) -> float | None:
        """new - old, for two numbers."""
        return self.new - self.old if _is_number(self.old) and _is_number(self.new) else None


def tolerance_for(path: str, key: str, table: tuple[Tolerance, ...] = TOLERANCES) -> Tolerance:
    """The first rule of `table` whose pattern matches `<path>:<key>`."""
    name = f"{path}:{key}"
    return next(rule for rule in table if fnmatch.fnmatchcase(name, rule.pattern))


def wilson_half_width(p: float, n: float, z: float = Z95) -> float:
    """Half the width of Wilson's score interval of a proportion `p` observed on `n` samples."""
    return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    if _is_number(old) and _is_number(new) and math.isnan(old) and math.isnan(new):
        return True
    return old == new


def _sibling(key: str, name: str) -> str:
    return f"{key.rpartition('.')[0]}.{name}" if "." in key else name


def _n(values: Mapping[str, Any], key: str, rule: Tolerance) -> float | None:
    if rule.n == SIBLINGS:
        prefix = key.rpartition(".")[0] + "."
        n = sum(v for k, v in values.items() if k.startswith(prefix) and "." not in k[len(prefix) :] and _is_number(v))
    else:
        n = values.get(_sibling(key, rule.n or ""))
    return float(n) if _is_number(n) and n > 0 else None


def interval(values: Mapping[str, Any], key: str, rule: Tolerance) -> tuple[float, float] | None:
    """The 95% interval of `values[key]` under `rule`, or None when what it needs is missing."""
    value = values.get(key, 0 if rule.n == SIBLINGS else None)  # a status no answer had is a count of 0
    if not _is_number(value) or math.isnan(value):
        return None
    if rule.kind == "ci":
        low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
        if not (_is_number(low) and _is_number(high)) or math.isnan(low) or math.isnan(high):
            return None
        return min(low, value), max(high, value)
    n = _n(values, key, rule)
    if n is None:
        return None
    if rule.kind == "mean_error":
        half = Z95 * MAE_SPREAD * abs(value) / math.sqrt(n)
        return value - half, value + half
    if isinstance(value, int):  # a count out of n
        half = n * wilson_half_width(min(max(value / n, 0.0), 1.0), n)
    else:
        half = wilson_half_width(min(max(value, 0.0), 1.0), n)
    return value - half, value + half


def _bound_of(key: str) -> str | None:
    for suffix in ("_ci_low", "_ci_high"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


_OVERLAP = {"ci": "bootstrap CIs overlap", "rate": "Wilson intervals overlap", "mean_error": "MAE intervals overlap"}


def _judge(path: str, key: str, old: Mapping[str, Any], new: Mapping[str, Any], exact: bool) -> Comparison:
    rule = tolerance_for(path, key)
    a, b = old.get(key), new.get(key)
    if rule.kind in ("timing", "cache"):
        return Comparison(path, key, a, b, rule, rule.kind)
    if _same(a, b):
        return Comparison(path, key, a, b, rule, "exact")
    if rule.kind == "free" and not exact:
        return Comparison(path, key, a, b, rule, "free")
    if exact or rule.kind == "exact":
        return Comparison(path, key, a, b, rule, "OUTSIDE", 0.0, "exact")
    metric = _bound_of(key) if rule.kind == "ci" else None
    judged = metric if metric is not None else key
    old_band, new_band = interval(old, judged, rule), interval(new, judged, rule)
    if old_band is None or new_band is None:
        missing = "no value" if (a is None or b is None) else f"no {rule.kind} interval"
        return Comparison(path, key, a, b, rule, "OUTSIDE", None, f"{missing}: judged exact")
    x, y = old.get(judged, 0), new.get(judged, 0)
    # how far the metric may move toward the fresh value: its committed interval on that side plus the fresh one's
    allowed = (old_band[1] - x) + (y - new_band[0]) if y >= x else (x - old_band[0]) + (new_band[1] - y)
    top = min(old_band[1], new_band[1])
    overlap = max(old_band[0], new_band[0]) <= top + 1e-12 * max(1.0, abs(top))  # touching intervals overlap
    note = "follows its metric" if metric is not None else _OVERLAP[rule.kind]
    return Comparison(path, key, a, b, rule, "within" if overlap else "OUTSIDE", allowed, note)


def compare_metrics(diff: Mapping[str, Mapping[str, Mapping[str, Any]]], *, exact: bool = False) -> list[Comparison]:
    """Judge every metric of a `dvc metrics diff --json --all` result against `TOLERANCES`.

    Args:
        diff: metrics file -> key -> `{"old": ..., "new": ...}` (a key missing on one side: None there). All keys,
            not only those that changed: the intervals and sample counts beside a metric are read from it.
        exact: the same-machine check: every metric but timing and cache counters must be equal.

    Returns:
        One `Comparison` per metric, sorted by file and key.
    """
    out = []
    for path in sorted(diff):
        entries = diff[path]
        old = {k: v.get("old") for k, v in entries.items() if v.get("old") is not None}
        new = {k: v.get("new") for k, v in entries.items() if v.get("new") is not None}
        out += [_judge(path, key, old, new, exact) for key in sorted(entries)]
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_comparison(comparisons: list[Comparison], *, rev: str = "HEAD", show_all: bool = False) -> str:
    """One line per metric that differs (every metric with `show_all`): old, new, diff, tolerance, verdict; and a
    summary line."""
    rows = [("metric", "old", "new", "diff", "tolerance", "verdict")]
    for c in comparisons:
        if _same(c.old, c.new) and not show_all:
            continue
        if c.verdict in ("timing", "cache", "free"):
            tolerance = "not judged"
        elif c.verdict == "exact":
            tolerance = ""
        elif c.allowed is None:
            tolerance = c.note
        elif c.note == "exact":
            tolerance = "exact"
        else:
            tolerance = f"±{c.allowed:.4g} ({c.note})"
        rows.append((f"{c.path}:{c.key}", _fmt(c.old), _fmt(c.new), _fmt(c.diff), tolerance, c.verdict))
    counts = {v: sum(c.verdict == v for c in comparisons) for v in ("exact", "within", "OUTSIDE")}
    unjudged = [c for c in comparisons if c.verdict in ("timing", "cache", "free")]
    moved = sum(not _same(c.old, c.new) for c in unjudged)
    summary = (
        f"{len(comparisons)} metrics against {rev}: {counts['exact']} exact, {counts['within']} within tolerance, "
        f"{counts['OUTSIDE']} OUTSIDE; {len(unjudged)} not judged (timing, store counters, follow-ons), {moved} moved"
    )
    if len(rows) == 1:
        return f"no metric differs from {rev}\n{summary}"
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows]
    return "\n".join([*lines, summary])


def dvc_metrics_diff(root: Path, rev: str = "HEAD", new: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """`dvc metrics diff --json --all <rev> [<new>]` in `root`: every metric of the workspace (or of git revision
    `new`) against git revision `rev`.

    Raises:
        InputError: DVC fails (not a DVC project, an unknown revision).
    """
    command = [sys.executable, "-m", "dvc", "metrics", "diff", "--json", "--all", rev, *([new] if new else [])]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        raise InputError(f"`dvc metrics diff {rev}{' ' + new if new else ''}` failed in {root}: {message}")
    return json.loads(proc.stdout or "{}")
