"""EK-FAC against independent references: the exact Hessian where EK-FAC is exact, the
rotated Gauss-Newton blocks it fits its eigenvalues to, per-example gradients from
``torch.func`` for the layers it sees, and leave-one-out retraining."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from auditor.config import DataArgs, SolverArgs
from auditor.influence import ekfac
from auditor.influence.conditioning import check_conditioning
from auditor.influence.gradients import StreamedGradients, per_example_grads
from auditor.influence.hessian import HessianOperator
from auditor.influence.scores import pair_scores
from auditor.influence.self_influence import self_influences
from auditor.influence.solvers import solve
from auditor.models import ModelSpec
from auditor.models.cnn import CNN
from auditor.models.fit import fit
from auditor.models.glm import LinearRegression, MultinomialLogistic
from auditor.models.mlp import MLP
from auditor.models.user import NoBias, load_user_model
from auditor.store import open_db, pairs, points, runs
from tests.helpers import one_error, run_scan, write_csv
from tests.models import user_nets

F64 = torch.float64


def blobs(n, d, k, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(k, d, generator=gen, dtype=dtype)
    y = torch.randint(0, k, (n,), generator=gen)
    return centres[y] + torch.randn(n, d, generator=gen, dtype=dtype), y


def tiny_cnn(k=3, params="all"):
    return CNN((1, 16, 16), k, params=params, channels=(2, 3), hidden=5, epochs=3)


def gauss_newton(model, theta, x):
    """The Gauss-Newton matrix ``(p, p)`` of the mean loss, from the full Jacobian."""
    jac = torch.func.jacrev(lambda t: model.outputs(t, x))(theta)  # (n, k, p)
    out = model.outputs(theta, x).detach()
    h_out = torch.func.vmap(
        torch.func.hessian(lambda o: model.loss(o[None], torch.zeros(1, dtype=torch.long))[0])
    )(out)
    return torch.einsum("nkp,nkl,nlq->pq", jac, h_out, jac) / x.shape[0]


def test_ekfac_is_exact_for_linear_regression():
    # one layer, squared loss: the Gauss-Newton matrix is the Hessian, S is 1 x 1, and the
    # eigenvalues fitted in the eigenbasis of A = E[a a^T] are A's own
    x, _ = blobs(200, 6, 1)
    y = x @ torch.arange(6, dtype=F64) + torch.randn(200, dtype=F64)
    model = LinearRegression(6)
    theta = fit(model, x, y, 0.01).theta
    op = HessianOperator(model, theta, x, y, 0.01)
    v = per_example_grads(model, theta, x, y)[:20].T
    exact, _ = solve(op, v, SolverArgs(solver="exact"))
    approx, diag = solve(op, v, SolverArgs(solver="ekfac"))
    torch.testing.assert_close(approx, exact, rtol=1e-9, atol=1e-12)
    assert diag.residual_max < 1e-9 and diag.covered == model.n_params


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_corrected_eigenvalues_are_the_rotated_gauss_newton_diagonal(name):
    # EK-FAC's eigenvalue of layer block B in its Kronecker eigenbasis Q is diag(Q^T B Q),
    # B the exact Gauss-Newton block, with targets drawn from the model (the root of the
    # output Hessian, exactly, for few outputs)
    if name == "mlp":
        x, y = blobs(120, 5, 3)
        model, wd = MLP(5, 3, hidden=4), 0.01
    else:
        x, y = blobs(60, 256, 3)
        model, wd = tiny_cnn(), 0.01
    theta = fit(model, x, y, wd, seed=0, max_iter=30).theta
    factors = ekfac.fit_ekfac(model, theta, x, y, chunk=25)  # chunks: sums across them
    ggn = gauss_newton(model, theta, x)
    assert factors.covered == model.n_params
    for layer in factors.layers:
        flat = layer.index.reshape(-1)
        block = ggn[flat[:, None], flat[None, :]]
        q = torch.kron(layer.q_out, layer.q_in)
        expected = torch.diagonal(q.T @ block @ q).reshape(layer.index.shape)
        torch.testing.assert_close(layer.eigenvalues, expected, rtol=1e-8, atol=1e-12)


def test_inverse_is_the_block_inverse_in_the_eigenbasis():
    x, y = blobs(150, 5, 3)
    model = MLP(5, 3, hidden=4)
    theta = fit(model, x, y, 0.01).theta
    factors = ekfac.fit_ekfac(model, theta, x, y)
    v = torch.randn(model.n_params, 7, dtype=F64)
    shift = 0.05
    dense = torch.zeros(model.n_params, model.n_params, dtype=F64)
    for layer in factors.layers:
        q = torch.kron(layer.q_out, layer.q_in)
        flat = layer.index.reshape(-1)
        block = q @ torch.diag(layer.eigenvalues.reshape(-1) + shift) @ q.T
        dense[flat[:, None], flat[None, :]] = block
    torch.testing.assert_close(
        factors.inverse_times(v, shift), torch.linalg.solve(dense, v), rtol=1e-8, atol=1e-10
    )
    g = torch.randn(9, model.n_params, dtype=F64)
    torch.testing.assert_close(
        factors.quadratic_forms(g, shift),
        (g * torch.linalg.solve(dense, g.T).T).sum(1),
        rtol=1e-8,
        atol=1e-10,
    )


def taped_gradients(model, theta, x, y):
    """Per-example gradients ``(n, p)`` rebuilt from the tape, 0 outside its layers."""
    theta = theta.detach().requires_grad_(True)
    out, layers = model.taped_outputs(theta, x)
    grads = torch.autograd.grad(model.loss(out, y).sum(), [layer.outputs for layer in layers])
    rebuilt = torch.zeros(x.shape[0], theta.shape[0], dtype=theta.dtype)
    for layer, g in zip(layers, grads, strict=True):
        a, g = ekfac._rows(layer, g[None])
        rebuilt[:, layer.index] = torch.einsum("blo,bli->boi", g[0], a)
    return rebuilt


@pytest.mark.parametrize("name", ["mlp", "cnn", "logistic", "nobias"])
def test_tape_gives_the_per_example_gradients(name):
    x, y = blobs(30, 256 if name == "cnn" else 6, 3)
    model = {
        "mlp": lambda: MLP(6, 3, hidden=4),
        "cnn": tiny_cnn,
        "logistic": lambda: MultinomialLogistic(6, 3),
        "nobias": lambda: NoBias(MultinomialLogistic(6, 3)),
    }[name]()
    theta = torch.randn(model.n_params, dtype=F64) * 0.3
    torch.testing.assert_close(
        taped_gradients(model, theta, x, y), per_example_grads(model, theta, x, y)
    )


def conv_norm_model(tmp_path, params="all"):
    """A state dict of :class:`user_nets.ConvNorm` read back as a user's model."""
    torch.manual_seed(0)
    torch.save(user_nets.ConvNorm().double().state_dict(), tmp_path / "net.sd")
    spec = ModelSpec("classification", 64, 3, image_shape=(1, 8, 8), params=params)
    return load_user_model(
        str(tmp_path / "net.sd"), "tests.models.user_nets:conv_norm", spec, fit="none",
        device=torch.device("cpu"), dtype=F64, sample=torch.randn(8, 64, dtype=F64),
    )  # fmt: skip


def test_a_users_module_tapes_its_conv_and_linear_layers(tmp_path):
    model = conv_norm_model(tmp_path)
    x, y = blobs(20, 64, 3)
    theta = model._trained.to(F64)
    out, layers = model.taped_outputs(theta, x)
    assert [layer.conv is not None for layer in layers] == [True, False]
    rebuilt, full = taped_gradients(model, theta, x, y), per_example_grads(model, theta, x, y)
    covered = torch.cat([layer.index.reshape(-1) for layer in layers])
    torch.testing.assert_close(rebuilt[:, covered], full[:, covered])
    # the LayerNorm's weight and bias lie outside every layer: EK-FAC leaves them out
    factors = ekfac.fit_ekfac(model, theta, x, y)
    norm = model.n_params - factors.covered
    assert norm == 2 * 32
    solved = factors.inverse_times(full.T, 0.1)
    outside = torch.ones(model.n_params, dtype=torch.bool)
    outside[covered] = False
    assert torch.count_nonzero(solved[outside]) == 0


@pytest.mark.parametrize(
    ("name", "solver"), [("mlp", "ekfac"), ("mlp", "cg"), ("logistic", "exact")]
)
def test_streamed_gradients_read_as_the_held_ones(name, solver):
    # every reader of the training gradients: pair scores, self-influences (the ekfac
    # factors, the exact Cholesky factor, a solve) and the conditioning check
    x, y = blobs(100, 3, 3, seed=2)
    model = MLP(3, 3, hidden=4) if name == "mlp" else MultinomialLogistic(3, 3)
    theta = fit(model, x, y, 0.05).theta
    held = per_example_grads(model, theta, x, y)
    streamed = StreamedGradients(model, theta, x, y, chunk=16)
    assert streamed.shape == held.shape and streamed[10:30].shape == (20, model.n_params)
    v = torch.randn(model.n_params, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(pair_scores(streamed, v), pair_scores(held, v))
    op = HessianOperator(model, theta, x, y, 0.05)
    args = SolverArgs(solver=solver, tol=1e-10)
    torch.testing.assert_close(
        self_influences(op, streamed, args)[0], self_influences(op, held, args)[0]
    )
    a, b = (check_conditioning(op, g, 0.1, seed=3) for g in (streamed, held))
    assert a["lambda_max"] == pytest.approx(b["lambda_max"], rel=1e-9)
    assert a["decrease"] == pytest.approx(b["decrease"], rel=1e-6, abs=1e-30)


# --- through the scan -------------------------------------------------------------------------


def test_a_scan_with_ekfac_stores_the_exact_scores_where_ekfac_is_exact(tmp_path):
    # toy-linear is a linear regression: EK-FAC's one block is the Hessian itself
    data = DataArgs(train="toy-linear")
    common = {"dtype": "float64", "grad_tol": 1e-10}
    engine, exact = run_scan(tmp_path / "a.db", data, solver="exact", **common)
    engine2, approx = run_scan(tmp_path / "b.db", data, solver="ekfac", **common)
    want = pairs.read_pair_scores(engine, exact.run_id)
    got = pairs.read_pair_scores(engine2, approx.run_id)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
    run = runs.get_run(engine2, approx.run_id)
    assert run.status == "complete" and run.solver["solver"] == "ekfac"
    assert run.solver["covered"] == run.n_params


def test_ekfac_refuses_a_model_whose_layers_it_cannot_see(tmp_path):
    # a torch.export program over all parameters: its layers are gone from the graph
    torch.manual_seed(0)
    net = user_nets.MLP(d=1, hidden=4, k=1)
    files = user_nets.save_all(net, torch.randn(4, 1), tmp_path, "mlp")
    db = tmp_path / "a.db"
    args = ["scan", "--train", "toy-linear", "--model-file", str(files["pt2"]), "--params", "all"]
    result = CliRunner().invoke(cli, [*args, "--solver", "ekfac", "--db", str(db)])
    assert result.exit_code != 0
    one_error(result.output, "--solver ekfac", "cannot show them")
    assert not db.exists() or runs.list_runs(open_db(str(db))) == []


@pytest.mark.slow
def test_ekfac_predicts_leave_one_out_retraining():
    # Koh & Liang's check (tests/influence/test_leave_one_out.py) over every weight of a
    # small MLP: -I(z_i, z_test) / n against the change in test loss when z_i is removed
    # and the network retrained from the fit. Measured: Pearson 0.95 to 0.98 for EK-FAC,
    # 0.98 to 0.999 for the exact solver (seeds 0, 1; weight decay 0.01, 0.05).
    gen = torch.Generator().manual_seed(0)
    n, m, d, wd = 120, 30, 4, 0.05
    x = torch.randn(n + m, d, generator=gen, dtype=F64)
    w = torch.randn(d, generator=gen, dtype=F64)
    y = (torch.sigmoid(2 * x @ w) > torch.rand(n + m, generator=gen, dtype=F64)).long()
    x, y, x_test, y_test = x[:n], y[:n], x[n:], y[n:]
    model = MLP(d, 2, hidden=3)
    theta = fit(model, x, y, wd, seed=0, grad_tol=1e-12).theta
    base = model.loss(model.outputs(theta, x_test), y_test)
    worst = base.argsort(descending=True)[:2]
    removed = torch.arange(0, n, 3)  # 40 retrainings
    actual = np.zeros((2, len(removed)))
    for col, i in enumerate(removed):
        keep = torch.arange(n) != i
        loo = fit(model, x[keep], y[keep], wd * n / (n - 1), theta0=theta, grad_tol=1e-12)
        actual[:, col] = (model.loss(model.outputs(loo.theta, x_test), y_test) - base)[worst]
    op = HessianOperator(model, theta, x, y, wd)
    g = per_example_grads(model, theta, x[removed], y[removed])
    g_test = per_example_grads(model, theta, x_test[worst], y_test[worst])
    for solver, least in [("exact", 0.97), ("ekfac", 0.9)]:
        solved, _ = solve(op, g_test.T.contiguous(), SolverArgs(solver=solver))
        predicted = (g @ solved).T.numpy() / n
        for j in range(2):
            r = np.corrcoef(predicted[j], actual[j])[0, 1]
            assert r >= least, f"{solver}, test point {int(worst[j])}: Pearson {r:.3f}"


def test_an_ekfac_scan_streams_the_training_gradients(tmp_path, monkeypatch):
    # memory bounded by the factors: no gradient pass holds more than a block of points,
    # and the stored scan equals the one that holds every gradient at once
    from auditor.influence import gradients
    from auditor.pipeline import scan as scan_module
    from auditor.ranking import refits

    x, y = blobs(300, 3, 3, seed=1, dtype=torch.float32)
    columns = {f"f{j}": x[:, j].tolist() for j in range(3)}
    csv = write_csv(tmp_path / "d.csv", {**columns, "label": y.tolist()})
    data = DataArgs(train=csv, test_split=0.2)
    common = {"name": "mlp", "hidden": 6, "weight_decay": 0.01, "dtype": "float32"}
    rows: list[int] = []
    real = gradients.per_example_grads

    def counted(model, theta, x, y, chunk=4096):
        rows.append(x.shape[0])
        return real(model, theta, x, y, chunk)

    monkeypatch.setattr(gradients, "per_example_grads", counted)
    monkeypatch.setattr(gradients, "STREAMED_ROWS", 40)
    engine, streamed = run_scan(tmp_path / "a.db", data, solver="ekfac", **common)
    n_train = runs.get_run(engine, streamed.run_id).n_train
    assert n_train > 40 and rows and max(rows) <= 40, rows
    assert (
        streamed.timings["ranking"] > 0 and runs.get_run(engine, streamed.run_id).ranking["refits"]
    ), "the refits stream as well"

    def held(model, theta, x, y, streamed):
        return real(model, theta, x, y)

    monkeypatch.setattr(scan_module, "training_gradients", held)
    monkeypatch.setattr(refits, "training_gradients", held)
    engine2, whole = run_scan(tmp_path / "b.db", data, solver="ekfac", **common)
    got = pairs.read_pair_scores(engine, streamed.run_id)
    want = pairs.read_pair_scores(engine2, whole.run_id)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    a, b = (
        points.read_points(e, r.run_id, "train") for e, r in [(engine, streamed), (engine2, whole)]
    )
    np.testing.assert_allclose(
        [p["self_influence"] for p in a], [p["self_influence"] for p in b], rtol=1e-4
    )
    assert [p["flags"] for p in a] == [p["flags"] for p in b]
