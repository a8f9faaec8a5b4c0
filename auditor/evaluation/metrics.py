"""Detection metrics for a ranking of training points against known faults (numpy only).

``scores`` ``(n,)``: higher means more suspicious. ``is_fault`` ``(n,)`` booleans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from auditor.ranking.rule import average_ranks

#: The rankings an evaluation measures, in the order tables and charts show them
#: (``confident learning`` only for class labels, with the baseline on).
RANKINGS = (
    "training loss",
    "self-influence",
    "harmfulness",
    "combined",
    "confident learning",
    "random",
)
#: The ranking whose flags are its own: the scan's rule flags the points the combined
#: ranking is about; confident learning flags its label issues.
FLAGGING = {"combined": "flags", "confident learning": "label issues"}


def auroc(scores: np.ndarray, is_fault: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random fault scores above a random
    clean point, ties counting one half (the Mann-Whitney U statistic over ``m0 * m1``).
    NaN when either class is empty."""
    scores, is_fault = np.asarray(scores, dtype=np.float64), np.asarray(is_fault, dtype=bool)
    m1 = int(is_fault.sum())
    m0 = is_fault.size - m1
    if m0 == 0 or m1 == 0:
        return math.nan
    ranks = average_ranks(scores)
    u = ranks[is_fault].sum() - m1 * (m1 + 1) / 2
    return float(u / (m0 * m1))


def average_precision(scores: np.ndarray, is_fault: np.ndarray) -> float:
    """Average precision: sum over thresholds of ``(R_t - R_{t-1}) * P_t``, one threshold per
    distinct score (tied points enter together). NaN without faults."""
    scores, is_fault = np.asarray(scores, dtype=np.float64), np.asarray(is_fault, dtype=bool)
    m1 = int(is_fault.sum())
    if m1 == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    s, f = scores[order], is_fault[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(f)[last_of_tie]
    seen = np.arange(1, s.size + 1)[last_of_tie]
    recall = tp / m1
    precision = tp / seen
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def found_after(scores: np.ndarray, is_fault: np.ndarray, fraction: float) -> float:
    """Share of the faults among the ``ceil(fraction * n)`` highest scores (ties broken by
    index, as a reviewer reading the list top-down would). NaN without faults."""
    is_fault = np.asarray(is_fault, dtype=bool)
    m1 = int(is_fault.sum())
    if m1 == 0:
        return math.nan
    return float(is_fault[top_order(scores)[: checked_count(fraction, is_fault.size)]].sum() / m1)


def fraction_key(fraction: float) -> str:
    """The key of the results for a checked ``fraction``: ``"0.1"`` for 0.1, in an
    evaluation row's ``found`` and, after ``found@``, ``accuracy@`` and ``loss@``, in its
    summary."""
    return f"{fraction:g}"


def checked_count(fraction: float, n: int) -> int:
    """How many of ``n`` points a reviewer checks for a ``fraction``: ``ceil(fraction * n)``
    (a hair below, so that 0.1 * 1730 is 173 and not 174 through rounding)."""
    return math.ceil(fraction * n - 1e-9)


def top_order(scores: np.ndarray) -> np.ndarray:
    """Indexes by descending score, ties by index: the order a reviewer checks them."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def detection_curve(
    scores: np.ndarray, is_fault: np.ndarray, points: int = 101
) -> tuple[list[float], list[float]]:
    """Share of faults found ``(points,)`` after checking a share of the data ``(points,)``
    (Koh & Liang's Fig. 6), at evenly spaced shares 0..1."""
    is_fault = np.asarray(is_fault, dtype=bool)
    n, m1 = is_fault.size, max(int(is_fault.sum()), 1)
    found = np.r_[0, np.cumsum(is_fault[top_order(scores)])] / m1
    shares = np.linspace(0.0, 1.0, points)
    return shares.tolist(), [float(found[checked_count(s, n)]) for s in shares]


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), ignoring NaN."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def flag_metrics(flagged: np.ndarray, is_fault: np.ndarray) -> dict:
    """How many points a rule flagged, how many of them are faults, and the flags'
    precision (faults among the flagged; NaN with no flag) and recall (flagged among the
    faults; NaN with no fault)."""
    flagged, is_fault = np.asarray(flagged, dtype=bool), np.asarray(is_fault, dtype=bool)
    count, hits, faults = int(flagged.sum()), int((flagged & is_fault).sum()), int(is_fault.sum())
    return {
        "count": count,
        "faults": hits,
        "precision": hits / count if count else math.nan,
        "recall": hits / faults if faults else math.nan,
    }
