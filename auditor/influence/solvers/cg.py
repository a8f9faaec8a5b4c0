"""Conjugate gradients, run for every column of V at once (one matvec per step)."""

from __future__ import annotations

import time

import torch

from auditor.config import SolverArgs
from auditor.errors import SolverError
from auditor.influence.conditioning import float64_matvec, lanczos_extremes, not_positive_definite
from auditor.influence.hessian import HessianOperator
from auditor.influence.solvers.base import SolveDiagnostics, within_tol


def cg_ihvp(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` for ``V`` ``(p, m)``: independent CG per column, batched matvecs.

    A column stops moving once its relative residual is at most ``args.tol`` (a zero
    column at once: ``A^{-1} 0 = 0``); the solve stops when every column has, or after
    ``args.max_iter`` steps. It is reported converged when the true residual, measured
    afterwards, is at most ``args.tol`` (1% slack for rounding, as LiSSA's).

    CG runs on the columns scaled to norm 1 (it is scale-equivariant per column) and
    scales the answers back: a confidently right point's float32 gradient can be 1e-22,
    and then ``d^T A d`` underflowed to 0 and read as a Hessian that is not positive
    definite.
    """
    start = time.perf_counter()
    tiny = torch.finfo(v.dtype).tiny
    b, v_norm = _unit_columns(v)
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = (r * r).sum(dim=0)
    b_norm = b.norm(dim=0).clamp_min(tiny)  # 1, or tiny for a zero column
    active = rr.sqrt() / b_norm > args.tol
    history: list[list[float]] = []
    step = 0
    while active.any() and step < args.max_iter:
        step += 1
        ad = op.matvec(d)
        curvature = (d * ad).sum(dim=0)
        if (curvature[active] <= 0).any():
            column = int(torch.nonzero(active & (curvature <= 0))[0])
            advice = _spectrum(op, d[:, column], float(curvature[column]))
            raise SolverError(f"CG met a direction of non-positive curvature: {advice}")
        alpha = torch.where(active, rr / curvature.clamp_min(tiny), 0)
        x += alpha * d
        r -= alpha * ad
        rr_new = (r * r).sum(dim=0)
        column_rel = rr_new.sqrt() / b_norm
        rel = column_rel.max().item()
        if step % 10 == 0 or rel <= args.tol:
            history.append([step, rel])
        if not torch.isfinite(x).all():
            raise SolverError(f"CG produced non-finite values at step {step}")
        d = r + torch.where(active, rr_new / rr.clamp_min(tiny), 0) * d
        rr = rr_new
        active = active & (column_rel > args.tol)
    residual = op.relative_residual(x, b)
    return x * v_norm, SolveDiagnostics(
        solver="cg",
        converged=within_tol(residual, args.tol),
        residual_max=float(residual.max()),
        residual_mean=float(residual.mean()),
        iterations=step,
        seconds=time.perf_counter() - start,
        tol=args.tol,
        history=history,
        reached_tol=not bool(active.any()),
    )


def _unit_columns(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``v`` ``(p, m)`` with each column scaled to norm 1 (a zero column stays 0), and the
    norms ``(m,)``, computed from the columns divided by their largest entry so that
    neither the squares of tiny entries underflow nor those of huge ones overflow."""
    peak = v.abs().amax(dim=0)
    nonzero = peak > 0
    scaled = v / torch.where(nonzero, peak, 1)
    norm = scaled.norm(dim=0)
    return scaled / torch.where(nonzero, norm, 1), peak * norm


def _spectrum(op: HessianOperator, direction: torch.Tensor, curvature: float) -> str:
    """The advice for an ``A`` that is not positive definite, from Lanczos started at the
    ``direction`` ``(p,)`` CG found, whose ``curvature`` ``d^T A d <= 0`` (an error path:
    30 more matvecs are cheap). Both bound the smallest eigenvalue from above."""
    low, high, _ = lanczos_extremes(float64_matvec(op), direction)
    rayleigh = curvature / float((direction.double() ** 2).sum())
    return not_positive_definite(min(low, rayleigh), high, op.damping, bound=True)
