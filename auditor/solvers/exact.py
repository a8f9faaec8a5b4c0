"""Exact solve: build the Hessian, factor it by Cholesky, solve every column."""

from __future__ import annotations

import time

import torch

from auditor.errors import SolverError
from auditor.hessian import HessianOperator
from auditor.solvers.base import SolveDiagnostics, SolverArgs

MAX_PARAMS = 20_000


def exact_ihvp(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` for ``V`` ``(p, m)`` by Cholesky of the dense ``A`` (float64 factor)."""
    if op.p > MAX_PARAMS:
        raise SolverError(
            f"--solver exact builds a {op.p} x {op.p} Hessian; use lissa or cg above "
            f"{MAX_PARAMS} parameters"
        )
    start = time.perf_counter()
    a = op.dense().to(torch.float64)
    factor, info = torch.linalg.cholesky_ex(a)
    if info != 0:
        smallest = float(torch.linalg.eigvalsh(a)[0])
        raise SolverError(
            f"the Hessian is not positive definite (smallest eigenvalue {smallest:.3g}); "
            f"raise --damping above {max(-smallest, 0) * 1.1:.3g}"
        )
    solution = torch.cholesky_solve(v.to(torch.float64), factor).to(v.dtype)
    residual = op.relative_residual(solution, v)
    return solution, SolveDiagnostics(
        solver="exact",
        converged=bool(residual.max() <= max(args.tol, 1e-3)),
        residual_max=float(residual.max()),
        residual_mean=float(residual.mean()),
        iterations=1,
        seconds=time.perf_counter() - start,
        tol=args.tol,
    )
