"""EK-FAC solve: the damped inverse of the Kronecker-factored Hessian
(:mod:`auditor.influence.ekfac`), for influence over every layer of a network.

Not an iterative solve of ``A``: the result is ``(F + shift I)^{-1} V`` for EK-FAC's
approximation ``F`` of the loss Hessian, in a few small matrix products per column. The
factors are fitted once per operator (two passes over the training data) and shared by the
test solve and the self-influences. The diagnostics report, for information, the relative
residual against the true ``A`` on a few columns: it measures the approximation, not a
failure to converge.
"""

from __future__ import annotations

import time

import torch

from auditor.config import SolverArgs
from auditor.influence.ekfac import EkfacFactors, check_denominators, fit_ekfac
from auditor.influence.gradients import TrainGradients, map_row_blocks
from auditor.influence.hessian import HessianOperator
from auditor.influence.solvers.base import SolveDiagnostics

#: Columns whose residual against the true Hessian is measured after a solve.
RESIDUAL_COLUMNS = 8


def ekfac_factors(op: HessianOperator, args: SolverArgs) -> EkfacFactors:
    """The EK-FAC factors of ``op``'s model at its ``theta``, fitted once per operator and
    checked invertible at its shift."""
    factors: EkfacFactors = op.memo(
        ("ekfac", args.seed), lambda: fit_ekfac(op.model, op.theta, op.x, op.y, args.seed)
    )
    check_denominators(factors, op.shift)
    return factors


def ekfac_ihvp(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``(F + shift I)^{-1} V`` for ``V`` ``(p, m)``, ``F`` the EK-FAC Hessian."""
    start = time.perf_counter()
    factors = ekfac_factors(op, args)
    solution = factors.inverse_times(v, op.shift)
    sample = torch.linspace(0, v.shape[1] - 1, min(RESIDUAL_COLUMNS, v.shape[1])).long()
    residual = op.relative_residual(solution[:, sample], v[:, sample])
    return solution, SolveDiagnostics(
        solver="ekfac",
        converged=True,  # a closed-form approximation: nothing to converge
        residual_max=float(residual.max()),
        residual_mean=float(residual.mean()),
        iterations=0,
        seconds=time.perf_counter() - start,
        tol=args.tol,
        covered=factors.covered,
    )


def ekfac_quadratic_forms(
    op: HessianOperator, g: TrainGradients, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``g_i^T (F + shift I)^{-1} g_i`` for each row of ``g`` ``(n, p)``, held or streamed:
    ``(n,)``, block by block, without any ``(p, n)`` solution kept."""
    start = time.perf_counter()
    factors = ekfac_factors(op, args)
    values = map_row_blocks(g, lambda rows: factors.quadratic_forms(rows, op.shift))
    return values, SolveDiagnostics(
        solver="ekfac",
        converged=True,
        residual_max=0.0,
        residual_mean=0.0,
        iterations=0,
        seconds=time.perf_counter() - start,
        tol=args.tol,
        covered=factors.covered,
    )
