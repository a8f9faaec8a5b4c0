"""``auditor scan --model-file``: a user's own trained network (a torch.export program, a
TorchScript file, a state dict with its factory), scanned through the CLI and checked
against influence computed here from scratch: ``-g_test^T (H + lambda I)^{-1} g_train``
with a dense Hessian from ``torch.func.hessian`` in float64, through the whole network."""

from __future__ import annotations

import copy
import hashlib
import shutil
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner
from torch import nn
from torch.func import functional_call, grad, hessian, vmap

from auditor.cli import cli
from auditor.cli.options import scan_argv
from auditor.config import DataArgs, ModelArgs, ScanConfig
from auditor.data import Dataset
from auditor.models import ModelSpec
from auditor.models.user import UserModel, load_user_model
from auditor.pipeline.loading import load_data
from auditor.report.collect import collect
from auditor.store import open_db, pairs, runs
from auditor.store.schema import pair_scores
from auditor.store.schema import points as points_table
from tests.helpers import one_error
from tests.models import user_nets

FACTORY = "tests.models.user_nets:mlp"
KIND_NAMES = {"pt2": "torch.export", "pt2-static": "torch.export", "ts": "torchscript"}
KIND_NAMES["sd"] = "state dict"


@dataclass
class Trained:
    """A trained network, the files it was saved as, and the data it was trained on
    (features as auditor reads them)."""

    net: nn.Module
    files: dict[str, Path]
    train: Dataset
    test: Dataset
    data: list[str]  # the scan options naming the data

    def x(self, split: str = "train") -> torch.Tensor:
        ds = self.train if split == "train" else self.test
        shape = ds.images.shape[1:] if ds.images is not None else ds.features.shape[1:]
        return ds.features.reshape(-1, *shape)

    def file_args(self, kind: str) -> list[str]:
        args = ["--model-file", str(self.files[kind])]
        return args + (["--model-factory", self.factory] if kind == "sd" else [])

    factory: str = FACTORY


def _csv(path: Path, x: np.ndarray, labels: list[str], column: str) -> str:
    rows = "".join(
        ",".join(repr(float(v)) for v in r) + f",{t}\n" for r, t in zip(x, labels, strict=True)
    )
    path.write_text("a,b,c," + column + "\n" + rows)
    return str(path)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> Trained:
    """Two classes of 3-D points (5 of 90 training labels flipped), an MLP with two logits
    trained on them, saved as each kind."""
    folder = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    label = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    label[:5] = 1 - label[:5]
    names = ["no" if v == 0 else "yes" for v in label]
    data = DataArgs(
        train=_csv(folder / "train.csv", x[:90], names[:90], "label"),
        test=_csv(folder / "test.csv", x[90:], names[90:], "label"),
    )
    train, test = load_data(data)
    net = user_nets.train(user_nets.MLP(), train.features, train.targets)
    files = user_nets.save_all(net, train.features[:4], folder, "mlp")
    return Trained(net, files, train, test, ["--train", data.train, "--test", data.test])


@pytest.fixture(scope="module")
def regression(tmp_path_factory) -> Trained:
    """A noisy linear target of 3 features, an MLP with one output returned as ``(n,)``."""
    folder = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    target = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(0, 0.1, 80)
    values = [repr(float(v)) for v in target]
    data = DataArgs(
        train=_csv(folder / "train.csv", x[:60], values[:60], "target"),
        test=_csv(folder / "test.csv", x[60:], values[60:], "target"),
    )
    train, test = load_data(data)
    net = user_nets.train(user_nets.regressor(), train.features, train.targets)
    files = user_nets.save_all(net, train.features[:4], folder, "reg")
    return Trained(
        net, files, train, test, ["--train", data.train, "--test", data.test],
        "tests.models.user_nets:regressor",
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_dir) -> Trained:
    """MNIST 1s and 7s, 216 for training (``--test-split 0.9``), a tiny CNN on them."""
    folder = tmp_path_factory.mktemp("digits")
    options = ["--train", str(mnist_dir), "--classes", "1,7", "--test-split", "0.9"]
    train, test = load_data(DataArgs(train=str(mnist_dir), classes=["1", "7"], test_split=0.9))
    trained = Trained(user_nets.TinyCNN(), {}, train, test, options)
    user_nets.train(trained.net, trained.x(), train.targets, steps=150)
    trained.files = user_nets.save_all(trained.net, trained.x()[:4], folder, "cnn")
    return trained


# --- the reference: influence from scratch ---------------------------------------------------


def reference(
    trained: Trained,
    *,
    params: str = "last",
    refit: bool = False,
    weight_decay: float = 0.01,
    damping: float = 0.0,
    at: torch.Tensor | None = None,
) -> tuple[np.ndarray, torch.Tensor, float]:
    """Pair scores ``(n_test, n_train)``, the parameters they were taken at (the trained
    ones, the last layer refitted by Newton's method, or ``at``) and the risk's gradient
    norm there, all in float64 through the whole network with ``torch.func``."""
    net = copy.deepcopy(trained.net).double()
    fixed = {n: p.detach() for n, p in net.named_parameters()}
    head = [n for n in fixed if n.startswith("fc.")]
    chosen = head if params == "last" else list(fixed)
    shapes = [fixed[n].shape for n in chosen]

    def unflat(theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, [s.numel() for s in shapes])
        return {**fixed, **{n: p.reshape(s) for n, p, s in zip(chosen, parts, shapes, strict=True)}}

    def losses(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, unflat(theta), (x,)).reshape(x.shape[0], -1)
        if trained.train.task == "regression":
            return 0.5 * (out[:, 0] - y) ** 2
        if out.shape[1] == 1:
            return nn.functional.binary_cross_entropy_with_logits(
                out[:, 0], y.double(), reduction="none"
            )
        return nn.functional.cross_entropy(out, y, reduction="none")

    x, y = trained.x().double(), trained.train.targets
    x_test, y_test = trained.x("test").double(), trained.test.targets
    if trained.train.task == "regression":
        y, y_test = y.double(), y_test.double()

    def risk(theta: torch.Tensor) -> torch.Tensor:
        return losses(theta, x, y).mean() + 0.5 * weight_decay * theta.dot(theta)

    theta = torch.cat([fixed[n].reshape(-1) for n in chosen])
    if refit:  # Newton's method on the last layer (the body as trained)
        where = torch.cat([torch.full((fixed[n].numel(),), n in head) for n in chosen])
        for _ in range(30):
            g, h = grad(risk)(theta)[where], hessian(risk)(theta)[where][:, where]
            theta = theta.clone()
            theta[where] -= torch.linalg.solve(h, g)
            if g.norm() < 1e-13:
                break
    if at is not None:
        theta = at.double()
    a = hessian(risk)(theta) + damping * torch.eye(theta.numel(), dtype=theta.dtype)
    per_example = vmap(grad(lambda t, xi, yi: losses(t, xi[None], yi[None])[0]), (None, 0, 0))
    g_train, g_test = per_example(theta, x, y), per_example(theta, x_test, y_test)
    scores = -g_test @ torch.linalg.solve(a, g_train.T)
    return scores.numpy(), theta, float(grad(risk)(theta).norm())


# --- scanning through the CLI ---------------------------------------------------------------


def head_in_reference_layout(stored: torch.Tensor, k: int) -> torch.Tensor:
    """A stored last-layer ``theta`` (the GLM head's layout: ``[w, b]`` for one output,
    the ``(h + 1, k)`` matrix row-major for more) as the reference's ``[fc.weight, fc.bias]``."""
    if k == 1:
        return stored.double()
    rows = stored.double().reshape(-1, k)
    return torch.cat([rows[:-1].T.reshape(-1), rows[-1]])


def check_refit(trained: Trained, run: runs.StoredRun, got: np.ndarray, rtol: float) -> None:
    """A ``--fit last`` run: its last layer is the optimum (within the fit's gradient
    tolerance, 1e-5, so at most 1e-5 / weight decay away), and its scores are the
    reference's at the parameters it stored."""
    stored = runs.theta_from_bytes(run.theta, run.config["model"]["dtype"])
    k = 1 if trained.train.task == "regression" else trained.net.fc.out_features
    at = head_in_reference_layout(stored, k)
    _, optimum, _ = reference(trained, refit=True)
    torch.testing.assert_close(at, optimum, rtol=0, atol=1e-3)
    want, _, grad_norm = reference(trained, at=at)
    assert_scores(got, want, rtol)
    assert run.metrics["fit_converged"] and run.metrics["grad_norm"] <= 1e-5
    assert grad_norm <= 1e-4


def scan(db: Path, *args: str, code: int = 0):
    """``auditor scan ARGS --db DB --solver exact``; the result (exit status checked)."""
    result = CliRunner().invoke(cli, ["scan", *args, "--solver", "exact", "--db", str(db)])
    assert result.exit_code == code, result.output
    return result


def run_of(db: Path) -> tuple[runs.StoredRun, np.ndarray]:
    engine = open_db(str(db))
    run_id = runs.latest_run_id(engine)
    return runs.get_run(engine, run_id, with_theta=True), pairs.read_pair_scores(engine, run_id)


def assert_scores(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("kind", ["pt2", "pt2-static", "ts", "sd"])
def test_each_kind_used_as_trained_gives_the_last_layers_influence(tabular, tmp_path, kind):
    """``--params last --fit none`` (the defaults): influence over the last linear layer
    at the trained parameters, the same from every kind of file and equal to the
    reference; the run records the file, and warns that the model is no optimum."""
    scan(tmp_path / "a.db", *tabular.data, *tabular.file_args(kind), "--dtype", "float64")
    run, got = run_of(tmp_path / "a.db")
    want, theta, grad_norm = reference(tabular)
    assert_scores(got, want)
    assert run.model == KIND_NAMES[kind] and run.n_params == 18  # (8 + 1) x 2 logits
    path = tabular.files[kind]
    assert run.sources["model"] == {
        "path": str(path.resolve()),
        "kind": KIND_NAMES[kind],
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "factory": FACTORY if kind == "sd" else None,
    }
    assert run.config["model"]["model_file"] == str(path)
    assert run.config["model"]["fit"] == "none"
    assert run.metrics["fit_iterations"] == 0
    assert run.metrics["grad_norm"] == pytest.approx(grad_norm, rel=1e-6) and grad_norm > 1e-3
    assert any("--fit last" in w for w in run.warnings)
    # no "separable classes" diagnosis for a model that was never fitted to this risk
    assert not any("separable" in w for w in run.warnings)


def test_fit_last_refits_the_last_layer_to_an_optimum(tabular, tmp_path):
    """``--fit last`` in the default float32: the last layer refitted from its trained
    values to the regularised risk's optimum (the reference's Newton steps), no warning."""
    scan(tmp_path / "a.db", *tabular.data, *tabular.file_args("pt2"), "--fit", "last")
    run, got = run_of(tmp_path / "a.db")
    check_refit(tabular, run, got, rtol=1e-4)
    assert not run.warnings


@pytest.mark.parametrize(("kind", "fit"), [("pt2", "none"), ("sd", "last")])
def test_params_all_matches_a_dense_hessian_over_every_weight(tabular, tmp_path, kind, fit):
    """``--params all``: influence over every parameter (``torch.func`` through the
    network); with ``--fit last`` the last layer is refitted first, the body as trained."""
    args = [*tabular.file_args(kind), "--params", "all", "--fit", fit, "--damping", "0.05"]
    scan(tmp_path / "a.db", *tabular.data, *args, "--dtype", "float64")
    run, got = run_of(tmp_path / "a.db")
    stored = runs.theta_from_bytes(run.theta, "float64")
    _, theta, _ = reference(tabular, params="all", refit=fit == "last")
    # the refit stops at a gradient norm of 1e-5, at most 1e-5 / weight decay from the
    # optimum: the scores are compared where it stopped
    torch.testing.assert_close(stored, theta, rtol=0, atol=1e-3 if fit == "last" else 0)
    want, _, _ = reference(tabular, params="all", damping=0.05, at=stored)
    assert run.n_params == 3 * 8 + 8 + 8 * 2 + 2
    assert_scores(got, want)
    assert any("--params last" in w or "--fit last" in w for w in run.warnings)


@pytest.mark.parametrize("kind", ["pt2", "ts", "sd"])
def test_a_regression_network(regression, tmp_path, kind):
    """One output returned as ``(n,)`` (a squeeze after the last layer): the head is a
    linear regression over the embeddings."""
    args = [*regression.data, *regression.file_args(kind), "--fit", "last"]
    scan(tmp_path / "a.db", *args, "--dtype", "float64")
    run, got = run_of(tmp_path / "a.db")
    check_refit(regression, run, got, rtol=1e-5)
    assert run.task == "regression" and run.n_params == 9


def test_a_cnn_on_mnist_images(digits, tmp_path):
    """A tiny CNN with one logit on 1s and 7s: the points reach it as (1, 28, 28) images,
    the head is a binary logistic regression over its embeddings."""
    scan(tmp_path / "a.db", *digits.data, *digits.file_args("pt2"), "--fit", "last")
    run, got = run_of(tmp_path / "a.db")
    check_refit(digits, run, got, rtol=1e-4)
    assert run.n_params == 9 and run.metrics["test_accuracy"] >= 0.95


# --- the ModelTask ------------------------------------------------------------------------------


def _model(trained: Trained, kind: str, params: str = "last", fit: str = "none") -> UserModel:
    ds = trained.train
    spec = ModelSpec(ds.task, ds.n_features, ds.n_classes, params=params)
    factory = trained.factory if kind == "sd" else None
    return load_user_model(
        str(trained.files[kind]), factory, spec, fit=fit, device=torch.device("cpu"),
        dtype=torch.float32, sample=ds.features[:8],
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["pt2", "pt2-static", "ts", "sd"])
def test_the_head_over_the_embeddings_reproduces_the_models_outputs(tabular, kind):
    model = _model(tabular, kind)
    x = tabular.train.features
    theta = model.pretrain(x, tabular.train.targets, 0.01, 0)
    with torch.no_grad():
        want = tabular.net(x)
        embeddings = tabular.net.body(x)
    torch.testing.assert_close(model.outputs(theta, x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.frozen_features(x), embeddings)
    assert model.head is not None
    torch.testing.assert_close(model.head.outputs(theta, embeddings), want, rtol=1e-5, atol=1e-5)


def test_a_last_layer_without_bias_keeps_its_bias_at_zero(tmp_path, tabular):
    """A bias-free last layer: the head's parameters are its weights alone, and its
    Hessian is the one over them (the leading block of the biased head's)."""
    net = user_nets.train(user_nets.MLP(bias=False), tabular.train.features, tabular.train.targets)
    files = user_nets.save_all(net, tabular.train.features[:4], tmp_path, "nobias")
    trained = Trained(net, files, tabular.train, tabular.test, tabular.data)
    x, y = tabular.train.features.double(), tabular.train.targets
    for kind in ("pt2", "ts"):
        model = _model(trained, kind)
        assert model.n_params == 16
        theta = model.pretrain(x.float(), y, 0.01, 0).double()
        with torch.no_grad():
            torch.testing.assert_close(model.outputs(theta.float(), x.float()), net(x.float()))
        embeddings = model.frozen_features(x.float()).double()
        head = model.head
        assert head is not None

        def mean_loss(t, head=head, embeddings=embeddings):
            return head.loss(head.outputs(t, embeddings), y).mean()

        torch.testing.assert_close(
            head.loss_hessian(theta, embeddings, y), hessian(mean_loss)(theta)
        )
        v = torch.randn(16, 3, dtype=torch.float64)
        torch.testing.assert_close(head.hvp(theta, embeddings, y, v), hessian(mean_loss)(theta) @ v)


# --- errors: one line, nothing written -------------------------------------------------------


def _not_a_model(folder: Path) -> Path:
    path = folder / "notes.pt2"
    path.write_text("these are my notes, not a network\n")
    return path


def _other_zip(folder: Path) -> Path:
    path = folder / "archive.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    return path


def _pickled_module(folder: Path) -> Path:
    path = folder / "whole.pt"
    torch.save(user_nets.MLP(), path)  # the module itself, not its state dict
    return path


ERRORS = {
    # name: (model options from (trained, tmp_path), exit status, words of the Error line)
    "no file": (lambda t, p: ["--model-file", str(p / "missing.pt2")], 1, "no such model file"),
    "not a model": (lambda t, p: ["--model-file", str(_not_a_model(p))], 1, "not a model file"),
    "another zip": (lambda t, p: ["--model-file", str(_other_zip(p))], 1, "not a model"),
    "a pickled module": (
        lambda t, p: ["--model-file", str(_pickled_module(p)), "--model-factory", FACTORY],
        1,
        "weights_only",
    ),
    "state dict without factory": (
        lambda t, p: ["--model-file", str(t.files["sd"])], 2, "give --model-factory"
    ),
    "factory not importable": (
        lambda t, p: ["--model-file", str(t.files["sd"]), "--model-factory", "no_such_pkg.nets:build"],
        2,
        "cannot import no_such_pkg.nets",
    ),
    "factory without the function": (
        lambda t, p: ["--model-file", str(t.files["sd"]), "--model-factory", "tests.models.user_nets:nope"],
        2,
        "has no nope",
    ),
    "malformed factory": (
        lambda t, p: ["--model-file", str(t.files["sd"]), "--model-factory", "just_a_module"],
        2,
        "MODULE:FUNCTION",
    ),
    "factory for an exported program": (
        lambda t, p: ["--model-file", str(t.files["pt2"]), "--model-factory", FACTORY],
        2,
        "drop --model-factory",
    ),
    "state dict of another module": (
        lambda t, p: ["--model-file", str(t.files["sd"]), "--model-factory", "tests.models.user_nets:wide"],
        1,
        "does not fit the module",
    ),
    "outputs that are not the classes": (
        lambda t, p: ["--model-file", str(_saved(user_nets.mlp3(), p)), "--model-factory", "tests.models.user_nets:mlp3"],
        1,
        "returns 3 outputs per point; the data has 2 classes",
    ),
    "a model that raises": (
        lambda t, p: ["--model-file", str(t.files["sd"]), "--model-factory", "tests.models.user_nets:raises"],
        1,
        "the model raised on a batch of 8 training points",
    ),
    "torchscript under --params all": (
        lambda t, p: ["--model-file", str(t.files["ts"]), "--params", "all"], 2, "--params last"
    ),
    "a fixed batch under --params all": (
        lambda t, p: ["--model-file", str(t.files["pt2-static"]), "--params", "all"],
        2,
        "batches of exactly 4 points",
    ),
    "an operation after the last layer": (
        lambda t, p: ["--model-file", str(t.files["sd"]), "--model-factory", "tests.models.user_nets:scaled"],
        2,
        "an operation follows it",
    ),
    "an exported operation after the last layer": (
        lambda t, p: ["--model-file", str(_exported(user_nets.scaled(), p))], 2, "comes from aten.mul"
    ),
    "--fit last of a layer an operation follows": (
        lambda t, p: ["--model-file", str(_exported(user_nets.scaled(), p)), "--params", "all", "--fit", "last"],
        2,
        "comes from aten.mul",
    ),
    "an exported program for other points": (
        lambda t, p: ["--model-file", str(_exported(user_nets.wide(), p, d=4))],
        1,
        "the model takes points of shape 4; the data's points have shape 3",
    ),
    "--model with --model-file": (
        lambda t, p: ["--model", "mlp", "--model-file", str(t.files["pt2"])], 2, "not both"
    ),
    "--model-factory alone": (lambda t, p: ["--model-factory", FACTORY], 2, "give the state dict"),
    "--fit without a model file": (lambda t, p: ["--fit", "last"], 2, "--fit applies to --model-file"),
}  # fmt: skip


def _saved(net: nn.Module, folder: Path) -> Path:
    path = folder / "net.sd"
    torch.save(net.state_dict(), path)
    return path


def _exported(net: nn.Module, folder: Path, d: int = 3) -> Path:
    path = folder / "net.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(4, d),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, path)
    return path


@pytest.mark.parametrize("name", list(ERRORS))
def test_a_bad_model_is_one_error_line_and_no_run(tabular, tmp_path, name):
    options, code, words = ERRORS[name]
    db = tmp_path / "a.db"
    result = scan(db, *tabular.data, *options(tabular, tmp_path), code=code)
    one_error(result.output, words)
    if db.exists():
        assert runs.list_runs(open_db(str(db))) == []


def test_probabilities_are_refused(tabular, tmp_path):
    """A network ending in a softmax gives probabilities, not logits."""
    net = nn.Sequential(copy.deepcopy(tabular.net), nn.Softmax(dim=1))
    path = tmp_path / "softmax.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in torch 2.14
        torch.jit.save(torch.jit.script(net), str(path))
    result = scan(tmp_path / "a.db", *tabular.data, "--model-file", str(path), code=1)
    one_error(result.output, "probabilities", "drop the final softmax")


def test_a_factory_module_in_the_current_folder(tabular, tmp_path, monkeypatch):
    """``--model-factory`` imports from the current folder, as ``python -m`` would, also
    where the ``auditor`` script does not put it on the import path."""
    (tmp_path / "my_nets_for_auditor.py").write_text(
        "from tests.models.user_nets import MLP\n\ndef build():\n    return MLP()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        args = [
            "--model-file",
            str(tabular.files["sd"]),
            "--model-factory",
            "my_nets_for_auditor:build",
        ]
        scan(tmp_path / "a.db", *tabular.data, *args)
    finally:
        sys.modules.pop("my_nets_for_auditor", None)
    assert str(tmp_path) not in sys.path  # put back as it was


# --- what the run keeps: resume, report, rescan -----------------------------------------------


def test_a_resume_reads_the_same_file_and_refuses_a_changed_one(tabular, tmp_path):
    path = tmp_path / "mlp.pt2"
    shutil.copy(tabular.files["pt2"], path)
    db = tmp_path / "a.db"
    scan(db, *tabular.data, "--model-file", str(path), "--fit", "last", "--chunk", "5")
    engine = open_db(str(db))
    scores = pairs.read_pair_scores(engine, 1)
    with engine.begin() as conn:  # what a SIGKILL during the pair scores leaves
        conn.execute(sa.delete(pair_scores).where(pair_scores.c.test_idx >= 10))
        conn.execute(sa.delete(points_table).where(points_table.c.split == "train"))
    runs.update_run(
        engine, 1, status="running", phase="pair_scores", finished_at=None, ranking=None
    )
    shutil.copy(tabular.files["pt2-static"], path)  # another file under the same name
    result = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", str(db)])
    assert result.exit_code == 1
    one_error(result.output, "run 1: the model file", "changed since the run started")
    assert runs.get_run(engine, 1).status == "running"
    shutil.copy(tabular.files["pt2"], path)
    result = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    got = pairs.read_pair_scores(engine, 1)
    np.testing.assert_array_equal(got[:10], scores[:10])
    np.testing.assert_allclose(got[10:], scores[10:], rtol=1e-6, atol=1e-9)
    assert runs.get_run(engine, 1).status == "complete"


def test_the_report_says_which_file_and_whether_it_was_refitted(tabular, tmp_path):
    db = tmp_path / "a.db"
    scan(db, *tabular.data, *tabular.file_args("sd"))
    scan(db, *tabular.data, *tabular.file_args("pt2"), "--fit", "last")
    engine = open_db(str(db))
    for run_id, fit in ((1, "as trained"), (2, "last layer refitted")):
        (card,) = [c for c in collect(engine, run_id).cards if c.title == "Model"]
        facts = {f.name: f.value for f in card.facts}
        assert facts["fit"] == fit and facts["influence over"] == "last linear layer"
        assert facts["model file"] == str(tabular.files["sd" if run_id == 1 else "pt2"].resolve())
    assert facts.get("model factory") is None


def test_the_rescan_repeats_the_model_file_by_its_absolute_path(tabular, monkeypatch):
    monkeypatch.chdir(tabular.files["sd"].parent)
    model = ModelArgs(model_file="mlp.sd", model_factory=FACTORY, fit="last", params="all")
    argv = scan_argv(ScanConfig(DataArgs(train="train.csv"), model=model), "t.csv", None)
    assert argv[argv.index("--model-file") + 1] == str(tabular.files["sd"].resolve())
    assert argv[argv.index("--model-factory") + 1] == FACTORY
    assert argv[argv.index("--fit") + 1] == "last" and argv[argv.index("--params") + 1] == "all"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("kind", "params"), [("pt2", "last"), ("ts", "last"), ("sd", "all")])
def test_cuda_scan_matches_cpu_scan(tabular, tmp_path, kind, params):
    """``--device cuda``: the network is read onto the GPU and the scan equals the CPU's."""
    got = {}
    for device in ("cpu", "cuda"):
        db = tmp_path / f"{device}.db"
        args = [*tabular.file_args(kind), "--params", params, "--damping", "0.05"]
        scan(db, *tabular.data, *args, "--fit", "last", "--device", device, "--dtype", "float64")
        got[device] = run_of(db)[1]
    assert_scores(got["cuda"], got["cpu"], rtol=1e-6)
