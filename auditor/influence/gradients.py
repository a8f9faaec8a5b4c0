"""Per-example gradients and Hessian-vector products, with torch.func.

Shapes: ``theta`` ``(p,)``, features ``x`` ``(n, d)``, targets ``y`` ``(n,)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch.func import grad, jvp, vmap

from auditor.models.base import ModelTask

# torch's forward-mode AD loads its decompositions through torch.jit.script, which warns
# once on first use; that is torch's internal business, not the user's.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)

#: Training points per block of streamed gradients (:class:`StreamedGradients`).
STREAMED_ROWS = 1024
#: Most (example, column) pairs one autograd Hessian-vector product holds at once.
HVP_EXAMPLE_COLUMNS = 32768


def per_example_grads(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Gradients of each example's loss (without the L2 term): ``(n, p)``."""
    grad_fn = vmap(grad(model.example_loss), in_dims=(None, 0, 0))
    return torch.cat([grad_fn(theta, x[s], y[s]) for s in _slices(x.shape[0], chunk)])


@dataclass
class StreamedGradients:
    """Per-example gradients ``(n, p)`` of ``model`` at ``theta`` on ``x`` ``(n, d)``,
    ``y`` ``(n,)``, computed ``chunk`` rows at a time each time they are read and never
    held whole: the training gradients of a scan whose solver keeps its memory bounded by
    its factors (EK-FAC over a network, where ``n x p`` floats would not fit).

    Reading them costs a gradient pass over the points; readers make as few passes as they
    can (:func:`row_blocks`, :func:`rows_at`)."""

    model: ModelTask
    theta: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    chunk: int = STREAMED_ROWS

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x.shape[0], self.theta.shape[0])

    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    def __getitem__(self, rows: slice) -> StreamedGradients:
        """The gradients of the points ``rows``, still streamed."""
        return replace(self, x=self.x[rows], y=self.y[rows])


#: Per-example gradients held as a tensor ``(n, p)`` or streamed.
TrainGradients = torch.Tensor | StreamedGradients


def training_gradients(
    model: ModelTask, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, streamed: bool
) -> TrainGradients:
    """The per-example gradients ``(n, p)`` of the training points: a tensor, or with
    ``streamed`` a :class:`StreamedGradients` that computes them block by block."""
    if streamed:
        return StreamedGradients(model, theta, x, y, STREAMED_ROWS)
    return per_example_grads(model, theta, x, y)


def row_blocks(
    grads: TrainGradients, chunk: int = STREAMED_ROWS
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(i0, rows)`` for consecutive blocks of rows ``(c, p)`` of ``grads``, in order: slices
    of a tensor (``chunk`` rows), or one streamed block of gradients at a time."""
    if isinstance(grads, StreamedGradients):
        for s in _slices(grads.shape[0], grads.chunk):
            yield s.start, per_example_grads(grads.model, grads.theta, grads.x[s], grads.y[s])
        return
    for s in _slices(grads.shape[0], chunk):
        yield s.start, grads[s]


def map_row_blocks(
    grads: TrainGradients, per_block: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``per_block(rows)`` of each block of rows ``(c, p)`` of ``grads`` (one pass over
    streamed gradients), concatenated along dim 0."""
    parts = [per_block(rows) for _, rows in row_blocks(grads)]
    if not parts:
        return per_block(torch.zeros(0, grads.shape[1], dtype=grads.dtype, device=grads.device))
    return torch.cat(parts)


def rows_at(grads: TrainGradients, index: torch.Tensor) -> torch.Tensor:
    """The rows ``index`` ``(k,)`` of ``grads``: ``(k, p)``."""
    if isinstance(grads, StreamedGradients):
        at = index.to(grads.x.device)
        return per_example_grads(grads.model, grads.theta, grads.x[at], grads.y[at])
    return grads[index.to(grads.device)]


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
