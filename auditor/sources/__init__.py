"""Data sources: turn a data spec (a path or a built-in name) into a :class:`Dataset`.

Every format is one :class:`~auditor.sources.base.Format` (detector, reader and writer of
cleaned copies together) in its own module: :mod:`.toy` (``toy-linear``), :mod:`.tabular`
(CSV and NPZ), :mod:`.idx` (MNIST idx files) and :mod:`.imagefolder` (one sub-folder per
class). :data:`FORMATS` is the one list of them; :func:`load` reads and
:func:`auditor.sources.writers.write_cleaned` writes through it. Adding a format is one
module and one line in :data:`FORMATS`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from auditor.data import Dataset
from auditor.errors import ConfigError, DataError
from auditor.sources.base import Format, ReadOptions
from auditor.sources.idx import IDX, download_mnist
from auditor.sources.imagefolder import IMAGEFOLDER
from auditor.sources.images import check_normalize, images_to_features, to_rgb
from auditor.sources.labels import align_classes, restrict_classes
from auditor.sources.tabular import CSV, NPZ
from auditor.sources.toy import TOY, TOY_LINEAR

__all__ = [
    "FORMATS",
    "TOY_LINEAR",
    "Format",
    "ReadOptions",
    "align_classes",
    "detect_format",
    "download_mnist",
    "find_format",
    "images_to_features",
    "load",
    "match_channels",
    "restrict_classes",
]

#: Every data format, in detection order: the first whose ``detect`` accepts a path reads
#: it. idx comes before the image folder, which accepts any folder.
FORMATS: tuple[Format, ...] = (TOY, CSV, NPZ, IDX, IMAGEFOLDER)

ROLES = ("train", "test")


def find_format(name: str) -> Format | None:
    """The format named ``name`` (a :attr:`SourceInfo.format`), or ``None``."""
    return next((fmt for fmt in FORMATS if fmt.name == name), None)


def detect_format(path: Path) -> Format:
    """The format of an existing path: the first in :data:`FORMATS` that accepts it.

    Raises:
        DataError: A path of no known format, or a path that cannot be read.
    """
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise DataError(f"{path}: cannot be read (permission denied)")
    try:
        found = next((f for f in FORMATS if f.detect is not None and f.detect(path)), None)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if found is None:
        expected = _one_of([f.describes for f in FORMATS if f.describes])
        raise DataError(f"{path}: unknown data format; expected {expected}")
    return found


def _one_of(items: list[str]) -> str:
    """``"a, b or c"``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def load(
    spec: str,
    *,
    role: str = "train",
    classes: list[str] | None = None,
    normalize: str = "unit",
    resize: tuple[int, int] | None = None,
    seed: int = 0,
) -> Dataset:
    """Load the dataset a spec names.

    Args:
        spec: ``"toy-linear"``, or a path: a folder of idx files, a folder of class
            sub-folders, a ``.csv`` or ``.npz`` file, or an idx images file.
        role: ``"train"`` or ``"test"``: picks the toy-linear part and, in a folder holding
            ``train-*`` and ``t10k-*`` idx pairs, the pair.
        classes: Keep only these classes, indexed in this order (classification only).
            The train role needs every one of them; the test role at least one.
        normalize: Pixel feature scaling for image data, ``"unit"`` or ``"none"``.
        resize: ``(H, W)`` for image folders whose images differ in size.
        seed: Noise seed of ``toy-linear``.

    Returns:
        The dataset; ``source.options`` records ``classes`` and ``normalize``.

    Raises:
        ConfigError: Bad option values (role, normalize, classes, resize).
        DataError: A missing, unreadable or malformed dataset.
    """
    if role not in ROLES:
        raise ConfigError(f"role must be 'train' or 'test', got {role!r}")
    check_normalize(normalize)
    options = ReadOptions(role, normalize, resize, seed)
    builtin = next((f for f in FORMATS if f.builtin and f.name == spec), None)
    if builtin is not None:
        if resize is not None and not builtin.resizable:
            raise ConfigError(f"resize only applies to image folders, not {builtin.name}")
        return restrict_classes(builtin.read(None, options), classes, require_all=role == "train")
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a permission problem higher up...
        raise DataError(f"{spec}: cannot be read ({exc.strerror})") from None
    if not exists:
        raise DataError(f"{spec} does not exist")
    fmt = detect_format(path)
    if resize is not None and not fmt.resizable:
        raise ConfigError(f"resize only applies to image folders, not to {fmt.name} data ({path})")
    dataset = fmt.read(path, options)
    return restrict_classes(dataset, classes, require_all=role == "train")


def match_channels(train: Dataset, test: Dataset) -> tuple[Dataset, Dataset]:
    """Promote the gray one of a gray and an RGB image dataset to RGB, so that they agree.

    One image folder mixing gray and RGB images is promoted to RGB as it is read; this does
    the same across two loads (a train and a test folder, or the two parts ``auditor apply``
    writes after ``--test-split``). Other pairs are returned unchanged.

    Returns:
        ``(train, test)``; a promoted dataset has ``(n, 3, H, W)`` images and features
        recomputed from them with its own ``normalize`` option.
    """
    if train.images is None or test.images is None:
        return train, test
    channels = (train.images.shape[1], test.images.shape[1])
    if channels == (1, 3):
        return _promoted(train), test
    if channels == (3, 1):
        return train, _promoted(test)
    return train, test


def _promoted(dataset: Dataset) -> Dataset:
    """A gray image dataset as RGB: images and features, as an image folder's promotion."""
    assert dataset.images is not None  # match_channels promotes image datasets only
    images = to_rgb(dataset.images)
    normalize = dataset.source.options.get("normalize", "unit")
    return replace(dataset, images=images, features=images_to_features(images, normalize))
