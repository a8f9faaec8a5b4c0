"""The paired one-sided tests against hand-computed cases and a brute-force reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from auditor.evaluation.paired import combined_against_each, sign_test_worse, wilcoxon_worse


def test_the_sign_test_counts_the_seeds_where_a_is_worse():
    b = [0.5] * 10
    a = [0.4] * 8 + [0.6, 0.5]  # 8 worse, 1 better, 1 tie (dropped)
    assert sign_test_worse(a, b) == pytest.approx((math.comb(9, 8) + 1) / 2**9)
    assert sign_test_worse(b, b) == 1.0
    assert sign_test_worse([0.6] * 5, [0.5] * 5) == 1.0  # never worse
    assert sign_test_worse([0.4] * 5, [0.5] * 5) == pytest.approx(1 / 32)


def test_wilcoxon_by_hand():
    assert wilcoxon_worse([0, 0, 0], [1, 2, 3]) == pytest.approx(1 / 8)  # every rank negative
    # differences -1, -2, +3: ranks 1, 2, 3, positive sum 3; sign sets with sum <= 3:
    # {}, {1}, {2}, {3}, {1, 2}: 5 of 8
    assert wilcoxon_worse([0, 0, 3], [1, 2, 0]) == pytest.approx(5 / 8)
    assert wilcoxon_worse([1, 1], [1, 1]) == 1.0


def test_wilcoxon_with_ties_matches_a_brute_force_over_sign_flips():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=9) / 10
    b = rng.integers(0, 5, size=9) / 10
    d = (a - b)[a != b]
    absd = np.abs(d)
    ranks = np.array([(absd < v).sum() + ((absd == v).sum() + 1) / 2 for v in absd])
    observed = ranks[d > 0].sum()
    sums = [ranks[list(s)].sum() for s in _subsets(len(d))]
    expected = np.mean([x <= observed + 1e-9 for x in sums])
    assert wilcoxon_worse(a, b) == pytest.approx(expected)


def _subsets(m: int):
    for k in range(m + 1):
        yield from itertools.combinations(range(m), k)


def _rows(found: dict[str, list[float | None]]) -> list[dict]:
    return [
        {"seed": seed, "ranking": name, "found": {"0.1": share}}
        for name, shares in found.items()
        for seed, share in enumerate(shares)
    ]


def test_combined_is_compared_with_every_ranking_but_random():
    rows = _rows(
        {
            "training loss": [0.9, 0.9, 0.9, 0.9, 0.9],
            "harmfulness": [0.8, 0.8, 0.8, 0.8, 0.8],
            "combined": [0.85, 0.85, 0.85, 0.85, 0.85],
            "random": [0.1, 0.1, 0.1, 0.1, 0.1],
        }
    )
    found = {c.other: c for c in combined_against_each(rows, 0.1)}
    assert list(found) == ["training loss", "harmfulness"]
    loss = found["training loss"]  # worse on all five seeds: p = 1/32 both ways
    assert loss.mean_difference == pytest.approx(-0.05)
    assert (loss.sign_p, loss.wilcoxon_p) == (pytest.approx(1 / 32), pytest.approx(1 / 32))
    assert loss.worse and not found["harmfulness"].worse
    assert combined_against_each(rows[:1] + rows[5:6] + rows[10:11], 0.1) == []  # one seed
    nothing = _rows({"combined": [None, None], "training loss": [None, None]})
    assert combined_against_each(nothing, 0.1) == []  # no faults to find


def test_wilcoxon_counts_any_number_of_seeds():
    """Thirty seeds, all worse: the one assignment with no positive rank, 2^-30; the
    enumeration this replaced stopped at 20."""
    assert wilcoxon_worse([0.0] * 30, list(range(1, 31))) == pytest.approx(2.0**-30)
