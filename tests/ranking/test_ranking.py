"""The flag rule: the influence z, the calibrated outlier threshold and old runs' rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import ScanConfig
from auditor.ranking.rule import (
    FlagRule,
    SuspicionTests,
    flag_lists,
    flag_masks,
    influence_z,
    normal_scores,
    robust_z,
    suspicion_tests,
)
from auditor.store import open_db, runs
from tests.helpers import robust_z_reference


def test_influence_z_is_the_robust_z_of_the_log_and_ignores_the_scale():
    si = -np.array([1e-12, 1e-9, 1e-6, 1e-3, 1.0], dtype=np.float64)
    # log10 |si| = -12, -9, -6, -3, 0: median -6, MAD 3 (in log10), so z = k / 1.4826
    want = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=np.float64) / 1.4826
    np.testing.assert_allclose(influence_z(si), want)
    np.testing.assert_allclose(influence_z(1e6 * si), want)  # units do not matter
    norm = np.sqrt(np.abs(si))
    mad = np.median(np.abs(norm - np.median(norm)))
    np.testing.assert_allclose(influence_z(si, "sqrt"), (norm - np.median(norm)) / (1.4826 * mad))


@pytest.mark.parametrize(("n", "want"), [(20, 2.807), (1730, 4.022), (8000, 4.369)])
def test_the_default_outlier_threshold_is_calibrated_to_the_number_of_points(n, want):
    # the z that the largest of n standard normals exceeds with probability 0.05
    threshold = FlagRule().resolved(n).outlier_z
    assert threshold == pytest.approx(want, abs=1e-3)
    assert 1 - (1 - 0.5 * math.erfc(threshold / math.sqrt(2))) ** n == pytest.approx(0.05, rel=0.03)
    assert FlagRule(outlier_z=6.0).resolved(n).outlier_z == 6.0


def test_a_rule_stored_before_the_log_scale_keeps_the_influence_norm():
    old = {"outlier_z": 6.0, "mislabel_z": 5.0, "outlier_support_z": 4.0, "trim": 0.25, "rounds": 3}
    assert FlagRule.from_dict(old).influence_scale == "sqrt"
    assert FlagRule.from_dict(FlagRule().to_dict()) == FlagRule()


def test_flags_mislabel_before_outlier_and_only_with_support():
    # without the leave-one-out condition (tests/ranking/test_left_out.py has it)
    rule = FlagRule(outlier_z=3.0, mislabel_z=5.0, outlier_support_z=4.0, mislabel_p=None)
    union = np.array([6.0, 6.0, 3.5, 4.5, 1.0])
    influence = np.array([0.0, 9.0, 9.0, 3.0, 9.0])
    predicted = np.array([1, 1, 0, 0, 0])
    labels = np.array([0, 0, 0, 0, 0])
    got = flag_lists(*flag_masks(union, influence, predicted, labels, "classification", rule))
    assert got == [["mislabel"], ["mislabel"], [], ["outlier"], []]
    # regression has no labels to flip
    got = flag_lists(*flag_masks(union, influence, predicted, labels, "regression", rule))
    assert got == [[], ["outlier"], [], ["outlier"], []]


def test_scan_stores_the_threshold_it_applied_and_the_cli_takes_auto_or_a_number(tmp_path):
    db = str(tmp_path / "a.db")
    runner = CliRunner()
    for value in ("auto", "3.5"):
        result = runner.invoke(
            cli, ["scan", "--train", "toy-linear", "--outlier-z", value, "--db", db]
        )
        assert result.exit_code == 0, result.output
    engine = open_db(db)
    auto, fixed = runs.get_run(engine, 1).as_dict(), runs.get_run(engine, 2).as_dict()
    assert auto["config"]["rule"]["outlier_z"] is None
    assert auto["ranking"]["rule"]["outlier_z"] == pytest.approx(2.807, abs=1e-3)
    assert fixed["config"]["rule"]["outlier_z"] == fixed["ranking"]["rule"]["outlier_z"] == 3.5
    assert ScanConfig.from_dict(auto["config"]).rule == FlagRule()
    bad = runner.invoke(cli, ["scan", "--train", "toy-linear", "--outlier-z", "high", "--db", db])
    assert bad.exit_code == 2 and "neither auto nor a number" in bad.output
    assert len([r.as_dict() for r in runs.list_runs(engine)]) == 2  # the bad value wrote no run


def test_normal_scores_are_ranks_on_the_normal_scale_with_ties_averaged():
    # ranks 4, 1, 2.5, 2.5 of 4 -> Phi^-1(0.875), Phi^-1(0.125), Phi^-1(0.5) twice
    got = normal_scores(np.array([3.0, 1.0, 2.0, 2.0], dtype=np.float64))
    np.testing.assert_allclose(got, [1.150349, -1.150349, 0.0, 0.0], atol=1e-6, rtol=0)


def test_combined_suspicion_takes_the_stronger_point_test_plus_half_positive_harm():
    tests = SuspicionTests(
        loss=np.array([3.0, 0.0, 1.0, -1.0]),
        influence=np.array([1.0, 2.0, 1.0, -2.0]),
        harm=np.array([0.0, 9.0, -9.0, 0.0]),
        harm_score=np.array([0.0, 2.0, -2.0, 1.0]),
    )
    np.testing.assert_allclose(tests.combined, np.array([3.0, 3.0, 1.0, -0.5]))
    np.testing.assert_allclose(tests.union, np.array([3.0, 9.0, 1.0, 0.0]))


def test_suspicion_tests_are_robust_zs_of_log_loss_and_log_influence():
    loss = np.array([1e-4, 1e-3, 1e-2, 1e-1, 1.0], dtype=np.float64)
    si = -np.array([1.0, 1e-3, 1e-6, 1e-9, 1e-12], dtype=np.float64)
    harm = np.array([0.0, 1.0, 2.0, 3.0, 100.0], dtype=np.float64)
    tests = suspicion_tests(loss, harm, si)
    # log10 loss -4..0: median -2, MAD 1 -> z = k / 1.4826; log|si| mirrored, MAD 3
    step = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=np.float64) / 1.4826
    np.testing.assert_allclose(tests.loss, step)
    np.testing.assert_allclose(tests.influence, -step)
    # harm: median 2, MAD 1 -> robust z (h - 2) / 1.4826; the outlier's normal score is
    # bounded by its rank: Phi^-1(4.5 / 5)
    np.testing.assert_allclose(tests.harm, (harm - 2) / 1.4826)
    assert float(tests.harm_score[-1]) == pytest.approx(1.281552, abs=1e-6)


@pytest.mark.parametrize("n", [2, 3, 4, 19, 20, 1730])
def test_robust_z_uses_the_median_of_its_formula(n):
    """The median of an even count is the mean of the two middle values (torch's
    ``median`` takes the lower one: for 20 normal draws that inflated the top z by 13%)."""
    v = np.random.default_rng(n).standard_normal(n)
    got = robust_z(v)
    np.testing.assert_allclose(got, robust_z_reference(v), rtol=1e-12, atol=1e-12)
