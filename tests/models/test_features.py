"""Pretrained features (issue 17): ``--features ARCH --weights FILE`` embeds the images with
a frozen torchvision network and takes influence over a logistic head on the embeddings.

The weights are randomly initialised networks saved to files (nothing is downloaded:
every test runs with the network functions of torch.hub and urllib made to fail). The data
is 240 MNIST 1s and 7s from the shared test set, written as idx files, at 32x32 pixels, so
a scan takes a few seconds of CPU.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner

from auditor.cli import cli
from auditor.cli.commands import scan as scan_command
from auditor.cli.options import scan_argv, scan_config
from auditor.config import DataArgs
from auditor.errors import ConfigError, DataError
from auditor.influence.solvers import resolved_solver
from auditor.models import embedding_cache, pretrained
from auditor.models.backbones import build_backbone, hub_checkpoints, resolve_weights
from auditor.models.pretrained import PretrainedFeatures, build_features_model
from auditor.pipeline.loading import load_data
from auditor.report.collect import collect
from auditor.sources.idx import read_pair, write_idx
from auditor.store import open_db, pairs, runs
from tests.helpers import one_error
from tests.pipeline.test_resume import crash
from tests.test_bad_input import no_runs

SIZE = 32
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Downloaded(AssertionError):
    """Raised by the network functions: nothing may try to download."""


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """A fresh embedding cache and an empty torch hub per test; downloads fail loudly
    (and are recorded)."""
    tried: list[str] = []

    def refuse(url, *args, **kwargs):
        tried.append(str(url))
        raise Downloaded(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield tried
    assert tried == []


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A randomly initialised resnet18's state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory, mnist_dir) -> Path:
    """120 MNIST 1s and 120 7s (the first of each in the shared test set) as idx files."""
    images, labels = read_pair(
        mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    )
    keep = np.sort(np.concatenate([np.flatnonzero(labels == k)[:120] for k in (1, 7)]))
    folder = tmp_path_factory.mktemp("digits")
    write_idx(folder / "train-images-idx3-ubyte", images[keep])
    write_idx(folder / "train-labels-idx1-ubyte", labels[keep])
    return folder


def scan_args(digits: Path, weights: Path, db: Path, *more: str) -> list[str]:
    return [
        "scan",
        "--train", str(digits), "--classes", "1,7", "--test-split", "0.2",
        "--features", "resnet18", "--weights", str(weights), "--features-size", str(SIZE),
        "--db", str(db), *more,
    ]  # fmt: skip


def count_forwards(monkeypatch) -> list[int]:
    """Record the batch size of every forward pass of a backbone."""
    calls: list[int] = []
    forward = pretrained.run_backbone

    def spy(module, images):
        calls.append(images.shape[0])
        return forward(module, images)

    monkeypatch.setattr(pretrained, "run_backbone", spy)
    return calls


def direct_embeddings(weights: Path, features: torch.Tensor) -> torch.Tensor:
    """The embeddings computed directly with torchvision: each unit-norm image scaled back
    to [0, 1] by its largest pixel, gray to RGB, resized to 32x32, ImageNet-normalised."""
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    images = features.float().reshape(-1, 1, 28, 28)
    images = images / images.amax(dim=(1, 2, 3), keepdim=True)
    images = F.interpolate(
        images.repeat(1, 3, 1, 1), size=(SIZE, SIZE), mode="bilinear", antialias=True
    )
    with torch.no_grad():
        return net((images - MEAN) / STD)


def logistic_pair_scores(
    x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, wd: float
) -> np.ndarray:
    """Influence ``(m, n)`` of the L2 logistic regression on the embeddings, in float64,
    fitted by Newton's method and solved with the dense Hessian: -g_test^T H^-1 g_train."""
    xb = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    tb = torch.cat([x_test.double(), torch.ones(len(x_test), 1, dtype=torch.float64)], dim=1)
    y, y_test = y.double(), y_test.double()
    theta = torch.zeros(xb.shape[1], dtype=torch.float64)
    eye = torch.eye(xb.shape[1], dtype=torch.float64)
    for _ in range(100):
        p = torch.sigmoid(xb @ theta)
        grad = xb.T @ (p - y) / len(y) + wd * theta
        hessian = (xb * (p * (1 - p))[:, None]).T @ xb / len(y) + wd * eye
        theta = theta - torch.linalg.solve(hessian, grad)
        if grad.norm() < 1e-12:
            break
    p = torch.sigmoid(xb @ theta)
    hessian = (xb * (p * (1 - p))[:, None]).T @ xb / len(y) + wd * eye
    g_train = (p - y)[:, None] * xb
    g_test = (torch.sigmoid(tb @ theta) - y_test)[:, None] * tb
    return (-g_test @ torch.linalg.solve(hessian, g_train.T)).numpy()


def test_a_features_scan_is_the_logistic_model_on_the_backbones_embeddings(
    tmp_path, digits, weights, monkeypatch
):
    """A scan through the CLI: complete, with the exact solver by default, and pair
    scores equal to the logistic regression on the embeddings computed directly with the
    backbone. A rescan and a resume take the embeddings from the cache: no forward pass."""
    forwards = count_forwards(monkeypatch)
    db = tmp_path / "audit.db"
    result = CliRunner().invoke(cli, scan_args(digits, weights, db, "--chunk", "16"))
    assert result.exit_code == 0, result.output
    assert forwards == [64, 64, 64, 48]  # 192 training points, then 48 test points
    engine = open_db(str(db))
    run = runs.get_run(engine, 1)
    assert run.status == "complete" and run.model == "resnet18+logistic"
    assert run.n_params == 513 and run.config["solver"]["solver"] == "exact"
    assert run.config["model"]["weights"] == str(weights)
    facts = run.metrics["model_facts"]
    assert facts["features"] == "resnet18, 512-d embeddings of 32×32 images"
    assert facts["weights"].startswith("resnet18-random.pt (sha256 ")
    model_card = next(c for c in collect(engine, 1).cards if c.title == "Model")
    assert {f.name: f.value for f in model_card.facts}.items() >= facts.items()

    train, test = load_data(DataArgs(train=str(digits), classes=["1", "7"], test_split=0.2, seed=0))
    x, x_test = (
        direct_embeddings(weights, train.features),
        direct_embeddings(weights, test.features),
    )
    cached = sorted((tmp_path / "cache" / "embeddings").glob("*.pt"))
    assert len(cached) == 2
    stored = sorted(
        (torch.load(p, weights_only=True)["embeddings"] for p in cached), key=len, reverse=True
    )
    torch.testing.assert_close(stored[0], x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stored[1], x_test, rtol=1e-4, atol=1e-5)

    scores = pairs.read_pair_scores(engine, 1)
    reference = logistic_pair_scores(x, train.targets, x_test, test.targets, wd=0.01)
    assert scores.shape == reference.shape == (48, 192)
    assert np.abs(scores - reference).max() <= 1e-3 * np.abs(reference).max()

    forwards.clear()
    again = CliRunner().invoke(cli, scan_args(digits, weights, db, "--chunk", "16"))
    assert again.exit_code == 0, again.output
    assert forwards == []
    np.testing.assert_array_equal(pairs.read_pair_scores(engine, 2), scores)

    crash(engine, keep_blocks_below=16)  # run 1 killed after its first block of 16
    resumed = CliRunner().invoke(cli, ["scan", "--resume", "1", "--db", str(db)])
    assert resumed.exit_code == 0, resumed.output
    assert forwards == [] and runs.get_run(engine, 1).status == "complete"
    np.testing.assert_array_equal(pairs.read_pair_scores(engine, 1), scores)


def test_auto_solves_the_features_head_exactly_and_the_rescan_repeats_the_features(digits, weights):
    def config(*args: str):
        with scan_command.make_context("scan", list(args)) as ctx:
            return scan_config(ctx.params)

    base = ["--train", str(digits), "--test-split", "0.2"]
    features = [*base, "--features", "resnet18", "--weights", str(weights)]
    assert config(*features).solver.solver == "auto"
    assert resolved_solver("auto", embeddings_model(weights)) == "exact"  # a 1,026-weight head
    assert config(*features, "--solver", "cg").solver.solver == "cg"
    argv = scan_argv(config(*features, "--features-size", "64"), str(digits), None)
    assert argv[argv.index("--features") :] == [
        "--features", "resnet18", "--weights", str(weights), "--features-size", "64",
        "--solver", "auto",
    ]  # fmt: skip


def embeddings_model(weights: Path, n_classes: int = 2) -> PretrainedFeatures:
    return build_features_model(
        "resnet18", "classification", n_classes, (1, 28, 28), weights=str(weights), size=SIZE
    )


@pytest.fixture(scope="module")
def few(digits) -> torch.Tensor:
    train, _ = load_data(DataArgs(train=str(digits), classes=["1", "7"], test_split=0.2))
    return train.features[:70]


def test_embeddings_are_batched_report_progress_and_a_corrupt_cache_is_rewritten(
    weights, few, monkeypatch
):
    model = embeddings_model(weights)
    seen: list[tuple[str, int, int]] = []
    model.progress = lambda phase, done, total: seen.append((phase, done, total))
    forwards = count_forwards(monkeypatch)
    first = model.frozen_features(few)
    assert first.shape == (70, 512) and first.dtype == torch.float32
    assert forwards == [64, 6] and seen == [("embedding", 64, 70), ("embedding", 70, 70)]
    torch.testing.assert_close(first, direct_embeddings(weights, few), rtol=1e-4, atol=1e-5)
    assert torch.equal(model.frozen_features(few.double()), first.double())  # any --dtype
    assert len(forwards) == 2  # cached
    [entry] = embedding_cache.embeddings_dir().glob("*.pt")
    for damage in (b"not a torch file", entry.read_bytes()[:100]):
        entry.write_bytes(damage)
        forwards.clear()
        assert torch.equal(model.frozen_features(few), first)
        assert forwards == [64, 6]  # embedded again ...
        assert embedding_cache.load(model.cache_key(few), 70, 512) is not None  # ... rewritten
    other = embeddings_model(weights, n_classes=3)  # the head does not enter the key
    assert other.head.n_params == 513 * 3 and torch.equal(other.frozen_features(few), first)


def test_an_unwritable_cache_is_skipped(weights, few, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("AUDITOR_CACHE", str(blocker))  # a file: no folder can be made in it
    model = embeddings_model(weights)
    forwards = count_forwards(monkeypatch)
    assert model.frozen_features(few[:3]).shape == (3, 512) and forwards == [3]


def test_weights_from_the_torch_hub_cache_and_never_from_the_network(
    weights, few, offline, tmp_path
):
    with pytest.raises(DataError, match="put resnet18-f37072fd.pth into .*checkpoints"):
        resolve_weights("resnet18", None)
    hub = hub_checkpoints()
    assert hub == tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(weights, hub / "resnet18-f37072fd.pth")
    backbone = build_backbone("resnet18", None, SIZE)
    assert backbone.weights == hub / "resnet18-f37072fd.pth" and backbone.dim == 512
    from_file = embeddings_model(weights)
    assert backbone.sha256 == from_file.backbone.sha256
    assert offline == []


def test_a_resume_refuses_a_backbone_whose_weights_changed(weights, tmp_path):
    model = embeddings_model(weights)
    theta = torch.arange(513, dtype=torch.float32)
    state = model.fitted_state(theta)
    assert torch.equal(embeddings_model(weights).load_fitted_state(state), theta)
    assert model.load_fitted_state(theta) is None  # an older state: fit again
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(DataError, match="weights of --features resnet18 changed"):
        embeddings_model(other).load_fitted_state(state)


def scan_fails(tmp_path: Path, args: list[str], code: int, *needles: str) -> str:
    db = tmp_path / "bad.db"
    result = CliRunner().invoke(cli, ["scan", *args, "--db", str(db)])
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    line = one_error(result.output, *needles)
    assert no_runs(db)
    return line


def test_bad_features_options_are_one_error_line_and_no_run(tmp_path, digits, weights):
    data = ["--train", str(digits), "--classes", "1,7", "--test-split", "0.2"]
    line = scan_fails(tmp_path, [*data, "--features", "resnet7"], 2, "unknown architecture")
    assert "resnet18" in line and "vit_b_16" in line and "densenet121" in line
    scan_fails(
        tmp_path, [*data, "--features", "resnet18"], 1,
        "no weights", "resnet18-f37072fd.pth", "torchvision.models.resnet18(weights='DEFAULT')",
    )  # fmt: skip
    scan_fails(tmp_path, [*data, "--weights", str(weights)], 2, "--weights needs --features")
    features = [*data, "--features", "resnet18"]
    scan_fails(tmp_path, [*features, "--weights", str(tmp_path / "nope.pt")], 1, "no such file")
    (tmp_path / "text.pt").write_text("not weights")
    scan_fails(tmp_path, [*features, "--weights", str(tmp_path / "text.pt")], 1, "text.pt",
               "not a state dict")  # fmt: skip
    torch.save(torchvision.models.resnet18(weights=None), tmp_path / "whole.pt")
    scan_fails(tmp_path, [*features, "--weights", str(tmp_path / "whole.pt")], 1, "whole.pt",
               "torch.save(model.state_dict(), PATH)")  # fmt: skip
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), tmp_path / "shuffle.pt")
    scan_fails(tmp_path, [*features, "--weights", str(tmp_path / "shuffle.pt")], 1, "shuffle.pt",
               "key 'conv1.weight'")  # fmt: skip
    state = torch.load(weights, weights_only=True)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:, :8]
    torch.save(state, tmp_path / "cut.pt")
    scan_fails(tmp_path, [*features, "--weights", str(tmp_path / "cut.pt")], 1, "cut.pt",
               "key 'layer1.0.conv1.weight' has shape (64, 8, 3, 3)")  # fmt: skip
    with_weights = [*features, "--weights", str(weights)]
    scan_fails(tmp_path, [*with_weights, "--features-size", "16"], 2, "below the 32 pixels")
    scan_fails(tmp_path, [*with_weights, "--model", "cnn"], 2, "--model cnn")
    scan_fails(
        tmp_path,
        ["--train", "toy-linear", "--features", "resnet18", "--weights", str(weights)],
        2,
        "--features needs images",
    )


def test_fine_tuned_weights_of_other_classes_load_and_the_classifier_is_ignored(weights, few):
    torch.manual_seed(2)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    state = torch.load(weights, weights_only=True)
    state.update({k: v for k, v in net.state_dict().items() if k.startswith("fc.")})
    model = embeddings_model(weights)
    tuned = model.backbone.weights.parent / "tuned.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tuned)
    assert torch.equal(
        embeddings_model(tuned).embed(few[:4]), embeddings_model(weights).embed(few[:4])
    )


@pytest.mark.parametrize(
    ("name", "dim"),
    [
        ("mobilenet_v3_small", 1024),
        ("densenet121", 1024),
        pytest.param("swin_t", 768, marks=pytest.mark.slow),
    ],
)
def test_other_families_are_cut_at_their_classifier(tmp_path, few, name, dim):
    """Other families: the embeddings are the network's own up to its classifier (the
    DenseNet file with the layer names of torchvision's published weights)."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None).eval()
    state = net.state_dict()
    if name == "densenet121":  # as published: 'norm.1' for 'norm1', no batch counts
        legacy = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.")
        state = {
            legacy.sub(r"\1.\2.", k): v
            for k, v in state.items()
            if not (legacy.search(k) and k.endswith("num_batches_tracked"))
        }
        assert "features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save(state, tmp_path / "w.pt")
    model = build_features_model(
        name, "classification", 2, (1, 28, 28), weights=str(tmp_path / "w.pt"), size=SIZE
    )
    assert model.backbone.dim == dim
    x = few[:4]
    got = model.embed(x)
    classifier = {"mobilenet_v3_small": ("classifier", 3), "densenet121": ("classifier", None),
                  "swin_t": ("head", None)}[name]  # fmt: skip
    attr, index = classifier
    if index is None:
        setattr(net, attr, torch.nn.Identity())
    else:
        getattr(net, attr)[index] = torch.nn.Identity()
    with torch.no_grad():
        expected = net(pretrained.preprocess(x, (1, 28, 28), SIZE, rescale=True))
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_a_vit_with_the_published_weights_key_names_loads(tmp_path, few):
    """ViT at its own size (here 32 pixels, patches of 32): the published weights name
    the MLP layers ``linear_1``/``linear_2`` (renamed by torchvision when loaded)."""
    torch.manual_seed(0)
    net = torchvision.models.vit_b_32(weights=None, image_size=SIZE).eval()
    state = {
        k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
        for k, v in net.state_dict().items()
    }
    torch.save(state, tmp_path / "vit.pt")
    model = build_features_model(
        "vit_b_32", "classification", 2, (1, 28, 28), weights=str(tmp_path / "vit.pt"), size=SIZE
    )
    net.heads = torch.nn.Identity()
    with torch.no_grad():
        expected = net(pretrained.preprocess(few[:2], (1, 28, 28), SIZE, rescale=True))
    torch.testing.assert_close(model.embed(few[:2]), expected)
    with pytest.raises(ConfigError, match="multiple of vit_b_32's 32-pixel patches"):
        build_features_model("vit_b_32", "classification", 2, (1, 28, 28), weights=None, size=48)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_embed_on_the_gpu_with_device_cuda(tmp_path, digits, weights, monkeypatch):
    """``--device cuda``: the backbone runs on the GPU, and the scan agrees with the CPU's."""
    devices: list[str] = []
    forward = pretrained.run_backbone

    def spy(module, images):
        devices.append(images.device.type)
        return forward(module, images)

    monkeypatch.setattr(pretrained, "run_backbone", spy)
    scores = {}
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / f"cache-{device}"))
        db = tmp_path / f"{device}.db"
        result = CliRunner().invoke(cli, scan_args(digits, weights, db, "--device", device))
        assert result.exit_code == 0, result.output
        scores[device] = pairs.read_pair_scores(open_db(str(db)), 1)
    assert devices == ["cpu"] * 4 + ["cuda"] * 2  # a GPU batch holds all 192, then 48
    # cuDNN may convolve in TF32: close, not equal
    scale = np.abs(scores["cpu"]).max()
    assert np.abs(scores["cuda"] - scores["cpu"]).max() <= 5e-2 * scale
    assert np.corrcoef(scores["cuda"].ravel(), scores["cpu"].ravel())[0, 1] > 0.999
