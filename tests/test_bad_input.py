"""Bad input, case by case (issue 6): one clear ``Error:`` line naming the problem and where,
exit status 2 for usage errors and 1 for data errors, no traceback, no run written.

Every case goes through the real command line (CliRunner) on real files. Tests run as
root here, where file permissions do not apply; the permission cases therefore run the
command in a subprocess without the capabilities that let root ignore them (``setpriv``).
"""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import zipfile
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner
from torchvision.io import encode_jpeg, encode_png

from auditor.cli import cli
from auditor.data import Dataset, validate
from auditor.errors import DataError
from auditor.store import open_db, points
from tests.helpers import one_error

ROOT = Path(__file__).resolve().parents[1]
SETPRIV = shutil.which("setpriv")


def fails(args: list[str], code: int, *needles: str) -> str:
    """Run ``auditor ARGS``; assert the exit ``code`` and one error line holding ``needles``."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    return one_error(result.output, *needles)


def no_runs(db: Path) -> bool:
    """True when ``db`` does not exist or holds no run (read without creating anything)."""
    if not db.exists():
        return True
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master")}
        return "runs" not in tables or conn.execute("select count(*) from runs").fetchone() == (0,)


def scan_fails(tmp_path: Path, args: list[str], code: int, *needles: str) -> str:
    """``auditor scan ARGS`` into a fresh database fails as asked and writes no run."""
    db = tmp_path / "audit.db"
    line = fails(["scan", *args, "--db", str(db)], code, *needles)
    assert no_runs(db)
    return line


def csv_file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def two_class_csv(path: Path, columns: int = 2, n: int = 8) -> str:
    header = ",".join(f"f{i}" for i in range(columns)) + ",label\n"
    rows = "".join(
        ",".join(str(i + j) for j in range(columns)) + f",{'ab'[i % 2]}\n" for i in range(n)
    )
    return csv_file(path, header + rows)


def png(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, h, w), generator=gen, dtype=torch.uint8)
    path.write_bytes(encode_png(image).numpy().tobytes())


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file written with struct, independently of the code under test."""
    header = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


# --- paths -------------------------------------------------------------------------------


def test_missing_train_and_test_paths(tmp_path):
    scan_fails(tmp_path, ["--train", str(tmp_path / "nope.csv"), "--test-split", "0.5"], 1,
               "nope.csv", "does not exist")  # fmt: skip
    train = two_class_csv(tmp_path / "t.csv")
    scan_fails(tmp_path, ["--train", train, "--test", str(tmp_path / "gone.npz")], 1,
               "gone.npz", "does not exist")  # fmt: skip


def test_path_below_a_regular_file_and_a_name_too_long(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    scan_fails(tmp_path, ["--train", str(tmp_path / "plain.txt" / "d.csv"), "--test-split", "0.5"],
               1, "plain.txt/d.csv")  # fmt: skip
    long = str(tmp_path / ("x" * 300 + ".csv"))
    scan_fails(tmp_path, ["--train", long, "--test-split", "0.5"], 1, "cannot be read",
               "too long")  # fmt: skip


def test_a_folder_where_a_data_file_is_expected(tmp_path):
    (tmp_path / "data.csv").mkdir()
    scan_fails(tmp_path, ["--train", str(tmp_path / "data.csv"), "--test-split", "0.5"], 1,
               "data.csv", "no images")  # fmt: skip


def test_unknown_data_format(tmp_path):
    path = csv_file(tmp_path / "data.json", "{}")
    scan_fails(tmp_path, ["--train", path, "--test-split", "0.5"], 1, "data.json",
               "unknown data format")  # fmt: skip


def without_root_powers(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m auditor ARGS`` in a subprocess for which file permissions apply."""
    prefix = []
    if os.geteuid() == 0:
        if SETPRIV is None:
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        drop = "-dac_override,-dac_read_search"
        prefix = [SETPRIV, f"--inh-caps={drop}", f"--bounding-set={drop}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "auditor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_clean_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    one_error(proc.stderr, *needles)


def test_unreadable_data_file(tmp_path):
    data = Path(two_class_csv(tmp_path / "secret.csv"))
    data.chmod(0)
    db = tmp_path / "audit.db"
    proc = without_root_powers(
        ["scan", "--train", str(data), "--test-split", "0.5", "--db", str(db)], tmp_path
    )
    assert_one_clean_error(proc, 1, "secret.csv", "cannot be read")
    assert no_runs(db)


def test_unwritable_database_directory_and_file(tmp_path):
    data = two_class_csv(tmp_path / "ok.csv")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    proc = without_root_powers(
        ["scan", "--train", data, "--test-split", "0.5", "--db", str(locked / "a.db")], tmp_path
    )
    assert_one_clean_error(proc, 1, "locked/a.db", "not writable")
    assert not (locked / "a.db").exists()

    db = tmp_path / "readonly.db"
    open_db(str(db)).dispose()
    db.chmod(0o444)
    proc = without_root_powers(
        ["scan", "--train", data, "--test-split", "0.5", "--db", str(db)], tmp_path
    )
    assert_one_clean_error(proc, 1, "readonly.db", "not writable")
    assert no_runs(db)


def test_database_paths_that_cannot_be_files(tmp_path):
    data = two_class_csv(tmp_path / "ok.csv")
    (tmp_path / "dir.db").mkdir()
    fails(["scan", "--train", data, "--test-split", "0.5", "--db", str(tmp_path / "dir.db")], 1,
          "dir.db", "is a directory")  # fmt: skip
    (tmp_path / "plain").write_text("x")
    fails(["scan", "--train", data, "--test-split", "0.5", "--db", str(tmp_path / "plain" / "a.db")],
          1, "plain", "not a directory")  # fmt: skip
    fails(["scan", "--train", data, "--test-split", "0.5", "--db", str(tmp_path / "no" / "a.db")],
          1, "does not exist")  # fmt: skip
    # /proc accepts no new files, not even from root
    fails(["scan", "--train", data, "--test-split", "0.5", "--db", "/proc/auditor-test.db"], 1,
          "/proc/auditor-test.db")  # fmt: skip


# --- data --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("", ["e.csv", "empty file"]),
        ("f0,f1,label\n", ["e.csv", "no data rows"]),
    ],
)
def test_empty_csv(tmp_path, text, needles):
    path = csv_file(tmp_path / "e.csv", text)
    scan_fails(tmp_path, ["--train", path, "--test-split", "0.5"], 1, *needles)


def test_empty_npz_and_empty_image_folder(tmp_path):
    np.savez(tmp_path / "e.npz", X=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64))
    scan_fails(tmp_path, ["--train", str(tmp_path / "e.npz"), "--test-split", "0.5"], 1,
               "e.npz", "n > 0")  # fmt: skip
    (tmp_path / "images" / "cat").mkdir(parents=True)
    scan_fails(tmp_path, ["--train", str(tmp_path / "images"), "--test-split", "0.5"], 1,
               "images", "no images")  # fmt: skip


def test_one_class_only_for_a_classifier(tmp_path):
    path = csv_file(tmp_path / "one.csv", "x,label\n" + "".join(f"{i},a\n" for i in range(6)))
    scan_fails(tmp_path, ["--train", path, "--test-split", "0.5"], 1, "one.csv", "only one class")


def test_labels_not_numeric_or_out_of_range(tmp_path):
    path = csv_file(tmp_path / "r.csv", "x,target\n1,2.5\n2,abc\n3,1\n")
    scan_fails(tmp_path, ["--train", path, "--test-split", "0.5"], 1, "r.csv", "line 3",
               "'target'", "'abc' is not a number")  # fmt: skip
    np.savez(tmp_path / "s.npz", X=np.ones((4, 2)), y=np.array(["a", "b", "a", "b"]))
    scan_fails(tmp_path, ["--train", str(tmp_path / "s.npz"), "--test-split", "0.5"], 1,
               "s.npz", "y must be integer")  # fmt: skip
    train = two_class_csv(tmp_path / "train.csv")
    test = csv_file(tmp_path / "test.csv", "f0,f1,label\n1,2,a\n3,4,zebra\n")
    scan_fails(tmp_path, ["--train", train, "--test", test], 1, "test.csv", "'zebra'")


def test_unbalanced_quote_in_csv_is_refused_not_swallowed(tmp_path):
    # csv's default (non-strict) reader read "y to the end of the file as one label: a
    # complete run on two of the six points
    path = csv_file(tmp_path / "q.csv", 'a,label\n1,x\n2,"y\n3,x\n4,y\n5,x\n6,y\n')
    scan_fails(tmp_path, ["--train", path, "--test", path], 1, "q.csv", "line 3",
               "unbalanced quote")  # fmt: skip


def test_classes_absent_from_the_data(tmp_path):
    train = two_class_csv(tmp_path / "t.csv")
    scan_fails(tmp_path, ["--train", train, "--test-split", "0.5", "--classes", "a,q"], 1,
               "no class 'q'")  # fmt: skip


@pytest.mark.parametrize("classes", [None, "a,b", "b,a"])
def test_classes_accept_a_test_set_lacking_one_of_them(tmp_path, classes):
    # the test set has no 'b' and an extra 'c'. Without --classes, 'c' is refused (the
    # training data lacks it); with --classes, 'c' is dropped and the absent 'b' is fine
    # (it was refused, though a test set without 'b' is accepted without --classes)
    train = two_class_csv(tmp_path / "train.csv")
    test = csv_file(tmp_path / "test.csv", "f0,f1,label\n1,2,a\n5,5,c\n3,4,a\n")
    db = tmp_path / "audit.db"
    args = ["scan", "--train", train, "--test", test, "--solver", "exact", "--db", str(db)]
    result = CliRunner().invoke(cli, args + (["--classes", classes] if classes else []))
    if classes is None:
        assert result.exit_code == 1 and "'c' that the training data lacks" in result.output
        return
    assert result.exit_code == 0, result.output
    engine = open_db(str(db), create=False)
    try:
        stored = points.read_points(engine, 1, "test")
    finally:
        engine.dispose()
    assert [p["point_id"] for p in stored] == ["test.csv#0", "test.csv#2"]
    assert [p["label"] for p in stored] == [classes.split(",").index("a")] * 2


def test_classes_still_required_in_the_training_set_and_somewhere_in_the_test_set(tmp_path):
    train = two_class_csv(tmp_path / "train.csv")
    only_a = csv_file(tmp_path / "only_a.csv", "f0,f1,label\n1,2,a\n3,4,a\n")
    scan_fails(tmp_path, ["--train", only_a, "--test", train, "--classes", "a,b"], 1,
               "only_a.csv", "no class 'b'")  # fmt: skip
    only_c = csv_file(tmp_path / "only_c.csv", "f0,f1,label\n1,2,c\n3,4,c\n")
    scan_fails(tmp_path, ["--train", train, "--test", only_c, "--classes", "a,b"], 1,
               "only_c.csv", "no class 'a', 'b'")  # fmt: skip


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_features_in_csv(tmp_path, bad):
    path = csv_file(tmp_path / "n.csv", f"f0,f1,label\n1,2,a\n3,{bad},b\n5,6,a\n7,8,b\n")
    scan_fails(tmp_path, ["--train", path, "--test-split", "0.5"], 1, "n.csv", "line 3",
               "'f1'", "non-finite")  # fmt: skip


def test_non_finite_features_and_targets_in_npz(tmp_path):
    x = np.ones((6, 2), np.float64)
    x[4, 1] = np.inf
    np.savez(tmp_path / "x.npz", X=x, y=np.arange(6) % 2)
    scan_fails(tmp_path, ["--train", str(tmp_path / "x.npz"), "--test-split", "0.5"], 1,
               "x.npz", "non-finite", "row 4")  # fmt: skip
    np.savez(tmp_path / "y.npz", X=np.ones((6, 2)), y=np.array([1, 2, np.nan, 4, 5, 6]))
    scan_fails(tmp_path, ["--train", str(tmp_path / "y.npz"), "--test-split", "0.5"], 1,
               "y.npz", "non-finite y", "row 2")  # fmt: skip


def test_finite_npz_values_too_large_for_float32(tmp_path):
    # 1e300 is finite in float64 but overflows the float32 cast: one clean error, no
    # numpy RuntimeWarning (an error under this suite's filterwarnings)
    x = np.ones((6, 2), np.float64)
    x[3, 0] = 1e300
    np.savez(tmp_path / "x.npz", X=x, y=np.arange(6) % 2)
    scan_fails(tmp_path, ["--train", str(tmp_path / "x.npz"), "--test-split", "0.5"], 1,
               "x.npz", "too large for float32", "row 3")  # fmt: skip
    np.savez(tmp_path / "y.npz", X=np.ones((6, 2)), y=np.array([1, 2, 3, -1e300, 5, 6]))
    scan_fails(tmp_path, ["--train", str(tmp_path / "y.npz"), "--test-split", "0.5"], 1,
               "y.npz", "non-finite y", "too large for float32", "row 3")  # fmt: skip


def test_images_of_different_sizes_need_resize(tmp_path):
    for i in range(4):
        png(tmp_path / "imgs" / "a" / f"{i}.png", 6, 6, seed=i)
        png(tmp_path / "imgs" / "b" / f"{i}.png", 6, 6, seed=10 + i)
    png(tmp_path / "imgs" / "b" / "big.png", 9, 7)
    args = ["--train", str(tmp_path / "imgs"), "--test-split", "0.3", "--solver", "exact"]
    scan_fails(tmp_path, args, 1, "b/big.png", "9x7", "6x6", "--resize HxW", "--resize 6x6")
    db = tmp_path / "ok.db"
    result = CliRunner().invoke(cli, ["scan", *args, "--resize", "6x6", "--db", str(db)])
    assert result.exit_code == 0, result.output  # resized only when asked


def test_corrupt_and_truncated_images(tmp_path):
    for i in range(3):
        png(tmp_path / "imgs" / "a" / f"{i}.png", 5, 5, seed=i)
        png(tmp_path / "imgs" / "b" / f"{i}.png", 5, 5, seed=10 + i)
    whole = (tmp_path / "imgs" / "b" / "2.png").read_bytes()
    (tmp_path / "imgs" / "b" / "2.png").write_bytes(whole[: len(whole) // 2])
    args = ["--train", str(tmp_path / "imgs"), "--test-split", "0.3"]
    scan_fails(tmp_path, args, 1, "b/2.png", "cannot decode")
    (tmp_path / "imgs" / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    scan_fails(tmp_path, args, 1, "b/2.png", "cannot decode")


def test_truncated_and_corrupt_idx_files(tmp_path):
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, (12, 4, 4), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 2
    folder = tmp_path / "idx"
    folder.mkdir()
    images = folder / "t10k-images-idx3-ubyte.gz"
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    args = ["--train", str(folder), "--test-split", "0.5"]
    images.write_bytes(gzip.compress(idx_bytes(pixels)[:-7]))
    scan_fails(tmp_path, args, 1, "t10k-images-idx3-ubyte.gz", "truncated")
    images.write_bytes(gzip.compress(idx_bytes(pixels))[:-20])  # a cut-off gzip stream
    scan_fails(tmp_path, args, 1, "t10k-images-idx3-ubyte.gz", "cannot read")
    images.write_bytes(gzip.compress(b"PK\x03\x04" + idx_bytes(pixels)[4:]))
    scan_fails(tmp_path, args, 1, "t10k-images-idx3-ubyte.gz", "not an idx file")


def test_idx_images_without_pixels(tmp_path):
    # (n, 0, 0) images used to give a "complete" run over empty feature vectors
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((12, 0, 0), np.uint8)))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(12) % 2))
    scan_fails(tmp_path, ["--train", str(folder), "--test-split", "0.5"], 1,
               "train-images-idx3-ubyte", "0x0", "at least one pixel")  # fmt: skip


def test_validation_refuses_points_without_features():
    empty = Dataset(torch.zeros(4, 0), torch.tensor([0, 1, 0, 1]), list("abcd"),
                    "classification", class_names=["x", "y"], name="hollow")  # fmt: skip
    with pytest.raises(DataError, match=r"train data \(hollow\) has no features"):
        validate(empty, "train")


def test_corrupt_npz(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 this is no zip archive")
    scan_fails(tmp_path, ["--train", str(tmp_path / "c.npz"), "--test-split", "0.5"], 1,
               "c.npz", "cannot read NPZ")  # fmt: skip


def test_train_and_test_with_different_feature_sizes(tmp_path):
    train = two_class_csv(tmp_path / "train.csv", columns=2)
    test = two_class_csv(tmp_path / "test.csv", columns=3, n=4)
    scan_fails(tmp_path, ["--train", train, "--test", test], 1, "train has 2 features",
               "test has 3")  # fmt: skip


# --- the database ------------------------------------------------------------------------


def test_database_written_by_a_newer_auditor(tmp_path):
    db = tmp_path / "new.db"
    engine = open_db(str(db))
    with engine.begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = 'ffff9999'"))
    engine.dispose()
    data = two_class_csv(tmp_path / "ok.csv")
    for args in (["runs"], ["scan", "--train", data, "--test-split", "0.5"], ["export"]):
        fails([*args, "--db", str(db)], 1, "ffff9999", "newer than this auditor")
    assert no_runs(db)


@pytest.mark.parametrize(
    "args",
    [
        ["show", "42", "--test-index", "0"],
        ["export", "42"],
        ["report", "42", "--out", "r.html"],
        ["compare", "42", "1"],
        ["scan", "--resume", "42"],
    ],
)
def test_a_run_id_that_does_not_exist(tmp_path, args):
    db = tmp_path / "audit.db"
    assert (
        CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", str(db)]).exit_code == 0
    )
    fails([*args, "--db", str(db)], 1, "run 42 does not exist")


def test_commands_on_a_missing_database(tmp_path):
    db = tmp_path / "none.db"
    fails(["runs", "--db", str(db)], 1, "none.db", "does not exist")
    fails(["scan", "--resume", "1", "--db", str(db)], 1, "none.db", "does not exist")
    assert not db.exists()


# --- option values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--depth", "-3"),
        ("--depth", "0"),
        ("--damping", "-1"),
        ("--weight-decay", "-0.5"),
        ("--test-split", "0"),
        ("--test-split", "1"),
        ("--test-split", "1.5"),
        ("--test-split", "-0.2"),
        ("--scale", "0"),
        ("--repeats", "0"),
        ("--batch-size", "0"),
        ("--hidden", "0"),
        ("--tol", "0"),
        ("--trim", "0.7"),
        ("--chunk", "0"),
        ("--resize", "0x4"),
        ("--resize", "big"),
        ("--classes", "7"),
        ("--solver", "magic"),
        ("--seed", "one"),
        ("--seed", "-1"),
        ("--device", "mps"),
        ("--device", "meta"),
        ("--device", "cuda:3"),
        ("--seed", str(2**64)),
        ("--outlier-z", "high"),
        ("--outlier-z", "0"),
        ("--outlier-z", "-2"),
        ("--outlier-z", "nan"),
        ("--outlier-z", "inf"),
        ("--mislabel-z", "0"),
        ("--mislabel-z", "nan"),
        ("--mislabel-z", "inf"),
    ],
)
def test_option_values_out_of_range(tmp_path, option, value):
    args = ["--train", "toy-linear", option, value]
    if option != "--test-split":
        args = ["--train", two_class_csv(tmp_path / "d.csv"), "--test-split", "0.5", option, value]
    scan_fails(tmp_path, args, 2, option)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["show", "1", "--test-index", "5"], "--test-index"),
        (["show", "1", "--test-index", "-1"], "--test-index"),
        (["show", "1"], "--test-index"),
        (["show", "1", "--train-index", "0", "--top", "0"], "--top"),
        (["report", "1", "--top", "0", "--out", "r.html"], "--top"),
        (["scan", "--resume", "1", "--train", "toy-linear"], "--train"),
        (["scan", "--resume", "1", "--depth", "7"], "--depth"),
        (["scan", "--resume", "1"], "already complete"),
        (["scan", "--train", "toy-linear", "--test-split", "0.5", "--test", "toy-linear"], "both"),
    ],
)
def test_usage_errors_of_read_commands_and_resume(tmp_path, args, needle):
    db = tmp_path / "audit.db"
    assert (
        CliRunner().invoke(cli, ["scan", "--train", "toy-linear", "--db", str(db)]).exit_code == 0
    )
    fails([*args, "--db", str(db)], 2, needle)


# --- headers that claim more than the file holds (issue 18) -------------------------------


def idx_folder(tmp_path: Path, images: bytes, gz: bool = False) -> str:
    """A folder with an idx images file holding ``images`` and a sane labels file."""
    folder = tmp_path / "idx"
    folder.mkdir(exist_ok=True)
    ext = ".gz" if gz else ""
    (folder / f"train-images-idx3-ubyte{ext}").write_bytes(gzip.compress(images) if gz else images)
    (folder / f"train-labels-idx1-ubyte{ext}").write_bytes(idx_bytes(np.arange(8) % 2))
    return str(folder)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("header", "needles"),
    [
        (struct.pack(">4B", 0, 0, 8, 255), ["number of dimensions (byte 4) is 255"]),
        (struct.pack(">4B3I", 0, 0, 8, 3, *[2**32 - 1] * 3), ["larger than numpy can hold"]),
        (struct.pack(">4B3I", 0, 0, 8, 3, 8, 60000, 60000), ["promises 28800000000 bytes"]),
    ],
)
def test_idx_headers_claiming_more_than_the_file_holds(tmp_path, gz, header, needles):
    folder = idx_folder(tmp_path, header + bytes(32), gz)
    scan_fails(tmp_path, ["--train", folder, "--test-split", "0.5"], 1,
               "train-images-idx3-ubyte", *needles)  # fmt: skip


def npy_member(descr: str, shape: tuple, payload: bytes) -> bytes:
    """A ``.npy`` member whose header (version 1.0) is written here."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


@pytest.mark.parametrize(
    ("member", "needles"),
    [
        (npy_member("<f8", (10**6, 10**6), bytes(64)), ["'X'", "describe 8000000000000 bytes"]),
        (npy_member("<f8", (2**40, 2**40), bytes(64)), ["'X'", "larger than numpy can hold"]),
        (npy_member("<f8", (1,) * 40, bytes(8)), ["'X'", "40 dimensions"]),
        (npy_member("|O", (4,), bytes(32)), ["'X'", "Python objects", "refused"]),
    ],
)
def test_npy_headers_claiming_more_than_the_member_holds(tmp_path, member, needles):
    path = tmp_path / "h.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", member)
        archive.writestr("y.npy", npy_member("<i8", (4,), bytes(32)))
    scan_fails(tmp_path, ["--train", str(path), "--test-split", "0.5"], 1, "h.npz", *needles)


def test_a_data_file_beyond_the_memory_budget(tmp_path, monkeypatch):
    np.savez(tmp_path / "big.npz", X=np.ones((64, 64)), y=np.arange(64) % 2)
    monkeypatch.setattr("auditor.sources.limits.MEMORY_BUDGET", 2**15 - 1)
    scan_fails(tmp_path, ["--train", str(tmp_path / "big.npz"), "--test-split", "0.5"], 1,
               "big.npz", "member 'X'", "needs 32768 bytes of memory, more than")  # fmt: skip


def image_folder_with(tmp_path: Path, name: str, data: bytes) -> str:
    for i in range(3):
        png(tmp_path / "imgs" / "a" / f"{i}.png", 4, 4, seed=i)
        png(tmp_path / "imgs" / "b" / f"{i}.png", 4, 4, seed=10 + i)
    (tmp_path / "imgs" / "b" / name).write_bytes(data)
    return str(tmp_path / "imgs")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, raw: bytes) -> bytes:
    """A gray PNG whose IHDR declares ``width`` x ``height`` over the pixel data ``raw``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))  # fmt: skip


def test_a_decompression_bomb_image(tmp_path):
    bomb = png_declaring(100_000, 100_000, bytes(100_001 * 16))
    root = image_folder_with(tmp_path, "bomb.png", bomb)
    scan_fails(tmp_path, ["--train", root, "--test-split", "0.5"], 1, "b/bomb.png",
               "image too large", "100000x100000", "IHDR")  # fmt: skip
    jpeg = bytearray(encode_jpeg(torch.zeros((3, 8, 8), dtype=torch.uint8)).numpy().tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    (tmp_path / "imgs" / "b" / "bomb.png").unlink()
    (tmp_path / "imgs" / "b" / "bomb.jpg").write_bytes(bytes(jpeg))
    scan_fails(tmp_path, ["--train", root, "--test-split", "0.5"], 1, "b/bomb.jpg",
               "image too large", "60000x60000", "SOF0")  # fmt: skip


def test_a_png_with_too_little_pixel_data_is_refused_not_a_crash(tmp_path):
    # torchvision's PNG decoder ended the process with a segmentation fault on this file
    short = png_declaring(4, 6, b"".join(b"\x00" + bytes(4) for _ in range(4)))
    root = image_folder_with(tmp_path, "short.png", short)
    scan_fails(tmp_path, ["--train", root, "--test-split", "0.5"], 1, "b/short.png",
               "cannot decode image", "20 bytes of pixel data", "needs 30")  # fmt: skip
