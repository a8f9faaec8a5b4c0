"""Headers that claim more than the file holds get one Error: line naming the file and
the field, before anything is allocated (issue 18, must 1)."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.io import encode_png

from auditor.cli import cli
from tests.helpers import one_error


def _scan(path, tmp_path):
    runner = CliRunner()
    return runner.invoke(
        cli, ["scan", "--train", str(path), "--test-split", "0.5", "--db", str(tmp_path / "a.db")]
    )


def _idx_pair(folder, dims, payload=b"\x00" * 16):
    """An idx images file declaring ``dims`` (uint8) over ``payload``, with 2 labels."""
    folder.mkdir()
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + payload))
    labels = struct.pack(">HBBI", 0, 0x08, 1, 2) + bytes([0, 1])
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


@pytest.mark.parametrize(
    "dims",
    [(2, 2**31 - 1, 2**31 - 1), (2, 100_000, 100_000), (2, 3, 3)],
    ids=["overflowing-product", "beyond-budget", "more-than-the-bytes"],
)
def test_an_idx_header_that_claims_more_than_the_file_is_one_error(tmp_path, dims):
    result = _scan(_idx_pair(tmp_path / "d", dims, payload=b"\x00" * 5), tmp_path)
    line = one_error(result.output)
    assert result.exit_code in (1, 2) and "train-images-idx3-ubyte.gz" in line
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _npy_member(shape, descr="<f4", payload=b""):
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + payload


@pytest.mark.parametrize(
    "shape", [(10**12, 10**12), (2**40,), (4, 2)], ids=["overflow", "huge", "short"]
)
def test_an_npy_header_inside_an_npz_is_checked_before_loading(tmp_path, shape):
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", _npy_member(shape, payload=b"\x00" * 8))
        archive.writestr("y.npy", _npy_member((4,), "<i8", b"\x00" * 32))
    result = _scan(path, tmp_path)
    line = one_error(result.output)
    assert result.exit_code in (1, 2) and "d.npz" in line


def test_a_png_whose_header_declares_a_huge_image_is_refused(tmp_path):
    folder = tmp_path / "imgs"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            png = encode_png(torch.zeros(1, 8, 8, dtype=torch.uint8)).numpy().tobytes()
            (folder / label / f"{i}.png").write_bytes(png)
    bomb = bytearray(encode_png(torch.zeros(1, 8, 8, dtype=torch.uint8)).numpy().tobytes())
    bomb[16:24] = struct.pack(">II", 60_000, 60_000)  # IHDR width and height
    (folder / "a" / "bomb.png").write_bytes(bytes(bomb))
    result = _scan(folder, tmp_path)
    line = one_error(result.output)
    assert result.exit_code in (1, 2) and "bomb.png" in line
