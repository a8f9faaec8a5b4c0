"""The fit: L-BFGS, and the Newton polish of a stalled fit of a model with a closed-form
Hessian, against the float64 normal equations."""

from __future__ import annotations

import torch

from auditor.models import build_model
from auditor.models.fit import _grad_norm, _newton_polish, fit


def _regression(n: int = 200, d: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = x @ torch.randn(d, generator=gen) + 0.1 * torch.randn(n, generator=gen) + 3.0
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


def test_a_newton_polish_reaches_the_normal_equations_from_a_stalled_point():
    x, y = _regression()
    wd = 0.01
    model = build_model("linear", "regression", x.shape[1], 1)
    optimum = _ridge_optimum(x, y, wd)
    stalled = (optimum + 0.05 * torch.randn(optimum.shape[0], dtype=torch.float64)).float()
    start = _grad_norm(model, stalled, x, y, wd)
    theta, norm, steps = _newton_polish(model, stalled, x, y, wd, start, steps=5)
    assert start > 1e-2 and norm < 1e-5 and 1 <= steps <= 5
    assert torch.allclose(theta.double(), optimum, rtol=0, atol=1e-5)


def test_the_polish_respects_the_iteration_limit():
    """max_iter=1 asks for a fit cut short: no Newton steps beyond it."""
    x, y = _regression()
    model = build_model("linear", "regression", x.shape[1], 1)
    short = fit(model, x, y, 0.01, max_iter=1)
    assert not short.converged and short.grad_norm > 1e-3  # no Newton step finished it
    full = fit(model, x, y, 0.01)
    assert full.converged and full.grad_norm <= 1e-5


def test_the_polish_stops_building_hessians_once_the_gradient_is_small(monkeypatch):
    # a linear regression's Newton step lands on the optimum: one build, not five
    x, y = _regression()
    wd = 0.01
    model = build_model("linear", "regression", x.shape[1], 1)
    stalled = (_ridge_optimum(x, y, wd) + 0.05).float()
    start = _grad_norm(model, stalled, x, y, wd)
    builds = []
    real = model.loss_hessian
    monkeypatch.setattr(model, "loss_hessian", lambda *a: builds.append(1) or real(*a))
    theta, norm, steps = _newton_polish(model, stalled, x, y, wd, start, 5, grad_tol=1e-5)
    assert norm <= 1e-5 and steps == 1 and len(builds) == 1
    builds.clear()
    _newton_polish(model, stalled, x, y, wd, start, 5)  # no tolerance: tries every step
    assert len(builds) >= 2
