"""Headers checked before anything is allocated (issue 18): idx, ``.npy`` members of NPZ
archives, image files. Files are written here with struct, zipfile and zlib, independently
of the readers; what the readers accept is compared with what numpy or torchvision read."""

from __future__ import annotations

import gzip
import io
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import decode_image, encode_jpeg, encode_png

from auditor.errors import DataError
from auditor.sources import limits, load
from auditor.sources.idx import read_idx
from auditor.sources.imagecheck import check_image, declared_size, png_data_problem
from auditor.sources.imagefolder import decode
from auditor.sources.tabular import read_npz

# --- idx -----------------------------------------------------------------------------------


def idx_file(path: Path, header: bytes, payload: bytes = b"") -> Path:
    data = header + payload
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def idx_header(ndim: int, *dims: int, dtype: int = 8) -> bytes:
    return struct.pack(">4B", 0, 0, dtype, ndim) + struct.pack(f">{len(dims)}I", *dims)


@pytest.fixture(params=["", ".gz"])
def ext(request) -> str:
    return request.param


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        (idx_header(0), b"", r"number of dimensions \(byte 4\) is 0; expected 1 to 32"),
        (idx_header(255, 1, 1), bytes(4), r"number of dimensions \(byte 4\) is 255"),
        (idx_header(33, *[1] * 33), b"", r"number of dimensions \(byte 4\) is 33"),
        (idx_header(3, 2, 2), b"", "corrupt idx header: 3 dimension sizes declared but only 8"),
        # a product beyond 64 bits, computed with Python integers
        (idx_header(3, *[2**32 - 1] * 3), bytes(8), r"\(4294967295, 4294967295, 4294967295\) is "),
        (idx_header(3, 60000, 28, 28), bytes(100), "promises 47040000 bytes .* only 100 follow"),
        (idx_header(3, 0, 2**32 - 1, 2**32 - 1), b"", r"\(0, 4294967295, 4294967295\) is larger "),
        (idx_header(1, 4), bytes(9), "5 bytes follow the 4 bytes"),
    ],
)
def test_idx_headers_that_claim_more_than_the_file_holds(tmp_path, ext, header, payload, message):
    path = idx_file(tmp_path / f"x-images-idx3-ubyte{ext}", header, payload)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: ")


def test_idx_within_the_memory_budget_only(tmp_path, ext, monkeypatch):
    pixels = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    path = idx_file(
        tmp_path / f"x-images-idx3-ubyte{ext}", idx_header(3, 2, 8, 8), pixels.tobytes()
    )
    assert np.array_equal(read_idx(path), pixels)
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 127)
    with pytest.raises(DataError, match=r"shape \(2, 8, 8\) needs 128 bytes of memory, more than"):
        read_idx(path)


def test_gzipped_idx_is_decompressed_only_as_far_as_the_header_says(tmp_path, monkeypatch):
    # 64 MiB of zeros after a 4-byte payload: counted (not kept) up to a limit
    monkeypatch.setattr("auditor.sources.idx.EXCESS_COUNTED", 2**20)
    stream = zlib.compressobj(wbits=31)
    data = stream.compress(idx_header(1, 4) + bytes(4))
    for _ in range(64):
        data += stream.compress(bytes(2**20))
    data += stream.flush()
    path = tmp_path / "x-labels-idx1-ubyte.gz"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"more than 1048576 bytes follow the 4 bytes"):
        read_idx(path)
    assert time.perf_counter() - start < 5


def test_gzipped_idx_beyond_the_budget_but_truncated_says_truncated(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 1000)
    path = idx_file(tmp_path / "x-images-idx3-ubyte.gz", idx_header(3, 100, 28, 28), bytes(500))
    with pytest.raises(DataError, match="promises 78400 bytes .* only 500 follow"):
        read_idx(path)
    path = idx_file(tmp_path / "x-images-idx3-ubyte.gz", idx_header(3, 100, 28, 28), bytes(78400))
    with pytest.raises(DataError, match=r"shape \(100, 28, 28\) needs 78400 bytes of memory"):
        read_idx(path)


# --- .npy members of NPZ archives ------------------------------------------------------------


def npy_bytes(header: dict | str, payload: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A ``.npy`` member with a header written here (``header``: a dict or its text)."""
    text = header if isinstance(header, str) else repr(header)
    encoded = text.encode("utf-8" if version == (3, 0) else "latin1")
    size = 2 if version == (1, 0) else 4
    encoded += b" " * (-(8 + size + len(encoded) + 1) % 64) + b"\n"
    length = struct.pack("<H" if size == 2 else "<I", len(encoded))
    return b"\x93NUMPY" + bytes(version) + length + encoded + payload


def npz_file(path: Path, members: dict[str, bytes], compressed: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def header(shape, descr="<f8", fortran=False) -> dict:
    return {"descr": descr, "fortran_order": fortran, "shape": shape}


@pytest.fixture(params=[False, True], ids=["stored", "deflated"])
def compressed(request) -> bool:
    return request.param


@pytest.mark.parametrize(
    ("member", "message"),
    [
        # dimensions whose product overflows 64 bits
        (
            npy_bytes(header((2**40, 2**40)), bytes(32)),
            r"\(1099511627776, 1099511627776\) is larger",
        ),
        (npy_bytes(header((10**6, 1000)), bytes(64)), "describe 8000000000 bytes .* holds 64"),
        (npy_bytes(header((1,) * 40), bytes(8)), "shape has 40 dimensions; at most 32"),
        (npy_bytes(header((4, -2)), bytes(8)), r"shape \(4, -2\) has a negative dimension"),
        (npy_bytes(header((2**62, 0))), r"\(4611686018427387904, 0\) is larger than numpy can"),
        (npy_bytes(header((2**70, 0))), "is larger than numpy can hold"),
        (npy_bytes(header((2,), "|O"), bytes(16)), "dtype object holds Python objects"),
        (npy_bytes(header((2,), [("a", "<f4"), ("b", "|O")]), bytes(24)), "Python objects"),
        (npy_bytes(header((2,), "|S0")), "has elements of 0 bytes"),
        (npy_bytes(header((2,)), bytes(16), version=(9, 1)), "unsupported .npy format version 9.1"),
        (npy_bytes("{'descr': '<f8', 'shape': (2,)}", bytes(16)), "corrupt .npy header"),
        (npy_bytes("{'descr': '<f8', 'fortran_order': 1, 'shape': (2,)}"), "fortran_order"),
        (npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,"), "corrupt .npy header"),
        (npy_bytes("[" * 5000), "corrupt .npy header"),
        (npy_bytes(header((2,), "xyz")), "corrupt .npy header"),
        (b"\x93NUMPY\x01\x00\xff\xff" + b"(" * 100, "corrupt .npy header"),
        (b"PK junk", "member 'X' is not a .npy array"),
    ],
)
def test_npy_headers_that_claim_too_much_or_too_little(tmp_path, compressed, member, message):
    path = npz_file(tmp_path / "a.npz", {"X.npy": member}, compressed)
    with pytest.raises(DataError, match=message) as info:
        read_npz(path)
    assert str(info.value).startswith(f"{path}: member 'X'")
    assert "\n" not in str(info.value)


def test_npy_versions_orders_and_dtypes_read_as_numpy_reads_them(tmp_path, compressed):
    arrays = {
        "a": np.arange(12, dtype=">i4").reshape(3, 4),
        "b": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "c": np.zeros((0, 5)),
        "d": np.array(3.5),
        "e": np.array([(1, 2.0)], dtype=[("p", "<i2"), ("q", "<f8")]),
        "f": np.array(["ab", "c"]),
    }
    members = {}
    for i, (name, array) in enumerate(arrays.items()):
        buffer = io.BytesIO()
        version = [(1, 0), (2, 0), (3, 0)][i % 3]
        np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
        members[f"{name}.npy"] = buffer.getvalue()
    path = npz_file(tmp_path / "v.npz", members, compressed)
    got = read_npz(path)
    with np.load(path) as want:
        assert sorted(got) == sorted(want.files) == sorted(arrays)
        for name in arrays:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
            assert np.array_equal(got[name], want[name])
            assert got[name].flags.writeable


def test_a_utf8_header_of_version_3(tmp_path):
    array = np.array([(1.5,)], dtype=[("αβ", "<f8")])
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=(3, 0))
    got = read_npz(npz_file(tmp_path / "u.npz", {"X.npy": buffer.getvalue()}))
    assert got["X"].dtype.names == ("αβ",) and got["X"]["αβ"].tolist() == [1.5]


def test_npz_memory_budget_per_member_and_together(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    np.savez(path, X=np.zeros((8, 8)), y=np.zeros(8, dtype=np.int64))  # 512 + 64 bytes
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 511)
    with pytest.raises(DataError, match=r"member 'X' \(shape \(8, 8\), dtype float64\) needs 512"):
        read_npz(path)
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 520)
    with pytest.raises(DataError, match="member 'y' with the members before it needs 576 bytes"):
        read_npz(path)


def test_a_zip_bomb_member_is_refused_before_it_is_decompressed(tmp_path, monkeypatch):
    # 64 MiB of zeros that deflate to about 64 KiB, declared honestly
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 2**20)
    path = tmp_path / "bomb.npz"
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("X.npy", "w", force_zip64=True) as member,
    ):
        member.write(npy_bytes(header((2**13, 2**10))))
        for _ in range(64):
            member.write(bytes(2**20))
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"member 'X' \(shape \(8192, 1024\), dtype float64\)"):
        read_npz(path)
    assert time.perf_counter() - start < 1


def test_a_member_shorter_than_its_zip_entry_declares(tmp_path):
    # the zip entry's sizes agree with the header, but the stored data stops early
    data = npy_bytes(header((4, 4)), bytes(128))
    path = npz_file(tmp_path / "t.npz", {"X.npy": data})
    raw = bytearray(path.read_bytes())
    start = raw.index(b"\x93NUMPY")
    path.write_bytes(bytes(raw[: start + len(data) - 40]))
    with pytest.raises(DataError, match="t.npz"):
        read_npz(path)


def test_files_that_are_not_npz_archives(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(DataError, match="not an NPZ archive"):
        read_npz(tmp_path / "one.npz")
    (tmp_path / "p.npz").write_bytes(b"\x80\x04\x95 a pickle")
    with pytest.raises(DataError, match=r"p.npz: cannot read NPZ \(not a zip archive\)"):
        read_npz(tmp_path / "p.npz")


# --- images --------------------------------------------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, raw: bytes, color: int = 0, depth: int = 8, **kw) -> bytes:
    """A PNG written here: IHDR, one IDAT of ``raw`` (filter bytes included), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, kw.get("interlace", 0))
    idat = kw.get("idat", zlib.compress(raw))
    plte = chunk(b"PLTE", bytes(range(12))) if color == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + plte
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def unended(raw: bytes) -> bytes:
    """``raw`` compressed, all of it, but without the end of the zlib stream."""
    stream = zlib.compressobj()
    return stream.compress(raw) + stream.flush(zlib.Z_SYNC_FLUSH)


def rows(width: int, height: int, channels: int = 1, fill: int = 0) -> bytes:
    return b"".join(bytes([fill]) + bytes(range(width * channels)) for _ in range(height))


def test_a_png_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bytes(100_000, 100_000, b"", idat=zlib.compress(bytes(10**6)))
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(DataError, match=r"image too large: the PNG header \(IHDR\) declares "
                       r"100000x100000 pixels .* 10,000,000,000 to decode"):  # fmt: skip
        decode(tmp_path / "bomb.png")


def test_the_pixel_budget_is_the_limit(tmp_path, monkeypatch):
    image = torch.zeros((1, 20, 30), dtype=torch.uint8)
    (tmp_path / "i.png").write_bytes(encode_png(image).numpy().tobytes())
    (tmp_path / "i.jpg").write_bytes(encode_jpeg(image.expand(3, 20, 30)).numpy().tobytes())
    monkeypatch.setattr(limits, "PIXEL_BUDGET", 600)
    assert decode(tmp_path / "i.png").shape == (1, 20, 30)
    assert decode(tmp_path / "i.jpg").shape == (3, 20, 30)
    monkeypatch.setattr(limits, "PIXEL_BUDGET", 599)
    with pytest.raises(DataError, match=r"i.png: image too large: .*30x20 pixels"):
        decode(tmp_path / "i.png")
    with pytest.raises(DataError, match=r"i.jpg: image too large: the JPEG frame header \(SOF0\)"):
        decode(tmp_path / "i.jpg")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "short",
            png_bytes(4, 6, rows(4, 4)),
            "20 bytes of pixel data where the header's size needs 30",
        ),
        ("filter", png_bytes(4, 4, rows(4, 4, fill=9)), "unknown row filter type 9"),
        ("zlib", png_bytes(4, 4, b"", idat=b"\x78\x9c" + bytes(range(40))), "corrupt compressed"),
        ("cut", png_bytes(4, 4, b"", idat=zlib.compress(rows(4, 4))[:-6]), "6 bytes of pixel"),
        ("unended", png_bytes(4, 4, b"", idat=unended(rows(4, 4))), "data is cut off"),
        ("interlaced", png_bytes(4, 4, rows(4, 2), interlace=1), "pixel data where"),
        ("rgb", png_bytes(4, 4, rows(4, 3, 3), color=2), "39 bytes of pixel data where .* 52"),
    ],
)
def test_png_pixel_data_that_would_crash_the_decoder(tmp_path, name, data, message):
    # torchvision's decode_png ends the process (segmentation fault) on each of these
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    with pytest.raises(DataError, match=f"{name}.png: cannot decode image \\(PNG: .*{message}"):
        decode(path)


def test_a_bad_idat_crc_is_refused(tmp_path):
    data = bytearray(png_bytes(4, 4, rows(4, 4)))
    end = data.index(b"IEND") - 4
    data[end - 4 : end] = b"\0\0\0\0"  # the IDAT's CRC
    (tmp_path / "crc.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match="IDAT chunk's CRC does not match"):
        decode(tmp_path / "crc.png")


@pytest.mark.parametrize(
    ("width", "height", "color", "depth", "interlace"),
    [
        (5, 3, 0, 8, 0),
        (5, 3, 0, 1, 0),
        (9, 7, 0, 4, 1),
        (3, 2, 2, 8, 0),
        (3, 2, 2, 16, 0),
        (6, 5, 6, 8, 1),
        (4, 4, 4, 8, 0),
        (7, 3, 3, 2, 0),
        (1, 1, 0, 8, 1),
        (17, 11, 2, 8, 1),
    ],
)
def test_well_formed_pngs_pass_the_check_and_decode(width, height, color, depth, interlace):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2)] if interlace else [(0, 0, 1, 1)]  # fmt: skip
    raw = b""
    for x0, y0, dx, dy in passes:
        w, h = len(range(x0, width, dx)), len(range(y0, height, dy))
        if w and h:
            raw += b"".join(b"\x01" + bytes((w * channels * depth + 7) // 8) for _ in range(h))
    data = png_bytes(width, height, raw, color=color, depth=depth, interlace=interlace)
    assert png_data_problem(data) is None
    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    assert image.shape[-2:] == (height, width)


def test_extra_pixel_data_is_tolerated_as_libpng_tolerates_it(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes(4, 4, rows(4, 8)))
    assert decode(tmp_path / "x.png").shape == (1, 4, 4)


def gif_bytes(width: int, height: int, frames: int = 1, frame: tuple[int, int] = (1, 1)) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02D\x01\x00"
    return screen + image * frames + b";"


def test_gif_screen_frames_and_frame_sizes_count(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "PIXEL_BUDGET", 1000)
    (tmp_path / "ok.gif").write_bytes(gif_bytes(1, 1, frames=3))
    assert decode(tmp_path / "ok.gif").shape == (3, 1, 1)
    cases = {
        "screen": (gif_bytes(40, 30), r"40x30 pixels \(width x height\), 1,200 to decode"),
        "frames": (gif_bytes(10, 10, frames=11), r"10x10 pixels \(width x height\) in 11 frames"),
        "frame": (gif_bytes(1, 1, frame=(50, 50)), "2,500 to decode"),
        "empty": (gif_bytes(0, 5), "declares 0x5 pixels"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / f"{name}.gif").write_bytes(data)
        with pytest.raises(DataError, match=f"{name}.gif: .*{message}"):
            decode(tmp_path / f"{name}.gif")


def test_jpeg_frame_header_after_other_segments(tmp_path):
    data = bytearray(encode_jpeg(torch.zeros((3, 8, 16), dtype=torch.uint8)).numpy().tobytes())
    comment = b"\xff\xfe" + struct.pack(">H", 6) + b"hey!"
    data[2:2] = comment + b"\xff"  # a comment segment and a fill byte before the rest
    size = declared_size(bytes(data[:32]), bytes(data))
    assert size is not None and (size.width, size.height) == (16, 8)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 40000, 40000)
    with pytest.raises(DataError, match=r"SOF0\) declares 40000x40000 pixels"):
        check_image(Path("big.jpg"), bytes(data))


@pytest.mark.parametrize(
    ("chunk_data", "size"),
    [
        (
            b"VP8X" + struct.pack("<I", 10) + bytes(4) + (2**24 - 1).to_bytes(3, "little") * 2,
            (2**24, 2**24),
        ),  # fmt: skip
        (b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", 99 | (49 << 14)), (100, 50)),
        (
            b"VP8 "
            + struct.pack("<I", 10)
            + bytes(3)
            + b"\x9d\x01\x2a"
            + struct.pack("<HH", 30, 20),
            (30, 20),
        ),  # fmt: skip
    ],
)
def test_webp_sizes(chunk_data, size):
    data = b"RIFF" + struct.pack("<I", 4 + len(chunk_data)) + b"WEBP" + chunk_data
    declared = declared_size(data[:32], data)
    assert declared is not None and (declared.width, declared.height) == size


def test_unknown_and_damaged_headers_are_left_to_the_decoder():
    assert declared_size(b"hello", b"hello") is None
    assert declared_size(b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n") is None
    assert declared_size(b"\xff\xd8\xff\x00", b"\xff\xd8\xff\x00garbage") is None
    check_image(Path("x.png"), b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # no error: decoder's


# --- the float32 features built from what was read -------------------------------------------


def test_features_count_against_the_memory_budget(tmp_path, monkeypatch):
    pixels = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)  # 128 bytes, 512 as float32
    folder = tmp_path / "idx"
    folder.mkdir()
    idx_file(folder / "train-images-idx3-ubyte", idx_header(3, 2, 8, 8), pixels.tobytes())
    idx_file(folder / "train-labels-idx1-ubyte", idx_header(1, 2), bytes([0, 1]))
    np.savez(tmp_path / "img.npz", X=pixels, y=np.array([0, 1]))
    for i in range(2):
        (tmp_path / "imgs" / "ab"[i]).mkdir(parents=True)
        png = encode_png(torch.from_numpy(pixels[i : i + 1])).numpy().tobytes()
        (tmp_path / "imgs" / "ab"[i] / "p.png").write_bytes(png)
    for spec in (folder, tmp_path / "img.npz", tmp_path / "imgs"):
        assert load(str(spec)).features.shape == (2, 64)
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 511)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: the float32 features .* 512"):
        load(str(folder))
    with pytest.raises(
        DataError, match=r"img.npz: the float32 features of X \(2, 8, 8\) needs 512"
    ):
        load(str(tmp_path / "img.npz"))
    monkeypatch.setattr(limits, "MEMORY_BUDGET", 300)  # the images as RGB: 2 x 3 x 64 bytes
    with pytest.raises(DataError, match=r"imgs: the images up to b/p.png needs 384 bytes"):
        load(str(tmp_path / "imgs"))
