"""Rank training points for review and flag likely mislabels and outliers.

The rule (documented in docs/method.md, "Ranking and flags"; thresholds overridable from the CLI):

1. The self-influence is scored by the robust z-score of its logarithm (the *influence
   z*): ``z = (s - median(s)) / (1.4826 * MAD(s))`` with ``s = log|self-influence|``. The
   log makes it scale-free: on a well-fitted network most gradients are near zero and
   ``|self-influence|`` spans orders of magnitude. The stored suspicion and rank are
   :attr:`SuspicionTests.combined` (of the log training loss, the influence z and
   harmfulness); the flags use the strongest of those tests.
2. Masking: a cluster of bad points drags the fit towards itself and hides its members
   (five y = 100 points among twenty). So the self-influence is recomputed on refits that
   leave out the ``trim`` most suspicious fraction (concentration steps, as in least
   trimmed squares), and finally on a refit without the points flagged by step 3 and
   those whose influence z reached ``outlier_z`` on the last concentration refit. Each
   point's score is then "how much its own loss depends on it, next to the clean data".
3. Flags (:func:`flag_masks`): ``mislabel`` when the model predicts another class than
   the given label, the strongest test reaches ``mislabel_z`` and the label's
   leave-one-out probability (:func:`left_out_probability`) is at most ``mislabel_p``
   (a hard but rightly labelled point keeps a fair chance of its label once left out);
   ``outlier`` when the influence z after the refits reaches ``outlier_z`` and the point
   is not a mislabel.
   Regression data has no labels to flip: only outliers.

The rule is statistics of ``n`` numbers per point, in float64 numpy: the commands that only
read a run (``export``, ``report``) recompute parts of it without loading torch. Tensors
are accepted wherever an array is (``np.asarray`` of a CPU tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from auditor.config import FlagRule

if TYPE_CHECKING:
    from auditor.data import Task

#: Per-point values ``(n,)``: a numpy array, or anything ``np.asarray`` reads (a CPU tensor).
Values = Any

_STANDARD_NORMAL = NormalDist()


def _array(values: Values) -> np.ndarray:
    """``values`` as a float64 array ``(n,)``."""
    return np.asarray(values, dtype=np.float64)


def robust_z(values: Values) -> np.ndarray:
    """``(v - median) / (1.4826 * MAD)`` for ``values`` ``(n,)``, in float64; MAD 0 falls
    back to the mean absolute deviation, then to 1.

    The median of an even count is the mean of the two middle values (the lower one alone
    would bias the robust z upwards on small data: by 13% for the largest of 20 normal
    draws)."""
    v = _array(values)
    median = np.median(v)
    deviation = np.abs(v - median)
    scale = 1.4826 * np.median(deviation)
    if not scale > 0:
        scale = deviation.mean()
    if not scale > 0:
        scale = 1.0
    return (v - median) / scale


def influence_z(self_influence: Values, scale: str = "log") -> np.ndarray:
    """The influence z ``(n,)``: the robust z-score of ``log|self-influence|`` (``scale=
    "log"``) or of the influence norm ``sqrt|self-influence|`` (``"sqrt"``, older runs)."""
    magnitude = np.abs(_array(self_influence))
    return robust_z(_log(magnitude) if scale == "log" else np.sqrt(magnitude))


#: The tests as the report names them, in :meth:`SuspicionTests.strongest`'s order.
TEST_NAMES = ("training loss", "harmfulness", "self-influence")

#: Weight of harmfulness's normal score in :attr:`SuspicionTests.combined`.
HARM_WEIGHT = 0.5


@dataclass
class SuspicionTests:
    """The three tests of every training point, each ``(n,)`` float64 and about standard
    normal over the clean bulk.

    Three tests for three kinds of fault. The log loss asks "does the model disagree with
    this label?" (a mislabel); the influence z (after the masking refits) asks "does the
    fit lean on this point alone?" (outliers, also in clusters that mask each other's loss,
    and mislabels the fit has absorbed); harmfulness asks "does keeping this point raise
    the test loss?" (systematic faults such as class-conditional flips, which bend the
    boundary until the model fits them).

    Attributes:
        loss: Robust z of the log training loss.
        influence: The influence z (:func:`influence_z`, log scale).
        harm: Robust z of harmfulness (heavy-tailed: enormous on well-fitted networks).
        harm_score: Normal score of harmfulness, ``Phi^-1((rank - 1/2) / n)``: its rank
            on the normal scale, bounded by ``Phi^-1(1 - 1/(2n))`` (3.9 for 8,000 points).
    """

    loss: np.ndarray
    influence: np.ndarray
    harm: np.ndarray
    harm_score: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """The strongest test ``max(loss, harm, influence)`` ``(n,)`` (the mislabel and
        outlier flags' evidence)."""
        return np.maximum(self.loss, np.maximum(self.harm, self.influence))

    def strongest(self) -> list[str]:
        """The name of each point's strongest test (:data:`TEST_NAMES`), the one ``union``
        takes (the first on ties)."""
        stacked = np.stack([self.loss, self.harm, self.influence])
        return [TEST_NAMES[i] for i in stacked.argmax(axis=0).tolist()]

    @property
    def combined(self) -> np.ndarray:
        """The product's ranking score ``(n,)``: ``max(loss, influence) + HARM_WEIGHT *
        max(harm_score, 0)``.

        Loss and influence z are two views of one question, "does the fit disagree with or
        lean on this point?", so the stronger counts. Harmfulness is evidence from other
        data (the test points) and adds to it: through its normal score, because its
        robust z has a heavy null tail, and only when positive, because a point that
        happens to help the test loss is not thereby correctly labelled. Chosen among
        fixed rules on design seeds (docs/quality.md, "How the combined rule was chosen").
        """
        return np.maximum(self.loss, self.influence) + HARM_WEIGHT * np.maximum(
            self.harm_score, 0.0
        )


def suspicion_tests(loss: Values, harmfulness: Values, self_influence: Values) -> SuspicionTests:
    """The three tests (:class:`SuspicionTests`) from per-point values ``(n,)``.

    Args:
        loss: Per-example training loss ``(n,)`` under the fitted model.
        harmfulness: Sum of the point's influence over all test points ``(n,)``.
        self_influence: ``-g^T A^{-1} g`` per point ``(n,)`` (after the masking refits).
    """
    harm = _array(harmfulness)
    return SuspicionTests(
        loss=robust_z(_log(_array(loss))),
        influence=influence_z(self_influence),
        harm=robust_z(harm),
        harm_score=normal_scores(harm),
    )


def normal_scores(values: Values) -> np.ndarray:
    """``Phi^-1((rank - 1/2) / n)`` of ``values`` ``(n,)``, ties sharing their average rank."""
    v = _array(values)
    quantiles = (average_ranks(v) - 0.5) / max(v.shape[0], 1)
    return np.array([_STANDARD_NORMAL.inv_cdf(q) for q in quantiles.tolist()], dtype=np.float64)


def _log(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(values, np.finfo(np.float64).tiny))


def trimmed_mask(score: Values, trim: float) -> np.ndarray:
    """Boolean ``(n,)`` mask keeping all but the ``trim`` fraction with the highest score
    (ties broken by index)."""
    s = _array(score)
    keep = np.ones(s.shape[0], dtype=bool)
    keep[np.argsort(-s, kind="stable")[: int(trim * s.shape[0])]] = False
    return keep


def flag_lists(mislabel: Values, outlier: Values) -> list[list[str]]:
    """The flags of each point as stored (a list of strings per point) from the boolean
    masks ``(n,)`` of :func:`flag_masks`."""
    return [
        ["mislabel"] if m else ["outlier"] if o else []
        for m, o in zip(np.asarray(mislabel).tolist(), np.asarray(outlier).tolist(), strict=True)
    ]


def flag_masks(
    union_z: Values,
    influence: Values,
    predicted: Values,
    targets: Values,
    task: Task,
    rule: FlagRule,
    given_probability: Values | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(mislabel, outlier)``, each ``(n,)``: ``mislabel`` when the
    prediction disagrees with the label, the strongest test ``union_z``
    (:attr:`SuspicionTests.union`) reaches ``mislabel_z`` and the label's leave-one-out
    probability ``given_probability`` (:func:`left_out_probability`; needed when the rule
    has a ``mislabel_p``) is at most ``mislabel_p``; otherwise ``outlier`` when the
    masking-resistant influence z ``influence`` reaches ``outlier_z`` (a cluster of
    outliers hides from the loss but not from the refits) and ``union_z`` reaches
    ``outlier_support_z`` (by default ``outlier_z`` itself, which that already implies).
    Regression data has no mislabels."""
    union, z = _array(union_z), _array(influence)
    rule = rule.resolved(union.shape[0])
    outlier_z, support_z = rule.outlier_z, rule.outlier_support_z
    assert outlier_z is not None and support_z is not None  # resolved() sets both
    if task == "classification":
        mislabel = (np.asarray(predicted) != np.asarray(targets)) & (union >= rule.mislabel_z)
        if rule.mislabel_p is not None:
            if given_probability is None:
                raise ValueError("a rule with mislabel_p needs the leave-one-out probabilities")
            mislabel &= _array(given_probability) <= rule.mislabel_p
    else:
        mislabel = np.zeros(union.shape[0], dtype=bool)
    outlier = (z >= outlier_z) & (union >= support_z)
    return mislabel, ~mislabel & outlier


def left_out_probability(loss: Values, self_influence: Values, n: int | None = None) -> np.ndarray:
    """The probability ``(n,)`` a classifier fitted without each training point gives its
    label, to first order: ``exp(-(loss - self_influence / n))``. Removing a point is
    up-weighting it by ``-1/n``, which changes its own loss by ``-I(z, z) / n`` (Koh &
    Liang, eq. 2; ``self_influence`` is ``I(z, z) = -g^T A^-1 g <= 0``), and the loss is
    ``-log p(label)``. ``n``, the training points, defaults to the length of ``loss``."""
    loss, si = _array(loss), _array(self_influence)
    count = loss.size if n is None else n
    return np.exp(-(loss - si / max(count, 1)))


def ranks(score: Values) -> np.ndarray:
    """1-based rank ``(n,)`` by descending score (ties broken by index)."""
    order = np.argsort(-_array(score), kind="stable")
    rank = np.empty(order.shape[0], dtype=np.int64)
    rank[order] = np.arange(1, order.shape[0] + 1)
    return rank


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks ascending, tied values sharing their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, values.size])
    average = first + (counts + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = average[group]
    return ranks
