"""MNIST 1-vs-7 from the shared test set: LiSSA agrees with the exact solve on every pair."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from auditor.config import DataArgs, FlagRule
from auditor.store import pairs, runs
from tests.helpers import run_scan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scans(mnist_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("mnist") / "a.db"
    data = DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2, seed=0)
    no_refits = FlagRule(trim=0)
    engine, exact = run_scan(db, data, solver="exact", rule=no_refits)
    _, lissa = run_scan(db, data, solver="lissa", rule=no_refits)
    return engine, exact.run_id, lissa.run_id


def test_lissa_matches_exact_on_all_pairs(scans):
    engine, exact_id, lissa_id = scans
    exact = pairs.read_pair_scores(engine, exact_id)
    lissa = pairs.read_pair_scores(engine, lissa_id)
    assert exact.shape == lissa.shape == (433, 1730)
    assert spearmanr(exact.ravel(), lissa.ravel()).statistic >= 0.99
    for j in np.linspace(0, exact.shape[0] - 1, 20).astype(int):
        assert set(np.argsort(-exact[j])[:10]) == set(np.argsort(-lissa[j])[:10]), j


def test_lissa_records_convergence(scans):
    engine, _, lissa_id = scans
    solver = runs.get_run(engine, lissa_id).as_dict()["solver"]
    assert solver["solver"] == "lissa" and solver["converged"]
    assert solver["residual_max"] <= solver["tol"]
    assert solver["scale"] > solver["lambda_max"] > 0
    assert solver["history"][-1][1] <= solver["tol"]
