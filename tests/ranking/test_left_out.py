"""The mislabel rule's leave-one-out probability against leave-one-out retraining, and the
flags it lets through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.config import FlagRule
from auditor.influence.gradients import per_example_grads
from auditor.models import build_model
from auditor.models.fit import fit
from auditor.ranking.rule import flag_masks, left_out_probability


def _overlapping_classes(n: int = 80, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64) + 1.2 * (2 * y[:, None] - 1)
    y[:4] = 1 - y[:4]  # four flipped labels
    return x, y


def test_the_left_out_probability_matches_leave_one_out_retraining():
    x, y = _overlapping_classes()
    n, wd = x.shape[0], 0.01
    model = build_model("logistic", "classification", x.shape[1], 2)
    full = fit(model, x, y, wd, grad_tol=1e-10)
    # exact self-influences -g^T A^-1 g at the fit
    grads = per_example_grads(model, full.theta, x, y)
    a = model.loss_hessian(full.theta, x, y) + wd * torch.eye(model.n_params, dtype=x.dtype)
    self_influence = -(grads * torch.linalg.solve(a, grads.T).T).sum(dim=1)
    loss = model.loss(model.outputs(full.theta, x), y).detach()
    estimate = left_out_probability(loss.numpy(), self_influence.numpy())
    # the truth: refit without each point, the probability of its label there
    truth = np.empty(n)
    for i in range(n):
        keep = torch.arange(n) != i
        refit = fit(model, x[keep], y[keep], wd, grad_tol=1e-10, theta0=full.theta)
        out = model.outputs(refit.theta, x[i : i + 1])
        truth[i] = float(torch.exp(-model.loss(out, y[i : i + 1]))[0])
    # first order in 1/n: off by 0.03 at most here (the most influential point), 1e-3 typically
    error = np.abs(estimate - truth)
    assert error.max() < 0.05 and np.median(error) < 1e-3
    # the four flipped labels are the least likely once left out, in both
    assert set(np.argsort(truth)[:4]) == set(range(4)) == set(np.argsort(estimate)[:4])
    # leaving a point out lowers the probability of its label: above the in-sample one
    in_sample = torch.exp(-loss).numpy()
    assert np.all(estimate <= in_sample + 1e-12) and np.all(truth <= in_sample + 1e-9)


def test_a_mislabel_needs_a_label_that_is_unlikely_once_left_out():
    union = np.array([9.0, 9.0, 9.0, 1.0])
    influence = np.zeros(4)
    predicted, given = np.array([1, 1, 0, 1]), np.array([0, 0, 0, 0])
    left_out = np.array([0.05, 0.45, 0.01, 0.01])
    rule = FlagRule(outlier_z=50.0, mislabel_z=5.0, mislabel_p=0.3)
    mislabel, _ = flag_masks(union, influence, predicted, given, "classification", rule, left_out)
    # 0: disagrees, strong, unlikely label; 1: likely label; 2: agrees; 3: weak test
    assert mislabel.tolist() == [True, False, False, False]
    without = FlagRule(outlier_z=50.0, mislabel_z=5.0, mislabel_p=None)  # runs stored before
    mislabel, _ = flag_masks(union, influence, predicted, given, "classification", without)
    assert mislabel.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="leave-one-out"):
        flag_masks(union, influence, predicted, given, "classification", rule)


def test_a_rule_stored_before_mislabel_p_keeps_its_flags():
    stored = FlagRule().to_dict()
    del stored["mislabel_p"]
    assert FlagRule.from_dict(stored).mislabel_p is None
    assert FlagRule.from_dict(FlagRule().to_dict()).mislabel_p == 0.3
