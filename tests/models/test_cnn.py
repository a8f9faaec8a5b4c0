"""The CNN model: Hessians against autograd, influence over all or the last parameters,
and (slow) the 10-class MNIST accuracy target."""

from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import DataArgs, ModelArgs, ScanConfig, SolverArgs
from auditor.errors import ConfigError
from auditor.influence.gradients import per_example_grads
from auditor.influence.hessian import HessianOperator
from auditor.influence.scores import self_influence
from auditor.influence.solvers import solve
from auditor.models.cnn import CNN
from auditor.models.fit import fit, risk
from auditor.pipeline.scan import load_data, scan
from auditor.store import open_db, runs


@pytest.fixture(scope="module")
def small_digits(mnist_dir):
    """60 MNIST 1s and 7s, centre-cropped to 16x16, in float64."""
    train, _ = load_data(DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2, seed=0))
    images = train.images[:60, :, 6:22, 6:22]
    x = images.reshape(60, -1).double() / 255.0
    return x, train.targets[:60]


def tiny(params: str) -> CNN:
    return CNN((1, 16, 16), 2, params=params, channels=(2, 2), hidden=3, epochs=3)


@pytest.mark.parametrize("params", [pytest.param("all", marks=pytest.mark.slow), "last"])
def test_cnn_hessian_matches_autograd_and_cg_matches_dense(small_digits, params):
    x, y = small_digits
    model = tiny(params)
    wd = 1e-2
    fitted = fit(model, x, y, wd, seed=0)
    assert fitted.theta.shape == (model.n_params,)
    assert model.n_params == (167 if params == "all" else 4)
    op = HessianOperator(model, fitted.theta, x, y, wd, damping=0.1)
    dense = op.dense()
    reference = torch.autograd.functional.hessian(
        lambda t: risk(model, t, x, y, wd), fitted.theta
    ) + 0.1 * torch.eye(model.n_params, dtype=x.dtype)
    torch.testing.assert_close(dense, reference, rtol=1e-6, atol=1e-8)
    if params == "all":  # damping keeps A positive definite away from an exact optimum
        assert torch.linalg.eigvalsh(dense).min() > 0
    grads = per_example_grads(model, fitted.theta, x, y)
    op = HessianOperator(model, fitted.theta, x, y, wd, 0.1)
    ihvps, diag = solve(op, grads.T, SolverArgs(solver="cg", damping=0.1, tol=1e-8))
    assert diag.converged
    exact = -(grads * torch.linalg.solve(dense, grads.T).T).sum(dim=1)
    torch.testing.assert_close(self_influence(grads, ihvps), exact, rtol=1e-5, atol=1e-9)


def test_last_layer_fit_is_an_optimum_of_the_head(small_digits):
    x, y = small_digits
    model = tiny("last")
    fitted = fit(model, x, y, 1e-2, seed=0)
    assert fitted.converged and fitted.grad_norm <= 1e-5
    body = model.body_theta.clone()
    fit(model, x, y, 1e-2, seed=0, theta0=fitted.theta)  # a refit keeps the body frozen
    assert torch.equal(model.body_theta, body)


@pytest.mark.parametrize("params", ["all", "last"])
def test_the_fitted_state_rebuilds_the_same_network(small_digits, params):
    """What a run stores (and a rank receives) holds the input scale and, for ``last``,
    the frozen body: a fresh model loaded from it computes the same outputs."""
    x, y = small_digits
    model = tiny(params)
    theta = fit(model, x, y, 1e-2, seed=0).theta
    fresh = tiny(params)
    loaded = fresh.load_fitted_state(model.fitted_state(theta))
    assert torch.equal(loaded, theta) and fresh.input_scale == model.input_scale != 1.0
    assert torch.equal(fresh.outputs(loaded, x), model.outputs(theta, x))
    assert fresh.load_fitted_state(theta) is None  # theta alone (an older run): fit again
    assert model.has_closed_form_hessian == (params == "last")


@pytest.mark.parametrize("params", ["last", "all"])
def test_the_cnns_facts_count_every_weight_and_those_influence_covers(params):
    model = CNN((1, 16, 16), 10, params=params, hidden=32)
    # conv1 1->16 5x5, conv2 16->32 5x5 (16x16 -> 1x1 after two conv+pool), fc 32->32, head
    total = (16 * 25 + 16) + (32 * 16 * 25 + 32) + (32 * 32 + 32) + (32 + 1) * 10
    facts = model.facts()["network"]
    assert facts.startswith(f"{total:,} weights; influence over ")
    assert facts.endswith(f"{model.n_params:,}") and model.n_params == (
        330 if params == "last" else total
    )


def test_cnn_needs_images():
    with pytest.raises(ConfigError, match="at least 16x16"):
        CNN((1, 8, 8), 2)
    result = CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--model", "cnn"])
    assert result.exit_code == 2 and "needs labelled images" in result.output


@pytest.mark.slow
def test_cnn_reaches_97_percent_on_ten_class_mnist_and_flags_little_of_it(tmp_path, mnist_dir):
    db = str(tmp_path / "cnn.db")
    result = CliRunner().invoke(
        cli,
        ["scan", "--train", str(mnist_dir), "--test-split", "0.2", "--model", "cnn"]
        + ["--solver", "exact", "--weight-decay", "1e-4", "--trim", "0", "--db", db],
    )
    assert result.exit_code == 0, result.output
    run = runs.get_run(open_db(db), int(result.stdout.strip())).as_dict()
    assert run["config"]["model"]["params"] == "last" and run["model"] == "cnn"
    assert (run["n_train"], run["n_test"]) == (8000, 2000)
    assert run["metrics"]["test_accuracy"] >= 0.97
    assert run["metrics"]["fit_converged"]
    # clean data: the influence norm's robust z flagged 1,107 of these 8,000 points as
    # outliers (most gradients of a well-fitted network are near zero); the log scale
    # with the calibrated threshold flags a handful
    assert sum(run["ranking"]["flag_counts"].values()) <= 40, run["ranking"]["flag_counts"]


def test_pretrain_trains_the_whole_network_without_changing_the_configuration(
    small_digits, monkeypatch
):
    """Pretraining goes through the whole network's own risk: ``params`` (and every other
    setting) stays as configured while it runs."""
    x, y = small_digits
    model = tiny("last")
    settings = {k: v for k, v in vars(model).items() if k not in ("body_theta", "input_scale")}
    seen = []
    embed = CNN.embed

    def spy(self, body, x, tape=None):
        seen.append((self.params, body.requires_grad))
        return embed(self, body, x, tape)

    monkeypatch.setattr(CNN, "embed", spy)
    start = model.pretrain(x, y, 1e-2, seed=0)
    assert seen and set(seen) == {("last", True)}  # every minibatch trains the body too
    assert start.shape == (model.n_params,) and model.body_theta.shape == (model.n_body,)
    assert {k: v for k, v in vars(model).items() if k in settings} == settings


def test_the_head_over_frozen_features_is_the_last_layer_model(small_digits):
    """What the scan computes on the head over the embeddings equals the CNN's own."""
    x, y = small_digits
    model = tiny("last")
    fitted = fit(model, x, y, 1e-2, seed=0)
    features = model.frozen_features(x)
    assert torch.equal(fitted.features, features) and features.shape == (60, 3)
    assert not features.requires_grad
    theta = fitted.theta
    assert torch.equal(model.head.outputs(theta, features), model.outputs(theta, x))
    torch.testing.assert_close(
        per_example_grads(model.head, theta, features, y), per_example_grads(model, theta, x, y)
    )
    torch.testing.assert_close(
        model.head.loss_hessian(theta, features, y), model.loss_hessian(theta, x, y)
    )
    assert tiny("all").frozen_features(x) is None


def test_a_scan_embeds_the_training_and_test_points_once(tmp_path, mnist_dir, monkeypatch):
    """With ``params="last"`` the frozen body's embeddings are computed once per split
    (the fit's are reused); gradients, solves and refits run on the head over them."""
    train, test = load_data(DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.2))

    def crop(ds, n):
        images = ds.images[:n, :, 6:22, 6:22].contiguous()
        features = images.reshape(n, -1).float() / 255.0
        return replace(ds, features=features, targets=ds.targets[:n], ids=ds.ids[:n], images=images)

    frozen = []
    embed = CNN.embed

    def spy(self, body, x, tape=None):
        if not torch.is_grad_enabled():  # not a pretraining minibatch
            frozen.append(x.shape[0])
        return embed(self, body, x, tape)

    monkeypatch.setattr(CNN, "embed", spy)
    config = ScanConfig(
        data=DataArgs(train="memory"),
        model=ModelArgs(name="cnn", hidden=3, epochs=1),
        solver=SolverArgs(solver="exact"),
    )
    engine = open_db(str(tmp_path / "cnn.db"))
    result = scan(engine, config, datasets=(crop(train, 60), crop(test, 12)))
    assert frozen == [60, 12]
    run = runs.get_run(engine, result.run_id).as_dict()
    assert run["status"] == "complete" and run["ranking"]["refits"] >= 1
