"""Influence of training points: self-influence with masking-resistant refits.

Pair scores are in :mod:`auditor.scoring`; this module adds the solves that rank the
training points (see :mod:`auditor.ranking` for the rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from auditor.gradients import per_example_grads
from auditor.hessian import HessianOperator
from auditor.models import ModelTask
from auditor.ranking import FlagRule, flags_for, suspicion, trimmed_mask
from auditor.scoring import self_influence
from auditor.solvers import SolveDiagnostics, SolverArgs, solve
from auditor.training import fit


@dataclass
class RobustRanking:
    """Self-influence ``(n,)``, its z-score ``(n,)``, flags, and the refits it took."""

    self_influence: torch.Tensor
    z: torch.Tensor
    flags: list[list[str]]
    refits: int
    kept: int
    diagnostics: list[dict]


def solve_columns(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    columns: torch.Tensor,
    weight_decay: float,
    args: SolverArgs,
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` for the Hessian of the risk over ``(x, y)`` at ``theta``; ``V`` ``(p, m)``."""
    op = HessianOperator(model, theta, x, y, weight_decay, args.damping)
    return solve(op, columns, args)


def robust_ranking(
    model: ModelTask,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    predicted: torch.Tensor,
    first_self_influence: torch.Tensor,
    *,
    task: str,
    weight_decay: float,
    solver: SolverArgs,
    rule: FlagRule,
    fit_kwargs: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> RobustRanking:
    """Rank and flag training points, refitting around suspected clusters of bad points.

    Args:
        theta: Parameters fitted on all points ``(p,)``.
        x, y: Training features ``(n, d)`` and targets ``(n,)``.
        predicted: The full model's predictions ``(n,)`` (for the mislabel rule).
        first_self_influence: Self-influence under the full fit ``(n,)``.
    """
    z = suspicion(first_self_influence)
    si = first_self_influence
    diagnostics: list[dict] = []
    refits = 0
    kept = x.shape[0]

    def refit(keep: torch.Tensor) -> None:
        nonlocal si, z, refits, kept
        fitted = fit(model, x[keep], y[keep], weight_decay, theta0=theta, **(fit_kwargs or {}))
        grads = per_example_grads(model, fitted.theta, x, y)
        ihvps, diag = solve_columns(
            model, fitted.theta, x[keep], y[keep], grads.T, weight_decay, solver
        )
        si = self_influence(grads, ihvps)
        z = suspicion(si)
        diagnostics.append(diag.to_dict())
        refits += 1
        kept = int(keep.sum())
        if progress:
            progress(1)

    if rule.trim > 0 and rule.rounds > 0:
        previous = None
        for _ in range(rule.rounds):
            keep = trimmed_mask(z, rule.trim)
            if previous is not None and torch.equal(previous, keep):
                break
            previous = keep
            refit(keep)
        flagged = torch.tensor([bool(f) for f in flags_for(z, predicted, y, task, rule)])
        if flagged.any() and not flagged.all():
            refit(~flagged)
    return RobustRanking(si, z, flags_for(z, predicted, y, task, rule), refits, kept, diagnostics)
