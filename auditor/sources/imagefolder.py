"""Image folders: one sub-folder per class, ``root/<class>/<any/sub/path>.png``.

Images are decoded with :func:`torchvision.io.decode_image` (PNG, JPEG, GIF, WebP) and
kept as uint8 ``(C, H, W)``. Files with other extensions and hidden files or folders are
ignored; class folders without any image are not classes. A cleaned copy is the same tree
minus the removed files, with relabelled files moved to their new class folder.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path, PurePosixPath

import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from auditor.data import Dataset, SourceInfo
from auditor.errors import ConfigError, DataError
from auditor.sources.base import Decisions, Format, ReadOptions, plan
from auditor.sources.imagecheck import check_image
from auditor.sources.images import images_to_features, to_rgb, to_uint8_chw
from auditor.sources.limits import check_memory

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def find_images(root: Path) -> list[tuple[str, str]]:
    """Every image under ``root``'s class folders, in a stable order.

    Symbolic links to folders are followed, but a folder is read at most once per class, and
    never through a link back to ``root`` or into a class folder: a link loop does not
    multiply the points.

    Returns:
        ``(id, class name)`` pairs; the id is the path relative to ``root`` with forward
        slashes (``"cat/001.png"``), sorted by class folder then path.
    """
    found: list[tuple[str, str]] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    tops = {os.path.realpath(root), *(os.path.realpath(c) for c in class_dirs)}
    for class_dir in class_dirs:
        seen = set(tops)
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(
                d for d in dirnames if not _hidden(d) and _first_visit(Path(dirpath) / d, seen)
            )
            for name in sorted(filenames):
                if not _hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS):
                    rel = (Path(dirpath) / name).relative_to(root).as_posix()
                    found.append((rel, class_dir.name))
    return found


JPEG_MAGIC = b"\xff\xd8\xff"


def _first_visit(directory: Path, seen: set[str]) -> bool:
    """Whether ``directory`` resolves to a folder not in ``seen``; records it if so."""
    real = os.path.realpath(directory)
    if real in seen:
        return False
    seen.add(real)
    return True


def decode(path: Path) -> torch.Tensor:
    """Decode one image file (the first frame of an animation) to ``(1|3, H, W)`` uint8.

    A JPEG with 4 channels is CMYK, not RGB + alpha: it is decoded as RGB, which converts it.
    The header's width and height (and a GIF's frames) are checked against the pixel budget
    before the decoder allocates them (:func:`~auditor.sources.imagecheck.check_image`).

    Raises:
        DataError: The file cannot be read or decoded, or declares too many pixels.
    """
    try:
        data = read_file(str(path))
        check_image(path, memoryview(data.numpy()))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            image = decode_image(data, mode=ImageReadMode.UNCHANGED)
            if image.shape[-3] == 4 and bytes(data[:3].tolist()) == JPEG_MAGIC:
                image = decode_image(data, mode=ImageReadMode.RGB)
        if image.ndim == 4:
            image = image[0]
        return to_uint8_chw(image)
    except (RuntimeError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc


def check_resize(resize: tuple[int, int] | None) -> tuple[int, int] | None:
    """Validate a ``resize=(H, W)`` option (two positive integers) or raise ConfigError."""
    if resize is None:
        return None
    try:
        height, width = (int(v) for v in resize)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"resize must be two integers (H, W), got {resize!r}") from exc
    if height <= 0 or width <= 0:
        raise ConfigError(f"resize sizes must be positive, got {resize!r}")
    return height, width


def read_images(root: Path, ids: list[str], resize: tuple[int, int] | None) -> torch.Tensor:
    """Decode the images at ``ids`` (relative to ``root``) into one batch.

    All images must share one size unless ``resize`` is given; if any is RGB, gray
    images are converted to RGB.

    Returns:
        ``(n, C, H, W)`` uint8 pixels, C = 1 or 3.
    """
    pixels: list[torch.Tensor] = []
    kept = 0
    for rel in ids:
        image = decode(root / rel)
        if resize is not None:
            image = F.resize(image, list(resize), antialias=True)
        elif pixels and image.shape[1:] != pixels[0].shape[1:]:
            h0, w0 = pixels[0].shape[1:]
            h, w = image.shape[1:]
            raise DataError(
                f"{root / rel}: size {h}x{w} (HxW) differs from {h0}x{w0} of {root / ids[0]}; "
                f"resize all images to one size with --resize HxW (e.g. --resize {h0}x{w0})"
            )
        kept += 3 * image[0].numel()  # as RGB, if any image is
        check_memory(root, f"the images up to {rel}", kept)
        pixels.append(image)
    if any(p.shape[0] == 3 for p in pixels):
        pixels = [to_rgb(p) for p in pixels]
    return torch.stack(pixels)


def load_imagefolder(
    root: Path, normalize: str = "unit", resize: tuple[int, int] | None = None
) -> Dataset:
    """Load a folder of class sub-folders as a classification dataset.

    Args:
        root: The folder holding one sub-folder per class.
        normalize: Feature scaling, see :func:`images_to_features`.
        resize: ``(H, W)`` to resize every image to (antialiased); needed when sizes differ.

    Returns:
        A dataset with ``(n, C*H*W)`` features, ``(n, C, H, W)`` uint8 images, class names
        the sorted sub-folder names and ids the relative paths (``"cat/001.png"``).
    """
    resize = check_resize(resize)
    entries = find_images(root)
    if not entries:
        raise DataError(
            f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders; "
            "expected root/<class>/<image>"
        )
    ids = [rel for rel, _ in entries]
    class_names = sorted({name for _, name in entries})
    index = {name: i for i, name in enumerate(class_names)}
    images = read_images(root, ids, resize)
    check_memory(root, f"the float32 features of {tuple(images.shape)} images", 4 * images.numel())
    options = {"normalize": normalize, "resize": list(resize) if resize else None}
    return Dataset(
        features=images_to_features(images, normalize),
        targets=torch.tensor([index[name] for _, name in entries], dtype=torch.long),
        ids=ids,
        task="classification",
        class_names=class_names,
        images=images,
        source=SourceInfo("imagefolder", str(root.resolve()), options),
        name=root.name,
    )


def write_imagefolder_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """Image folder: the same tree minus removed files; relabelled files moved to the new
    class folder (created; a ``-1``, ``-2``... suffix avoids name clashes)."""
    assert source.path is not None  # write_cleaned refuses a file source without one
    root = Path(source.path)
    entries = find_images(root)
    ids = [rel for rel, _ in entries]
    keep, relabel = plan(ids, decisions, str(root), unlisted)
    targets: dict[int, PurePosixPath] = {}
    taken: set[PurePosixPath] = set()
    for i in keep:  # unchanged files first, so they keep their names
        if i not in relabel or relabel[i] == entries[i][1]:
            targets[i] = PurePosixPath(ids[i])
            taken.add(targets[i])
    for i in keep:
        if i not in targets:
            new = _folder_name(relabel[i], ids[i])
            targets[i] = _unique(PurePosixPath(new, *PurePosixPath(ids[i]).parts[1:]), taken)
            taken.add(targets[i])
    written = []
    for i in keep:
        out = out_dir / targets[i]
        out.parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copyfile(root / ids[i], out)))
    return written


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _folder_name(name: str, point_id: str) -> str:
    if name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise DataError(f"cannot relabel {point_id} as {name!r}: not a usable folder name")
    return name


def _unique(path: PurePosixPath, taken: set[PurePosixPath]) -> PurePosixPath:
    candidate, k = path, 0
    while candidate in taken:
        k += 1
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return candidate


def _read(path: Path | None, options: ReadOptions) -> Dataset:
    assert path is not None  # only a built-in data set is read without a path
    return load_imagefolder(path, options.normalize, options.resize)


#: Any folder: after idx in the registry, which takes the folders holding idx files.
IMAGEFOLDER = Format(
    "imagefolder",
    Path.is_dir,
    _read,
    write_imagefolder_cleaned,
    describes="a folder of class sub-folders",
    resizable=True,
)
