"""Masking-resistant ranking: the self-influence recomputed on refits that leave out the
most suspicious points (see :mod:`auditor.ranking.rule` for the rule itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from auditor.config import SolverArgs
from auditor.data import Task
from auditor.influence.gradients import training_gradients
from auditor.influence.hessian import HessianOperator
from auditor.influence.self_influence import self_influences
from auditor.models.base import ModelTask
from auditor.models.fit import fit
from auditor.ranking.rule import (
    FlagRule,
    flag_masks,
    influence_z,
    left_out_probability,
    suspicion_tests,
    trimmed_mask,
)


@dataclass
class RobustRanking:
    """Self-influence ``(n,)`` (a tensor on the scan's device), its z-score ``(n,)``
    (float64 numpy), and the refits it took."""

    self_influence: torch.Tensor
    z: np.ndarray
    refits: int
    kept: int
    diagnostics: list[dict]


@dataclass
class TrainingProblem:
    """What a refit repeats: the model, the training data and how it was fitted.

    Attributes:
        theta: Parameters fitted on all points ``(p,)`` (each refit starts from them).
        x, y: Training features ``(n, d)`` and targets ``(n,)``.
        fit_kwargs: Options of :func:`~auditor.models.fit.fit` (iteration limit, tolerance).
    """

    model: ModelTask
    theta: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    task: Task
    weight_decay: float
    fit_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FirstPass:
    """The full fit's signals per training point, each ``(n,)``.

    Attributes:
        self_influence: Self-influence under the full fit.
        predicted: The full model's predictions (for the mislabel rule).
        loss, harmfulness: Training loss and harmfulness: with them the last refit leaves
            out what the scan's flags (:func:`~auditor.ranking.rule.flag_masks`) flag.
    """

    self_influence: torch.Tensor
    predicted: torch.Tensor
    loss: torch.Tensor
    harmfulness: np.ndarray


def robust_ranking(
    problem: TrainingProblem,
    first: FirstPass,
    rule: FlagRule,
    solver: SolverArgs,
    progress: Callable[[int], None] | None = None,
) -> RobustRanking:
    """Self-influence and its influence z, refitting around suspected clusters of bad
    points (the last refit leaves out the points the flag rule would flag and any whose
    influence z reached ``outlier_z`` on the last concentration refit: readmitted, a
    cluster masks itself again). ``rule`` must be resolved (:meth:`FlagRule.resolved`).
    """
    model, theta, x, y = problem.model, problem.theta, problem.x, problem.y
    weight_decay = problem.weight_decay
    first_self_influence = first.self_influence
    z = influence_z(first_self_influence.cpu(), rule.influence_scale)
    si = first_self_influence
    diagnostics: list[dict] = []
    refits = 0
    kept = x.shape[0]

    def refit(kept_points: np.ndarray) -> None:
        nonlocal si, z, refits, kept
        keep = torch.from_numpy(kept_points).to(x.device)
        fitted = fit(model, x[keep], y[keep], weight_decay, theta0=theta, **problem.fit_kwargs)
        grads = training_gradients(model, fitted.theta, x, y, solver.streams_gradients)
        op = HessianOperator(model, fitted.theta, x[keep], y[keep], weight_decay, solver.damping)
        si, diag = self_influences(op, grads, solver)
        z = influence_z(si.cpu(), rule.influence_scale)
        diagnostics.append(diag)
        refits += 1
        kept = int(keep.sum())
        if progress:
            progress(1)

    if rule.trim > 0 and rule.rounds > 0:
        previous = None
        for _ in range(rule.rounds):
            keep = trimmed_mask(z, rule.trim)
            if previous is not None and np.array_equal(previous, keep):
                break
            previous = keep
            refit(keep)
        union = suspicion_tests(first.loss, first.harmfulness, si.cpu()).union
        predicted = first.predicted.cpu()
        left_out = left_out_probability(first.loss.cpu(), si.cpu())
        mislabel, _ = flag_masks(union, z, predicted, y.cpu(), problem.task, rule, left_out)
        outlier_z = rule.outlier_z
        assert outlier_z is not None, "robust_ranking needs a resolved rule (FlagRule.resolved)"
        # ``outlier`` flags are a subset of ``z >= outlier_z`` (their first condition)
        singled_out = mislabel | (z >= outlier_z)
        if singled_out.any() and not singled_out.all():
            refit(~singled_out)
    return RobustRanking(si, z, refits, kept, diagnostics)
