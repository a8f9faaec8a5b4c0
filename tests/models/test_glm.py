"""The generalised linear models' closed forms: the weighted Gram matrix their Hessians are
built from, against the plain product in float64."""

from __future__ import annotations

import pytest
import torch

from auditor.models.glm import GRAM_SPLIT_FROM, weighted_gram


@pytest.mark.parametrize("d", [3, GRAM_SPLIT_FROM - 1, GRAM_SPLIT_FROM, 301, 785])
def test_the_weighted_gram_matrix_equals_the_plain_product(d):
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(500, d, generator=gen, dtype=torch.float64)
    w = torch.randn(500, generator=gen, dtype=torch.float64)  # weights of either sign
    got = weighted_gram(x, w)
    torch.testing.assert_close(got, (x * w[:, None]).T @ x, rtol=1e-12, atol=1e-10)
    if d >= GRAM_SPLIT_FROM:  # the mirrored part is the computed part's transpose, exactly
        upper = torch.triu(torch.ones(d, d, dtype=torch.bool), diagonal=d // 2)
        assert torch.equal(got[upper], got.T[upper])
