"""Influence predicts the effect of actually removing a point and retraining
(Koh & Liang, Fig. 2): -I(z, z_test) / n against the retrained change in test loss."""

import numpy as np
import pytest
import torch

from auditor.config import DataArgs
from auditor.models import build_model
from auditor.models.fit import fit
from auditor.store import pairs
from tests.helpers import run_scan


def make_problem(tmp_path, n=150, m=40, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen)
    x = torch.randn(n + m, d, generator=gen, dtype=torch.float64)
    y = (
        torch.sigmoid(x @ w.double()) > torch.rand(n + m, generator=gen, dtype=torch.float64)
    ).long()
    np.savez(tmp_path / "train.npz", X=x[:n].numpy(), y=y[:n].numpy())
    np.savez(tmp_path / "test.npz", X=x[n:].numpy(), y=y[n:].numpy())
    return x[:n], y[:n], x[n:], y[n:]


@pytest.mark.parametrize("solver", ["exact", "lissa"])
def test_influence_predicts_leave_one_out_retraining(tmp_path, solver):
    wd = 0.01
    x, y, x_test, y_test = make_problem(tmp_path)
    n = len(y)
    data = DataArgs(train=str(tmp_path / "train.npz"), test=str(tmp_path / "test.npz"))
    engine, result = run_scan(
        tmp_path / "a.db", data, solver=solver, weight_decay=wd, dtype="float64", grad_tol=1e-10
    )
    scores = pairs.read_pair_scores(engine, result.run_id)  # (m, n)

    model = build_model("logistic", "classification", x.shape[1], 2)
    full = fit(model, x, y, wd, grad_tol=1e-12)

    def test_losses(theta):
        return model.loss(model.outputs(theta, x_test), y_test)

    base = test_losses(full.theta)
    worst = base.argsort(descending=True)[:3]  # the paper looks at high-loss test points
    actual = np.zeros((len(worst), n))
    for i in range(n):
        keep = torch.arange(n) != i
        # Removing z_i from the (1/n)-weighted risk keeps the others' 1/n weights:
        # that is the n - 1 point mean risk with weight decay scaled by n / (n - 1).
        loo = fit(model, x[keep], y[keep], wd * n / (n - 1), theta0=full.theta, grad_tol=1e-12)
        actual[:, i] = (test_losses(loo.theta) - base)[worst].numpy()
    predicted = -scores[worst.numpy()] / n
    for j in range(len(worst)):
        r = np.corrcoef(predicted[j], actual[j])[0, 1]
        assert r >= 0.95, f"test point {int(worst[j])}: Pearson {r:.3f}"
        # same scale, not only the same ordering
        assert np.abs(predicted[j] - actual[j]).max() < 0.3 * np.abs(actual[j]).max()
