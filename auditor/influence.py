"""Influence of training points: self-influence with masking-resistant refits.

Pair scores are in :mod:`auditor.scoring`; this module adds the solves that rank the
training points (see :mod:`auditor.ranking` for the rule).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from auditor.gradients import per_example_grads
from auditor.hessian import HessianOperator
from auditor.models import ModelTask
from auditor.ranking import (
    FlagRule,
    flag_masks,
    influence_z,
    suspicion_tests,
    trimmed_mask,
)
from auditor.scoring import self_influence
from auditor.solvers import SolverArgs, solve
from auditor.solvers.exact import exact_affordable, exact_ihvp, exact_quadratic_forms
from auditor.training import fit


@dataclass
class RobustRanking:
    """Self-influence ``(n,)``, its z-score ``(n,)``, and the refits it took."""

    self_influence: torch.Tensor
    z: torch.Tensor
    refits: int
    kept: int
    diagnostics: list[dict]


#: Columns re-solved in full to measure the residual of the exact self-influences.
RESIDUAL_SAMPLE = 64


def self_influence_from_factor(op: HessianOperator, args: SolverArgs) -> bool:
    """Whether :func:`self_influences` reads the cached Cholesky factor (else it solves)."""
    return args.self_influence == "auto" and exact_affordable(op)


def self_influences(
    op: HessianOperator, grads: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, dict]:
    """Self-influence ``-g_i^T A^{-1} g_i`` of every row of ``grads`` ``(n, p)``: ``(n,)``.

    With ``args.self_influence == "auto"`` and an affordable dense Hessian this is
    ``-||L^{-1} g_i||^2`` from the cached Cholesky factor (``p^2`` flops per point, no
    iterations); otherwise ``args.solver`` solves all ``n`` columns. Returns the values and
    the solve's diagnostics as a dict.
    """
    if grads.shape[0] and self_influence_from_factor(op, args):
        start = time.perf_counter()
        # The sample's solve checks the factor first (and refines it if float32 is not enough).
        sample = grads[:: max(1, grads.shape[0] // RESIDUAL_SAMPLE)].T
        _, diag = exact_ihvp(op, sample, args)
        values = -exact_quadratic_forms(op, grads)
        diag.seconds = time.perf_counter() - start
        return values, diag.to_dict()
    ihvps, diag = solve(op, grads.T, args)
    return self_influence(grads, ihvps), diag.to_dict()


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
    loss: torch.Tensor,
    harmfulness: torch.Tensor,
    fit_kwargs: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> RobustRanking:
    """Self-influence and its influence z, refitting around suspected clusters of bad
    points (the last refit leaves out the points the flag rule would flag and any whose
    influence z reached ``outlier_z`` on the last concentration refit: readmitted, a
    cluster masks itself again).

    Args:
        theta: Parameters fitted on all points ``(p,)``.
        x, y: Training features ``(n, d)`` and targets ``(n,)``.
        predicted: The full model's predictions ``(n,)`` (for the mislabel rule).
        first_self_influence: Self-influence under the full fit ``(n,)``.
        loss, harmfulness: Per-point training loss and harmfulness ``(n,)``: with them the
            last refit leaves out what the scan's flags (:func:`~auditor.ranking.flag_masks`)
            flag.
    """
    z = influence_z(first_self_influence, rule.influence_scale)
    si = first_self_influence
    diagnostics: list[dict] = []
    refits = 0
    kept = x.shape[0]

    def refit(keep: torch.Tensor) -> None:
        nonlocal si, z, refits, kept
        fitted = fit(model, x[keep], y[keep], weight_decay, theta0=theta, **(fit_kwargs or {}))
        grads = per_example_grads(model, fitted.theta, x, y)
        op = HessianOperator(model, fitted.theta, x[keep], y[keep], weight_decay, solver.damping)
        si, diag = self_influences(op, grads, solver)
        z = influence_z(si, rule.influence_scale)
        diagnostics.append(diag)
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
        union = suspicion_tests(loss, harmfulness, si.cpu()).union
        mislabel, _ = flag_masks(union, z.cpu(), predicted.cpu(), y.cpu(), task, rule)
        # ``outlier`` flags are a subset of ``z >= outlier_z`` (their first condition)
        singled_out = (mislabel | (z.cpu() >= rule.outlier_z)).to(x.device)
        if singled_out.any() and not singled_out.all():
            refit(~singled_out)
    return RobustRanking(si, z, refits, kept, diagnostics)
