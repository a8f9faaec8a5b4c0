"""What an image file declares, checked before the decoder trusts it.

:func:`torchvision.io.decode_image` picks its decoder by the first bytes of the file and
allocates what the header declares: PNG's ``IHDR`` width and height, JPEG's frame header
(``SOF0`` to ``SOF15``), GIF's logical screen times its frames (and each frame's own
size), WebP's ``VP8X`` canvas (or the ``VP8`` / ``VP8L`` frame size). :func:`check_image`
reads the same fields and refuses an image beyond
:data:`~auditor.sources.limits.PIXEL_BUDGET`, so that a decompression bomb is one error
line rather than gigabytes allocated. A header too damaged to read is left to the decoder,
which refuses it.

A PNG's pixel data is checked too: torchvision's PNG decoder crashes the process
(segmentation fault) on an error libpng finds while it reads the rows (too little pixel
data, a bad CRC, corrupt compressed data, an unknown row filter). :func:`check_image`
walks the ``IDAT`` chunks the decoder would read, decompresses them in chunks (never more
than the image holds, plus a margin), and refuses such a file first.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditor.errors import DataError
from auditor.sources import limits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"
#: The JPEG frame headers: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length: TEM, RST0..RST7, SOI.
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})


@dataclass(frozen=True)
class DeclaredSize:
    """What an image header declares.

    Attributes:
        field: The header field, for messages (``"PNG header (IHDR)"``).
        width: Declared width in pixels.
        height: Declared height in pixels.
        frames: The frames the decoder returns (GIF: every frame, each the screen's size).
        pixels: Every pixel the decoder allocates (GIF: the frames plus each frame's own
            raster).
    """

    field: str
    width: int
    height: int
    frames: int = 1
    pixels: int = 0


def check_image(path: Path, data: bytes | memoryview) -> None:
    """Refuse an image whose header declares more than the pixel budget, or a PNG whose
    pixel data would crash the decoder.

    Args:
        path: The image file, named in the message.
        data: The file's bytes (the decoder reads the same).

    Raises:
        DataError: An empty image (a zero width or height), one beyond the budget, or a
            PNG whose pixel data is truncated or corrupt.
    """
    head = bytes(data[:32])
    size = declared_size(head, data)
    if size is None:
        return
    if size.width == 0 or size.height == 0:
        raise DataError(
            f"{path}: cannot decode image (the {size.field} declares {size.width}x{size.height} "
            "pixels (width x height); expected at least one pixel)"
        )
    pixels = max(size.width * size.height * size.frames, size.pixels)
    if pixels > limits.PIXEL_BUDGET:
        frames = f" in {size.frames} frames" if size.frames > 1 else ""
        raise DataError(
            f"{path}: image too large: the {size.field} declares {size.width}x{size.height} "
            f"pixels (width x height){frames}, {pixels:,} to decode; an image may have at most "
            f"{limits.PIXEL_BUDGET:,}"
        )
    if head.startswith(PNG_SIGNATURE):
        problem = png_data_problem(data)
        if problem is not None:
            raise DataError(f"{path}: cannot decode image (PNG: {problem})")


def declared_size(head: bytes, data: bytes | memoryview) -> DeclaredSize | None:
    """The size ``data``'s header declares, or ``None`` if it is not PNG, JPEG, GIF or WebP
    or its header cannot be read (the decoder then refuses it). ``head``: its first bytes."""
    if head.startswith(PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", head[16:24])
        return DeclaredSize("PNG header (IHDR)", width, height)
    if head.startswith(JPEG_SOI):
        return _jpeg_size(data)
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _gif_size(data)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp_size(head)
    return None


def _jpeg_size(data: bytes | memoryview) -> DeclaredSize | None:
    """The first frame header's size: the one libjpeg uses (a second one is an error)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None  # not at a marker: let the decoder judge
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
        elif marker in JPEG_STANDALONE:
            i += 2
        elif marker in (0xD9, 0xDA):  # the end, or a scan, before any frame header
            return None
        elif marker in JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return DeclaredSize(f"JPEG frame header (SOF{marker - 0xC0})", width, height)
        else:
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if length < 2:
                return None
            i += 2 + length
    return None


def _gif_size(data: bytes | memoryview) -> DeclaredSize | None:
    """The logical screen and the frames: the decoder returns every frame at the screen's
    size and keeps each frame's own raster while it decodes."""
    if len(data) < 13:
        return None
    width, height, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = rasters = 0
    while i < len(data):
        block = data[i]
        if block == 0x3B:  # the trailer
            break
        if block == 0x21:  # an extension: label, then sub-blocks
            i = _skip_sub_blocks(data, i + 2)
        elif block == 0x2C:  # an image descriptor
            if i + 10 > len(data):
                break
            w, h, local = struct.unpack("<HHB", data[i + 5 : i + 10])
            frames += 1
            rasters += w * h
            i += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            i = _skip_sub_blocks(data, i + 1)  # after the LZW code size
        else:
            break  # damaged: the decoder stops here too
    return DeclaredSize("GIF header", width, height, max(frames, 1), rasters)


def _skip_sub_blocks(data: bytes | memoryview, i: int) -> int:
    """The index after the sub-blocks (a length byte, then that many bytes; 0 ends) at ``i``."""
    while i < len(data) and data[i]:
        i += data[i] + 1
    return i + 1


def _webp_size(head: bytes) -> DeclaredSize | None:
    """The canvas of an extended WebP (``VP8X``), else the size of its one frame."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
        return DeclaredSize("WebP header (VP8X canvas)", width, height)
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return DeclaredSize("WebP header (VP8L)", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return DeclaredSize("WebP header (VP8)", width & 0x3FFF, height & 0x3FFF)
    return None


#: Channels per PNG colour type (gray, RGB, palette, gray + alpha, RGBA).
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Adam7's passes: first column, first row, column step, row step.
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
#: The most decompressed bytes past the pixel data that are tolerated (libpng warns).
PNG_EXTRA = 2**20
#: The largest row filter type (paeth).
PNG_LAST_FILTER = 4


def png_data_problem(data: bytes | memoryview) -> str | None:
    """What would make libpng fail while it reads a PNG's rows, or ``None``.

    The decoder reads the consecutive ``IDAT`` chunks from the first one; their CRCs must
    hold, their zlib stream must end inside them with at least the bytes the header
    describes, and every row must start with a known filter type. A file whose header
    libpng refuses before the rows (unknown colour type or bit depth, chunks out of order)
    is left to the decoder, which refuses it cleanly.
    """
    if len(data) < 33:
        return None
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color not in PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or interlace > 1:
        return None
    bits = PNG_CHANNELS[color] * depth
    rows = _png_rows(width, height, bits, interlace == 1)
    expected = sum(count * stride for _, stride, count in rows)
    chunks = _idat_chunks(data)
    if isinstance(chunks, str):
        return chunks
    if not chunks:
        return None
    inflate = zlib.decompressobj()
    done = 0
    try:
        for out in _inflated(inflate, chunks):
            bad = _bad_filter(np.frombuffer(out, np.uint8), done, rows)
            if bad is not None:
                return f"unknown row filter type {bad}"
            done += len(out)
            if done > expected + PNG_EXTRA:
                return "more compressed pixel data than the header's size holds"
    except zlib.error as exc:
        return f"corrupt compressed pixel data ({limits.reason(exc)})"
    if done < expected:
        return f"{done} bytes of pixel data where the header's size needs {expected}"
    if not inflate.eof:
        return "the compressed pixel data is cut off"
    return None


def _inflated(inflate, chunks: list[memoryview]) -> Iterator[bytes]:
    """The decompressed data of ``chunks``, :data:`~auditor.sources.limits.CHUNK` bytes at
    most at a time, up to the end of the zlib stream."""
    for chunk in chunks:
        pending: bytes | memoryview = chunk
        while pending and not inflate.eof:
            yield inflate.decompress(pending, limits.CHUNK)
            pending = inflate.unconsumed_tail
    while not inflate.eof:  # output zlib holds back when a call's limit is reached
        out = inflate.decompress(b"", limits.CHUNK)
        if not out:
            return
        yield out


def _png_rows(width: int, height: int, bits: int, adam7: bool) -> list[tuple[int, int, int]]:
    """``(start, stride, count)`` of the rows of each pass: where the decompressed pixel
    data holds them (a row is a filter type byte, then its pixels)."""
    passes = ADAM7 if adam7 else ((0, 0, 1, 1),)
    rows = []
    start = 0
    for x0, y0, dx, dy in passes:
        columns = -(-(width - x0) // dx) if width > x0 else 0
        count = -(-(height - y0) // dy) if height > y0 else 0
        if columns and count:
            stride = 1 + (columns * bits + 7) // 8
            rows.append((start, stride, count))
            start += stride * count
    return rows


def _bad_filter(out: np.ndarray, offset: int, rows: list[tuple[int, int, int]]) -> int | None:
    """An unknown filter type among the row starts in ``out`` (the decompressed bytes from
    ``offset``), or ``None``."""
    end = offset + len(out)
    for start, stride, count in rows:
        stop = start + stride * count
        first = start if offset <= start else start + -(-(offset - start) // stride) * stride
        if first >= min(stop, end):
            continue
        filters = out[first - offset : min(stop, end) - offset : stride]
        if filters.size and int(filters.max()) > PNG_LAST_FILTER:
            return int(filters.max())
    return None


def _idat_chunks(data: bytes | memoryview) -> list[memoryview] | str:
    """The data of the consecutive ``IDAT`` chunks from the first one, or what is wrong
    with them; ``[]`` when the file ends (or breaks) before any, which libpng refuses
    before it reads rows."""
    view = memoryview(data)
    chunks: list[memoryview] = []
    pos = 8
    while pos + 8 <= len(view):
        length, kind = struct.unpack(">I4s", view[pos : pos + 8])
        if kind != b"IDAT" and chunks:
            return chunks
        if pos + 12 + length > len(view):
            return "the pixel data is cut off" if kind == b"IDAT" else []
        if kind == b"IDAT":
            body = view[pos + 8 : pos + 8 + length]
            (crc,) = struct.unpack(">I", view[pos + 8 + length : pos + 12 + length])
            if zlib.crc32(view[pos + 4 : pos + 8 + length]) != crc:
                return "an IDAT chunk's CRC does not match its data"
            chunks.append(body)
        pos += 12 + length
    return chunks or []
