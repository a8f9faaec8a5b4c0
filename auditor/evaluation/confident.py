"""The confident-learning baseline (Northcutt, Jiang and Chuang, JAIR 2021), written here
in numpy rather than taken from ``cleanlab``, on out-of-fold probabilities
(:mod:`auditor.evaluation.cross_val`).

- per-class thresholds ``t_j``: the mean out-of-fold probability of class ``j`` over the
  points labelled ``j`` (the class's average self-confidence);
- the confident joint: point ``i`` counts for the class ``j*`` with the largest ``p_ij``
  among those whose ``p_ij >= t_j`` (none: it does not count);
- label issues: the points whose ``j*`` is not their given label (the off-diagonal of the
  confident joint, cleanlab's ``filter_by="confident_learning"``);
- the ranking: the issues first, each group in order of self-confidence ``p_i,given``,
  least confident first (cleanlab's ``return_indices_ranked_by="self_confidence"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConfidentLearning:
    """``scores`` ``(n,)``: higher is checked earlier; ``issues`` ``(n,)``: the label issues
    (the baseline's flags); ``thresholds`` ``(k,)``."""

    scores: np.ndarray
    issues: np.ndarray
    thresholds: np.ndarray


def confident_learning(probabilities: np.ndarray, labels: np.ndarray) -> ConfidentLearning:
    """The confident-learning ranking of points with out-of-fold class ``probabilities``
    ``(n, k)`` and given ``labels`` ``(n,)`` (class indexes)."""
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, k = p.shape
    thresholds = np.full(k, np.inf)  # a class nobody is labelled with admits nobody
    for j in range(k):
        mine = labels == j
        if mine.any():
            thresholds[j] = p[mine, j].mean()
    admitted = np.where(p >= thresholds[None, :], p, -np.inf)
    counted = np.isfinite(admitted).any(axis=1)
    confident_class = np.argmax(admitted, axis=1)
    issues = counted & (confident_class != labels)
    self_confidence = p[np.arange(n), labels]
    scores = issues.astype(np.float64) + (1.0 - self_confidence)
    return ConfidentLearning(scores, issues, thresholds)
