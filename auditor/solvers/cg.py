"""Conjugate gradients, run for every column of V at once (one matvec per step)."""

from __future__ import annotations

import time

import torch

from auditor.errors import SolverError
from auditor.hessian import HessianOperator
from auditor.solvers.base import SolveDiagnostics, SolverArgs


def cg_ihvp(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` for ``V`` ``(p, m)``: independent CG per column, batched matvecs.

    Stops when every column's relative residual is below ``args.tol`` or after
    ``args.max_iter`` steps; converged columns stop moving.
    """
    start = time.perf_counter()
    x = torch.zeros_like(v)
    r = v.clone()
    d = r.clone()
    rr = (r * r).sum(dim=0)
    v_norm = v.norm(dim=0).clamp_min(torch.finfo(v.dtype).tiny)
    history: list[list[float]] = []
    step = 0
    for step in range(1, args.max_iter + 1):
        ad = op.matvec(d)
        curvature = (d * ad).sum(dim=0)
        if (curvature <= 0).any() and (rr > 0).any():
            raise SolverError(
                "CG met a direction of non-positive curvature: the Hessian is not positive "
                "definite; raise --damping"
            )
        alpha = torch.where(rr > 0, rr / curvature.clamp_min(torch.finfo(v.dtype).tiny), 0)
        x += alpha * d
        r -= alpha * ad
        rr_new = (r * r).sum(dim=0)
        rel = (rr_new.sqrt() / v_norm).max().item()
        if step % 10 == 0 or rel <= args.tol:
            history.append([step, rel])
        if not torch.isfinite(x).all():
            raise SolverError(f"CG produced non-finite values at step {step}")
        if rel <= args.tol:
            break
        d = r + torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(v.dtype).tiny), 0) * d
        rr = rr_new
    residual = op.relative_residual(x, v)
    return x, SolveDiagnostics(
        solver="cg",
        converged=bool(residual.max() <= args.tol * 10),
        residual_max=float(residual.max()),
        residual_mean=float(residual.mean()),
        iterations=step,
        seconds=time.perf_counter() - start,
        tol=args.tol,
        history=history,
    )
