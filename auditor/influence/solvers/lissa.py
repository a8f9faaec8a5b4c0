"""LiSSA (Agarwal et al. 2017), as used by Koh & Liang, for all columns at once.

h_0 = v;  h_t = v + (1 - d) h_{t-1} - (H_B h_{t-1}) / scale;  A^{-1} v ~ h_T / scale,

where H_B is the loss Hessian (plus weight decay) on a random minibatch B and
``d = damping / scale``, so the fixed point is ``(H + damping I)^{-1} v`` exactly as the other
solvers compute it. It converges when ``scale > lambda_max(A)``, at the rate
``1 - lambda_min(A) / scale`` per step. With the full batch the residual
``||A h / scale - v||`` comes free from the step's own matvec, so the recursion stops as
soon as it reaches the tolerance.

Full batch, the recursion is linear in ``v``: ``h_t = S_{t+1} v`` with
``S_n = sum_{k<n} R^k`` and ``R = I - A / scale``, and the residual of ``h_t / scale`` is
``R^{t+1} v``. When the operator holds the dense Hessian and there are many columns, the
same ``h_t`` is computed by repeated squaring (``S_{2n} = S_n + R^n S_n``,
``R^{2n} = (R^n)^2``): ``4 p^3`` flops per doubling, shared by every column, instead of
``2 p^2 m`` per step; the steps taken are then the first power of two that meets the
tolerance (the rest, up to ``depth``, sequentially).
"""

from __future__ import annotations

import math
import time

import torch

from auditor.config import SolverArgs
from auditor.errors import SolverError
from auditor.influence.hessian import HessianOperator
from auditor.influence.solvers.base import SolveDiagnostics, within_tol

FULL_BATCH_MARGIN = 1.1
MINIBATCH_MARGIN = 1.5
DIVERGENCE_FACTOR = 1e3


def lissa_ihvp(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` for ``V`` ``(p, m)`` by the LiSSA recursion, averaged over repeats.

    Raises:
        SolverError: the recursion diverged (non-finite values or a residual that grows),
            with the scale that would converge.
    """
    start = time.perf_counter()
    full_batch = args.batch_size is None or args.batch_size >= op.n
    lambda_max = op.max_eigenvalue(seed=args.seed)
    scale = args.scale or lambda_max * (FULL_BATCH_MARGIN if full_batch else MINIBATCH_MARGIN)
    if not (math.isfinite(scale) and scale > 0):  # a zero or overflowing Hessian
        raise SolverError(
            f"LiSSA needs a positive scale, but the largest eigenvalue of the Hessian came out "
            f"as {lambda_max:.3g} (zero, or overflowed in {str(op.theta.dtype)[6:]}); scale "
            "the features or targets, use --dtype float64, or --solver exact"
        )
    gen = torch.Generator().manual_seed(args.seed)
    repeats = 1 if full_batch else args.repeats
    total = torch.zeros_like(v)
    history: list[list[float]] = []
    steps = 0
    squaring = full_batch and args.squaring and _squaring_pays(op, v, args, scale)
    for _ in range(repeats):
        if squaring:
            h, taken = _squaring(op, v, args, scale, lambda_max, history)
        else:
            h, taken = _recursion(op, v, args, scale, lambda_max, full_batch, gen, history)
        total += h
        steps += taken
    solution = total / (repeats * scale)
    residual = op.relative_residual(solution, v)
    if not torch.isfinite(residual).all():
        raise _divergence(scale, lambda_max, steps)
    return solution, SolveDiagnostics(
        solver="lissa",
        converged=within_tol(residual, args.tol),
        residual_max=float(residual.max()),
        residual_mean=float(residual.mean()),
        iterations=steps,
        seconds=time.perf_counter() - start,
        tol=args.tol,
        scale=scale,
        lambda_max=lambda_max,
        history=history,
    )


#: The progress phase of a LiSSA solve.
PROGRESS_PHASE = "solve: LiSSA"


def _report(op: HessianOperator, done: int, rel: float, tol: float, unit: str) -> None:
    """Report ``done`` steps (or doublings) of an estimated total: with linear convergence
    the residual after ``t`` steps is ``rel``, so about ``T = t log(tol) / log(rel)`` steps
    reach the tolerance; ``k`` doublings are ``t = 2^k - 1`` steps, and ``T`` steps
    ``log2(T + 1)`` doublings."""
    if op.progress is None:
        return
    if 0 < rel < 1 and 0 < tol < 1:
        taken = 2**done - 1 if unit == "doublings" else done
        needed = taken * math.log(tol) / math.log(rel)
        total = math.ceil(math.log2(needed + 1)) if unit == "doublings" else math.ceil(needed)
    else:
        total = 0  # not known yet
    op.progress(f"{PROGRESS_PHASE} {unit}", done, max(total, done))


def _squaring_pays(op: HessianOperator, v: torch.Tensor, args: SolverArgs, scale: float) -> bool:
    """Whether repeated squaring costs fewer flops than the step-by-step recursion.

    The steps needed are at most ``ln(1 / tol) * scale / shift`` (the smallest eigenvalue
    of ``A`` is at least the shift); half that is the estimate used.
    """
    if not op.dense_matvec or op.shift <= 0:
        return False
    p, m = op.p, v.shape[1]
    steps = min(args.depth, math.log(1.0 / args.tol) * scale / op.shift / 2)
    doublings = math.ceil(math.log2(max(steps, 2.0)))
    per_doubling = 2 * p**3 + 2 * p**2 * m + 2 * p**2 * min(p, m)
    return doublings * per_doubling < steps * 2 * p**2 * m


def _squaring(
    op: HessianOperator,
    v: torch.Tensor,
    args: SolverArgs,
    scale: float,
    lambda_max: float,
    history: list[list[float]],
) -> tuple[torch.Tensor, int]:
    """Full-batch LiSSA by repeated squaring; returns ``h_t`` ``(p, m)`` and ``t``.

    ``h_t`` is the recursion's own iterate (the same polynomial in ``A``), for the first
    ``t = 2^k - 1`` whose residual ``R^{t+1} v`` meets the tolerance. With fewer columns
    than parameters the partial sum is kept applied to ``v`` (``S_n v``, ``2 p^2 m`` flops
    per doubling), otherwise as the matrix ``S_n`` (``2 p^3``).
    """
    v_norm = v.norm(dim=0).clamp_min(torch.finfo(v.dtype).tiny)
    power = op.dense().mul_(-1.0 / scale)  # R^n, n = 1
    power.diagonal().add_(1.0)
    by_columns = v.shape[1] < op.p
    # S_n v, or S_n (None stands for S_1 = I)
    partial: torch.Tensor | None = v.clone() if by_columns else None
    residual = power @ v  # R^n v
    n, best = 1, math.inf
    while True:
        rel = float((residual.norm(dim=0) / v_norm).max())
        if not math.isfinite(rel) or rel > DIVERGENCE_FACTOR * max(best, 1.0):
            raise _divergence(scale, lambda_max, n)
        best = min(best, rel)
        history.append([n - 1, rel])
        _report(op, int(math.log2(n)), rel, args.tol, "doublings")
        if rel <= args.tol or 2 * n > args.depth + 1:
            h = v.clone() if partial is None else partial if by_columns else partial @ v
            if rel <= args.tol:
                return h, n - 1
            # finish the remaining steps one at a time
            return _recursion(op, v, args, scale, lambda_max, True, None, history, h0=h, first=n)
        if partial is None:  # S_2 = I + R
            partial = power.clone()
            partial.diagonal().add_(1.0)
        else:  # S_2n = S_n + R^n S_n, or S_2n v = S_n v + R^n (S_n v)
            partial = partial + power @ partial
        residual = power @ residual  # R^{2n} v without squaring R yet
        if float((residual.norm(dim=0) / v_norm).max()) > args.tol:
            power = power @ power
        n *= 2


def _recursion(
    op: HessianOperator,
    v: torch.Tensor,
    args: SolverArgs,
    scale: float,
    lambda_max: float,
    full_batch: bool,
    gen: torch.Generator | None,
    history: list[list[float]],
    h0: torch.Tensor | None = None,
    first: int = 1,
) -> tuple[torch.Tensor, int]:
    """One LiSSA recursion; returns ``h_T`` ``(p, m)`` and the steps taken.

    ``h0`` and ``first`` resume it from the iterate ``h_{first - 1}``.

    ``v + (1 - d) h - (H_B h) / scale`` equals ``h + (v - A_B h / scale)`` (``A_B`` includes
    the damping), so each step is one matvec and one in-place update; with the full batch
    the bracket is the residual of ``h / scale`` itself.
    """
    v_norm = v.norm(dim=0).clamp_min(torch.finfo(v.dtype).tiny)
    batch_size = op.n if args.batch_size is None else args.batch_size  # used without full_batch
    check_every = 1 if full_batch else max(25, 2 * math.ceil(op.n / batch_size))
    best = math.inf
    h = v.clone() if h0 is None else h0
    for step in range(first, args.depth + 1):
        rel: float | None
        if full_batch:
            r = op.matvec(h).mul_(-1.0 / scale).add_(v)  # v - A h / scale
            rel = float((r.norm(dim=0) / v_norm).max())
        else:
            index = torch.randint(op.n, (batch_size,), generator=gen).to(op.x.device)
            r = op.matvec(h, index).mul_(-1.0 / scale).add_(v)
            rel = None
            if step % check_every == 0:
                rel = float(op.relative_residual(h / scale, v).max())
        if rel is not None:
            if not math.isfinite(rel) or (rel > DIVERGENCE_FACTOR * max(best, 1.0)):
                raise _divergence(scale, lambda_max, step)
            best = min(best, rel)
            if step == first or step % 10 == 0 or rel <= args.tol:
                _report(op, step, rel, args.tol, "steps")
            if full_batch and (step == 1 or step % 10 == 0 or rel <= args.tol):
                history.append([step - 1, rel])
            elif not full_batch:
                history.append([step, rel])
            if rel <= args.tol:
                return h, step - 1 if full_batch else step
        h.add_(r)
        if not full_batch and step % 10 == 0 and not torch.isfinite(h).all():
            raise _divergence(scale, lambda_max, step)
    return h, args.depth


def _divergence(scale: float, lambda_max: float, step: int) -> SolverError:
    return SolverError(
        f"LiSSA diverged at step {step} with scale {scale:.4g}; the largest Hessian "
        f"eigenvalue is about {lambda_max:.4g}: rerun with --scale {2 * lambda_max:.4g} or larger"
    )
