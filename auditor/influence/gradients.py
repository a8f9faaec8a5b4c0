"""Per-example gradients and Hessian-vector products, with torch.func.

Shapes: ``theta`` ``(p,)``, features ``x`` ``(n, d)``, targets ``y`` ``(n,)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch.func import grad, jvp, vmap

from auditor.models.base import ModelTask

# torch's forward-mode AD loads its decompositions through torch.jit.script, which warns
# once on first use; that is torch's internal business, not the user's.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

#: Most (example, column) pairs one autograd Hessian-vector product holds at once.
HVP_EXAMPLE_COLUMNS = 32768


def per_example_grads(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Gradients of each example's loss (without the L2 term): ``(n, p)``."""
    grad_fn = vmap(grad(model.example_loss), in_dims=(None, 0, 0))
    return torch.cat([grad_fn(theta, x[s], y[s]) for s in _slices(x.shape[0], chunk)])


def batch_hvp(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Hessian of the mean loss over ``(x, y)`` times each column of ``v`` ``(p, m)``.

    Uses the model's closed form when it has one, else forward-over-reverse autograd over
    at most :data:`HVP_EXAMPLE_COLUMNS` (example, column) pairs at a time: autograd keeps
    the activations of every example for every column it differentiates at once (a CNN
    over all its weights, 1,730 examples and 433 columns, asked for over 100 GB).
    """
    closed: torch.Tensor | None = model.hvp(theta, x, y, v)
    if closed is not None:
        return closed

    def mean_loss(t: torch.Tensor) -> torch.Tensor:
        return model.loss(model.outputs(t, x), y).mean()

    def hvp_column(col: torch.Tensor) -> torch.Tensor:
        # torch.func.jvp is typed as returning a tuple of Any: its tangent here is a tensor
        tangent: torch.Tensor = jvp(grad(mean_loss), (theta,), (col,))[1]
        return tangent

    columns = max(1, HVP_EXAMPLE_COLUMNS // max(1, x.shape[0]))
    return vmap(hvp_column, in_dims=1, out_dims=1, chunk_size=columns)(v)


def _slices(n: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))
