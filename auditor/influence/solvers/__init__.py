"""Inverse-Hessian-vector products for many right-hand sides at once.

Every solver takes a :class:`~auditor.influence.hessian.HessianOperator` ``A`` and a matrix ``V``
``(p, m)`` whose columns are gradients, and returns ``A^{-1} V`` ``(p, m)`` with
:class:`SolveDiagnostics`. Adding a solver means one file here and one line in ``SOLVERS``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from auditor.config import AUTO_SOLVER, SolverArgs
from auditor.errors import ConfigError
from auditor.influence.hessian import HessianOperator
from auditor.influence.solvers.base import SolveDiagnostics
from auditor.influence.solvers.cg import cg_ihvp
from auditor.influence.solvers.ekfac import ekfac_ihvp
from auditor.influence.solvers.exact import exact_affordable, exact_ihvp
from auditor.influence.solvers.lissa import lissa_ihvp
from auditor.models.base import ModelTask

SOLVERS: dict[str, Callable[..., tuple[torch.Tensor, SolveDiagnostics]]] = {
    "lissa": lissa_ihvp,
    "exact": exact_ihvp,
    "cg": cg_ihvp,
    "ekfac": ekfac_ihvp,
}
#: The names ``--solver`` accepts, in the order it lists them: ``auto``, then the solvers.
SOLVER_NAMES = (AUTO_SOLVER, *SOLVERS)


def check_solver(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a solver of :data:`SOLVERS` or ``auto``.

    :class:`~auditor.config.SolverArgs` cannot check it (the config may not import the
    solvers): a scan does, before it writes anything
    (:func:`auditor.pipeline.scan.check_registered`)."""
    names = (AUTO_SOLVER, *SOLVERS)  # the registry as it is now
    if name not in names:
        *rest, last = names
        choices = f"{', '.join(rest)} or {last}" if rest else last
        raise ConfigError(f"unknown solver {name!r}; choose {choices}")


def resolved_solver(name: str, model: ModelTask) -> str:
    """The solver ``--solver name`` means for ``model``: ``auto`` is ``exact`` where the dense
    Hessian is affordable (:func:`~auditor.influence.solvers.exact.exact_affordable`: 10-class
    logistic regression on MNIST, 7,850 parameters, is solved in seconds, where LiSSA needs
    thousands of steps at a weight decay that fits) and ``lissa`` otherwise; any other name
    is itself."""
    if name != AUTO_SOLVER:
        return name
    return "exact" if exact_affordable(model) else "lissa"


def solve(
    op: HessianOperator, v: torch.Tensor, args: SolverArgs
) -> tuple[torch.Tensor, SolveDiagnostics]:
    """``A^{-1} V`` with the solver named in ``args.solver`` (``auto``: :func:`resolved_solver`).

    ``V`` without columns (``(p, 0)``: a rank whose share of the points is empty) gives an
    empty ``(p, 0)`` result, converged in 0 iterations; the solvers need at least one.
    """
    name = resolved_solver(args.solver, op.model)
    if v.shape[1] == 0:
        empty = SolveDiagnostics(
            solver=name,
            converged=True,
            residual_max=0.0,
            residual_mean=0.0,
            iterations=0,
            seconds=0.0,
            tol=args.tol,
        )
        return v.new_zeros((op.p, 0)), empty
    return SOLVERS[name](op, v, args)


__all__ = [
    "SOLVERS",
    "SOLVER_NAMES",
    "check_solver",
    "resolved_solver",
    "SolveDiagnostics",
    "SolverArgs",
    "solve",
    "cg_ihvp",
    "exact_ihvp",
    "lissa_ihvp",
    "ekfac_ihvp",
]
