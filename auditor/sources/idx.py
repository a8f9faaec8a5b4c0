"""MNIST-format idx files: ``*-images-idx3-ubyte[.gz]`` with ``*-labels-idx1-ubyte[.gz]``.

An idx file is a 4-byte magic number (two zero bytes, a data-type code, the number of
dimensions), one big-endian uint32 size per dimension, then the raw data. Only the
unsigned-byte type (code 0x08) is supported, which is what MNIST uses. A cleaned copy is
the audited pair under its own names, with the same compression.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from auditor.data import Dataset, SourceInfo
from auditor.errors import ConfigError, DataError
from auditor.sources import limits
from auditor.sources.base import Decisions, Format, ReadOptions, plan
from auditor.sources.images import check_normalize, images_to_features
from auditor.sources.labels import restrict_classes
from auditor.sources.limits import (
    MAX_DIMS,
    Readable,
    check_memory,
    count_at_most,
    numpy_holds,
    product,
    read_at_most,
)

UBYTE = 0x08
IMAGES_RE = re.compile(r"^(?P<prefix>.*)images(?P<sep>[-.])idx3-ubyte(?P<gz>\.gz)?$")
ROLE_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
#: The most bytes past an idx payload that are counted for the "bytes follow" message.
EXCESS_COUNTED = 2**26


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (gzipped if its name ends in ``.gz``).

    The header is checked before the payload is read: the magic number, the data type,
    the number of dimensions (1 to :data:`~auditor.sources.limits.MAX_DIMS`), the bytes the
    dimensions describe against the bytes present (a gzipped payload is decompressed in
    chunks, at most one byte past what the header describes) and against the memory
    budget.

    Returns:
        A uint8 array shaped as the header says, e.g. ``(n, 28, 28)`` or ``(n,)``.

    Raises:
        DataError: Unreadable, not idx, an unsupported data type, an impossible header, a
            payload whose length differs from what the header promises (truncated or
            corrupt), or one larger than the memory budget.
    """
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as gz:
                return _idx_payload(path, gz, _idx_header(path, gz), None)
        with path.open("rb") as f:
            return _idx_payload(path, f, _idx_header(path, f), os.fstat(f.fileno()).st_size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read idx file ({limits.reason(exc)})") from exc


def _idx_header(path: Path, f: Readable) -> tuple[int, ...]:
    """The dimensions an idx header declares, the stream left at the payload."""
    magic = bytes(read_at_most(f, 4))
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path}: not an idx file (bad magic number {magic.hex() or 'none'})")
    if magic[2] != UBYTE:
        raise DataError(
            f"{path}: unsupported idx data type 0x{magic[2]:02x}; only 0x08 (unsigned byte) is read"
        )
    ndim = magic[3]
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(
            f"{path}: truncated or corrupt idx header: the number of dimensions (byte 4) is "
            f"{ndim}; expected 1 to {MAX_DIMS}"
        )
    sizes = bytes(read_at_most(f, 4 * ndim))
    if len(sizes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated or corrupt idx header: {ndim} dimension sizes declared but only "
            f"{len(sizes)} of their {4 * ndim} bytes follow"
        )
    dims = struct.unpack(f">{ndim}I", sizes)
    if not numpy_holds(dims, 1):
        raise DataError(
            f"{path}: truncated or corrupt idx header: the shape {dims} is larger than numpy "
            "can hold"
        )
    return dims


def _idx_payload(
    path: Path, f: Readable, dims: tuple[int, ...], file_size: int | None
) -> np.ndarray:
    """The payload after an idx header, checked against ``dims`` before it is read.

    Args:
        file_size: The size of an uncompressed file; ``None`` for a gzipped one, whose
            payload is decompressed at most one byte past what ``dims`` describe.
    """
    expected = product(dims)
    what = f"the idx header's shape {dims}"
    if file_size is None:
        if expected > limits.MEMORY_BUDGET:
            found = count_at_most(f, limits.MEMORY_BUDGET + 1)
            if found <= limits.MEMORY_BUDGET:
                _wrong_length(path, dims, expected, found, exact=True)
            check_memory(path, what, expected)
        data = read_at_most(f, expected + 1)
        found = len(data)
        if found > expected:
            found += count_at_most(f, EXCESS_COUNTED)
            _wrong_length(path, dims, expected, found, exact=found - expected <= EXCESS_COUNTED)
    else:
        found = file_size - 4 - 4 * len(dims)
        _wrong_length(path, dims, expected, found, exact=True)
        check_memory(path, what, expected)
        data = read_at_most(f, expected)
    _wrong_length(path, dims, expected, len(data), exact=True)
    return np.frombuffer(data, np.uint8, expected).reshape(dims)


def _wrong_length(
    path: Path, dims: tuple[int, ...], expected: int, found: int, exact: bool
) -> None:
    """Raise :class:`DataError` unless ``found`` payload bytes are the ``expected`` ones;
    ``exact``: whether ``found`` counts every byte (else more follow)."""
    if found < expected:
        raise DataError(
            f"{path}: truncated idx file: the header promises {expected} bytes for shape "
            f"{dims} but only {found} follow"
        )
    if found > expected:
        extra = f"{found - expected}" if exact else f"more than {found - expected - 1}"
        raise DataError(
            f"{path}: corrupt idx file: {extra} bytes follow the {expected} bytes "
            f"the header describes (shape {dims})"
        )


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file, gzipped if ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=6) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def is_images_file(path: Path) -> bool:
    """Whether ``path``'s name looks like an idx images file."""
    return IMAGES_RE.match(path.name) is not None


def labels_file_for(images: Path) -> Path:
    """The labels file next to an images file (``images-idx3`` -> ``labels-idx1``).

    A labels file with the other compression (``.gz`` or not) is accepted too.

    Raises:
        DataError: No labels file exists.
    """
    match = IMAGES_RE.match(images.name)
    if match is None:
        raise DataError(f"{images}: not an idx images file name (*-images-idx3-ubyte[.gz])")
    stem = f"{match['prefix']}labels{match['sep']}idx1-ubyte"
    names = [stem + ".gz", stem] if match["gz"] else [stem, stem + ".gz"]
    for name in names:
        if (images.parent / name).is_file():
            return images.parent / name
    raise DataError(f"{images}: its labels file {images.parent / names[0]} does not exist")


def find_pairs(directory: Path) -> dict[str, Path]:
    """The idx images files in a directory, keyed by prefix (``"train-"``, ``"t10k-"``).

    When both a gzipped and an uncompressed copy exist, the uncompressed one is used.
    """
    pairs: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        match = IMAGES_RE.match(path.name)
        if match and path.is_file() and (match["prefix"] not in pairs or not match["gz"]):
            pairs[match["prefix"]] = path
    return pairs


def select_pair(path: Path, role: str) -> tuple[Path, Path]:
    """The ``(images, labels)`` files to read for ``role`` from a file or directory path.

    A directory with several pairs gives ``train*`` for ``role="train"`` and ``t10k*`` (or
    ``test*``) for ``role="test"``; a directory with a single pair gives it for either role.
    """
    if not path.is_dir():
        return path, labels_file_for(path)
    pairs = find_pairs(path)
    if not pairs:
        raise DataError(f"{path}: no idx images file (*-images-idx3-ubyte[.gz]) in this folder")
    if len(pairs) == 1:
        images = next(iter(pairs.values()))
    else:
        wanted = [p for k, p in pairs.items() if k.lower().startswith(ROLE_PREFIXES[role])]
        if len(wanted) != 1:
            names = ", ".join(p.name for p in pairs.values())
            raise DataError(f"{path}: cannot tell which idx pair is the {role} set among {names}")
        images = wanted[0]
    return images, labels_file_for(images)


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an images/labels pair.

    Returns:
        ``(n, H, W)`` uint8 pixels and ``(n,)`` uint8 labels.
    """
    pixels = read_idx(images_path)
    labels = read_idx(labels_path)
    if pixels.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (n, H, W), got shape {pixels.shape}")
    if pixels.shape[1] * pixels.shape[2] == 0:
        raise DataError(
            f"{images_path}: images of {pixels.shape[1]}x{pixels.shape[2]} (HxW) pixels; "
            "expected at least one pixel"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dimension (n,), got shape {labels.shape}")
    if len(pixels) != len(labels):
        raise DataError(
            f"{images_path} has {len(pixels)} images but {labels_path} has {len(labels)} labels"
        )
    return pixels, labels


def load_idx(path: Path, role: str = "train", normalize: str = "unit") -> Dataset:
    """Load an idx images/labels pair as a classification dataset (all classes).

    Args:
        path: An idx images file, or a directory holding one or two pairs.
        role: ``"train"`` or ``"test"``: which pair of a two-pair directory to read.
        normalize: Feature scaling, see :func:`images_to_features`.

    Returns:
        A dataset with ``(n, H*W)`` features, ``(n, 1, H, W)`` uint8 images, class names
        the label digits present (numerically sorted) and ids ``"{images file name}#{i}"``.
    """
    images_path, labels_path = select_pair(path, role)
    pixels, labels = read_pair(images_path, labels_path)
    check_memory(images_path, f"the float32 features of shape {pixels.shape}", 4 * pixels.size)
    values = np.unique(labels)
    images = torch.from_numpy(pixels).unsqueeze(1)
    return Dataset(
        features=images_to_features(images, normalize),
        targets=torch.from_numpy(np.searchsorted(values, labels).astype(np.int64)),
        ids=[f"{images_path.name}#{i}" for i in range(len(labels))],
        task="classification",
        class_names=[str(v) for v in values.tolist()],
        images=images,
        source=SourceInfo("idx", str(path.resolve()), {"normalize": normalize, "role": role}),
        name=path.name,
    )


def download_mnist(
    root: Path | str,
    role: str = "train",
    *,
    classes: list[str] | None = None,
    normalize: str = "unit",
) -> Dataset:
    """MNIST's training (60,000) or test (10,000) set, downloaded into ``root`` if needed.

    Uses ``torchvision.datasets.MNIST(root, download=True)`` unless the raw files
    ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` for ``role`` already
    exist, then reads them with :func:`load_idx`.

    Raises:
        DataError: The download failed (no network, bad checksum...) or the files are bad.
    """
    if role not in ROLE_PREFIXES:
        raise ConfigError(f"role must be 'train' or 'test', got {role!r}")
    check_normalize(normalize)
    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    prefix = "train" if role == "train" else "t10k"
    images = raw / f"{prefix}-images-idx3-ubyte"
    if not (images.is_file() and (raw / f"{prefix}-labels-idx1-ubyte").is_file()):
        from torchvision.datasets import MNIST

        try:
            MNIST(str(root), train=role == "train", download=True)
        except (RuntimeError, OSError, ValueError, EOFError) as exc:
            raise DataError(f"could not download MNIST: {exc}") from exc
    return restrict_classes(load_idx(images, role, normalize), classes, require_all=role == "train")


def write_idx_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """idx: the audited pair under its own names (same compression); a folder's other
    pairs are not copied (the rescan reads the run's own test data)."""
    assert source.path is not None  # write_cleaned refuses a file source without one
    path = Path(source.path)
    images_path, labels_path = select_pair(path, source.options.get("role", "train"))
    pixels, labels = read_pair(images_path, labels_path)
    ids = [f"{images_path.name}#{i}" for i in range(len(labels))]
    keep, relabel = plan(ids, decisions, str(images_path), unlisted)
    labels = labels.copy()
    for i, new in relabel.items():
        if not new.isdigit() or int(new) > 255:
            raise DataError(f"cannot relabel {ids[i]} as {new!r}: idx labels are integers 0..255")
        labels[i] = int(new)
    written = [out_dir / images_path.name, out_dir / labels_path.name]
    write_idx(written[0], pixels[keep])
    write_idx(written[1], labels[keep])
    return written


def _detect(path: Path) -> bool:
    """A folder holding an idx images file, or a file named like one."""
    return bool(find_pairs(path)) if path.is_dir() else is_images_file(path)


def _read(path: Path | None, options: ReadOptions) -> Dataset:
    assert path is not None  # only a built-in data set is read without a path
    return load_idx(path, options.role, options.normalize)


IDX = Format(
    "idx",
    _detect,
    _read,
    write_idx_cleaned,
    describes="an idx images file (*-images-idx3-ubyte[.gz]), a folder of idx files",
)
