"""Influence scores from gradients and inverse-HVPs (Koh & Liang's sign convention).

I(z_i, z_test_j) = -g_train_i . s_test_j with s_test_j = A^{-1} g_test_j. Positive means
up-weighting z_i raises the test loss: z_i is harmful to that test point.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def pair_score_chunks(
    train_grads: torch.Tensor, test_ihvps: torch.Tensor, chunk: int = 256, start: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """Pair scores one block of test points at a time, never the whole matrix.

    Args:
        train_grads: ``(n, p)`` per-example training gradients.
        test_ihvps: ``(p, m)`` inverse-HVPs of the test gradients, one column per test point.
        chunk: Test points per block.
        start: First test index (to resume part-way).

    Yields:
        ``(j0, scores)`` with ``scores`` ``(c, n)``: ``scores[j, i] = I(z_i, z_test_{j0+j})``.
    """
    m = test_ihvps.shape[1]
    for j0 in range(start, m, chunk):
        yield j0, -(train_grads @ test_ihvps[:, j0 : j0 + chunk]).T


def self_influence(train_grads: torch.Tensor, train_ihvps: torch.Tensor) -> torch.Tensor:
    """``-g_i . A^{-1} g_i`` for each training point: ``(n,)``, all <= 0 for a PD Hessian.

    Args:
        train_grads: ``(n, p)``.
        train_ihvps: ``(p, n)``, column i is ``A^{-1} g_i``.
    """
    return -(train_grads * train_ihvps.T).sum(dim=1)


def harmfulness(train_grads: torch.Tensor, test_ihvps: torch.Tensor) -> torch.Tensor:
    """Sum over test points of each training point's influence: ``(n,)``.

    Equals the row sums of the pair-score matrix, computed as one matrix-vector product.
    """
    return -(train_grads @ test_ihvps.sum(dim=1))
