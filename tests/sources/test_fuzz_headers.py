"""Fuzzing the header fields of every format (issue 18), through ``auditor scan``.

The loader fuzzers (test_fuzz_loaders.py) vary the bodies; these vary what a header
declares: idx magic, type, number of dimensions and sizes; a ``.npy`` member's shape, dtype
and order inside an NPZ archive; the width and height of PNG, JPEG and GIF images; and CSV
values near float32's limits. Each scan either succeeds or exits 1 or 2 with one
``Error:`` line and no traceback; a reader's error leaves no run row (it comes before the
run starts), a later one (the fit's, on a file that reads) a run that is not complete.
"""

from __future__ import annotations

import gzip
import io
import math
import sqlite3
import struct
import tempfile
import zipfile
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torchvision.io import encode_jpeg, encode_png

from auditor.cli import cli
from tests.helpers import error_lines

pytestmark = pytest.mark.slow


def fuzz(examples: int, **options):
    """A fixed example budget, no deadline (a scan that succeeds takes a fraction of a
    second) and no example database (every run draws its examples afresh)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **options,
    )


#: The readers' fuzzers scan with the exact solver: a file that reads is scanned quickly
#: (the CSV fuzzer, which is about the fit, keeps the default).
EXACT = ("--solver", "exact")


def run_statuses(db: Path) -> list[str]:
    """The status of every run in ``db`` (none if it does not exist), read only."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master")}
        return [r[0] for r in conn.execute("select status from runs")] if "runs" in tables else []


def scan_ends_cleanly(train: Path, *, extra: tuple[str, ...] = ()) -> str:
    """``auditor scan --train TRAIN --test-split 0.5`` succeeds, or exits 1 or 2 with one
    ``Error:`` line and no traceback. A reader's error (one naming ``train``) comes before
    the run starts: no run row; a later one (the fit's) leaves a run that is not complete.

    Returns:
        The error line, or ``""`` after a success.
    """
    db = train.parent / "fuzz.db"
    args = ["scan", "--train", str(train), "--test-split", "0.5", "--db", str(db), *extra]
    result = CliRunner().invoke(cli, args)
    if result.exit_code == 0:
        assert result.exception is None, result.exception
        assert run_statuses(db) == ["complete"]
        return ""
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    errors = error_lines(result.output)
    assert len(errors) == 1, result.output
    statuses = run_statuses(db)
    if errors[0].startswith(f"Error: {train}"):
        assert statuses == [], result.output
    else:
        assert "complete" not in statuses, result.output
    return errors[0]


# --- idx -----------------------------------------------------------------------------------

#: A dimension size: small, a boundary, or any uint32.
IDX_DIM = st.one_of(
    st.integers(0, 6),
    st.sampled_from([2**16, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)


#: The header fields a fuzzed idx file gets wrong (at least one; the others are sane).
IDX_FIELDS = ("magic", "dtype", "ndim", "dims", "dims", "dims", "payload", "payload", "cut")


@st.composite
def idx_header_file(draw, sane_dims: tuple[int, ...]) -> tuple[bytes, int]:
    """An idx file whose header fields are sane (``sane_dims``) or fuzzed, a few at a
    time, and the number of points its header declares."""
    fields = draw(st.sets(st.sampled_from(IDX_FIELDS), min_size=1, max_size=3))
    zeros = draw(st.binary(min_size=2, max_size=2)) if "magic" in fields else b"\0\0"
    dtype = draw(st.integers(0, 255)) if "dtype" in fields else 0x08
    dims = list(sane_dims)
    if "dims" in fields:
        dims = draw(st.lists(IDX_DIM, min_size=len(dims), max_size=len(dims) + 1))
    ndim = draw(st.integers(0, 255)) if "ndim" in fields else len(dims)
    if "ndim" in fields and ndim <= 40:
        dims = (dims + draw(st.lists(IDX_DIM, min_size=40, max_size=40)))[:ndim]
    header = zeros + bytes([dtype, ndim]) + struct.pack(f">{len(dims)}I", *dims)
    if "cut" in fields:
        header = header[: draw(st.integers(0, len(header) - 1))]
    declared = math.prod(dims)
    size = declared if declared <= 4096 else draw(st.integers(0, 64))
    if "payload" in fields:
        size = max(0, size + draw(st.sampled_from([-1, 1, -size, 7])))
    payload = draw(st.binary(min_size=size, max_size=size))
    return header + payload, dims[0] if dims else 0


def idx_bytes(array: np.ndarray) -> bytes:
    """A well-formed idx file, written with struct."""
    header = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


@st.composite
def idx_pair(draw) -> tuple[str, dict[str, bytes]]:
    """An images/labels pair of which one file has fuzzed header fields; the other is
    sane and, if it can be, agrees on the number of points."""
    which = draw(st.sampled_from(["images", "labels"]))
    payload, n = draw(idx_header_file((8, 2, 2) if which == "images" else (8,)))
    n = n if 0 < n <= 64 else 8
    pair = {
        "images": idx_bytes(np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2) * 7),
        "labels": idx_bytes(np.arange(n) % 2),
    }
    pair[which] = payload
    return which, pair


@fuzz(100)
@given(idx_pair(), st.booleans())
def test_idx_header_fields(fuzzed, gz):
    _, sane = fuzzed
    ext = ".gz" if gz else ""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "idx"
        folder.mkdir()
        for kind, idx in (("images", "idx3"), ("labels", "idx1")):
            data = gzip.compress(sane[kind], mtime=0) if gz else sane[kind]
            (folder / f"train-{kind}-{idx}-ubyte{ext}").write_bytes(data)
        scan_ends_cleanly(folder, extra=EXACT)


# --- .npy headers in NPZ archives ------------------------------------------------------------

#: dtype descriptors: numeric ones, objects (pickles), strings, zero-size, odd and invalid.
DESCR = st.one_of(
    st.sampled_from(["<f8", "<f4", ">f8", "<f2", "|u1", "<i8", ">i4", "|b1", "<c16"]),
    st.sampled_from(["|O", "<U3", "|S2", "|S0", "|V0", "<M8[s]", "<f16", "xyz", ""]),
    st.just([("a", "<f4"), ("b", "|O")]),
    st.just([("a", "<f4"), ("b", "<i2")]),
    st.just(("<f8", (3,))),
    st.just(("<f8", (2**40,))),
)
NPY_DIM = st.one_of(
    st.integers(-3, 6),
    st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.booleans(),
)
NPY_SHAPE = st.one_of(
    st.lists(st.integers(0, 6), min_size=1, max_size=4),
    st.lists(NPY_DIM, max_size=40),
).map(tuple)


#: The fields a fuzzed ``.npy`` member gets wrong (none: a well-formed member).
NPY_FIELDS = ("descr", "shape", "shape", "fortran_order", "version", "keys", "text", "payload")


def npy_member(draw, n: int, name: str) -> bytes:
    """A ``.npy`` member, ``X`` of ``n`` rows or ``y`` of ``n`` labels, with a few of its
    header fields (or its payload's length) fuzzed."""
    fields = draw(st.sets(st.sampled_from(NPY_FIELDS), max_size=3))
    sane = np.arange(n * 2, dtype=np.float32).reshape(n, 2) if name == "X" else np.arange(n) % 2
    header: dict = {
        "descr": draw(DESCR) if "descr" in fields else np.lib.format.dtype_to_descr(sane.dtype),
        "fortran_order": draw(st.sampled_from([True, 1, None]))
        if "fortran_order" in fields
        else False,
        "shape": draw(NPY_SHAPE) if "shape" in fields else sane.shape,
    }
    if "keys" in fields:
        del header[draw(st.sampled_from(sorted(header)))]
    text = repr(header)
    if "text" in fields:
        text = text[: draw(st.integers(0, len(text)))]
    version = (
        draw(st.sampled_from([(2, 0), (3, 0), (0, 9), (4, 0)])) if "version" in fields else (1, 0)
    )
    encoded = text.encode("utf-8" if version == (3, 0) else "latin1")
    size = 2 if version in ((1, 0), (0, 9)) else 4
    encoded += b" " * (-(8 + size + len(encoded) + 1) % 64) + b"\n"
    prefix = struct.pack("<H" if size == 2 else "<I", len(encoded))
    try:
        dtype = np.dtype(header["descr"])
        declared = math.prod(int(d) for d in header["shape"]) * dtype.itemsize
    except (KeyError, TypeError, ValueError, OverflowError):
        dtype, declared = np.dtype("V1"), 10**9
    length = declared if 0 <= declared <= 4096 else draw(st.integers(0, 64))
    if "payload" in fields:
        length = max(0, length + draw(st.sampled_from([-1, 1, -length, 8])))
    if length == declared and dtype.kind in "biuf":
        # moderate values: random bytes make numbers up to 3e38 (floats) or 9e18 (int64),
        # and features that large are the fit's problem (the CSV fuzzer below), not a header's
        count = length // dtype.itemsize
        payload = (np.arange(count) % 3).astype(dtype).tobytes()
    else:
        payload = draw(st.binary(min_size=length, max_size=length))
    return b"\x93NUMPY" + bytes(version) + prefix + encoded + payload


@st.composite
def npz_archive(draw) -> bytes:
    n = draw(st.integers(2, 8))
    names = draw(st.sampled_from([["X", "y"], ["X", "y"], ["X", "y", "z"], ["X"]]))
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name in names:
            archive.writestr(f"{name}.npy", npy_member(draw, n, name))
    return buffer.getvalue()


@fuzz(100)
@given(npz_archive())
def test_npy_header_fields_in_npz(archive):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.npz"
        path.write_bytes(archive)
        scan_ends_cleanly(path, extra=EXACT)


# --- image headers -------------------------------------------------------------------------


def png_with_size(width: int, height: int, fix_crc: bool) -> bytes:
    """A real 4x4 gray PNG whose IHDR declares ``width`` x ``height``."""
    data = bytearray(encode_png(torch.full((1, 4, 4), 99, dtype=torch.uint8)).numpy().tobytes())
    data[16:24] = struct.pack(">II", width, height)
    if fix_crc:  # libpng checks the IHDR's CRC before it looks at the sizes
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real 8x8 RGB JPEG whose frame header (SOF0) declares ``width`` x ``height``."""
    data = bytearray(encode_jpeg(torch.full((3, 8, 8), 99, dtype=torch.uint8)).numpy().tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


#: A 1x1 GIF: screen 1x1, a two-colour table, one 1x1 frame.
GIF_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def gif_with_size(width: int, height: int, frames: int, frame_size: tuple[int, int]) -> bytes:
    """The 1x1 GIF with its screen declared ``width`` x ``height`` and ``frames`` frames
    whose descriptors declare ``frame_size``."""
    frame = bytearray(GIF_1X1[19:-1])
    frame[5:9] = struct.pack("<HH", *frame_size)
    return (
        GIF_1X1[:6]
        + struct.pack("<HH", width, height)
        + GIF_1X1[10:19]
        + bytes(frame) * frames
        + b";"
    )


#: A declared side: small, or large enough that two large ones exceed the pixel budget
#: (2**28): sizes in between would really be decoded, which is slow, not unsafe.
SIDE16 = st.one_of(st.integers(0, 8), st.integers(16400, 2**16 - 1))
SIDE32 = st.one_of(
    SIDE16, st.sampled_from([2**31 - 1, 2**31, 2**32 - 1]), st.integers(16400, 2**32 - 1)
)


@st.composite
def image_file(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["png", "jpg", "gif"]))
    if kind == "png":
        return kind, png_with_size(draw(SIDE32), draw(SIDE32), draw(st.booleans()))
    if kind == "jpg":
        return kind, jpeg_with_size(draw(SIDE16), draw(SIDE16))
    frames = draw(st.one_of(st.just(1), st.integers(2, 300)))
    frame = draw(st.one_of(st.just((1, 1)), st.tuples(SIDE16, SIDE16)))
    return kind, gif_with_size(draw(SIDE16), draw(SIDE16), frames, frame)


@fuzz(100)
@given(image_file())
def test_image_header_sizes(fuzzed):
    kind, data = fuzzed
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        for label, seed in (("a", 0), ("b", 1)):
            (root / label).mkdir(parents=True)
            for i in range(3):
                gen = torch.Generator().manual_seed(10 * seed + i)
                pixels = torch.randint(0, 256, (1, 4, 4), generator=gen, dtype=torch.uint8)
                (root / label / f"{i}.png").write_bytes(encode_png(pixels).numpy().tobytes())
        (root / "b" / f"fuzz.{kind}").write_bytes(data)
        scan_ends_cleanly(root, extra=EXACT)


# --- CSV values near float32's limits ------------------------------------------------------

NEAR_LIMITS = st.one_of(
    st.sampled_from([3.4028234e38, -3.4028234e38, 3.4028235e38, 3e38, -3e38, 1e38, 1.7e38]),
    st.sampled_from([1e-45, -1e-45, 1.4e-45, 1e-38, 1.1754943e-38, 0.0, -0.0, 1.0]),
    st.floats(min_value=1e37, max_value=3.4028234e38),
    st.floats(min_value=-3.4028234e38, max_value=-1e37),
    st.floats(min_value=-1e-37, max_value=1e-37),
)


@st.composite
def csv_near_limits(draw) -> tuple[str, bool]:
    """A CSV file of 6 to 10 rows, 1 to 3 features near float32's limits, and a label
    (classes a and b) or a target (near the limits too); and whether it is a regression."""
    rows = draw(st.integers(6, 10))
    width = draw(st.integers(1, 3))
    regression = draw(st.booleans())
    lines = [",".join([*(f"f{j}" for j in range(width)), "target" if regression else "label"])]
    for i in range(rows):
        cells = [repr(draw(NEAR_LIMITS)) for _ in range(width)]
        cells.append(repr(draw(NEAR_LIMITS)) if regression else "ab"[i % 2])
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n", regression


@fuzz(25, phases=[Phase.explicit, Phase.generate])  # no shrinking: it scans and scans
@given(csv_near_limits())
def test_csv_values_near_float32_limits(fuzzed):
    text, regression = fuzzed
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "near.csv"
        path.write_text(text)
        scan_ends_cleanly(path)
