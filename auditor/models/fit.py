"""Fit a model to the regularised empirical risk and record how close it got to an optimum.

R(theta) = mean_i L(z_i, theta) + (weight_decay / 2) * ||theta||^2. Influence functions
assume grad R = 0, so the final gradient norm is recorded and checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from auditor.errors import SolverError
from auditor.models.base import ModelTask


@dataclass
class FitResult:
    """The fitted parameters ``theta`` ``(p,)`` and how the fit ended."""

    theta: torch.Tensor
    risk: float
    grad_norm: float
    iterations: int
    converged: bool
    #: The embeddings ``(n, h)`` of the training points the head of a model with a frozen
    #: body was fitted over (:meth:`~auditor.models.ModelTask.frozen_features`), else None.
    features: torch.Tensor | None = None


def risk(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """Regularised empirical risk (scalar) over ``x`` ``(n, d)`` and ``y`` ``(n,)``."""
    return model.loss(model.outputs(theta, x), y).mean() + 0.5 * weight_decay * theta.dot(theta)


def fit(
    model: ModelTask,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    *,
    seed: int = 0,
    max_iter: int = 2000,
    grad_tol: float = 1e-5,
    theta0: torch.Tensor | None = None,
) -> FitResult:
    """Minimise the risk with full-batch L-BFGS (strong Wolfe line search).

    Args:
        model: The model.
        x: ``(n, d)`` features.
        y: ``(n,)`` targets.
        weight_decay: L2 coefficient (lambda above).
        seed: Seeds the starting point of non-convex models (and their minibatch
            :meth:`~auditor.models.ModelTask.pretrain`, run first when ``theta0`` is None).
        max_iter: Most L-BFGS iterations; 0 (a model's ``max_polish_iter`` of 0) keeps
            the starting point and only measures the risk and its gradient there.
        grad_tol: Stop when ``||grad R|| <= grad_tol``; ``converged`` records whether it did.
        theta0: Optional warm start ``(p,)``.

    A model with a frozen body (:meth:`~auditor.models.ModelTask.frozen_features`) has its
    head fitted over the body's embeddings of ``x``, computed once (and returned).
    """
    gen = torch.Generator().manual_seed(seed)
    if theta0 is None:
        theta0 = model.pretrain(x, y, weight_decay, seed)
    max_iter = min(max_iter, getattr(model, "max_polish_iter", max_iter))
    features = model.frozen_features(x)
    if features is not None:
        if model.head is None:
            raise TypeError(f"model {model.name!r} has frozen features but no head to fit")
        head = fit(
            model.head,
            features,
            y,
            weight_decay,
            seed=seed,
            max_iter=max_iter,
            grad_tol=grad_tol,
            theta0=theta0,
        )
        return replace(head, features=features)
    theta = model.init_params(gen, x.dtype).to(x.device) if theta0 is None else theta0.clone()
    if max_iter < 1:  # a model used as trained (--model-file, --fit none): measured only
        grad_norm = _grad_norm(model, theta, x, y, weight_decay)
        with torch.no_grad():
            value = float(risk(model, theta, x, y, weight_decay))
        return FitResult(theta.detach(), value, grad_norm, 0, grad_norm <= grad_tol)
    theta.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=grad_tol / theta.numel() ** 0.5,  # L-BFGS checks the max-norm
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = risk(model, theta, x, y, weight_decay)
        torch.autograd.backward(value)  # value.backward(), typed (torch leaves it unannotated)
        return value

    # L-BFGS can stop early on a stalled line search; a restart from there often goes on.
    try:
        for _ in range(3):
            optimizer.step(closure)  # type: ignore[no-untyped-call]  # LBFGS.step is unannotated
            grad_norm = _grad_norm(model, theta, x, y, weight_decay)
            if grad_norm <= grad_tol:
                break
    except RuntimeError as exc:  # torch refuses a step that overflows float32/float64
        if "overflow" not in str(exc):
            raise
        raise SolverError(
            f"the fit overflowed ({exc}); the feature or target values are too large: "
            "scale them, or use --dtype float64"
        ) from None
    theta = theta.detach()
    iterations = optimizer.state[optimizer._params[0]].get("n_iter", 0)
    budget = min(NEWTON_STEPS, max_iter - int(iterations))  # a stall, not the iteration cap
    if (
        grad_norm > grad_tol
        and budget > 0
        and model.has_closed_form_hessian
        and theta.numel() <= NEWTON_MAX_PARAMS
    ):
        theta, grad_norm, steps = _newton_polish(
            model, theta, x, y, weight_decay, grad_norm, budget
        )
        iterations += steps
    return FitResult(
        theta=theta,
        risk=float(risk(model, theta, x, y, weight_decay)),
        grad_norm=grad_norm,
        iterations=int(iterations),
        converged=grad_norm <= grad_tol,
    )


#: Largest ``p`` whose dense Hessian a stalled fit is polished with (``p^2`` floats).
NEWTON_MAX_PARAMS = 8192
#: Newton steps of the polish; a convex risk needs one or two from where L-BFGS stalls.
NEWTON_STEPS = 5


def _newton_polish(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float,
    grad_norm: float,
    steps: int,
) -> tuple[torch.Tensor, float, int]:
    """Newton steps ``theta - (H + lambda I)^{-1} g`` (solved in float64) from where L-BFGS
    stalled, for a model with a closed-form Hessian: L-BFGS's line search can stall short of
    the optimum in float32 (seen on AMD EPYC: toy-linear at gradient norm 1e-2), while the
    convex risk of a generalised linear model is quadratic or nearly so. A step is kept only
    if it lowers the gradient norm; at most ``steps``. Returns the parameters ``(p,)``, their
    gradient norm and the steps kept."""
    eye = torch.eye(theta.numel(), dtype=torch.float64, device=theta.device)
    taken = 0
    for _ in range(steps):
        t = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(risk(model, t, x, y, weight_decay), t)
        loss_hessian = model.loss_hessian(theta, x, y)
        if loss_hessian is None:  # no closed form after all: nothing to polish with
            break
        hessian = loss_hessian.double() + weight_decay * eye
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info) != 0:
            break
        step = torch.cholesky_solve(g.double().unsqueeze(1), factor).squeeze(1)
        candidate = (theta.double() - step).to(theta.dtype)
        norm = _grad_norm(model, candidate, x, y, weight_decay)
        if not norm < grad_norm:
            break
        theta, grad_norm, taken = candidate, norm, taken + 1
    return theta, grad_norm, taken


def _grad_norm(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> float:
    t = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(risk(model, t, x, y, weight_decay), t)
    return float(g.norm())
