"""Solver settings and diagnostics, shared by every solver."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from auditor.config import SolverArgs

__all__ = ["SolveDiagnostics", "SolverArgs", "TOL_SLACK", "within_tol"]


@dataclass
class SolveDiagnostics:
    """What a solve did and how well it converged.

    Attributes:
        residual_max / residual_mean: relative residual ``||A s - v|| / ||v||`` over columns,
            measured with the full-data Hessian after the solve.
        history: ``[step, max relative residual]`` pairs recorded while iterating.
        reached_tol: CG only: its iteration met the tolerance (by the residual it updates),
            so a true residual above ``tol`` is rounding, not too few steps.
        covered: EK-FAC only: the parameters in a factored layer (influence is over those).
    """

    solver: str
    converged: bool
    residual_max: float
    residual_mean: float
    iterations: int
    seconds: float
    tol: float
    scale: float | None = None
    lambda_max: float | None = None
    history: list[list[float]] = field(default_factory=list)
    reached_tol: bool | None = None
    covered: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Slack on ``tol`` for float rounding in the residual measured after a solve.
TOL_SLACK = 1.01


def within_tol(residual: torch.Tensor, tol: float) -> bool:
    """Whether every column's measured relative residual ``(m,)`` is within ``tol``."""
    return bool(residual.max() <= tol * TOL_SLACK)
