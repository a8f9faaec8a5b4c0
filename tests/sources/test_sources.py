"""Data sources: idx (MNIST), image folders, CSV, NPZ, the dispatcher and class handling."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.io import write_png

from auditor.cli import cli
from auditor.config import DataArgs
from auditor.errors import ConfigError, DataError
from auditor.pipeline.scan import load_data
from auditor.sources import align_classes, download_mnist, images_to_features, load
from auditor.sources.idx import read_idx

MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def raw_mnist(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The shared MNIST test set, parsed here by fixed offsets (16- and 8-byte headers)."""
    pixels = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    return (
        np.frombuffer(pixels, np.uint8, offset=16).reshape(10000, 28, 28),
        np.frombuffer(labels, np.uint8, offset=8),
    )


def write_idx_file(path: Path, array: np.ndarray) -> Path:
    """An idx file written with struct, independently of the code under test."""
    header = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_pair(folder: Path, prefix: str, pixels: np.ndarray, labels: np.ndarray, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx_file(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return write_idx_file(folder / f"{prefix}-images-idx3-ubyte{ext}", pixels)


@pytest.fixture(scope="module")
def raw(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return raw_mnist(mnist_dir)


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path):
    return load(str(mnist_dir))


# --- idx ---------------------------------------------------------------------------------


def test_idx_loads_the_shared_mnist_test_set(mnist, mnist_dir, raw):
    pixels, labels = raw
    assert len(mnist) == 10000
    assert mnist.task == "classification"
    assert mnist.class_names == [str(d) for d in range(10)]
    assert torch.bincount(mnist.targets).tolist() == MNIST_COUNTS
    assert mnist.images.shape == (10000, 1, 28, 28) and mnist.images.dtype == torch.uint8
    assert mnist.features.shape == (10000, 784) and mnist.features.dtype == torch.float32
    assert torch.equal(mnist.images[:, 0], torch.from_numpy(pixels.copy()))
    assert torch.equal(mnist.targets, torch.from_numpy(labels.astype(np.int64)))
    assert mnist.ids[0] == "t10k-images-idx3-ubyte.gz#0"
    assert mnist.ids[9999] == "t10k-images-idx3-ubyte.gz#9999"
    assert mnist.name == "mnist"
    assert mnist.source.format == "idx"
    assert mnist.source.path == str(mnist_dir.resolve())
    assert mnist.source.options["normalize"] == "unit"
    assert mnist.source.options["classes"] is None


def test_unit_normalisation_gives_unit_rows(mnist, raw):
    assert torch.allclose(mnist.features.norm(dim=1), torch.ones(10000), atol=1e-5)
    row = raw[0][0].astype(np.float64).ravel() / 255.0
    assert np.allclose(mnist.features[0].numpy(), row / np.linalg.norm(row), atol=1e-6)


def test_normalize_none_keeps_pixels_in_0_1(mnist_dir, raw):
    plain = load(str(mnist_dir), normalize="none")
    expected = raw[0][:5].reshape(5, -1).astype(np.float32) / 255.0
    assert np.allclose(plain.features[:5].numpy(), expected)
    assert plain.features.max() == 1.0 and plain.features.min() == 0.0
    assert plain.source.options["normalize"] == "none"


def test_normalize_standard_uses_the_training_columns_mean_and_spread(tmp_path):
    # hand-computed: train column a = [1, 3] (mean 2, sd 1), b = [5, 5] (constant: sd 1);
    # the test point is scaled with the training points' statistics, not its own
    (tmp_path / "train.csv").write_text("a,b,label\n1,5,x\n3,5,y\n")
    (tmp_path / "test.csv").write_text("a,b,label\n7,4,x\n")
    args = DataArgs(
        train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), normalize="standard"
    )
    train, test = load_data(args)
    assert train.features.tolist() == [[-1.0, 0.0], [1.0, 0.0]]
    assert test.features.tolist() == [[5.0, -1.0]]


def test_images_to_features_keeps_zero_rows_zero():
    images = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    images[1, 0, 0, 0] = 255
    images[1, 0, 1, 1] = 255
    features = images_to_features(images, "unit")
    assert features.shape == (2, 4)
    assert torch.equal(features[0], torch.zeros(4))
    assert torch.allclose(features[1], torch.tensor([1, 0, 0, 1]) / 2**0.5)
    with pytest.raises(ConfigError, match="normalize"):
        images_to_features(images, "l2")


def test_unknown_normalize_is_a_config_error(mnist_dir):
    with pytest.raises(ConfigError, match="normalize"):
        load(str(mnist_dir), normalize="zscore")


def test_classes_1_7_give_a_binary_task(mnist_dir, raw):
    labels = raw[1]
    binary = load(str(mnist_dir), classes=["1", "7"])
    assert len(binary) == 1135 + 1028 == 2163
    assert binary.class_names == ["1", "7"]
    assert torch.bincount(binary.targets).tolist() == [1135, 1028]
    wanted = np.flatnonzero((labels == 1) | (labels == 7))
    assert binary.ids == [f"t10k-images-idx3-ubyte.gz#{i}" for i in wanted]
    assert torch.equal(binary.targets, torch.from_numpy((labels[wanted] == 7).astype(np.int64)))
    assert binary.source.options["classes"] == ["1", "7"]
    reversed_order = load(str(mnist_dir), classes=["7", "1"])
    assert reversed_order.class_names == ["7", "1"]
    assert torch.equal(reversed_order.targets, 1 - binary.targets)


def test_absent_or_bad_classes(mnist_dir, tmp_path, raw):
    with pytest.raises(DataError, match="'11'"):
        load(str(mnist_dir), classes=["1", "11"])
    with pytest.raises(ConfigError):
        load(str(mnist_dir), classes=["1", "1"])
    with pytest.raises(ConfigError, match="classification"):
        load("toy-linear", classes=["1"])


def test_truncated_idx_file_names_the_file(tmp_path, raw):
    pixels, labels = raw[0][:20], raw[1][:20]
    images = write_pair(tmp_path, "t10k", pixels, labels, gz=True)
    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load(str(tmp_path))
    images.write_bytes(gzip.compress(data + b"\0"))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*corrupt"):
        load(str(tmp_path))
    images.write_bytes(gzip.compress(data)[:-30])  # a cut-off gzip stream
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load(str(tmp_path))
    images.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + data[4:]))  # float32 type code
    with pytest.raises(DataError, match="0x0d"):
        load(str(tmp_path))


def test_idx_count_mismatch_and_missing_labels(tmp_path, raw):
    images = write_pair(tmp_path, "t10k", raw[0][:10], raw[1][:9], gz=False)
    with pytest.raises(DataError, match="10 images.*9 labels"):
        load(str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="labels-idx1-ubyte does not exist"):
        load(str(images))


def test_idx_roles_pick_train_or_t10k_pair(tmp_path, raw):
    pixels, labels = raw
    write_pair(tmp_path / "both", "train", pixels[:30], labels[:30], gz=False)
    write_pair(tmp_path / "both", "t10k", pixels[30:50], labels[30:50], gz=True)
    train = load(str(tmp_path / "both"), role="train")
    test = load(str(tmp_path / "both"), role="test")
    assert len(train) == 30 and train.ids[0] == "train-images-idx3-ubyte#0"
    assert len(test) == 20 and test.ids[0] == "t10k-images-idx3-ubyte.gz#0"
    assert torch.equal(test.images[:, 0], torch.from_numpy(pixels[30:50].copy()))
    assert test.source.options["role"] == "test"
    single = write_pair(tmp_path / "one", "t10k", pixels[:7], labels[:7], gz=False)
    assert len(load(str(tmp_path / "one"), role="train")) == 7
    assert len(load(str(tmp_path / "one"), role="test")) == 7
    direct = load(str(single))
    assert len(direct) == 7 and direct.name == "t10k-images-idx3-ubyte"
    assert direct.class_names == sorted({str(v) for v in labels[:7]}, key=int)


def test_read_idx_parses_header_dims(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx_file(tmp_path / "a-images-idx3-ubyte", array)), array)


def test_download_mnist_uses_existing_raw_files(tmp_path, mnist_dir, mnist, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise AssertionError("the download path must not run when the raw files exist")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        data = gzip.decompress((mnist_dir / f"t10k-{kind}.gz").read_bytes())
        (raw_dir / f"t10k-{kind}").write_bytes(data)
        shutil.copyfile(raw_dir / f"t10k-{kind}", raw_dir / f"train-{kind}")
    for role in ("train", "test"):
        loaded = download_mnist(tmp_path, role)
        assert torch.equal(loaded.features, mnist.features)
        assert torch.equal(loaded.targets, mnist.targets)
        assert loaded.class_names == mnist.class_names
        prefix = "train" if role == "train" else "t10k"
        assert loaded.ids[0] == f"{prefix}-images-idx3-ubyte#0"
    assert len(download_mnist(tmp_path, "test", classes=["1", "7"])) == 2163


def test_download_mnist_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match="could not download MNIST"):
        download_mnist(tmp_path, "train")


# --- image folders -----------------------------------------------------------------------


def png(path: Path, image: torch.Tensor) -> torch.Tensor:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(image, str(path))
    return image


def random_image(seed: int, channels: int = 3, h: int = 4, w: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, h, w), generator=gen, dtype=torch.uint8)


def test_imagefolder_loads_classes_ids_and_pixels(tmp_path):
    a = png(tmp_path / "dog" / "001.png", random_image(0))
    b = png(tmp_path / "cat" / "002.png", random_image(1))
    c = png(tmp_path / "cat" / "001.png", random_image(2))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    data = load(str(tmp_path), normalize="none")
    assert data.class_names == ["cat", "dog"]
    assert data.ids == ["cat/001.png", "cat/002.png", "dog/001.png"]
    assert data.targets.tolist() == [0, 0, 1]
    assert torch.equal(data.images, torch.stack([c, b, a]))
    assert torch.allclose(data.features, torch.stack([c, b, a]).reshape(3, -1) / 255.0)
    assert data.source.format == "imagefolder" and data.name == tmp_path.name


def test_imagefolder_sizes_must_match_unless_resized(tmp_path):
    png(tmp_path / "a" / "1.png", random_image(0, h=4, w=5))
    png(tmp_path / "b" / "2.png", random_image(1, h=6, w=3))
    with pytest.raises(DataError, match=r"b/2\.png: size 6x3.* 4x5 "):
        load(str(tmp_path))
    resized = load(str(tmp_path), resize=(8, 8))
    assert resized.images.shape == (2, 3, 8, 8) and resized.images.dtype == torch.uint8
    assert torch.allclose(resized.features.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ConfigError, match="resize"):
        load(str(tmp_path), resize=(0, 8))


def test_imagefolder_mixed_gray_and_rgb_become_rgb(tmp_path):
    gray = png(tmp_path / "g" / "1.png", random_image(0, channels=1))
    rgb = png(tmp_path / "c" / "1.png", random_image(1))
    data = load(str(tmp_path))
    assert data.images.shape == (2, 3, 4, 5)
    assert torch.equal(data.images[0], rgb)
    assert torch.equal(data.images[1], gray.expand(3, -1, -1))


@pytest.mark.parametrize("normalize", ["unit", "none"])
def test_gray_train_folder_and_rgb_test_folder_agree_as_rgb(tmp_path, normalize):
    # one folder mixing gray and RGB is promoted as it is read; a gray train folder with
    # an RGB test folder (the parts `apply` writes after --test-split) gave "train has 20
    # features per point but test has 60"
    grays = [png(tmp_path / "train" / c / "1.png", random_image(i, 1)) for i, c in enumerate("ab")]
    png(tmp_path / "test" / "a" / "1.png", random_image(5, 1))
    rgb = png(tmp_path / "test" / "b" / "rgb.png", random_image(6))
    args = DataArgs(train=str(tmp_path / "train"), test=str(tmp_path / "test"), normalize=normalize)
    for train, test in (
        load_data(args),
        reversed(load_data(replace(args, train=args.test, test=args.train))),
    ):
        assert train.images.shape == (2, 3, 4, 5) and test.images.shape == (2, 3, 4, 5)
        assert train.n_features == test.n_features == 60
    train, test = load_data(args)
    assert torch.equal(train.images, torch.stack([g.expand(3, -1, -1) for g in grays]))
    assert torch.equal(test.images[1], rgb)
    pixels = torch.stack([g.expand(3, -1, -1) for g in grays]).reshape(2, -1).double() / 255
    if normalize == "unit":
        pixels /= pixels.norm(dim=1, keepdim=True)
    assert torch.allclose(train.features.double(), pixels, atol=1e-6)
    result = CliRunner().invoke(
        cli, ["scan", "--train", args.train, "--test", args.test, "--solver", "exact",
              "--normalize", normalize, "--db", str(tmp_path / "a.db")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_cmyk_jpeg_is_converted_to_rgb_not_read_as_rgb_plus_alpha(tmp_path):
    from PIL import Image

    cmyk = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    Image.frombytes("CMYK", (5, 4), cmyk.tobytes()).save(tmp_path / "a" / "c.jpg", quality=95)
    png(tmp_path / "b" / "1.png", random_image(1))
    data = load(str(tmp_path), normalize="none")
    with Image.open(tmp_path / "a" / "c.jpg") as image:
        assert image.mode == "CMYK"
        want = torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy())
    got = data.images[0]
    assert got.shape == (3, 4, 5)
    assert (got.int() - want.int()).abs().max() <= 2  # JPEG decoders may round differently


def test_imagefolder_symlink_loops_do_not_multiply_points(tmp_path):
    root = tmp_path / "root"
    a = png(root / "a" / "1.png", random_image(0))
    b = png(root / "b" / "1.png", random_image(1))
    c = png(root / "a" / "sub" / "2.png", random_image(2))
    d = png(tmp_path / "elsewhere" / "3.png", random_image(3))
    (root / "b" / "more").symlink_to(tmp_path / "elsewhere")  # an ordinary link: followed
    want_ids = ["a/1.png", "a/sub/2.png", "b/1.png", "b/more/3.png"]
    # one loop at a time (two would make the unguarded walk exponential): back to the
    # class folder, and back to the root (which also read b's image as class 'a')
    for link, target in [(root / "a" / "sub" / "back", ".."), (root / "a" / "up", "..")]:
        link.symlink_to(target)
        data = load(str(root), normalize="none")
        assert data.ids == want_ids
        assert data.targets.tolist() == [0, 0, 1, 1]
        assert torch.equal(data.images, torch.stack([a, c, b, d]))
        link.unlink()


def test_imagefolder_corrupt_image_names_the_file(tmp_path):
    png(tmp_path / "a" / "1.png", random_image(0))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"b/broken\.png"):
        load(str(tmp_path))


def test_imagefolder_html_like_class_name_is_kept(tmp_path):
    png(tmp_path / "<script>" / "x.png", random_image(0))
    png(tmp_path / "plain" / "y.png", random_image(1))
    data = load(str(tmp_path))
    assert data.class_names == ["<script>", "plain"]
    assert data.ids[0] == "<script>/x.png"


def test_empty_imagefolder_is_a_data_error(tmp_path):
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="no images"):
        load(str(tmp_path))


# --- CSV ---------------------------------------------------------------------------------


def test_csv_classification(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_text("a,label,b\n1,10,2\n3,9,4.5\n\n5, 10 ,-6\n")
    data = load(str(path))
    assert data.task == "classification"
    assert data.class_names == ["9", "10"]  # integers sort numerically
    assert data.targets.tolist() == [1, 0, 1]
    assert torch.equal(data.features, torch.tensor([[1.0, 2.0], [3.0, 4.5], [5.0, -6.0]]))
    assert data.ids == ["pts.csv#0", "pts.csv#1", "pts.csv#2"]
    assert data.images is None and data.name == "pts.csv" and data.source.format == "csv"


def test_csv_string_labels_sort_lexically(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("x,label\n1,dog\n2,cat\n3,dog\n")
    data = load(str(path), classes=["dog", "cat"])
    assert data.class_names == ["dog", "cat"] and data.targets.tolist() == [0, 1, 0]
    assert load(str(path)).class_names == ["cat", "dog"]


def test_csv_regression(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("target,x\n1.5,2\n-3,4\n")
    data = load(str(path))
    assert data.task == "regression" and data.class_names is None
    assert data.targets.tolist() == [1.5, -3.0]
    assert data.features.tolist() == [[2.0], [4.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "x,y,label\n1,2,a\n3,oops,b\n",
            r"line 3 \(data row 1\), column 'y': 'oops' is not a number",
        ),
        ("x,label\n1,a\nnan,b\n", r"line 3 \(data row 1\), column 'x': non-finite"),
        ("x,label\n1,a\n2,b,3\n", r"line 3 \(data row 1\) has 3 fields but the header has 2"),
        ("x,y\n1,2\n", "missing label column"),
        ("", "empty file"),
        ("x,label\n", "no data rows"),
        ("x,target\n1,abc\n", r"column 'target': 'abc' is not a number"),
        ("x,label,target\n1,a,2\n", "several label/target"),
        ('x,label\n1,a\n2,"b\n3,a\n4,b\n', r"line 3: malformed CSV.*unbalanced quote"),
        ('x,label\n1,a\n2,"b"c\n3,a\n', r"line 3: malformed CSV"),
        ('x,label\n1,a\n2,"b\nc"\n3,a\n', r"line 3 \(data row 1\), column 'label'.*line break"),
    ],
)
def test_csv_errors_name_row_and_column(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load(str(path))
    assert "bad.csv" in str(info.value)


# --- NPZ ---------------------------------------------------------------------------------


def test_npz_tabular_classification(tmp_path):
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    np.savez(tmp_path / "t.npz", X=x, y=np.array([7, 3, 7]))
    data = load(str(tmp_path / "t.npz"))
    assert data.class_names == ["3", "7"] and data.targets.tolist() == [1, 0, 1]
    assert torch.equal(data.features, torch.tensor(x, dtype=torch.float32))
    assert data.images is None and data.ids == ["t.npz#0", "t.npz#1", "t.npz#2"]


def test_npz_uint8_images_and_regression(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 2), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", X=x, y=np.array([0.5, 1.5, 2.5, 3.5]))
    data = load(str(tmp_path / "img.npz"), normalize="none")
    assert data.task == "regression" and data.targets.tolist() == [0.5, 1.5, 2.5, 3.5]
    assert torch.equal(data.images, torch.from_numpy(x[:, None]))
    assert torch.allclose(data.features, torch.from_numpy(x.reshape(4, -1) / 255.0).float())


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.zeros((2, 2))}, "missing array y"),
        ({"X": np.zeros((2, 2)), "y": np.zeros(3, dtype=int)}, "y must have shape"),
        ({"X": np.array([[1.0], [np.inf]]), "y": np.array([0, 1])}, "non-finite.*row 1"),
        ({"X": np.zeros(2), "y": np.array([0, 1])}, "X must be"),
        ({"X": np.zeros((2, 1)), "y": np.array(["a", "b"])}, "y must be integer"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load(str(tmp_path / "bad.npz"))


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        load(str(tmp_path / "junk.npz"))


# --- dispatcher --------------------------------------------------------------------------


def test_toy_linear_by_role():
    train, test = load("toy-linear"), load("toy-linear", role="test")
    assert len(train) == 20 and len(test) == 1 and train.task == "regression"
    assert train.source.format == "toy-linear" and train.source.options["classes"] is None
    assert train.targets[1].item() == 100.0


def test_dispatcher_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(str(tmp_path / "nowhere.csv"))
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DataError, match="unknown data format"):
        load(str(tmp_path / "data.json"))
    with pytest.raises(DataError, match="does not exist"):
        load("mnist")
    with pytest.raises(ConfigError, match="role"):
        load("toy-linear", role="validation")
    (tmp_path / "ok.csv").write_text("x,label\n1,a\n")
    with pytest.raises(ConfigError, match="resize"):
        load(str(tmp_path / "ok.csv"), resize=(2, 2))


def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("x,label\n1,a\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("file permissions are not enforced for this user")
        with pytest.raises(DataError, match="cannot be read"):
            load(str(path))
    finally:
        path.chmod(0o644)


def test_align_classes_maps_test_labels_onto_train_names(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,label\n1,7\n2,1\n3,7\n")
    test = load(str(path))
    assert test.class_names == ["1", "7"]
    aligned = align_classes(test, ["0", "7", "1"])
    assert aligned.class_names == ["0", "7", "1"]
    assert aligned.targets.tolist() == [1, 2, 1]
    with pytest.raises(DataError, match="'1'"):
        align_classes(test, ["0", "7"])
