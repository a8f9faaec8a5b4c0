"""Self-influence ``-g_i^T A^{-1} g_i`` of every training point, from the cached Cholesky
factor when the dense Hessian is affordable, else through the chosen solver."""

from __future__ import annotations

import time
from typing import Any

import torch

from auditor.config import SolverArgs
from auditor.influence.gradients import TrainGradients, map_row_blocks, rows_at
from auditor.influence.hessian import HessianOperator
from auditor.influence.scores import self_influence
from auditor.influence.solvers import solve
from auditor.influence.solvers.ekfac import ekfac_quadratic_forms
from auditor.influence.solvers.exact import (
    exact_affordable,
    exact_ihvp,
    exact_quadratic_forms,
    residual_columns,
)


def self_influence_from_factor(op: HessianOperator, args: SolverArgs) -> bool:
    """Whether :func:`self_influences` reads the cached Cholesky factor (else it solves)."""
    return args.self_influence == "auto" and exact_affordable(op.model)


def self_influences(
    op: HessianOperator, grads: TrainGradients, args: SolverArgs
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Self-influence ``-g_i^T A^{-1} g_i`` of every row of ``grads`` ``(n, p)``: ``(n,)``.

    With ``args.self_influence == "auto"`` and an affordable dense Hessian this is
    ``-||L^{-1} g_i||^2`` from the cached Cholesky factor (``p^2`` flops per point, no
    iterations); with ``--solver ekfac``, the quadratic forms of its factors. Both read the
    gradients block by block (streamed ones in one pass). Otherwise ``args.solver`` solves
    all ``n`` columns. Returns the values and the solve's diagnostics as a dict.
    """
    n = grads.shape[0]
    if n and self_influence_from_factor(op, args):
        start = time.perf_counter()
        # The sample's solve checks the factor first (and refines it if float32 is not enough).
        sample = rows_at(grads, residual_columns(n, grads.device)).T
        _, diag = exact_ihvp(op, sample, args)
        values = map_row_blocks(grads, lambda g: exact_quadratic_forms(op, g))
        diag.seconds = time.perf_counter() - start
        return -values, diag.to_dict()
    if args.solver == "ekfac":  # the quadratic forms straight from the factors
        values, ekfac_diag = ekfac_quadratic_forms(op, grads, args)
        return -values, ekfac_diag.to_dict()
    held = grads if isinstance(grads, torch.Tensor) else map_row_blocks(grads, lambda g: g)
    ihvps, diag = solve(op, held.T, args)
    return self_influence(held, ihvps), diag.to_dict()
