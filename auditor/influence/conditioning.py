"""Whether influence is well-posed at the fit: two cheap checks of the damped Hessian.

Influence needs ``A = H + (weight_decay + damping) I`` to be safely invertible at an optimum
of the risk. Two ways it is not, both measured on every scan whatever the solver:

1. **Nearly singular A.** Its condition number ``lambda_max / lambda_min`` is at least
   :data:`ILL_CONDITIONED`. Scores then follow A's flattest directions, where the fit and
   the float32 solve are least accurate (``cond(A) * 6e-8`` relative at best).
2. **No optimum.** With separable classes and no weight decay the risk has no minimum: the
   fit stops where the gradient is small only because the curvature is as small, and
   H is about 0 everywhere, however well conditioned. The share of the risk ``R`` that one
   exact line-search step along the gradient ``g`` would still remove on the quadratic
   model, ``|g|^2 / (2 (u^T H_R u) R)`` (``u = g / |g|``, ``H_R = A - damping I`` the risk's
   own Hessian), does not depend on the scale of the loss or of the parameters and is at
   most the Newton decrement's estimate of ``R - min R`` over ``R``. At an optimum it is
   about ``grad_tol^2 / (2 lambda R)`` (below 1e-7 on every healthy setting measured); at
   least :data:`NOT_AN_OPTIMUM` the fit is not at one. Damping does not change it:
   it changes the solve, not the fit.

The extreme eigenvalues come from Lanczos (:data:`LANCZOS_STEPS` steps, full
reorthogonalisation) started from a random combination of the training gradients, the
directions influence uses (pair scores and self-influences live in their span). Rounding
may bring in others, but not reliably: without the factor (below), a singular direction
outside the span, such as a duplicated feature column's, can go unseen (a regression with
one: condition number 1.9 after 3 steps, while ``--solver exact`` refuses its A);
``lambda_max`` from Lanczos on ``A``, ``lambda_min`` from a block Krylov run on ``A^{-1}``
through the Cholesky factor (:func:`block_krylov_largest`, started from the gradients'
combination and random directions, which also catch a singular direction outside their
span) when the scan already holds one (``--solver exact``, or the ranking's
self-influences from the factor: the default for every model with a closed-form Hessian up
to 20,000 parameters), and otherwise (CG or LiSSA on an MLP, a CNN with ``--params all``,
more parameters, or ``--self-influence same``) from Lanczos on ``A`` too, which only bounds
it from above (the condition number from below: a warning is then never false, but may be
missed). Cost: 11 to 25 ms per scan on the Xeon for the benchmark's 1-vs-7 logistic
regression and CNN; 0.8 s for case 2 (p = 7,850) on the AMD EPYC, whose one-column
triangular solves are slow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, TypedDict

import torch

from auditor.data import Task
from auditor.influence.gradients import TrainGradients, row_blocks
from auditor.influence.hessian import HessianOperator

#: Condition number of A at and above which a run is warned. The healthy settings of
#: benchmarks/detection.py reach at most 8.3e3 (10-class CNN, 30% class flips; 1-vs-7
#: logistic regression at most 1.7e2); 1-vs-7 with 10% flips reaches 1.1e5 at weight
#: decay 1e-6 (harmfulness AUROC 0.79 against 0.997 at 1e-3) and 5e7 or more without.
ILL_CONDITIONED = 1e5
#: Condition number the damping advice aims at (a factor 100 below the warning).
TARGET_CONDITION = 1e3
#: Share of the risk a gradient step would still remove at and above which the fit is not
#: at an optimum. Healthy settings measure 1e-11 to 1e-7; separable data without weight
#: decay 0.03 to 0.5 (MNIST 1-vs-7, toys).
NOT_AN_OPTIMUM = 1e-3
#: Weight decay advised when the fit has no optimum and the weight decay is below it.
ADVISED_WEIGHT_DECAY = 0.01
#: Lanczos steps for each extreme eigenvalue.
LANCZOS_STEPS = 30
#: Relative accuracy at which a Lanczos run that only needs its largest Ritz value stops
#: (the condition number is reported to three digits).
RITZ_TOL = 1e-4
#: Columns and steps of the block Krylov run on ``A^-1`` through the Cholesky factor: a
#: triangular solve of a few columns costs about what one column costs (it reads the
#: ``p x p`` factor either way: 75 ms at p = 7,850 on the development machine). On case
#: 2's factor 8 solves of 8 columns took 0.79 s against 2.49 s for 30 one-column Lanczos
#: steps, and agreed with them on 1 / lambda_min to 4e-4 (4 solves: 0.35 s, 1.2e-3).
INVERSE_BLOCK = 8
INVERSE_BLOCK_STEPS = 8

Matvec = Callable[[torch.Tensor], torch.Tensor]
#: How ``lambda_min`` was measured (:func:`extreme_eigenvalues`).
Method = Literal["factor", "lanczos"]


class ExtremeEigenvalues(TypedDict):
    """What :func:`extreme_eigenvalues` measures of ``A``.

    Attributes:
        lambda_min / lambda_max: The extreme eigenvalues, ``None`` when not finite (JSON,
            which the run is stored as, has no infinity).
        condition: ``lambda_max / lambda_min``, ``None`` when either is not positive
            (singular or indefinite).
        method: ``factor`` (``lambda_min`` through the cached Cholesky factor) or
            ``lanczos`` (``lambda_min`` an upper bound, from Lanczos on ``A``).
        steps: Lanczos steps taken, on ``A`` and on ``A^{-1}`` together.
    """

    lambda_min: float | None
    lambda_max: float | None
    condition: float | None
    method: Method
    steps: int


class Conditioning(ExtremeEigenvalues):
    """The run's ``solver.conditioning`` record (:func:`check_conditioning`), stored as
    JSON with these keys in this order and read back by :func:`conditioning_warnings`.

    Attributes:
        decrease: The share of the risk a gradient step would still remove
            (:func:`relative_decrease`); ``None`` for regression or a curvature along the
            gradient that is not positive.
        risk: The regularised risk at the fit.
        theta_norm: ``||theta||`` at the fit.
        weight_decay / damping: The shift of ``A``'s two parts.
        seconds: What the check took.
    """

    decrease: float | None
    risk: float
    theta_norm: float
    weight_decay: float
    damping: float
    seconds: float


def lanczos_extremes(
    matvec: Matvec,
    start: torch.Tensor,
    steps: int = LANCZOS_STEPS,
    breakdown: float = 1e-12,
    largest_tol: float = 0.0,
) -> tuple[float, float, int]:
    """The smallest and largest Ritz values of the symmetric operator ``matvec`` after
    ``steps`` Lanczos steps from ``start`` ``(p,)`` (fewer once the Krylov space closes:
    a new direction shorter than ``breakdown`` times the largest Ritz value so far, the
    operator's own rounding), and the steps taken. Vectors are kept in float64 and fully
    reorthogonalised; ``matvec`` takes and returns ``(p, 1)`` float64 columns. The Ritz
    values lie inside the spectrum (restricted to the Krylov space of ``start``): the
    smallest bounds the smallest eigenvalue from above, the largest the largest from below,
    and the largest converges within a few steps. With ``largest_tol`` > 0 (a caller that
    only reads the largest) it stops once the largest Ritz value is within ``largest_tol``
    of it, relatively, of an eigenvalue: its residual ``beta |s_last|`` (``s`` the Ritz
    vector in the Krylov basis) bounds that distance (Parlett, *The Symmetric Eigenvalue
    Problem*, 13.2)."""
    q = start.detach().to(torch.float64).reshape(-1, 1)
    steps = min(steps, q.shape[0])
    basis = q.new_empty(q.shape[0], steps)  # orthonormal Lanczos vectors, by column
    basis[:, :1] = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for step in range(steps):
        current = basis[:, step : step + 1]
        w = matvec(current)
        alphas.append(float((current * w).sum()))
        known = basis[:, : step + 1]
        for _ in range(2):  # twice is enough (Kahan, Parlett)
            w = w - known @ (known.T @ w)
        beta = float(w.norm())
        if step == steps - 1 or not beta > breakdown * max(abs(a) for a in alphas):
            break
        if largest_tol > 0 and _largest_converged(alphas, betas, beta, largest_tol):
            break
        betas.append(beta)
        basis[:, step + 1 : step + 2] = w / beta
    ritz = torch.linalg.eigvalsh(_tridiagonal(alphas, betas))
    return float(ritz[0]), float(ritz[-1]), len(alphas)


def block_krylov_largest(
    apply: Matvec, start: torch.Tensor, steps: int, breakdown: float = 1e-12
) -> tuple[float, int]:
    """The largest Ritz value of the symmetric operator ``apply`` (``(p, b)`` float64
    columns in and out) on the block Krylov space of ``start`` ``(p, b)`` after ``steps``
    applications, and the columns it applied to. Each new block is orthogonalised against
    all before it (twice) and orthonormalised by QR; directions shorter than ``breakdown``
    times the largest image are dropped (the space has closed in them). Like Lanczos's,
    the value bounds the largest eigenvalue from below."""
    q, r = torch.linalg.qr(start)
    q = q[:, _kept(r, breakdown * float(start.norm(dim=0).max()))]
    basis: list[torch.Tensor] = []
    images: list[torch.Tensor] = []
    applied = 0
    for step in range(steps):
        if q.shape[1] == 0:
            break
        w = apply(q)
        applied += q.shape[1]
        basis.append(q)
        images.append(w)
        if step == steps - 1:
            break
        known = torch.cat(basis, dim=1)
        for _ in range(2):
            w = w - known @ (known.T @ w)
        q, r = torch.linalg.qr(w)
        largest = max(float(image.norm(dim=0).max()) for image in images)
        q = q[:, _kept(r, breakdown * largest)]
    q_all, w_all = torch.cat(basis, dim=1), torch.cat(images, dim=1)
    t = q_all.T @ w_all
    return float(torch.linalg.eigvalsh((t + t.T) / 2)[-1]), applied


def _kept(r: torch.Tensor, threshold: float) -> torch.Tensor:
    """The columns of a QR factorisation whose ``|R_ii|`` exceeds ``threshold``: the
    directions that are new (a boolean mask)."""
    return r.diagonal().abs() > threshold


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """Lanczos's ``T`` ``(k, k)`` from its diagonal ``alphas`` (k) and off-diagonal ``betas``."""
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _largest_converged(alphas: list[float], betas: list[float], beta: float, tol: float) -> bool:
    """Whether the largest Ritz value of ``T`` is within ``tol`` (relative) of an eigenvalue,
    ``beta`` being the norm of the next Lanczos direction."""
    values, vectors = torch.linalg.eigh(_tridiagonal(alphas, betas))
    return beta * abs(float(vectors[-1, -1])) <= tol * abs(float(values[-1]))


def float64_matvec(op: HessianOperator) -> Matvec:
    """``A v`` as :func:`lanczos_extremes` takes it: ``v`` ``(p, 1)`` in float64, applied in
    the parameters' dtype, returned in float64."""
    return lambda v: op.matvec(v.to(op.theta.dtype)).to(torch.float64)


def extreme_eigenvalues(op: HessianOperator, start: torch.Tensor) -> ExtremeEigenvalues:
    """``lambda_min``, ``lambda_max`` and ``condition`` of ``A`` (``None`` when ``lambda_min``
    is not positive: singular or indefinite; JSON, which the run is stored as, has no
    infinity) from Lanczos started at ``start`` ``(p,)``, with ``method``: ``factor``
    (``lambda_min`` through the cached Cholesky factor) or ``lanczos`` (an upper bound)."""
    factor = op.cached_cholesky()
    # With the factor only the largest Ritz value of each run is read: it converges first.
    largest_tol = RITZ_TOL if factor is not None else 0.0
    low, high, taken = lanczos_extremes(
        float64_matvec(op), start, LANCZOS_STEPS, _rounding(op.theta.dtype), largest_tol
    )
    method: Method = "lanczos"
    if factor is not None:

        def a_inverse_times(v: torch.Tensor) -> torch.Tensor:
            return torch.cholesky_solve(v.to(factor.dtype), factor).to(torch.float64)

        # the start and random directions: a singular direction outside the gradients'
        # span shows too
        gen = torch.Generator().manual_seed(0)
        extra = torch.randn(op.p, INVERSE_BLOCK - 1, generator=gen, dtype=torch.float64)
        block = torch.cat([start.to(torch.float64).reshape(-1, 1), extra.to(start.device)], 1)
        inverse_high, inverse_taken = block_krylov_largest(
            a_inverse_times, block, INVERSE_BLOCK_STEPS, _rounding(factor.dtype)
        )
        taken += inverse_taken
        if inverse_high > 0:
            low, method = 1.0 / inverse_high, "factor"
    condition = high / low if low > 0 and high > 0 else None
    return {
        "lambda_min": _finite(low),
        "lambda_max": _finite(high),
        "condition": condition,
        "method": method,
        "steps": taken,
    }


def relative_decrease(op: HessianOperator, grad: torch.Tensor, risk: float) -> float | None:
    """The share of the risk ``risk`` that an exact line-search step along the gradient
    ``grad`` ``(p,)`` would still remove on the quadratic model (module docstring); 0 for
    a zero gradient or risk, ``None`` when the curvature along the gradient is not positive
    (the condition number and the solvers report an indefinite Hessian)."""
    g = grad.detach().to(torch.float64)
    norm = float(g.norm())
    if norm == 0 or not risk > 0:
        return 0.0
    u = (g / norm).reshape(-1, 1)
    curvature = float((u * float64_matvec(op)(u)).sum())
    curvature -= op.damping  # the risk's own Hessian: damping changes the solve, not the fit
    if not curvature > 0:
        return None
    return norm**2 / (2 * curvature * risk)


def gradient_sums(
    train_grads: TrainGradients, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the per-example gradients ``G`` ``(n, p)`` the scan has anyway:
    ``G^T w`` ``(p,)`` for ``weights`` ``(n,)``, and ``sum_i g_i`` ``(p,)`` in float64 (at
    an optimum the mean gradient is many orders of magnitude below its terms)."""
    p, device = train_grads.shape[1], weights.device
    weighted = torch.zeros(p, dtype=train_grads.dtype, device=device)
    total = torch.zeros(p, dtype=torch.float64, device=device)
    for i0, rows in row_blocks(train_grads, 256):
        weighted += rows.T @ weights[i0 : i0 + rows.shape[0]]
        total += rows.to(torch.float64).sum(dim=0)
    return weighted, total


def check_conditioning(
    op: HessianOperator,
    train_grads: TrainGradients,
    risk: float,
    seed: int = 0,
    task: Task = "classification",
) -> Conditioning:
    """What the run stores under ``solver.conditioning``: the extreme eigenvalues and
    condition number of ``A``, the share of the risk a gradient step would still remove
    (classification only, ``None`` for regression: a squared loss is bounded below by a
    quadratic, so its risk has a minimum, and a risk near 0 there, a noiseless target, is
    an optimum whose share is rounding over rounding), what they were measured with and
    the seconds it took."""
    start_time = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(train_grads.shape[0], generator=gen, dtype=train_grads.dtype)
    weighted, total = gradient_sums(train_grads, weights.to(train_grads.device))
    start = weighted.to(torch.float64)
    if not float(start.norm()) > 0:  # every gradient is 0: any direction will do
        start = torch.randn(op.p, generator=gen, dtype=torch.float64).to(train_grads.device)
    extremes = extreme_eigenvalues(op, start)
    # grad R = mean_i grad L_i + weight_decay * theta
    n = max(train_grads.shape[0], 1)
    grad = total / n + op.weight_decay * op.theta.to(torch.float64)
    return {
        **extremes,
        "decrease": relative_decrease(op, grad, risk) if task == "classification" else None,
        "risk": risk,
        "theta_norm": float(op.theta.norm()),
        "weight_decay": op.weight_decay,
        "damping": op.damping,
        "seconds": time.perf_counter() - start_time,
    }


def conditioning_warnings(c: Conditioning | None) -> list[str]:
    """One line per check that failed, saying what is wrong and which option fixes it.
    Without an optimum only weight decay helps (damping changes the solve, not the fit),
    so the condition number's advice then names weight decay alone."""
    if not c:
        return []
    lo, hi, wd, damping = c["lambda_min"], c["lambda_max"], c["weight_decay"], c["damping"]
    if lo is None or hi is None:  # the operator gave non-finite values: the solve says so
        return []
    decrease = c.get("decrease")
    no_optimum = decrease is not None and decrease >= NOT_AN_OPTIMUM
    advised = max(ADVISED_WEIGHT_DECAY, 10 * wd)
    warnings: list[str] = []
    condition = c["condition"]
    if condition is None or condition >= ILL_CONDITIONED:
        if condition is not None:
            what = f"nearly singular (condition number {condition:.2g}: λ_min {lo:.2g}"
        else:
            what = f"singular or indefinite (λ_min {lo:.2g}"
        if no_optimum:
            advice = f"--weight-decay ≥ {max(advised, advised_shift(lo, hi, wd)):g}"
        else:
            advice = (
                f"--damping ≥ {advised_shift(lo, hi, damping):g} (keeps the fit) or "
                f"--weight-decay ≥ {advised_shift(lo, hi, wd):g} (refits)"
            )
        warnings.append(
            f"the Hessian is {what}, λ_max {hi:.2g}, with --weight-decay {wd:g} and "
            f"--damping {damping:g}): influence scores are dominated by noise; use {advice}"
        )
    if no_optimum and decrease is not None:
        warnings.append(
            f"the fit is not at an optimum and the Hessian there is nearly zero (λ_max "
            f"{hi - damping:.2g}, |θ| {c['theta_norm']:.3g}): a step along the gradient would still "
            f"remove {100 * min(decrease, 1.0):.2g}% of the risk {c['risk']:.2g}, as with "
            f"separable classes and --weight-decay {wd:g}, so influence scores are noise; "
            f"use --weight-decay ≥ {advised:g}"
        )
    return warnings


def advised_shift(lo: float, hi: float, current: float) -> float:
    """``current`` damping (or weight decay) plus the shift ``s`` that gives ``A``, with
    extreme eigenvalues ``lo`` and ``hi`` (``lo`` may be 0 or negative), the condition
    number ``(hi + s) / (lo + s)`` = :data:`TARGET_CONDITION`, rounded up to one digit.
    Merely positive definite is not enough: influence would still follow A's flattest
    directions (:data:`ILL_CONDITIONED`)."""
    extra = max(hi - TARGET_CONDITION * lo, 0.0) / (TARGET_CONDITION - 1)
    return _round_up(current + extra)


def not_positive_definite(lo: float, hi: float, damping: float, bound: bool = False) -> str:
    """The solvers' error when ``A`` (extreme eigenvalues ``lo`` <= 0 and ``hi``; with
    ``bound``, ``lo`` is only known from above) cannot be inverted: the damping that makes
    it well conditioned, and weight decay for a fit without an optimum (separable
    classes), which damping cannot give one."""
    return (
        f"the Hessian is not positive definite (smallest eigenvalue "
        f"{'at most ' if bound else ''}{lo:.3g}, largest "
        f"{hi:.3g}); raise --damping to at least {advised_shift(lo, hi, damping):g} "
        "(keeps the fit) or --weight-decay (refits; the only fix when the classes are "
        "separable and the fit has no optimum)"
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rounding(dtype: torch.dtype) -> float:
    return 10 * torch.finfo(dtype).eps


def _round_up(value: float) -> float:
    """``value`` rounded up to one significant digit (``1.1e-4`` -> ``2e-4``)."""
    if not value > 0:
        return 0.0
    unit = 10.0 ** math.floor(math.log10(value))
    return math.ceil(value / unit * (1 - 1e-12)) * unit
