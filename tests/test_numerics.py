"""Gradients, Hessians and solvers against independent references (torch.func.hessian,
hand-written formulas, a dense solve)."""

import pytest
import torch
from torch.func import hessian

from auditor.errors import SolverError
from auditor.gradients import batch_hvp, per_example_grads
from auditor.hessian import HessianOperator
from auditor.models import build_model
from auditor.solvers import SolverArgs, solve
from auditor.training import fit, risk


@pytest.fixture(autouse=True)
def float64_default():
    """float64 for tight comparisons here only; restored so other tests keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def problem(name, task, k, n=60, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    if task == "regression":
        y = x @ torch.randn(d, generator=gen) + 0.1 * torch.randn(n, generator=gen)
    else:
        y = torch.randint(0, k, (n,), generator=gen)
    model = build_model(name, task, d, k, hidden=5)
    theta = fit(model, x, y, 0.05, seed=seed).theta
    return model, theta, x, y


MODELS = [
    ("linear", "regression", 1),
    ("logistic", "classification", 2),
    ("logistic", "classification", 3),
    ("mlp", "classification", 3),
    ("mlp", "regression", 1),
]


@pytest.mark.parametrize(("name", "task", "k"), MODELS)
def test_dense_hessian_and_hvp_match_autograd(name, task, k):
    model, theta, x, y = problem(name, task, k)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05, damping=0.1, chunk=25)
    reference = hessian(lambda t: risk(model, t, x, y, 0.05))(theta) + 0.1 * torch.eye(
        model.n_params
    )
    torch.testing.assert_close(op.dense(), reference, rtol=1e-8, atol=1e-10)
    v = torch.randn(model.n_params, 3, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), reference @ v, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("name", "task", "k"), MODELS)
def test_closed_form_hvp_matches_autograd(name, task, k):
    model, theta, x, y = problem(name, task, k)
    v = torch.randn(model.n_params, 2, dtype=torch.float64)
    reference = hessian(lambda t: model.loss(model.outputs(t, x), y).mean())(theta) @ v
    torch.testing.assert_close(batch_hvp(model, theta, x, y, v), reference)


def test_per_example_grads_match_hand_formula_for_logistic():
    model, theta, x, y = problem("logistic", "classification", 2)
    xb = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    p1 = torch.sigmoid(xb @ theta)
    expected = (p1 - y)[:, None] * xb  # d/dtheta of the log loss
    torch.testing.assert_close(per_example_grads(model, theta, x, y, chunk=7), expected)


def test_fit_reaches_an_optimum():
    model, theta, x, y = problem("logistic", "classification", 3)
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(risk(model, t, x, y, 0.05), t)
    assert g.norm() < 1e-5


@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
@pytest.mark.parametrize(("name", "task", "k"), MODELS[:3])
def test_solvers_match_dense_solve(solver, name, task, k):
    model, theta, x, y = problem(name, task, k)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05, damping=0.01)
    v = torch.randn(model.n_params, 5, dtype=torch.float64)
    expected = torch.linalg.solve(op.dense(), v)
    got, diag = solve(op, v, SolverArgs(solver=solver, tol=1e-8, damping=0.01))
    assert diag.converged
    assert diag.residual_max <= 1e-7
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_minibatch_lissa_is_close_and_reports_its_residual():
    model, theta, x, y = problem("logistic", "classification", 2, n=400)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05)
    v = torch.randn(model.n_params, 4, dtype=torch.float64)
    expected = torch.linalg.solve(op.dense(), v)
    args = SolverArgs(solver="lissa", batch_size=100, repeats=4, depth=400, tol=1e-6)
    got, diag = solve(op, v, args)
    rel = (got - expected).norm() / expected.norm()
    assert rel < 0.1
    assert diag.residual_max == pytest.approx(float(op.relative_residual(got, v).max()))
    assert not diag.converged  # stochastic LiSSA cannot reach 1e-6: it says so


def test_lissa_with_too_small_a_scale_diverges_with_advice():
    model, theta, x, y = problem("logistic", "classification", 2)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05)
    lam = op.max_eigenvalue()
    v = torch.randn(model.n_params, 2, dtype=torch.float64)
    with pytest.raises(SolverError, match=r"diverged at step \d+ .*--scale"):
        solve(op, v, SolverArgs(solver="lissa", scale=lam / 4, depth=5000))


def test_exact_rejects_an_indefinite_hessian():
    model, theta, x, y = problem("mlp", "classification", 3)
    op = HessianOperator(model, theta, x, y, weight_decay=0.0, damping=-0.0)
    op.damping = -10.0  # force a negative definite system
    with pytest.raises(SolverError, match="not positive definite"):
        solve(op, torch.randn(model.n_params, 1), SolverArgs(solver="exact"))
