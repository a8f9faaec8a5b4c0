"""Influence scores from gradients and inverse-HVPs (Koh & Liang's sign convention).

I(z_i, z_test_j) = -g_train_i . s_test_j with s_test_j = A^{-1} g_test_j. Positive means
up-weighting z_i raises the test loss: z_i is harmful to that test point.
"""

from __future__ import annotations

import torch

from auditor.influence.gradients import StreamedGradients, TrainGradients, row_blocks


def pair_scores(train_grads: TrainGradients, test_ihvps: torch.Tensor) -> torch.Tensor:
    """Pair scores of every training point against the test points of ``test_ihvps``.

    Args:
        train_grads: ``(n, p)`` per-example training gradients, held or streamed (one
            gradient pass over the training points, block by block).
        test_ihvps: ``(p, c)`` inverse-HVPs of the test gradients, one column per test point.

    Returns:
        ``(c, n)``: ``scores[j, i] = I(z_i, z_test_j)``.
    """
    if not isinstance(train_grads, StreamedGradients):
        return -(train_grads @ test_ihvps).T
    n = train_grads.shape[0]
    out = test_ihvps.new_empty(test_ihvps.shape[1], n)
    for i0, rows in row_blocks(train_grads):
        out[:, i0 : i0 + rows.shape[0]] = -(rows @ test_ihvps).T
    return out


def self_influence(train_grads: torch.Tensor, train_ihvps: torch.Tensor) -> torch.Tensor:
    """``-g_i . A^{-1} g_i`` for each training point: ``(n,)``, all <= 0 for a PD Hessian.

    Args:
        train_grads: ``(n, p)``.
        train_ihvps: ``(p, n)``, column i is ``A^{-1} g_i``.
    """
    return -(train_grads * train_ihvps.T).sum(dim=1)
