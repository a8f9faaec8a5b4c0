"""The underfitting warning: a convex classifier whose weight decay costs it training
accuracy that the same model reaches with less, checked against fits made here."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from auditor.models import build_model
from auditor.models.fit import fit
from auditor.models.underfit import UNDERFIT_GAP, WEAKER, underfit
from auditor.store import open_db, runs
from tests.helpers import write_csv


def _classes(n: int = 400, seed: int = 0):
    """Two classes told apart exactly by one feature of a tiny scale, and loosely by five
    of a large one: a strong weight decay cannot afford the weight the small feature needs
    (61% train accuracy at 1, 69% at 0.01), a weak one can (98% at 1e-3, 100% below)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    sign = (2 * y - 1).double()
    exact = 0.05 * sign + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    loose = 0.3 * sign[:, None] + 2 * torch.randn(n, 5, generator=gen, dtype=torch.float64)
    return torch.cat([exact[:, None], loose], dim=1).float(), y


def _accuracy(model, theta, x, y) -> float:
    predicted, _ = model.predict(model.outputs(theta, x))
    return float((predicted == y).double().mean())


def test_a_weight_decay_that_costs_accuracy_is_reported_with_the_fix():
    x, y = _classes()
    model = build_model("logistic", "classification", x.shape[1], 2)
    strong = fit(model, x, y, 1.0)
    found = underfit(model, x, y, 1.0, strong, {})
    assert found is not None
    weaker = fit(model, x, y, 1.0 * WEAKER)  # the comparison, from scratch here
    assert found.accuracy == pytest.approx(_accuracy(model, strong.theta, x, y))
    assert found.weaker_accuracy == pytest.approx(_accuracy(model, weaker.theta, x, y))
    assert found.weaker_accuracy - found.accuracy >= UNDERFIT_GAP
    assert found.weaker_weight_decay == pytest.approx(0.01)
    assert "--weight-decay 1 against" in found.warning()
    assert found.warning().endswith("rerun with --weight-decay 0.01")


def test_a_fit_near_what_the_model_reaches_or_a_regression_is_not_reported():
    x, y = _classes()
    model = build_model("logistic", "classification", x.shape[1], 2)
    assert underfit(model, x, y, 1e-4, fit(model, x, y, 1e-4), {}) is None  # 100% either way
    target = x[:, 0] + 0.1 * torch.randn(x.shape[0], generator=torch.Generator().manual_seed(1))
    linear = build_model("linear", "regression", x.shape[1], 1)
    assert underfit(linear, x, target, 10.0, fit(linear, x, target, 10.0), {}) is None
    mlp = build_model("mlp", "classification", x.shape[1], 2, hidden=4)
    assert underfit(mlp, x, y, 1.0, fit(mlp, x, y, 1.0, max_iter=5), {}) is None


def test_the_scan_stores_and_prints_the_warning(tmp_path):
    x, y = _classes()
    columns = {f"f{j}": x[:, j].tolist() for j in range(x.shape[1])}
    data = write_csv(tmp_path / "d.csv", {**columns, "label": [f"c{v}" for v in y.tolist()]})
    db = str(tmp_path / "a.db")
    args = ["scan", "--train", data, "--test-split", "0.2", "--solver", "exact", "--db", db]
    result = CliRunner().invoke(cli, [*args, "--weight-decay", "1"])
    assert result.exit_code == 0, result.output
    assert "the weight decay holds the model back" in result.stderr
    [warning] = [w for w in runs.get_run(open_db(db), 1).warnings if "holds" in w]
    assert "rerun with --weight-decay 0.01" in warning
    quiet = CliRunner().invoke(cli, [*args, "--weight-decay", "0.0001"])
    assert quiet.exit_code == 0 and "holds the model back" not in quiet.stderr
