"""Exact solve: build the Hessian, factor it by Cholesky, solve every column.

The factor is cached on the operator and computed in the parameters' dtype; when a
float32 factor leaves a relative residual above ``PRECISE_ABOVE`` the system is factored
again in float64 and solved again. Triangular solves run in the columns' own dtype.

A Cholesky solve is backward stable: every column's relative residual is about the same,
``cond(A)`` times the rounding. So the residual is measured on at most
:data:`RESIDUAL_COLUMNS` evenly spaced columns; measuring every column would cost as much
as the solve itself (``2 p^2 m`` flops; 0.6 s of case 2's 16 M pairs).
"""

from __future__ import annotations

import time

import torch

from auditor.config import SolverArgs
from auditor.errors import SolverError
from auditor.influence.conditioning import not_positive_definite
from auditor.influence.hessian import HessianOperator
from auditor.influence.solvers.base import SolveDiagnostics
from auditor.models.base import ModelTask

MAX_PARAMS = 20_000
#: Relative residual of a float32 factor's solve above which float64 is used instead.
PRECISE_ABOVE = 1e-4
#: Most columns of a solve whose residual is measured (evenly spaced).
RESIDUAL_COLUMNS = 64


def _cholesky_solve(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``torch.cholesky_solve`` of ``v`` ``(p, m)``, a lone column solved as two: one
    column takes another BLAS path that rounds differently, and a rank or a resume that
    solves one column must match a one-process scan bit for bit."""
    if v.shape[1] == 1:
        return torch.cholesky_solve(v.expand(-1, 2).contiguous(), factor)[:, :1]
    return torch.cholesky_solve(v, factor)


def exact_ihvp(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` for ``V`` ``(p, m)`` by Cholesky of the dense ``A`` (float64 factor)."""
    start = time.perf_counter()
    factor = factor_or_raise(op)
    solution = _cholesky_solve(v, factor.to(v.dtype))
    columns = residual_columns(v.shape[1], v.device)
    residual = op.relative_residual(solution[:, columns], v[:, columns])
    if factor.dtype != torch.float64 and residual.numel() and residual.max() > PRECISE_ABOVE:
        factor = factor_or_raise(op, precise=True)
        solution = _cholesky_solve(v.to(torch.float64), factor).to(v.dtype)
        residual = op.relative_residual(solution[:, columns], v[:, columns])
    return solution, SolveDiagnostics(
        solver="exact",
        converged=bool(residual.max() <= max(args.tol, 1e-3)),
        residual_max=float(residual.max()),
        residual_mean=float(residual.mean()),
        iterations=1,
        seconds=time.perf_counter() - start,
        tol=args.tol,
    )


def residual_columns(m: int, device: torch.device) -> torch.Tensor:
    """Indexes of at most :data:`RESIDUAL_COLUMNS` evenly spaced columns of ``m`` (all of
    them when there are no more)."""
    return torch.arange(0, m, max(1, -(-m // RESIDUAL_COLUMNS)), device=device)


#: Rows of gradients per triangular solve in :func:`exact_quadratic_forms`.
QUADRATIC_CHUNK = 4096


def exact_quadratic_forms(op: HessianOperator, g: torch.Tensor) -> torch.Tensor:
    """``g_i^T A^{-1} g_i`` for each row of ``g`` ``(n, p)``: ``(n,)``.

    With ``A = L L^T`` this is ``||L^{-1} g_i||^2``: one triangular solve per block of rows
    (``p^2`` flops per row, half a full solve; :data:`QUADRATIC_CHUNK` rows at a time)
    and no ``(p, n)`` solution kept.
    """
    chunk = QUADRATIC_CHUNK
    factor = factor_or_raise(op).to(g.dtype)
    out = torch.empty(g.shape[0], dtype=g.dtype, device=g.device)
    for start in range(0, g.shape[0], chunk):
        block = g[start : start + chunk].T
        w = torch.linalg.solve_triangular(factor, block, upper=False)
        out[start : start + chunk] = (w * w).sum(dim=0)
    return out


def exact_affordable(model: ModelTask) -> bool:
    """Whether ``model``'s dense Hessian and its factor are cheap enough to build (a closed
    form and at most ``MAX_PARAMS`` parameters)."""
    return model.has_closed_form_hessian and model.n_params <= MAX_PARAMS


def factor_or_raise(op: HessianOperator, precise: bool = False) -> torch.Tensor:
    """The cached Cholesky factor of ``A`` (float64 with ``precise``), or a
    :class:`SolverError` with advice."""
    if op.p > MAX_PARAMS:
        raise SolverError(
            f"--solver exact builds a {op.p} x {op.p} Hessian; use lissa or cg above "
            f"{MAX_PARAMS} parameters"
        )
    factor = op.cholesky(precise)
    if factor is None:
        eigenvalues = torch.linalg.eigvalsh(op.dense().to(torch.float64))
        # numerically singular counts too (a smallest eigenvalue at rounding's level)
        raise SolverError(
            not_positive_definite(float(eigenvalues[0]), float(eigenvalues[-1]), op.damping)
        )
    return factor
