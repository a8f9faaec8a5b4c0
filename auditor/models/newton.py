"""Newton-CG: the fit of a convex risk with a closed-form Hessian-vector product.

Each iteration solves ``A d = -g`` (``A = H + lambda I``, the damped Hessian of the risk,
``g`` its gradient) by conjugate gradients to the relative residual ``min(0.5,
sqrt(||g||))`` (Nocedal & Wright, *Numerical Optimization*, 7.1: superlinear once the
iterates are close), then backtracks from the full step until the risk falls (Armijo). A
generalised linear model's Hessian-vector product costs two passes over the data, so an
iteration is a handful of them: on 8,000 MNIST images x 10 classes the fit is 4 Newton
iterations and 17 products (0.3 s), where L-BFGS stalled in float32 short of the tolerance.

Close to the optimum a float32 risk cannot resolve the decrease of a step (it is below the
risk's rounding), so a step whose risk is within that rounding of the current one is
accepted when it lowers the gradient norm: the iterates go on to the gradient tolerance.

The solver sees the problem only through two callables, so it is tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``(theta (p,)) -> (risk, gradient (p,))``.
RiskAndGradient = Callable[[torch.Tensor], tuple[float, torch.Tensor]]
#: ``(theta (p,), v (p,)) -> A v (p,)``, the damped Hessian of the risk at ``theta`` times ``v``.
HessianProduct = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Most conjugate-gradient steps per Newton iteration (a truncated step still descends).
CG_MAX_STEPS = 500
#: Armijo's sufficient-decrease constant.
ARMIJO = 1e-4
#: Halvings of the step before the line search gives up.
BACKTRACKS = 30
#: Multiples of the dtype's epsilon (relative to the risk) that count as "no change".
ROUNDING = 16


@dataclass
class NewtonResult:
    """Where Newton-CG stopped: ``theta`` ``(p,)``, its risk and gradient norm, the Newton
    iterations taken and the Hessian-vector products they cost."""

    theta: torch.Tensor
    risk: float
    grad_norm: float
    iterations: int
    products: int


def newton_cg(
    risk_and_gradient: RiskAndGradient,
    hessian_product: HessianProduct,
    theta: torch.Tensor,
    *,
    max_iter: int,
    grad_tol: float,
) -> NewtonResult:
    """Minimise a convex risk from ``theta`` ``(p,)`` until ``||grad|| <= grad_tol``, at most
    ``max_iter`` Newton iterations, or until no step along the Newton direction lowers the
    risk or, within its rounding, the gradient norm (then ``grad_norm`` says how far it got).
    A non-finite risk along the line search counts as no decrease: the caller checks the
    risk and gradient it ends with."""
    value, grad = risk_and_gradient(theta)
    grad_norm = float(grad.norm())
    iterations = products = 0
    eps = torch.finfo(theta.dtype).eps
    while iterations < max_iter and grad_norm > grad_tol and math.isfinite(grad_norm):
        direction, steps = _cg_direction(hessian_product, theta, grad, min(0.5, grad_norm**0.5))
        products += steps
        slope = float(grad @ direction)
        step, accepted = 1.0, None
        for _ in range(BACKTRACKS):
            candidate = theta + step * direction
            c_value, c_grad = risk_and_gradient(candidate)
            c_norm = float(c_grad.norm())
            decreased = c_value <= value + ARMIJO * step * slope
            level = c_value <= value + ROUNDING * eps * abs(value) and c_norm < grad_norm
            if decreased or level:
                accepted = (candidate, c_value, c_grad, c_norm)
                break
            step *= 0.5
        if accepted is None:
            break
        theta, value, grad, grad_norm = accepted
        iterations += 1
    return NewtonResult(theta, value, grad_norm, iterations, products)


def _cg_direction(
    hessian_product: HessianProduct, theta: torch.Tensor, grad: torch.Tensor, rtol: float
) -> tuple[torch.Tensor, int]:
    """An approximate solution ``d`` ``(p,)`` of ``A d = -grad`` by conjugate gradients from
    0, to ``||A d + grad|| <= rtol ||grad||``, and the products it took. Stops early on a
    direction of non-positive curvature (rounding, for a convex risk); the result is a
    descent direction (``-grad`` when no step was taken)."""
    direction = torch.zeros_like(grad)
    residual = -grad
    search = residual.clone()
    rr = float(residual @ residual)
    target = (rtol * float(grad.norm())) ** 2
    steps = 0
    while steps < CG_MAX_STEPS:
        product = hessian_product(theta, search)
        steps += 1
        curvature = float(search @ product)
        if not curvature > 0:
            break
        alpha = rr / curvature
        direction += alpha * search
        residual -= alpha * product
        rr_next = float(residual @ residual)
        if rr_next <= target:
            break
        search = residual + (rr_next / rr) * search
        rr = rr_next
    if not bool(direction.any()):
        return -grad, steps
    return direction, steps
