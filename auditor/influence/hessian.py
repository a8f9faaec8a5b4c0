"""The damped Hessian of the empirical risk as an operator on matrices of vectors.

A = H + damping * I, with H = mean_i hess L(z_i) + weight_decay * I at the fitted theta.
Every solver works on A through :class:`HessianOperator`, so all of them solve the same
system and can be compared with each other.

Speed: for models with a closed-form Hessian and few parameters (``p`` at most
``DENSE_MAX_PARAMS`` and below ``2 n``) the mean loss Hessian is built once and every
full-data matvec is one ``(p, p) @ (p, m)`` product (``2 p^2 m`` flops) instead of two
passes over the data (``4 n p m``); its Cholesky factor is cached for the exact solver
and for self-influence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from auditor.influence.gradients import batch_hvp
from auditor.models.base import ModelTask

#: Largest ``p`` whose dense loss Hessian is cached for matvecs (``p^2`` floats: 256 MB
#: in float32 at this size).
DENSE_MAX_PARAMS = 8192

#: Power-iteration steps of :meth:`HessianOperator.max_eigenvalue` (LiSSA's scale).
POWER_ITERATIONS = 30


@dataclass
class HessianOperator:
    """``A = H + (weight_decay + damping) I`` over the training data ``x`` ``(n, d)``, ``y``.

    Attributes:
        chunk: Rows of data per autograd/closed-form call, to bound memory.
        dense_matvec: Use the cached dense loss Hessian for full-data matvecs; ``None``
            decides by size (closed form, ``p <= DENSE_MAX_PARAMS`` and ``p < 2 n``).
    """

    model: ModelTask
    theta: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    weight_decay: float
    damping: float = 0.0
    chunk: int = 2048
    dense_matvec: bool | None = None
    #: ``progress(phase, done, total)``: an iterative solver on this operator reports its
    #: steps through it (the scan's test solve sets it).
    progress: Callable[[str, int, int], None] | None = field(default=None, repr=False)
    _loss_hessian: torch.Tensor | None = field(default=None, init=False, repr=False)
    _max_eigenvalues: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _factor: tuple[float, torch.Tensor] | None = field(default=None, init=False, repr=False)
    _memo: dict[object, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dense_matvec is None:
            self.dense_matvec = (
                self.model.has_closed_form_hessian
                and self.p <= DENSE_MAX_PARAMS
                and self.p < 2 * self.n
            )

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def p(self) -> int:
        return self.theta.shape[0]

    @property
    def shift(self) -> float:
        """The multiple of the identity added to the mean loss Hessian."""
        return self.weight_decay + self.damping

    def matvec(self, v: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``A v`` for ``v`` ``(p, m)``; over the rows ``index`` only (a minibatch) if given."""
        if index is not None:
            hv = batch_hvp(self.model, self.theta, self.x[index], self.y[index], v)
        elif self.dense_matvec:
            hv = self.loss_hessian() @ v
        else:
            hv = torch.zeros_like(v)
            for start in range(0, self.n, self.chunk):
                s = slice(start, min(start + self.chunk, self.n))
                hv += batch_hvp(self.model, self.theta, self.x[s], self.y[s], v) * (
                    (s.stop - s.start) / self.n
                )
        return hv + self.shift * v

    def dense(self) -> torch.Tensor:
        """The matrix ``A`` ``(p, p)`` (a fresh copy)."""
        h = self.loss_hessian().clone()
        h.diagonal().add_(self.shift)
        return h

    def memo(self, key: object, build: Callable[[], Any]) -> Any:
        """``build()``, computed once per ``key`` and kept with the operator (a solver's
        factors, shared by the test solve and the self-influences)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def loss_hessian(self) -> torch.Tensor:
        """The symmetric mean loss Hessian ``(p, p)`` without the shift, built once."""
        if self._loss_hessian is None:
            self._loss_hessian = self._build_loss_hessian()
        return self._loss_hessian

    def use_loss_hessian(self, h: torch.Tensor) -> None:
        """Adopt ``h`` ``(p, p)``, built elsewhere (e.g. broadcast by another rank), as the
        cached loss Hessian instead of building it here."""
        if h.shape != (self.p, self.p):
            raise ValueError(f"loss Hessian of shape {tuple(h.shape)}, expected {(self.p, self.p)}")
        self._loss_hessian = h

    def cholesky(self, precise: bool = False) -> torch.Tensor | None:
        """Lower Cholesky factor of ``A`` ``(p, p)``, cached; ``None`` when ``A`` is not
        positive definite.

        Factored in the parameters' dtype (float32 is 3-4x faster on the CPU and accurate
        to about ``cond(A) * 1e-7``), in float64 when that fails or with ``precise``.
        """
        cached = self.cached_cholesky()
        if cached is not None and (not precise or cached.dtype == torch.float64):
            return cached
        factor = None
        if not precise and self.theta.dtype != torch.float64:
            factor = self._factorize(self.theta.dtype)
        if factor is None:
            factor = self._factorize(torch.float64)
        if factor is not None:
            self._factor = (self.shift, factor)
        return factor

    def cached_cholesky(self) -> torch.Tensor | None:
        """The Cholesky factor of ``A`` if :meth:`cholesky` already computed it for the
        current shift, else ``None`` (nothing is factored here)."""
        if self._factor is not None and self._factor[0] == self.shift:
            return self._factor[1]
        return None

    def _factorize(self, dtype: torch.dtype) -> torch.Tensor | None:
        a = self.loss_hessian().to(dtype, copy=True)
        a.diagonal().add_(self.shift)
        factor, info = torch.linalg.cholesky_ex(a)
        return factor if info == 0 else None

    def _build_loss_hessian(self) -> torch.Tensor:
        # Closed forms need only (rows, d) temporaries: take up to 32 M elements at once.
        rows = self.chunk
        if self.model.has_closed_form_hessian:
            rows = max(rows, 2**25 // max(self.x[0].numel(), 1))
        h: torch.Tensor | None = None
        for start in range(0, self.n, rows):
            s = slice(start, min(start + rows, self.n))
            block: torch.Tensor | None = self.model.loss_hessian(self.theta, self.x[s], self.y[s])
            if block is None:
                eye = torch.eye(self.p, dtype=self.theta.dtype, device=self.theta.device)
                block = batch_hvp(self.model, self.theta, self.x[s], self.y[s], eye)
            block.mul_((s.stop - s.start) / self.n)
            h = block if h is None else h.add_(block)
        if h is None:
            raise ValueError("the loss Hessian of no training points")
        # Symmetric to the last bit (the products are symmetric only up to rounding).
        return h.add_(h.T.clone()).mul_(0.5)

    def relative_residual(self, solution: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``||A s - v|| / ||v||`` per column ``(m,)`` (0 where ``v`` is 0)."""
        return _relative(self.matvec(solution) - v, v)

    def max_eigenvalue(self, seed: int = 0) -> float:
        """Power-iteration estimate (:data:`POWER_ITERATIONS` steps) of the largest
        eigenvalue of ``A`` (from below), cached per ``seed``: the test solve and the
        self-influences share it."""
        if seed not in self._max_eigenvalues:
            self._max_eigenvalues[seed] = self._power_iteration(POWER_ITERATIONS, seed)
        return self._max_eigenvalues[seed]

    def use_max_eigenvalue(self, value: float, seed: int = 0) -> None:
        """Adopt ``value``, estimated elsewhere with the same ``seed`` (e.g. broadcast by
        another rank), as :meth:`max_eigenvalue`'s result."""
        self._max_eigenvalues[seed] = value

    def _power_iteration(self, iters: int, seed: int) -> float:
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(self.p, 1, generator=gen, dtype=self.theta.dtype).to(self.theta.device)
        u /= u.norm()
        estimate = 0.0
        for _ in range(iters):
            w = self.matvec(u)
            estimate = float((u * w).sum())
            norm = w.norm()
            if norm == 0:
                break
            u = w / norm
        return estimate


def _relative(residual: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    v_norm = v.norm(dim=0)
    r_norm = residual.norm(dim=0)
    return torch.where(v_norm > 0, r_norm / v_norm.clamp_min(torch.finfo(v.dtype).tiny), r_norm)
