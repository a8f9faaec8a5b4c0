"""Paired comparisons of two rankings over the same seeds (numpy only): is ranking A worse
than ranking B more often, or by more, than chance allows?

Both tests are exact and one-sided, for the few seeds an evaluation runs (10 here):

- the sign test: the binomial probability of at least as many seeds where A < B, among
  the seeds where they differ, if either were as likely;
- the Wilcoxon signed-rank test: the differences ``a - b`` ranked by size (ties averaged,
  zeros dropped), and the probability, over all ``2^m`` sign assignments, of a sum of
  positive ranks at most the observed one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from auditor.evaluation.metrics import RANKINGS, fraction_key
from auditor.ranking.rule import average_ranks


def sign_test_worse(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value that ``a`` is smaller than ``b`` (paired, ties dropped): the chance
    of at least as many ``a < b`` among the differing pairs under a fair coin; 1 without a
    differing pair."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    worse, m = int((d < 0).sum()), int((d != 0).sum())
    if m == 0:
        return 1.0
    return sum(math.comb(m, j) for j in range(worse, m + 1)) / 2.0**m


def wilcoxon_worse(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided exact Wilcoxon signed-rank p-value that ``a`` is smaller than ``b``: the
    share of sign assignments of the ranked nonzero differences whose positive-rank sum is
    at most the observed one; 1 without a nonzero difference.

    The ``2^m`` assignments are counted, not enumerated: average ranks are multiples of
    ½, so twice each rank is an integer and the number of assignments reaching each
    doubled sum is a subset-sum count (``O(m * sum)``, any number of seeds)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    doubled = np.rint(2 * average_ranks(np.abs(d))).astype(np.int64)
    ways = np.zeros(int(doubled.sum()) + 1)
    ways[0] = 1.0
    for r in doubled:
        ways[r:] = ways[r:] + ways[: ways.size - r]
    observed = int(doubled[d > 0].sum())
    return float(ways[: observed + 1].sum() / 2.0**d.size)


#: A one-sided p-value below this calls the combined ranking worse.
ALPHA = 0.05


@dataclass(frozen=True)
class PairedComparison:
    """The combined ranking against one other ranking over an evaluation's seeds: the mean
    per-seed difference (combined minus it) of the share of faults found after checking
    ``fraction``, and the one-sided p-values that combined finds fewer."""

    other: str
    fraction: float
    mean_difference: float
    sign_p: float
    wilcoxon_p: float

    @property
    def worse(self) -> bool:
        """Whether either test calls combined worse at :data:`ALPHA`."""
        return min(self.sign_p, self.wilcoxon_p) < ALPHA


def combined_against_each(results: list[dict], fraction: float) -> list[PairedComparison]:
    """:class:`PairedComparison` of ``combined`` with every other ranking but ``random``
    in an evaluation's result rows (``seed``, ``ranking``, ``found`` keyed by
    :func:`~auditor.evaluation.metrics.fraction_key`); empty without two seeds or without
    faults to find."""
    key = fraction_key(fraction)
    by = {(r["seed"], r["ranking"]): _number(r["found"].get(key)) for r in results}
    seeds = sorted({r["seed"] for r in results})
    found = [by.get((s, "combined"), math.nan) for s in seeds]
    if len(seeds) < 2 or any(math.isnan(v) for v in found):
        return []
    compared = []
    for other in RANKINGS:
        theirs = [by.get((s, other), math.nan) for s in seeds]
        if other in ("combined", "random") or any(math.isnan(v) for v in theirs):
            continue
        diff = sum(a - b for a, b in zip(found, theirs, strict=True)) / len(seeds)
        compared.append(
            PairedComparison(
                other, fraction, diff, sign_test_worse(found, theirs), wilcoxon_worse(found, theirs)
            )
        )
    return compared


def _number(value: float | None) -> float:
    """A stored share (``None`` in JSON where it was NaN) as a float."""
    return math.nan if value is None else float(value)
