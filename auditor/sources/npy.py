"""The arrays of an NPZ archive, each ``.npy`` member's header checked before it is loaded.

An NPZ file is a zip archive of ``NAME.npy`` members. A member's header declares its dtype,
shape and order; numpy's own loader trusts them and allocates what they describe. Here the
header is read first (:func:`numpy.lib.format.read_magic`, ``read_array_header_1_0`` /
``_2_0``, and the UTF-8 header of version 3.0) and checked: no Python objects (they would be
unpickled), at most :data:`~auditor.sources.limits.MAX_DIMS` dimensions, none negative,
elements of at least one byte, the bytes the shape and dtype describe (a Python integer)
equal to the bytes the member holds, and within the memory budget. Only then is the
payload read, in chunks, and the array built on it.
"""

from __future__ import annotations

import ast
import lzma
import struct
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from auditor.errors import DataError
from auditor.sources.limits import (
    MAX_DIMS,
    Readable,
    check_memory,
    numpy_holds,
    product,
    read_at_most,
    reason,
)

#: How a zip archive starts (a local file header, or the end record of an empty archive).
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: The longest ``.npy`` header read, as numpy's loader (larger ones are refused).
MAX_HEADER_SIZE = 10000
#: What a corrupt archive or member stream raises, besides :class:`DataError`.
STREAM_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
)
#: What parsing a ``.npy`` header (a Python literal) raises for a malformed one.
HEADER_ERRORS = (
    ValueError,
    TypeError,
    SyntaxError,
    tokenize.TokenError,  # numpy retokenizes a header it cannot parse (one from Python 2)
    RecursionError,
    MemoryError,
    OverflowError,
    UnicodeDecodeError,
    EOFError,
)


def read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an NPZ file by name (``NAME.npy`` is ``NAME``), headers checked first.

    Raises:
        DataError: Not a zip archive (a single ``.npy`` array, a pickle...), a corrupt
            archive, a member that is not a ``.npy`` array, an object array, or a header
            whose dtype and shape are impossible, disagree with the member's size or need
            more than the memory budget.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with path.open("rb") as f:
            start = f.read(len(npy_format.MAGIC_PREFIX))
            if start == npy_format.MAGIC_PREFIX:
                raise DataError(f"{path}: not an NPZ archive (a single .npy array?)")
            if not start.startswith(ZIP_MAGICS):
                raise DataError(f"{path}: cannot read NPZ (not a zip archive)")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                members = {info.filename: info for info in archive.infolist()}  # last wins
                used = 0
                for name, info in members.items():
                    key = name.removesuffix(".npy")
                    arrays[key] = _read_member(path, archive, info, key, used)
                    used += arrays[key].nbytes
    except STREAM_ERRORS as exc:
        raise DataError(f"{path}: cannot read NPZ ({reason(exc)})") from exc
    return arrays


def _read_member(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, used: int
) -> np.ndarray:
    """One member's array: its header read and checked, then its payload. ``used``: the
    bytes of the members read before it, counted in the memory budget."""
    where = f"{path}: member {key!r}"
    with archive.open(info) as member:
        if bytes(read_at_most(member, len(npy_format.MAGIC_PREFIX))) != npy_format.MAGIC_PREFIX:
            raise DataError(f"{where} is not a .npy array")
        member.seek(0)
        version = npy_format.read_magic(member)
        declared, fortran, dtype = _header(where, member, version)
        shape, nbytes = _check_header(where, declared, dtype)
        held = info.file_size - member.tell()
        if nbytes != held:
            raise DataError(
                f"{where}: the .npy header's shape {shape} and dtype {dtype} describe "
                f"{nbytes} bytes but the member holds {held}"
            )
        check_memory(path, f"member {key!r} (shape {shape}, dtype {dtype})", nbytes)
        check_memory(path, f"member {key!r} with the members before it", used + nbytes)
        data = read_at_most(member, nbytes)
    if len(data) != nbytes:
        raise DataError(f"{where}: truncated: {len(data)} of its {nbytes} bytes are present")
    count = product(shape)
    try:
        flat = np.frombuffer(data, dtype, count)
        return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    except ValueError as exc:  # a dtype numpy cannot lay out this way (a sub-array dtype...)
        raise DataError(f"{where}: cannot build the array ({reason(exc)})") from exc


def _header(where: str, member: Readable, version: tuple[int, int]):
    """``(shape, fortran_order, dtype)`` of a ``.npy`` header of format ``version``."""
    try:
        with warnings.catch_warnings():  # a header written by Python 2 is parsed, silently
            warnings.simplefilter("ignore", UserWarning)
            if version == (1, 0):
                return npy_format.read_array_header_1_0(member, max_header_size=MAX_HEADER_SIZE)
            if version == (2, 0):
                return npy_format.read_array_header_2_0(member, max_header_size=MAX_HEADER_SIZE)
            if version == (3, 0):
                return _header_3_0(member)
    except HEADER_ERRORS as exc:
        raise DataError(f"{where}: corrupt .npy header ({reason(exc)})") from exc
    raise DataError(f"{where}: unsupported .npy format version {version[0]}.{version[1]}")


def _header_3_0(member: Readable):
    """A version 3.0 header: as 2.0 (``<I`` length) but UTF-8, which numpy reads only
    inside its loader."""
    length = bytes(read_at_most(member, 4))
    if len(length) < 4:
        raise ValueError("EOF reading the array header length")
    (size,) = struct.unpack("<I", length)
    if size > MAX_HEADER_SIZE:
        raise ValueError(f"header of {size} bytes, more than {MAX_HEADER_SIZE}")
    raw = bytes(read_at_most(member, size))
    if len(raw) < size:
        raise ValueError("EOF reading the array header")
    header = ast.literal_eval(raw.decode("utf-8"))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("the header is not a dict of descr, fortran_order and shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape):
        raise ValueError(f"shape is not valid: {shape!r}")
    if not isinstance(fortran, bool):
        raise ValueError(f"fortran_order is not a valid bool: {fortran!r}")
    return shape, fortran, npy_format.descr_to_dtype(header["descr"])


def _check_header(
    where: str, shape: tuple[int, ...], dtype: np.dtype
) -> tuple[tuple[int, ...], int]:
    """``(shape, bytes)``: a ``.npy`` header's shape (plain integers) and the bytes it and
    the dtype describe (a Python integer), once they are checked."""
    if dtype.hasobject:
        raise DataError(
            f"{where}: the .npy header's dtype {dtype} holds Python objects, which would be "
            "unpickled; refused"
        )
    if dtype.itemsize == 0:
        raise DataError(f"{where}: the .npy header's dtype {dtype} has elements of 0 bytes")
    if len(shape) > MAX_DIMS:
        raise DataError(
            f"{where}: the .npy header's shape has {len(shape)} dimensions; at most "
            f"{MAX_DIMS} are supported"
        )
    dims = tuple(int(d) for d in shape)  # True is 1
    if any(d < 0 for d in dims):
        raise DataError(f"{where}: the .npy header's shape {dims} has a negative dimension")
    if not numpy_holds(dims, dtype.itemsize):
        raise DataError(f"{where}: the .npy header's shape {dims} is larger than numpy can hold")
    return dims, product(dims) * dtype.itemsize
