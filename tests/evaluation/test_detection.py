"""Detection metrics against hand-computed values, and against brute-force definitions."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.evaluation.metrics import auroc, average_precision, detection_curve, found_after


def test_auroc_hand_computed():
    # faults score 0.9 and 0.4; clean 0.8, 0.3, 0.1. Pairs fault > clean: 3 + 2 = 5 of 6.
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    is_fault = np.array([True, False, True, False, False])
    assert auroc(scores, is_fault) == 5 / 6


def test_auroc_ties_count_one_half_and_extremes():
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert auroc(np.array([2.0, 1.0, 1.0]), np.array([True, True, False])) == 0.75
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([True, False, False])) == 1.0
    assert auroc(np.array([1.0, 2.0, 3.0]), np.array([True, False, False])) == 0.0
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([False, False])))


def test_average_precision_hand_computed():
    # order: F C F C C -> precision at the two faults 1/1 and 2/3: AP = (1 + 2/3) / 2.
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    is_fault = np.array([True, False, True, False, False])
    assert math.isclose(average_precision(scores, is_fault), (1 + 2 / 3) / 2)
    # a tie between a fault and a clean point enters together: precision 1/2 at recall 1.
    assert average_precision(np.array([1.0, 1.0]), np.array([True, False])) == 0.5


def test_found_after_and_curve():
    scores = np.arange(10, 0, -1).astype(float)  # index order is the checking order
    is_fault = np.zeros(10, dtype=bool)
    is_fault[[0, 3, 9]] = True
    assert found_after(scores, is_fault, 0.1) == 1 / 3  # checks 1 point
    assert found_after(scores, is_fault, 0.3) == 1 / 3  # 3 points: 0..2
    assert found_after(scores, is_fault, 0.35) == 2 / 3  # ceil(3.5) = 4 points: 0..3
    assert found_after(scores, is_fault, 0.4) == 2 / 3
    assert found_after(scores, is_fault, 1.0) == 1.0
    shares, found = detection_curve(scores, is_fault, points=11)
    assert shares[0] == 0.0 and found[0] == 0.0 and found[-1] == 1.0
    assert found[4] == 2 / 3 and found[9] == 2 / 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=25).filter(
        lambda xs: any(f for _, f in xs) and not all(f for _, f in xs)
    )
)
def test_auroc_matches_pair_counting(points):
    scores = np.array([s for s, _ in points], dtype=float)
    is_fault = np.array([f for _, f in points])
    pos, neg = scores[is_fault], scores[~is_fault]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert math.isclose(auroc(scores, is_fault), sum(pairs) / len(pairs))
    # AP by its definition over distinct thresholds
    ap, prev = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        recall = is_fault[sel].sum() / is_fault.sum()
        ap += (recall - prev) * is_fault[sel].mean()
        prev = recall
    assert math.isclose(average_precision(scores, is_fault), ap)
