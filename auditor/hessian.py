"""The damped Hessian of the empirical risk as an operator on matrices of vectors.

A = H + damping * I, with H = mean_i hess L(z_i) + weight_decay * I at the fitted theta.
Every solver works on A through :class:`HessianOperator`, so all of them solve the same
system and can be compared with each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from auditor.gradients import batch_hvp
from auditor.models import ModelTask


@dataclass
class HessianOperator:
    """``A = H + (weight_decay + damping) I`` over the training data ``x`` ``(n, d)``, ``y``.

    Attributes:
        chunk: Rows of data per autograd/closed-form call, to bound memory.
    """

    model: ModelTask
    theta: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    weight_decay: float
    damping: float = 0.0
    chunk: int = 2048

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
        else:
            hv = torch.zeros_like(v)
            for start in range(0, self.n, self.chunk):
                s = slice(start, min(start + self.chunk, self.n))
                hv += batch_hvp(self.model, self.theta, self.x[s], self.y[s], v) * (
                    (s.stop - s.start) / self.n
                )
        return hv + self.shift * v

    def dense(self) -> torch.Tensor:
        """The matrix ``A`` ``(p, p)``."""
        h = torch.zeros(self.p, self.p, dtype=self.theta.dtype, device=self.theta.device)
        for start in range(0, self.n, self.chunk):
            s = slice(start, min(start + self.chunk, self.n))
            weight = (s.stop - s.start) / self.n
            block = self.model.loss_hessian(self.theta, self.x[s], self.y[s])
            if block is None:
                eye = torch.eye(self.p, dtype=self.theta.dtype, device=self.theta.device)
                block = batch_hvp(self.model, self.theta, self.x[s], self.y[s], eye)
            h += weight * block
        h = 0.5 * (h + h.T)
        h.diagonal().add_(self.shift)
        return h

    def relative_residual(self, solution: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``||A s - v|| / ||v||`` per column ``(m,)`` (0 where ``v`` is 0)."""
        return _relative(self.matvec(solution) - v, v)

    def max_eigenvalue(self, iters: int = 30, seed: int = 0) -> float:
        """Power-iteration estimate of the largest eigenvalue of ``A`` (from below)."""
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
