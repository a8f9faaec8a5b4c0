"""The ill-posed-influence check (auditor/conditioning.py) against eigvalsh and by hand."""

import math
import os
import signal

import pytest
import torch

from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
from auditor.errors import Interrupted
from auditor.influence.conditioning import (
    ILL_CONDITIONED,
    NOT_AN_OPTIMUM,
    RITZ_TOL,
    TARGET_CONDITION,
    block_krylov_largest,
    check_conditioning,
    conditioning_warnings,
    extreme_eigenvalues,
    lanczos_extremes,
)
from auditor.influence.gradients import per_example_grads
from auditor.influence.hessian import HessianOperator
from auditor.models import build_model
from auditor.models.fit import fit
from auditor.pipeline.scan import resume, scan
from auditor.store import open_db, runs
from tests.helpers import separable_csv


def spd(p: int, smallest: float, largest: float, seed: int = 0) -> torch.Tensor:
    """A symmetric positive definite ``(p, p)`` float64 matrix with eigenvalues spread
    geometrically from ``smallest`` to ``largest`` in a random basis."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    values = torch.logspace(math.log10(smallest), math.log10(largest), p, dtype=torch.float64)
    return (q * values) @ q.T


def test_lanczos_finds_the_extreme_eigenvalues_of_an_explicit_matrix():
    m = spd(40, 1e-6, 2.0)
    truth = torch.linalg.eigvalsh(m)
    start = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    low, high, steps = lanczos_extremes(lambda v: m @ v, start, steps=40)
    assert steps == 40  # the Krylov space is all of R^40: the Ritz values are exact
    assert low == pytest.approx(float(truth[0]), rel=1e-6)
    assert high == pytest.approx(float(truth[-1]), rel=1e-12)
    # fewer steps: the largest has converged, the smallest is an upper bound
    low, high, steps = lanczos_extremes(lambda v: m @ v, start, steps=10)
    assert steps == 10
    assert high == pytest.approx(float(truth[-1]), rel=1e-6)
    assert float(truth[0]) <= low
    # on the inverse (what a Cholesky factor gives), the smallest converges as fast
    inverse = torch.linalg.inv(m)
    _, inverse_high, _ = lanczos_extremes(lambda v: inverse @ v, start, steps=10)
    assert 1 / inverse_high == pytest.approx(float(truth[0]), rel=1e-3)


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_lanczos_stops_once_the_largest_ritz_value_is_within_its_tolerance(tol):
    m = spd(200, 1e-3, 2.0)
    truth = float(torch.linalg.eigvalsh(m)[-1])
    start = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, high, steps = lanczos_extremes(lambda v: m @ v, start, steps=60, largest_tol=tol)
    _, _, all_steps = lanczos_extremes(lambda v: m @ v, start, steps=60)
    assert steps < all_steps == 60
    assert truth * (1 - tol) <= high <= truth * (1 + 1e-12)  # a Ritz value never exceeds it


def test_block_krylov_finds_the_largest_eigenvalue_of_an_inverse_in_eight_solves():
    m = spd(300, 1e-4, 2.0, seed=3)  # the smallest eigenvalues crowd: A^-1's largest do
    inverse = torch.linalg.inv(m)
    truth = float(torch.linalg.eigvalsh(inverse)[-1])
    gen = torch.Generator().manual_seed(4)
    start = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    calls = []

    def apply(v):
        calls.append(v.shape[1])
        return inverse @ v

    high, applied = block_krylov_largest(apply, start, steps=8)
    assert calls == [8] * 8 and applied == 64
    assert truth * (1 - 1e-5) <= high <= truth * (1 + 1e-12)  # from below


def test_block_krylov_sees_a_direction_its_first_column_misses_and_stops_when_closed():
    values = torch.tensor([5.0, 3.0, 2.0, 1e-3], dtype=torch.float64)
    m = torch.diag(values)
    one = torch.tensor([[1.0], [1.0], [1.0], [0.0]], dtype=torch.float64)  # misses e_4
    high, _ = block_krylov_largest(lambda v: torch.linalg.solve(m, v), one, steps=4)
    assert high == pytest.approx(1 / 2.0)  # the span of one column never reaches 1e-3
    random = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    block = torch.cat([one, random], dim=1)
    high, applied = block_krylov_largest(lambda v: torch.linalg.solve(m, v), block, steps=4)
    assert high == pytest.approx(1e3) and applied == 4  # all of R^4 after the first blocks


def test_lanczos_stops_when_the_krylov_space_closes():
    m = torch.diag(torch.tensor([3.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    low, high, steps = lanczos_extremes(lambda v: m @ v, torch.ones(4, dtype=torch.float64))
    assert steps == 2 and (low, high) == pytest.approx((1.0, 3.0))


def logistic_problem(weight_decay: float, separation: float, n: int = 80, d: int = 6):
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[:, 0] += separation * (2 * y - 1)
    model = build_model("logistic", "classification", d, 2)
    fitted = fit(model, x, y, weight_decay)
    return model, fitted, x, y


@pytest.mark.parametrize("factor", [True, False])
def test_the_condition_estimate_of_a_hessian_agrees_with_eigvalsh(factor):
    model, fitted, x, y = logistic_problem(1e-4, 0.5)
    op = HessianOperator(model, fitted.theta, x, y, weight_decay=1e-4, damping=1e-5)
    if factor:
        op.cholesky()
    truth = torch.linalg.eigvalsh(op.dense())
    start = torch.randn(op.p, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = extreme_eigenvalues(op, start)
    assert got["method"] == ("factor" if factor else "lanczos")
    # with the factor each run stops once its largest Ritz value is within RITZ_TOL;
    # without, Lanczos runs to the end of the Krylov space (p = 7 < 30 steps)
    rel = 2 * RITZ_TOL if factor else 1e-6
    assert got["lambda_max"] == pytest.approx(float(truth[-1]), rel=rel)
    assert got["lambda_min"] == pytest.approx(float(truth[0]), rel=rel)
    assert got["condition"] == pytest.approx(float(truth[-1] / truth[0]), rel=2 * rel)


def test_a_healthy_fit_passes_and_a_separable_one_without_weight_decay_does_not():
    model, fitted, x, y = logistic_problem(0.01, 1.0)
    op = HessianOperator(model, fitted.theta, x, y, weight_decay=0.01)
    op.cholesky()
    healthy = check_conditioning(op, per_example_grads(model, fitted.theta, x, y), fitted.risk)
    assert healthy["condition"] < 100 and healthy["decrease"] < 1e-6
    assert conditioning_warnings(healthy) == []

    model, fitted, x, y = logistic_problem(0.0, 6.0)  # separable: no optimum
    op = HessianOperator(model, fitted.theta, x, y, weight_decay=0.0)
    op.cholesky()
    flat = check_conditioning(op, per_example_grads(model, fitted.theta, x, y), fitted.risk)
    assert fitted.converged  # the gradient norm alone does not tell
    assert flat["lambda_max"] < 1e-4 and flat["decrease"] > 0.25
    (warning,) = conditioning_warnings(flat)
    assert warning.startswith("the fit is not at an optimum and the Hessian there is nearly zero")
    assert warning.endswith("use --weight-decay ≥ 0.01")


def record(**changes) -> dict:
    base = {
        "lambda_min": 1e-6,
        "lambda_max": 0.11,
        "condition": 1.1e5,
        "method": "factor",
        "steps": 60,
        "decrease": 1e-8,
        "risk": 0.2,
        "theta_norm": 211.0,
        "weight_decay": 1e-6,
        "damping": 0.0,
        "seconds": 0.01,
    }
    return {**base, **changes}


def test_the_ill_conditioning_warning_names_a_damping_that_fixes_it():
    (warning,) = conditioning_warnings(record())
    assert warning.startswith(
        "the Hessian is nearly singular (condition number 1.1e+05: λ_min 1e-06, λ_max 0.11, "
        "with --weight-decay 1e-06 and --damping 0): influence scores are dominated by noise"
    )
    assert warning.endswith(
        "use --damping ≥ 0.0002 (keeps the fit) or --weight-decay ≥ 0.0002 (refits)"
    )
    damping = 2e-4
    assert (0.11 + damping) / (1e-6 + damping) <= TARGET_CONDITION
    assert conditioning_warnings(record(condition=ILL_CONDITIONED * 0.99)) == []
    (singular,) = conditioning_warnings(record(lambda_min=-1e-14, condition=None))
    assert "the Hessian is singular or indefinite (λ_min -1e-14, λ_max 0.11" in singular


def test_the_no_optimum_warning_fires_at_its_threshold_only():
    assert conditioning_warnings(record(condition=10.0, decrease=NOT_AN_OPTIMUM * 0.99)) == []
    assert conditioning_warnings(record(condition=10.0, decrease=None)) == []
    (warning,) = conditioning_warnings(record(condition=10.0, decrease=0.98, weight_decay=0.02))
    assert "would still remove 98% of the risk 0.2" in warning
    assert warning.endswith("--weight-decay ≥ 0.2")  # ten times one that did not suffice


def test_a_resumed_run_keeps_one_copy_of_the_warning(tmp_path):
    """The check is repeated on a resume (the stored fit, the same numbers): the run keeps
    the warning once, as an uninterrupted scan stores it."""
    data = DataArgs(train=separable_csv(tmp_path / "sep.csv"), test_split=0.25)
    config = ScanConfig(data, ModelArgs(weight_decay=0.0), SolverArgs(solver="exact"))
    engine = open_db(str(tmp_path / "r.db"))
    whole = scan(engine, config)

    def ctrl_c_in_the_ranking(phase, done, total):
        if phase == "ranking refits":
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        scan(engine, config, progress=ctrl_c_in_the_ranking)
    interrupted = [r.as_dict() for r in runs.list_runs(engine)][0]["id"]
    resumed = resume(engine, interrupted)
    (warning,) = whole.warnings
    assert "not at an optimum" in warning
    assert resumed.warnings == runs.get_run(engine, interrupted).as_dict()["warnings"] == [warning]


def test_without_an_optimum_both_warnings_advise_weight_decay_only():
    both = conditioning_warnings(
        record(lambda_min=-1e-14, lambda_max=1.5e-6, condition=None, decrease=0.05, weight_decay=0)
    )
    assert [w.split(":")[0] for w in both] == [
        "the Hessian is singular or indefinite (λ_min -1e-14, λ_max 1.5e-06, with "
        "--weight-decay 0 and --damping 0)",
        "the fit is not at an optimum and the Hessian there is nearly zero (λ_max 1.5e-06, "
        "|θ| 211)",
    ]
    assert all(w.endswith("use --weight-decay ≥ 0.01") for w in both)
