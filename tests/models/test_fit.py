"""The fit: Newton-CG for the convex models against float64 Newton references (the normal
equations for a ridge regression), L-BFGS for the others, and the iteration limit."""

from __future__ import annotations

import pytest
import torch

from auditor.models import build_model
from auditor.models.fit import fit, risk
from auditor.models.newton import newton_cg


def _regression(n: int = 200, d: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = x @ torch.randn(d, generator=gen) + 0.1 * torch.randn(n, generator=gen) + 3.0
    return x, y


def _classes(n: int = 300, d: int = 20, k: int = 4, seed: int = 0):
    """Overlapping Gaussian classes, features of mixed scales (a harder float32 problem)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = 2.0 * torch.randn(k, d, generator=gen)
    scales = torch.logspace(-1, 1, d)
    x = (centres[y] + 1.5 * torch.randn(n, d, generator=gen)) * scales
    return x, y


def _ridge_optimum(x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """The minimiser of mean 0.5 (y - [x, 1] theta)^2 + wd/2 |theta|^2 in float64."""
    model = build_model("linear", "regression", x.shape[1], 1)
    xd, yd = x.double(), y.double()
    theta = torch.zeros(model.n_params, dtype=torch.float64)
    hessian = model.loss_hessian(theta, xd, yd) + weight_decay * torch.eye(model.n_params).double()
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.loss(model.outputs(t, xd), yd).mean(), t)
    return -torch.linalg.solve(hessian, g + weight_decay * theta)


def _newton_reference(model, x, y, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimum of a convex risk by plain float64 Newton steps with the dense Hessian
    (an independent path: no CG, no line search), and the damped Hessian there."""
    xd = x.double()
    theta = torch.zeros(model.n_params, dtype=torch.float64)
    eye = torch.eye(model.n_params, dtype=torch.float64)
    for _ in range(50):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(risk(model, t, xd, y, weight_decay), t)
        hessian = model.loss_hessian(theta, xd, y) + weight_decay * eye
        if float(g.norm()) < 1e-13:
            break
        theta = theta - torch.linalg.solve(hessian, g)
    return theta, hessian


def _quadratic(a: torch.Tensor, b: torch.Tensor):
    """R(t) = 0.5 t^T A t - b^T t and its gradient, for :func:`newton_cg`."""
    return lambda t: (float(0.5 * t @ a @ t - b @ t), a @ t - b)


def test_newton_cg_lands_on_a_quadratics_minimum():
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    start = torch.zeros(3, dtype=torch.float64)
    found = newton_cg(_quadratic(a, b), lambda t, v: a @ v, start, max_iter=50, grad_tol=1e-12)
    assert found.grad_norm <= 1e-12 and found.risk == pytest.approx(-0.5 * float(b @ found.theta))
    torch.testing.assert_close(found.theta, torch.linalg.solve(a, b), rtol=0, atol=1e-12)
    # A = 3 I: one CG step solves A d = -g exactly, and the full Newton step is taken
    a = 3.0 * torch.eye(3, dtype=torch.float64)
    found = newton_cg(_quadratic(a, b), lambda t, v: a @ v, start, max_iter=50, grad_tol=1e-12)
    assert (found.iterations, found.products) == (1, 1)
    torch.testing.assert_close(found.theta, b / 3.0, rtol=0, atol=1e-15)


def test_a_ridge_fit_reaches_the_normal_equations():
    x, y = _regression()
    wd = 0.01
    model = build_model("linear", "regression", x.shape[1], 1)
    result = fit(model, x, y, wd, grad_tol=1e-6)
    assert result.converged and result.grad_norm <= 1e-6 and result.iterations <= 10
    assert torch.allclose(result.theta.double(), _ridge_optimum(x, y, wd), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("k", "weight_decay"), [(2, 1e-2), (4, 1e-2), (4, 1e-4)])
def test_a_float32_logistic_fit_reaches_the_float64_optimum(k, weight_decay):
    """To a gradient norm of 1e-6 in float32, and to the float64 optimum within what the
    conditioning allows: |theta - theta*| <= |A^-1| |g| (g the float32 fit's gradient,
    measured in float64), plus float32 rounding of theta itself."""
    x, y = _classes(k=k)
    model = build_model("logistic", "classification", x.shape[1], k)
    result = fit(model, x, y, weight_decay, grad_tol=1e-6)
    assert result.converged and result.grad_norm <= 1e-6
    optimum, hessian = _newton_reference(model, x, y, weight_decay)
    t = result.theta.double().requires_grad_(True)
    (g,) = torch.autograd.grad(risk(model, t, x.double(), y, weight_decay), t)
    smallest = float(torch.linalg.eigvalsh(hessian)[0])
    bound = float(g.norm()) / smallest + 1e-6 * float(optimum.norm())
    assert float((result.theta.double() - optimum).norm()) <= bound


def test_a_warm_start_at_the_optimum_takes_no_step():
    x, y = _classes()
    model = build_model("logistic", "classification", x.shape[1], 4)
    first = fit(model, x, y, 0.01, grad_tol=1e-6)
    again = fit(model, x, y, 0.01, grad_tol=1e-6, theta0=first.theta)
    assert again.iterations == 0 and torch.equal(again.theta, first.theta)


def test_the_fit_respects_the_iteration_limit():
    """max_iter=1 asks for a fit cut short: one Newton step, not converged."""
    x, y = _classes()
    model = build_model("logistic", "classification", x.shape[1], 4)
    short = fit(model, x, y, 0.01, max_iter=1)
    assert short.iterations == 1 and not short.converged and short.grad_norm > 1e-5
    full = fit(model, x, y, 0.01)
    assert full.converged and full.grad_norm <= 1e-5


def test_a_non_convex_model_is_fitted_by_lbfgs():
    x, y = _classes(k=2)
    x = x.double()  # float32 L-BFGS can stall short of 1e-5 on these mixed scales
    model = build_model("mlp", "classification", x.shape[1], 2, hidden=4)
    assert not model.convex_risk and build_model("logistic", "classification", 2, 2).convex_risk
    result = fit(model, x, y, 0.01)
    assert result.converged and result.grad_norm <= 1e-5 and result.iterations > 10


@pytest.mark.parametrize("threads", [1, 2])
def test_the_first_commands_toy_fit_reaches_its_optimum_with_any_thread_count(threads):
    """README's first command scans toy-linear (its y = 100 outliers included): in float32
    Newton-CG reaches the ridge optimum at the default weight decay whatever the thread
    count (L-BFGS stalled at a gradient norm of 1e-2 on AMD EPYC)."""
    from auditor.config import DataArgs
    from auditor.models.weight_decay import default_weight_decay
    from auditor.pipeline.loading import dataset_tensors, load_data

    train, _ = load_data(DataArgs(train="toy-linear"))
    x, y = dataset_tensors(train, torch.device("cpu"), torch.float32)
    model = build_model("linear", "regression", x.shape[1], 1)
    wd = default_weight_decay(model, x, y, seed=0, fit_kwargs={}).weight_decay
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = fit(model, x, y, wd, grad_tol=1e-6)
    finally:
        torch.set_num_threads(before)
    assert result.converged and result.grad_norm <= 1e-6
    optimum = _ridge_optimum(x, y, wd)
    assert float((result.theta.double() - optimum).norm()) <= 1e-4 * float(optimum.norm())
