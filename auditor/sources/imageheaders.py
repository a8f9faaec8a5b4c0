"""The size an image file declares, read from its header before the decoder allocates it.

:func:`torchvision.io.decode_image` picks its decoder by the first bytes of the file and
allocates what the header declares: PNG's ``IHDR`` width and height, JPEG's frame header
(``SOF0`` to ``SOF15``), GIF's logical screen times its frames (and each frame's own
size), WebP's ``VP8X`` canvas (or the ``VP8`` / ``VP8L`` frame size). :func:`check_image_header`
reads the same fields and refuses an image beyond
:data:`~auditor.sources.limits.PIXEL_BUDGET`, so that a decompression bomb is one error
line rather than gigabytes allocated. A header too damaged to read is left to the decoder,
which refuses it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

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


def check_image_header(path: Path, data: bytes | memoryview) -> None:
    """Refuse an image whose header declares more than the pixel budget.

    Args:
        path: The image file, named in the message.
        data: The file's bytes (the decoder reads the same).

    Raises:
        DataError: An empty image (a zero width or height), or one beyond the budget.
    """
    size = declared_size(bytes(data[:32]), data)
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
