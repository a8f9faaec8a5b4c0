"""Data sources: turn a data spec (a path or a built-in name) into a :class:`Dataset`.

Formats, one module each: :mod:`.idx` (MNIST idx files), :mod:`.imagefolder` (one
sub-folder per class), :mod:`.tabular` (CSV and NPZ) and :mod:`.toy` (``toy-linear``).
:mod:`.writers` writes a cleaned copy of any of them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from auditor.data import Dataset
from auditor.errors import ConfigError, DataError
from auditor.sources.idx import download_mnist, find_pairs, is_images_file, load_idx
from auditor.sources.imagefolder import load_imagefolder
from auditor.sources.images import check_normalize, images_to_features, to_rgb
from auditor.sources.labels import align_classes, restrict_classes
from auditor.sources.tabular import load_csv, load_npz
from auditor.sources.toy import toy_linear

__all__ = [
    "align_classes",
    "detect_format",
    "download_mnist",
    "images_to_features",
    "load",
    "match_channels",
    "restrict_classes",
]

TOY_LINEAR = "toy-linear"
ROLES = ("train", "test")


def detect_format(path: Path) -> str:
    """The format of an existing path: ``idx``, ``imagefolder``, ``csv`` or ``npz``.

    Raises:
        DataError: A file of no known format, or a path that cannot be read.
    """
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise DataError(f"{path}: cannot be read (permission denied)")
    if path.is_dir():
        try:
            return "idx" if find_pairs(path) else "imagefolder"
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc})") from exc
    suffix = path.suffix.lower()
    if suffix in (".csv", ".npz"):
        return suffix[1:]
    if is_images_file(path):
        return "idx"
    raise DataError(
        f"{path}: unknown data format; expected a .csv or .npz file, an idx images file "
        "(*-images-idx3-ubyte[.gz]), a folder of idx files or a folder of class sub-folders"
    )


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
    if spec == TOY_LINEAR:
        if resize is not None:
            raise ConfigError("resize only applies to image folders, not toy-linear")
        toy = toy_linear(seed)[0 if role == "train" else 1]
        options = {**toy.source.options, "normalize": normalize}
        toy = replace(toy, source=replace(toy.source, options=options))
        return restrict_classes(toy, classes, require_all=role == "train")
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a permission problem higher up...
        raise DataError(f"{spec}: cannot be read ({exc.strerror})") from None
    if not exists:
        raise DataError(f"{spec} does not exist")
    fmt = detect_format(path)
    if resize is not None and fmt != "imagefolder":
        raise ConfigError(f"resize only applies to image folders, not to {fmt} data ({path})")
    if fmt == "idx":
        dataset = load_idx(path, role, normalize)
    elif fmt == "imagefolder":
        dataset = load_imagefolder(path, normalize, resize)
    elif fmt == "csv":
        dataset = load_csv(path, normalize)
    else:
        dataset = load_npz(path, normalize)
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
    images = to_rgb(dataset.images)
    normalize = dataset.source.options.get("normalize", "unit")
    return replace(dataset, images=images, features=images_to_features(images, normalize))
