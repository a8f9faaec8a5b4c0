"""write_cleaned: remove and relabel decisions written back in each format, then reloaded."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from auditor.errors import DataError
from auditor.sources import load
from auditor.sources.toy import toy_linear
from auditor.sources.writers import write_cleaned


@pytest.fixture(scope="module")
def raw(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 60 shared MNIST test images and labels, parsed by fixed header offsets."""
    pixels = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    return (
        np.frombuffer(pixels, np.uint8, 60 * 784, offset=16).reshape(60, 28, 28),
        np.frombuffer(labels, np.uint8, 60, offset=8),
    )


def write_idx_file(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def read_idx_file(path: Path, header: int) -> np.ndarray:
    data = path.read_bytes()
    return np.frombuffer(gzip.decompress(data) if path.name.endswith(".gz") else data, np.uint8)[
        header:
    ]


def write_pair(folder: Path, prefix: str, pixels: np.ndarray, labels: np.ndarray, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx_file(folder / f"{prefix}-images-idx3-ubyte{ext}", pixels)
    write_idx_file(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def relabelled(label: int) -> int:
    return (label + 1) % 10


# --- idx ---------------------------------------------------------------------------------


def test_idx_gz_remove_and_relabel_round_trip(tmp_path, raw):
    pixels, labels = raw
    write_pair(tmp_path / "src", "t10k", pixels, labels, gz=True)
    data = load(str(tmp_path / "src"))
    name = "t10k-images-idx3-ubyte.gz"
    decisions = {
        f"{name}#3": ("remove", None),
        f"{name}#10": ("remove", None),
        f"{name}#5": ("relabel", str(relabelled(labels[5]))),
        f"{name}#7": ("keep", None),
    }
    written = write_cleaned(data.source, decisions, tmp_path / "out")
    assert sorted(p.name for p in written) == [name, "t10k-labels-idx1-ubyte.gz"]
    assert all(p.read_bytes()[:2] == b"\x1f\x8b" for p in written)  # still gzipped
    keep = [i for i in range(60) if i not in (3, 10)]
    expected_labels = labels.copy()
    expected_labels[5] = relabelled(labels[5])
    again = load(str(tmp_path / "out"))
    assert len(again) == 58
    assert torch.equal(again.images[:, 0], torch.from_numpy(pixels[keep].copy()))
    got = [int(again.class_names[t]) for t in again.targets.tolist()]
    assert got == expected_labels[keep].tolist()
    changed = [i for i, k in enumerate(keep) if got[i] != labels[k]]
    assert changed == [keep.index(5)]


def test_idx_two_pairs_writes_only_the_audited_pair(tmp_path, raw):
    """The other pair is not copied: the rescan reads the run's own test data, and a copy
    beside held-out points would be picked as the test set instead of them."""
    pixels, labels = raw
    write_pair(tmp_path / "src", "train", pixels[:40], labels[:40], gz=False)
    write_pair(tmp_path / "src", "t10k", pixels[40:], labels[40:], gz=False)
    train = load(str(tmp_path / "src"), role="train", classes=["1", "7"])
    removed = train.ids[0]  # the first 1 or 7
    index = int(removed.split("#")[1])
    written = write_cleaned(train.source, {removed: ("remove", None)}, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert sorted(p.name for p in written) == ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    # Every record is rewritten, not only the audited classes.
    out_labels = read_idx_file(tmp_path / "out" / "train-labels-idx1-ubyte", 8)
    assert out_labels.tolist() == np.delete(labels[:40], index).tolist()
    again = load(str(tmp_path / "out"), role="train", classes=["1", "7"])
    assert len(again) == len(train) - 1


def test_idx_relabel_must_be_a_byte(tmp_path, raw):
    write_pair(tmp_path / "src", "t10k", raw[0][:5], raw[1][:5], gz=False)
    data = load(str(tmp_path / "src"))
    with pytest.raises(DataError, match="0..255"):
        write_cleaned(data.source, {data.ids[0]: ("relabel", "cat")}, tmp_path / "out")


# --- CSV ---------------------------------------------------------------------------------


def test_csv_remove_and_relabel_round_trip(tmp_path):
    src = tmp_path / "pts.csv"
    src.write_text("a,label,b\n1,x,2\n3,y,4\n5,x,6\n7,y,8\n")
    data = load(str(src))
    decisions = {"pts.csv#1": ("remove", None), "pts.csv#2": ("relabel", "y")}
    (out,) = write_cleaned(data.source, decisions, tmp_path / "out")
    assert out.read_text() == "a,label,b\n1,x,2\n5,y,6\n7,y,8\n"
    again = load(str(out))
    assert again.features.tolist() == [[1.0, 2.0], [5.0, 6.0], [7.0, 8.0]]
    assert [again.class_names[t] for t in again.targets.tolist()] == ["x", "y", "y"]


def test_csv_regression_target_relabel(tmp_path):
    src = tmp_path / "r.csv"
    src.write_text("x,target\n1,10\n2,20\n3,999\n")
    data = load(str(src))
    (out,) = write_cleaned(data.source, {"r.csv#2": ("relabel", "30")}, tmp_path / "out")
    assert load(str(out)).targets.tolist() == [10.0, 20.0, 30.0]
    with pytest.raises(DataError, match="not a number"):
        write_cleaned(data.source, {"r.csv#2": ("relabel", "abc")}, tmp_path / "out2")


# --- NPZ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_remove_and_relabel_round_trip(tmp_path, compressed):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 0, 1], dtype=np.int16)
    note = np.array([10, 11, 12, 13, 14, 15])
    (np.savez_compressed if compressed else np.savez)(tmp_path / "d.npz", X=x, y=y, note=note)
    data = load(str(tmp_path / "d.npz"))
    decisions = {"d.npz#0": ("remove", None), "d.npz#4": ("relabel", "1")}
    (out,) = write_cleaned(data.source, decisions, tmp_path / "out")
    with np.load(out) as cleaned:
        assert cleaned["X"].dtype == np.float32 and cleaned["y"].dtype == np.int16
        assert cleaned["X"].tolist() == x[1:].tolist()
        assert cleaned["y"].tolist() == [1, 0, 1, 1, 1]
        assert cleaned["note"].tolist() == [11, 12, 13, 14, 15]
    with zipfile.ZipFile(out) as archive:
        stored = {i.compress_type == zipfile.ZIP_STORED for i in archive.infolist()}
    assert stored == {not compressed}
    again = load(str(out))
    assert again.targets.tolist() == [1, 0, 1, 1, 1] and len(again) == 5


def test_npz_arrays_named_like_numpys_own_keywords_are_kept(tmp_path):
    """``np.savez(f, **arrays)`` would take an array named ``allow_pickle`` for its own
    keyword and drop it from the cleaned copy."""
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    y = np.array([0, 1, 0, 1])
    extra = {"allow_pickle": np.array([5, 6, 7, 8]), "file": np.array([1, 2, 3, 4])}
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        for name, array in {"X": x, "y": y, **extra}.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)
    data = load(str(tmp_path / "d.npz"))
    (out,) = write_cleaned(data.source, {"d.npz#1": ("remove", None)}, tmp_path / "out")
    with np.load(out) as cleaned:
        assert sorted(cleaned.files) == ["X", "allow_pickle", "file", "y"]
        assert cleaned["allow_pickle"].tolist() == [5, 7, 8]
        assert cleaned["file"].tolist() == [1, 3, 4]


def test_npz_relabel_must_fit_the_dtype(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 1)), y=np.array([0, 1], dtype=np.uint8))
    data = load(str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match="out of range"):
        write_cleaned(data.source, {"d.npz#0": ("relabel", "300")}, tmp_path / "out")


# --- image folders -----------------------------------------------------------------------


def image(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 4, 4), generator=gen, dtype=torch.uint8)


def test_imagefolder_remove_and_relabel_round_trip(tmp_path):
    src = tmp_path / "src"
    pixels = {}
    for seed, rel in enumerate(["cat/001.png", "cat/002.png", "dog/001.png", "dog/003.png"]):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels[rel] = image(seed)
        write_png(pixels[rel], str(src / rel))
    data = load(str(src))
    decisions = {
        "dog/003.png": ("remove", None),
        "cat/001.png": ("relabel", "dog"),  # dog/001.png exists: gets a suffix
        "cat/002.png": ("relabel", "bird"),  # a new class folder
        "dog/001.png": ("keep", None),
    }
    written = write_cleaned(data.source, decisions, tmp_path / "out")
    assert len(written) == 3
    again = load(str(tmp_path / "out"))
    assert again.class_names == ["bird", "dog"]
    assert again.ids == ["bird/002.png", "dog/001-1.png", "dog/001.png"]
    assert again.targets.tolist() == [0, 1, 1]
    expected = [pixels["cat/002.png"], pixels["cat/001.png"], pixels["dog/001.png"]]
    assert torch.equal(again.images, torch.stack(expected))
    assert (tmp_path / "out" / "dog" / "001.png").read_bytes() == (
        src / "dog" / "001.png"
    ).read_bytes()


def test_imagefolder_refuses_unsafe_folder_and_own_tree(tmp_path):
    write_png(image(0), str(tmp_path / "a.png"))
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    write_png(image(0), str(src / "a" / "1.png"))
    write_png(image(1), str(src / "b" / "1.png"))
    data = load(str(src))
    with pytest.raises(DataError, match="folder name"):
        write_cleaned(data.source, {"a/1.png": ("relabel", "../evil")}, tmp_path / "out")
    with pytest.raises(DataError, match="refusing"):
        write_cleaned(data.source, {}, src / "cleaned")


# --- toy-linear and errors ---------------------------------------------------------------


def test_toy_linear_written_as_csv(tmp_path):
    train, _ = toy_linear(0)
    decisions = {"x=-4.5": ("remove", None), "x=2.5": ("relabel", "-7.5")}
    (out,) = write_cleaned(load("toy-linear").source, decisions, tmp_path)
    assert out.name == "toy-linear.csv"
    again = load(str(out))
    assert again.task == "regression" and len(again) == 19
    keep = [i for i in range(20) if i != 1]
    assert again.features[:, 0].tolist() == train.features[keep, 0].tolist()
    expected = train.targets[keep].clone()
    expected[keep.index(15)] = -7.5
    assert torch.equal(again.targets, expected)


def test_unknown_ids_and_bad_decisions(tmp_path):
    src = tmp_path / "p.csv"
    src.write_text("x,label\n1,a\n2,b\n")
    source = load(str(src)).source
    with pytest.raises(DataError, match="not in the data: 'p.csv#9'"):
        write_cleaned(source, {"p.csv#9": ("remove", None)}, tmp_path / "out")
    with pytest.raises(DataError, match="unknown action"):
        write_cleaned(source, {"p.csv#0": ("delete", None)}, tmp_path / "out")
    with pytest.raises(DataError, match="needs a new label"):
        write_cleaned(source, {"p.csv#0": ("relabel", None)}, tmp_path / "out")
    with pytest.raises(DataError, match="refusing"):
        write_cleaned(source, {}, tmp_path)
    with pytest.raises(DataError, match="not in the data"):
        write_cleaned(load("toy-linear").source, {"x=3.2": ("remove", None)}, tmp_path / "t")
