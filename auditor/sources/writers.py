"""Write a cleaned copy of a dataset, in its own format, for the cleaning loop.

:func:`write_cleaned` re-reads the original files a :class:`SourceInfo` names (every
record, whatever ``classes`` filter the audit used), drops the points marked ``remove``,
gives the points marked ``relabel`` their new label, and writes the result into a new
folder, where :func:`auditor.sources.load` reads it again.
"""

from __future__ import annotations

import csv
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from auditor.data import SourceInfo
from auditor.errors import DataError
from auditor.sources.idx import read_pair, select_pair, write_idx
from auditor.sources.imagefolder import find_images
from auditor.sources.tabular import (
    LABEL,
    fits_float32,
    read_csv_table,
    read_npz,
    target_column,
)
from auditor.sources.toy import toy_linear

Decisions = dict[str, tuple[str, str | None]]
ACTIONS = ("keep", "remove", "relabel")


def write_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, *, unlisted: str = "keep"
) -> list[Path]:
    """Write the cleaned dataset into ``out_dir`` (created if needed).

    Args:
        source: Where the audited data came from (``Dataset.source``).
        decisions: Point id -> ``("keep", None)``, ``("remove", None)`` or
            ``("relabel", new class name)`` (for regression, the new target value).
            Points not listed are kept unchanged.
        out_dir: The output folder; must not be the folder the source lives in.
        unlisted: What happens to the points ``decisions`` does not list: ``"keep"`` them
            (unchanged) or ``"remove"`` them (to write a chosen part of the source).

    Returns:
        The files written.

    Raises:
        DataError: An unknown id, a malformed decision, a label the format cannot hold,
            an output folder that would overwrite the source, or unreadable source data.
    """
    check_decisions(decisions)
    writer = WRITERS.get(source.format)
    if writer is None:
        raise DataError(f"cannot write {source.format!r} data; known: {', '.join(WRITERS)}")
    if source.path is None and source.format != "toy-linear":
        raise DataError(f"the {source.format} source records no path to re-read")
    out_dir = Path(out_dir)
    _check_not_source(source, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return writer(source, decisions, out_dir, unlisted)


def check_decisions(decisions: Decisions) -> None:
    """Raise :class:`DataError` unless every decision is a well-formed (action, label)."""
    for point_id, decision in decisions.items():
        try:
            action, new = decision
        except (TypeError, ValueError):
            raise DataError(
                f"decision for {point_id!r} must be (action, new label), got {decision!r}"
            ) from None
        if action not in ACTIONS:
            raise DataError(f"decision for {point_id!r}: unknown action {action!r}")
        if action == "relabel" and (not isinstance(new, str) or not new.strip()):
            raise DataError(f"decision for {point_id!r}: relabel needs a new label, got {new!r}")


def plan(
    ids: list[str], decisions: Decisions, where: str, unlisted: str
) -> tuple[list[int], dict[int, str]]:
    """The record indexes to keep, in order, and the new label of each relabelled one;
    ``unlisted`` is the action of the ids that ``decisions`` does not list."""
    known = set(ids)
    unknown = [point_id for point_id in decisions if point_id not in known]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(f"{where}: {len(unknown)} decision id(s) not in the data: {shown}")
    keep, relabel = [], {}
    for i, point_id in enumerate(ids):
        action, new = decisions.get(point_id, (unlisted, None))
        if action != "remove":
            keep.append(i)
        if action == "relabel":
            relabel[i] = new.strip()
    return keep, relabel


def write_idx_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """idx: the audited pair under its own names (same compression); a folder's other
    pairs are not copied (the rescan reads the run's own test data)."""
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


def write_csv_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """CSV: same header and columns; rows removed, ``label`` / ``target`` cells changed."""
    path = Path(source.path)
    header, data = read_csv_table(path)
    col, kind = target_column(header, path)
    ids = [f"{path.name}#{i}" for i in range(len(data))]
    keep, relabel = plan(ids, decisions, str(path), unlisted)
    rows = []
    for i in keep:
        row = list(data[i][1])
        if i in relabel:
            new = relabel[i]
            row[col] = new if kind == LABEL else repr(target_value(new, f"{path.name}#{i}"))
        rows.append(row)
    out = out_dir / path.name
    _write_csv(out, header, rows)
    return [out]


def write_npz_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """NPZ: every array with ``n`` rows loses the removed rows; ``y`` relabelled; dtypes kept."""
    path = Path(source.path)
    arrays = read_npz(path)
    if "X" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: missing array X or y")
    n = len(arrays["X"])
    ids = [f"{path.name}#{i}" for i in range(n)]
    keep, relabel = plan(ids, decisions, str(path), unlisted)
    y = arrays["y"].copy()
    for i, new in relabel.items():
        y[i] = _npz_value(new, y.dtype, ids[i])
    arrays["y"] = y
    cleaned = {k: a[keep] if a.ndim >= 1 and len(a) == n else a for k, a in arrays.items()}
    out = out_dir / path.name
    save = np.savez_compressed if _is_compressed(path) else np.savez
    with out.open("wb") as f:
        save(f, **cleaned)
    return [out]


def write_imagefolder_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """Image folder: the same tree minus removed files; relabelled files moved to the new
    class folder (created; a ``-1``, ``-2``... suffix avoids name clashes)."""
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


def write_toy_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """toy-linear: its 20 training points as ``toy-linear.csv`` with columns ``x,target``."""
    train, _ = toy_linear(source.options.get("seed", 0))
    keep, relabel = plan(train.ids, decisions, "toy-linear", unlisted)
    rows = []
    for i in keep:
        target = target_value(relabel[i], train.ids[i]) if i in relabel else train.targets[i].item()
        rows.append([repr(train.features[i, 0].item()), repr(float(target))])
    out = out_dir / "toy-linear.csv"
    _write_csv(out, ["x", "target"], rows)
    return [out]


WRITERS: dict[str, Callable[[SourceInfo, Decisions, Path, str], list[Path]]] = {
    "idx": write_idx_cleaned,
    "csv": write_csv_cleaned,
    "npz": write_npz_cleaned,
    "imagefolder": write_imagefolder_cleaned,
    "toy-linear": write_toy_cleaned,
}


def _check_not_source(source: SourceInfo, out_dir: Path) -> None:
    """Refuse an output folder that is, or lies inside, the folder of the source data."""
    if source.path is None:
        return
    src = Path(source.path).resolve()
    folder = src if src.is_dir() else src.parent
    out = out_dir.resolve()
    if out == folder or (src.is_dir() and folder in out.parents):
        raise DataError(f"{out_dir}: refusing to write the cleaned data over its source {src}")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def target_value(text: str, point_id: str) -> float:
    """A new regression target from ``text``: a number that float32 holds (what the
    loaders read back), else :class:`DataError`."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"cannot set the target of {point_id} to {text!r}: not a number") from None
    if not fits_float32(value):
        raise DataError(
            f"cannot set the target of {point_id} to {text!r}: not finite, or too large for float32"
        )
    return value


def _npz_value(text: str, dtype: np.dtype, point_id: str) -> int | float:
    if np.issubdtype(dtype, np.floating):
        return target_value(text, point_id)
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"cannot relabel {point_id} as {text!r}: y holds integers") from None
    info = np.iinfo(dtype)
    if not info.min <= value <= info.max:
        raise DataError(f"cannot relabel {point_id} as {text!r}: out of range for {dtype}")
    return value


def _is_compressed(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())


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
