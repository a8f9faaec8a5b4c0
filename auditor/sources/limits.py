"""What a data file may make a reader allocate, and reading that never trusts a header.

A file's header declares sizes (idx dimensions, a ``.npy`` shape and dtype, an image's
width and height). The readers check those numbers before they allocate anything: the
number of dimensions in a sane range, the product computed with Python integers (no
overflow), equal to the bytes actually present, and within :data:`MEMORY_BUDGET` (images:
within :data:`PIXEL_BUDGET` each). Payloads are then read in chunks, so memory grows with
the bytes that really arrive, never with the bytes a header promises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from auditor.errors import DataError


class Readable(Protocol):
    """A binary stream: a file, a gzip stream, a zip archive's member."""

    def read(self, size: int = -1, /) -> bytes: ...


#: The most bytes one data file's arrays (or the float32 features built from them) may take.
MEMORY_BUDGET = 8 * 2**30
#: The most pixels (width x height, times the frames of an animation) one image may decode to.
PIXEL_BUDGET = 2**28
#: The most dimensions an array in a data file may have (numpy itself allows 64).
MAX_DIMS = 32
#: numpy's largest index (and array size in bytes).
LARGEST_INDEX = int(np.iinfo(np.intp).max)
#: Bytes read per call when a payload is read in chunks.
CHUNK = 2**24


def size_text(nbytes: int) -> str:
    """``nbytes`` for people: ``"12.0 GiB"``, ``"3.5 MiB"``, ``"512 bytes"``."""
    for unit, scale in (("EiB", 2**60), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes} bytes"


def check_memory(path: Path, what: str, nbytes: int) -> None:
    """Raise :class:`DataError` when ``what`` (read from ``path``) needs more than
    :data:`MEMORY_BUDGET` bytes.

    Args:
        path: The file named in the message.
        what: What needs the memory, e.g. ``"the header's shape (70000, 28, 28)"``.
        nbytes: The bytes it needs, computed with Python integers.
    """
    if nbytes > MEMORY_BUDGET:
        raise DataError(
            f"{path}: {what} needs {size_text(nbytes)} of memory, more than the "
            f"{size_text(MEMORY_BUDGET)} a data file may use"
        )


def product(dims: tuple[int, ...] | list[int]) -> int:
    """The product of ``dims`` as a Python integer: no overflow, however large."""
    total = 1
    for dim in dims:
        total *= dim
    return total


def numpy_holds(dims: tuple[int, ...], itemsize: int) -> bool:
    """Whether numpy can make an array of shape ``dims`` and elements of ``itemsize``
    bytes: it refuses one whose non-zero dimensions' product times ``itemsize`` passes its
    largest index, even when another dimension is 0 (and the array empty)."""
    return itemsize * product([d for d in dims if d]) <= LARGEST_INDEX


def read_at_most(stream: Readable, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``stream``, fewer at its end, read :data:`CHUNK` bytes at
    a time: the buffer grows with the bytes that arrive (``stream.read(limit)`` may
    allocate ``limit`` bytes up front)."""
    data = bytearray()
    while len(data) < limit:
        chunk = stream.read(min(CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def count_at_most(stream: Readable, limit: int) -> int:
    """How many bytes are left in ``stream``, counting (not keeping) at most ``limit``."""
    count = 0
    while count < limit:
        chunk = stream.read(min(CHUNK, limit - count))
        if not chunk:
            break
        count += len(chunk)
    return count


def reason(exc: BaseException, width: int = 200) -> str:
    """An exception's message as one line of at most ``width`` characters (an error line
    quotes it; some library messages span lines or quote a whole header)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= width else text[: width - 3] + "..."
