"""Solver settings and diagnostics, shared by every solver."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from auditor.errors import ConfigError


@dataclass
class SolverArgs:
    """How to solve ``(H + damping I) s = v``.

    Attributes:
        solver: ``lissa``, ``exact`` or ``cg``.
        damping: Added to the Hessian's diagonal (all solvers), on top of the weight decay.
        tol: Target relative residual ``||A s - v|| / ||v||`` (largest over columns).
        scale: LiSSA's scale; ``None`` picks 1.1x (full batch) or 1.5x (minibatches) a
            power-iteration estimate of the largest eigenvalue.
        depth: LiSSA's most recursion steps (it stops early once ``tol`` is met).
        repeats: LiSSA recursions averaged (only useful with minibatches).
        batch_size: LiSSA's minibatch size; ``None`` or ``>= n`` uses every training point.
        max_iter: CG's most iterations.
        seed: Seeds minibatch sampling and the power iteration.
        squaring: Let full-batch LiSSA compute its iterate by repeated squaring of the
            dense ``I - A / scale`` when that takes fewer flops (same result).
        self_influence: How the ranking's self-influences ``g_i^T A^{-1} g_i`` (one per
            training point, on the full fit and on every refit) are solved: ``auto`` uses
            the exact Cholesky factor whenever the dense Hessian is affordable (closed
            form, at most 20,000 parameters) and ``solver`` otherwise; ``same`` always uses
            ``solver``. ``solver`` always computes the test points' IHVPs (pair scores).
    """

    solver: str = "lissa"
    damping: float = 0.0
    tol: float = 1e-4
    scale: float | None = None
    depth: int = 5000
    repeats: int = 1
    batch_size: int | None = None
    max_iter: int = 1000
    seed: int = 0
    self_influence: str = "auto"
    squaring: bool = True

    def __post_init__(self) -> None:
        if self.self_influence not in ("auto", "same"):
            raise ConfigError(f"--self-influence must be auto or same, got {self.self_influence!r}")
        if self.solver not in ("lissa", "exact", "cg"):
            raise ConfigError(f"unknown solver {self.solver!r}; choose lissa, exact or cg")
        if self.damping < 0:
            raise ConfigError(f"--damping must be >= 0, got {self.damping}")
        if self.depth < 1 or self.repeats < 1 or self.max_iter < 1:
            raise ConfigError("--depth, --repeats and the iteration limit must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"--scale must be > 0, got {self.scale}")
        if not self.tol > 0:
            raise ConfigError(f"--tol (the solver tolerance) must be > 0, got {self.tol}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SolveDiagnostics:
    """What a solve did and how well it converged.

    Attributes:
        residual_max / residual_mean: relative residual ``||A s - v|| / ||v||`` over columns,
            measured with the full-data Hessian after the solve.
        history: ``[step, max relative residual]`` pairs recorded while iterating.
        reached_tol: CG only: its iteration met the tolerance (by the residual it updates),
            so a true residual above ``tol`` is rounding, not too few steps.
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

    def to_dict(self) -> dict:
        return asdict(self)


#: Slack on ``tol`` for float rounding in the residual measured after a solve.
TOL_SLACK = 1.01


def within_tol(residual, tol: float) -> bool:
    """Whether every column's measured relative residual ``(m,)`` is within ``tol``."""
    return bool(residual.max() <= tol * TOL_SLACK)
