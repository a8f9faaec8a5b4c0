"""The seed's toy regression: injected y = 100 points are found and flagged."""

import pytest
import torch

from auditor.config import DataArgs, ScanConfig, SolverArgs
from auditor.pipeline.scan import scan
from auditor.sources.toy import toy_linear
from auditor.store import open_db, points, runs
from tests.helpers import run_scan, write_regression_csv


def flagged_and_top(engine, run_id, k):
    rows = points.read_points(engine, run_id, "train")
    by_rank = sorted(rows, key=lambda r: r["rank"])
    by_self = sorted(rows, key=lambda r: r["self_influence"])  # most negative first
    flagged = {r["idx"] for r in rows if "outlier" in r["flags"]}
    return flagged, {r["idx"] for r in by_rank[:k]}, {r["idx"] for r in by_self[:k]}


@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
def test_toy_linear_outliers_are_top_two_and_flagged(tmp_path, solver):
    engine, result = run_scan(tmp_path / "a.db", DataArgs(train="toy-linear"), solver=solver)
    flagged, top_rank, top_self = flagged_and_top(engine, result.run_id, 2)
    assert top_self == {1, 15}  # by self-influence magnitude
    assert top_rank == {1, 15}
    assert {1, 15} <= flagged


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_injected_outliers_flagged_and_nothing_else_in_top_k(tmp_path, seed, k):
    positions = torch.randperm(20, generator=torch.Generator().manual_seed(100 * seed + k))[:k]
    train, test = toy_linear(seed=seed, outliers=tuple(positions.tolist()))
    write_regression_csv(tmp_path / "train.csv", train)
    write_regression_csv(tmp_path / "test.csv", test)
    data = DataArgs(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"))
    engine, result = run_scan(tmp_path / "a.db", data)
    flagged, top_rank, _ = flagged_and_top(engine, result.run_id, k)
    injected = set(positions.tolist())
    assert injected <= flagged
    assert top_rank == injected


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_iterative_self_influences_find_the_same_outliers(tmp_path, solver):
    """``--self-influence same``: the ranking's solves use the iterative solver too."""
    engine = open_db(str(tmp_path / "a.db"))
    config = ScanConfig(
        data=DataArgs(train="toy-linear"),
        solver=SolverArgs(solver=solver, self_influence="same"),
    )
    result = scan(engine, config)
    assert (
        runs.get_run(engine, result.run_id).as_dict()["solver"]["self_influence"]["solver"]
        == solver
    )
    flagged, top_rank, top_self = flagged_and_top(engine, result.run_id, 2)
    assert top_self == top_rank == {1, 15}
    assert {1, 15} <= flagged
