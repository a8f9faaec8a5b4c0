"""Gradients, Hessians and solvers against independent references (torch.func.hessian,
hand-written formulas, a dense solve)."""

import re

import pytest
import torch
from torch.func import hessian

from auditor.config import SolverArgs
from auditor.errors import SolverError
from auditor.influence.conditioning import TARGET_CONDITION
from auditor.influence.gradients import batch_hvp, per_example_grads
from auditor.influence.hessian import HessianOperator
from auditor.influence.self_influence import self_influences
from auditor.influence.solvers import solve
from auditor.influence.solvers.lissa import _squaring
from auditor.models import build_model
from auditor.models.fit import fit, risk
from auditor.pipeline.run_record import solve_warnings


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


def test_cg_solves_zero_columns_and_columns_at_different_speeds():
    """A zero gradient (a confidently right point in float32) is A^-1 0 = 0, not a reason
    to stop the whole solve; each column stops at the tolerance by itself."""
    model, theta, x, y = problem("logistic", "classification", 3)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05, damping=0.01)
    v = torch.randn(model.n_params, 4, dtype=torch.float64)
    v[:, 1] = 0
    got, diag = solve(op, v, SolverArgs(solver="cg", tol=1e-10, damping=0.01))
    assert diag.converged and diag.reached_tol and diag.residual_max <= 1e-10
    assert torch.equal(got[:, 1], torch.zeros_like(got[:, 1]))
    torch.testing.assert_close(got, torch.linalg.solve(op.dense(), v), rtol=1e-8, atol=1e-12)
    alone, _ = solve(op, v[:, :1], SolverArgs(solver="cg", tol=1e-10, damping=0.01))
    torch.testing.assert_close(alone[:, 0], got[:, 0], rtol=1e-12, atol=1e-15)


def test_cg_out_of_iterations_is_not_converged():
    model, theta, x, y = problem("logistic", "classification", 3)  # p = 15
    op = HessianOperator(model, theta, x, y, weight_decay=1e-4)
    v = torch.randn(model.n_params, 3, dtype=torch.float64)
    _, diag = solve(op, v, SolverArgs(solver="cg", tol=1e-12, max_iter=3))
    assert diag.iterations == 3 and diag.residual_max > 1e-12
    assert not diag.converged and not diag.reached_tol


@pytest.mark.parametrize(
    ("solver", "reached_tol", "advice"),
    [
        ("cg", True, "use --dtype float64 or a looser --tol"),
        ("cg", False, "raise --damping (CG stopped at its iteration limit)"),
        ("lissa", None, "raise --depth or --damping"),
    ],
)
def test_an_unconverged_solve_warns_with_advice_that_fits_its_cause(solver, reached_tol, advice):
    record = {"solver": solver, "converged": False, "tol": 1e-6, "residual_max": 1.4e-6}
    record.update(iterations=11, reached_tol=reached_tol)
    (warning,) = solve_warnings(record)
    assert warning.startswith(f"the {solver} solve did not reach the tolerance 1e-06")
    assert warning.endswith(advice)
    assert solve_warnings({**record, "converged": True}) == []


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


def test_the_exact_solvers_damping_advice_makes_a_singular_hessian_solvable():
    """A zero feature column without weight decay: the smallest eigenvalue is rounding
    (about 1e-16, maybe positive), so "above 0" would not help; the advice must."""
    model, theta, x, y = problem("linear", "regression", 1)
    x[:, 1] = 0
    theta = fit(model, x, y, 0.0).theta
    op = HessianOperator(model, theta, x, y, weight_decay=0.0)
    with pytest.raises(SolverError, match="raise --damping to at least") as error:
        solve(op, torch.randn(model.n_params, 1), SolverArgs(solver="exact"))
    assert_damping_advice_works(str(error.value), model, theta, x, y, "exact")


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_a_negative_definite_system_gets_damping_advice_that_works(solver):
    model, theta, x, y = problem("logistic", "classification", 2)
    op = HessianOperator(model, theta, x, y, weight_decay=0.0, damping=-1.0)
    lam = float(torch.linalg.eigvalsh(op.dense().double())[-1])
    assert lam < 0  # damping -1 turns the whole spectrum negative
    with pytest.raises(SolverError, match="not positive definite") as error:
        solve(op, torch.randn(model.n_params, 3, dtype=theta.dtype), SolverArgs(solver=solver))
    assert_damping_advice_works(str(error.value), model, theta, x, y, solver)


@pytest.mark.parametrize("factor", [1e-22, 1e20])
def test_cg_solves_float32_columns_of_any_scale(factor):
    """A confidently right point's float32 gradient can be 1e-22: its d^T A d underflowed
    to 0 and CG called a healthy Hessian "not positive definite" (and huge columns
    overflowed). Columns are solved at norm 1 and scaled back."""
    model, theta, x, y = problem("logistic", "classification", 2)
    theta, x = theta.float(), x.float()
    op = HessianOperator(model, theta, x, y, weight_decay=0.01, damping=0.0)
    v = torch.randn(model.n_params, 3, generator=torch.Generator().manual_seed(0)).float()
    v[:, 1] *= factor
    got, diag = solve(op, v, SolverArgs(solver="cg", tol=1e-5))
    assert diag.converged
    want = torch.linalg.solve(op.dense().double(), v.double())
    relative = (got.double() - want).norm(dim=0) / want.norm(dim=0)
    assert relative.max() < 1e-3


def assert_damping_advice_works(message, model, theta, x, y, solver):
    """The damping a solver's error advises (the whole --damping to use) solves the system,
    with a condition number at the conditioning check's target (1e3), not merely positive
    definite."""
    advised = float(re.search(r"raise --damping to at least (\S+) ", message)[1])
    op = HessianOperator(model, theta, x, y, weight_decay=0.0, damping=advised)
    eigenvalues = torch.linalg.eigvalsh(op.dense().double())
    assert 0 < eigenvalues[-1] / eigenvalues[0] <= TARGET_CONDITION * (1 + 1e-9)
    _, diag = solve(
        op, torch.randn(model.n_params, 1, dtype=theta.dtype), SolverArgs(solver=solver)
    )
    assert diag.converged


@pytest.mark.parametrize(("name", "task", "k"), MODELS[:3])
def test_lissa_by_squaring_is_the_recursions_own_iterate(name, task, k):
    """Repeated squaring gives h_t of the step-by-step recursion at the same depth t."""
    model, theta, x, y = problem(name, task, k)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05, damping=0.01)
    assert op.dense_matvec
    v = torch.randn(model.n_params, 40, dtype=torch.float64)  # enough columns to pay
    squared, sq = solve(op, v, SolverArgs(solver="lissa", tol=1e-6, damping=0.01))
    assert sq.converged and sq.residual_max <= 1e-6
    depth = sq.iterations
    assert depth + 1 & depth == 0  # t = 2^k - 1
    # the recursion run for exactly that many steps (a tolerance it cannot meet earlier)
    plain = SolverArgs(
        solver="lissa", tol=1e-300, depth=depth, damping=0.01, squaring=False, scale=sq.scale
    )
    stepped, st = solve(op, v, plain)
    assert st.iterations == depth
    torch.testing.assert_close(squared, stepped, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(squared, torch.linalg.solve(op.dense(), v), rtol=1e-5, atol=1e-7)


def test_lissa_squaring_stops_at_depth_with_the_same_iterate():
    """A depth below the next power of two finishes step by step, at exactly that depth."""
    model, theta, x, y = problem("logistic", "classification", 2)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05)
    v = torch.randn(model.n_params, 2, dtype=torch.float64)
    common = {"solver": "lissa", "tol": 1e-300, "depth": 11, "scale": 1.0}
    squared, sq = solve(op, v, SolverArgs(**common))
    stepped, st = solve(op, v, SolverArgs(**common, squaring=False))
    assert sq.iterations == st.iterations == 11
    assert not sq.converged
    torch.testing.assert_close(squared, stepped, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "task", "k"), MODELS[:3])
def test_exact_self_influence_matches_a_dense_solve(name, task, k):
    model, theta, x, y = problem(name, task, k)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05, damping=0.01)
    grads = per_example_grads(model, theta, x, y)
    expected = -(grads * torch.linalg.solve(op.dense(), grads.T).T).sum(dim=1)
    auto, diag = self_influences(op, grads, SolverArgs(solver="lissa", damping=0.01))
    assert diag["solver"] == "exact" and diag["residual_max"] <= 1e-8
    torch.testing.assert_close(auto, expected, rtol=1e-8, atol=1e-12)
    same, diag = self_influences(
        op, grads, SolverArgs(solver="cg", damping=0.01, tol=1e-10, self_influence="same")
    )
    assert diag["solver"] == "cg"
    torch.testing.assert_close(same, expected, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("self_influence", ["auto", "same"])
@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
def test_no_columns_give_an_empty_solve(solver, self_influence):
    """A rank whose share of the training points is empty solves nothing, cleanly."""
    model, theta, x, y = problem("logistic", "classification", 3)
    op = HessianOperator(model, theta, x, y, weight_decay=0.05, damping=0.01)
    args = SolverArgs(solver=solver, damping=0.01, self_influence=self_influence)
    got, diag = solve(op, torch.zeros(model.n_params, 0), args)
    assert got.shape == (model.n_params, 0) and diag.converged and diag.iterations == 0
    values, _ = self_influences(op, torch.zeros(0, model.n_params), args)
    assert values.shape == (0,)


@pytest.mark.parametrize("m", [2, 40])  # fewer columns than parameters, and more
def test_squaring_keeps_the_partial_sum_as_columns_or_matrix_alike(m):
    model, theta, x, y = problem("logistic", "classification", 3)  # p = 15
    op = HessianOperator(model, theta, x, y, weight_decay=0.05)
    v = torch.randn(model.n_params, m, dtype=torch.float64)
    args = SolverArgs(solver="lissa", tol=1e-7)
    scale = 1.1 * op.max_eigenvalue()
    squared, t = _squaring(op, v, args, scale, scale, [])
    assert t + 1 & t == 0 and t > 0
    plain = SolverArgs(solver="lissa", tol=1e-300, depth=t, scale=scale, squaring=False)
    stepped, diag = solve(op, v, plain)
    assert diag.iterations == t
    torch.testing.assert_close(squared / scale, stepped, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_exact_solve_of_one_column_equals_it_solved_with_others(dtype):
    """A shard or a resume may solve a test point alone: the result equals the one solved
    with others up to the rounding of a backward-stable solve, ``cond(A) * eps`` relative
    (bit for bit on many machines, but BLAS may pick other kernels for one column: on AMD
    EPYC the float64 results differ in the last bits)."""
    model, theta, x, y = problem("logistic", "classification", 3)
    op = HessianOperator(model, theta.to(dtype), x.to(dtype), y, weight_decay=0.05)
    v = torch.randn(model.n_params, 7, dtype=dtype)
    together, _ = solve(op, v, SolverArgs(solver="exact"))
    a = op.dense().double()
    bound = 10 * float(torch.linalg.cond(a)) * torch.finfo(dtype).eps
    for j in range(7):
        alone, _ = solve(op, v[:, j : j + 1], SolverArgs(solver="exact"))
        error = float((alone[:, 0] - together[:, j]).norm() / together[:, j].norm())
        assert error <= bound, (j, error, bound)


def test_autograd_hvps_in_column_chunks_equal_the_dense_hessian(monkeypatch):
    """A bounded number of (example, column) pairs per autograd call (here 3 columns of
    the MLP's 60 examples at a time) gives the dense Hessian times each column."""
    from auditor.influence import gradients

    model, theta, x, y = problem("mlp", "classification", 3)
    theta, x = theta.double(), x.double()
    v = torch.randn(model.n_params, 10, dtype=torch.float64)
    dense = hessian(lambda t: model.loss(model.outputs(t, x), y).mean())(theta)
    monkeypatch.setattr(gradients, "HVP_EXAMPLE_COLUMNS", 3 * x.shape[0])
    assert torch.allclose(batch_hvp(model, theta, x, y, v), dense @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lambda_max", [0.0, float("inf"), float("nan")])
def test_lissa_refuses_a_scale_that_is_not_positive_and_finite(monkeypatch, lambda_max):
    """A Hessian that overflowed in float32 gave a largest eigenvalue of 0 and a
    ZeroDivisionError inside the recursion (regression targets around 1e10)."""
    model, theta, x, y = problem("logistic", "classification", 2)
    op = HessianOperator(model, theta, x, y, weight_decay=0.01)
    monkeypatch.setattr(op, "max_eigenvalue", lambda seed=0: lambda_max)
    with pytest.raises(SolverError, match="LiSSA needs a positive scale"):
        solve(op, torch.randn(model.n_params, 2), SolverArgs(solver="lissa"))
