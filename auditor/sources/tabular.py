"""Tabular files: CSV with a ``label`` or ``target`` column, and NPZ with ``X`` and ``y``.

CSV: a header row, numeric feature columns and exactly one ``label`` column
(classification) or ``target`` column (regression). NPZ: ``X`` of shape ``(n, d)``,
``(n, H, W)`` or ``(n, C, H, W)`` (uint8 image-shaped ``X`` is treated as pixels) and ``y``
(integer: classification, float: regression). Ids are ``"{file name}#{row}"`` with the
0-based data row. A cleaned copy keeps the file's name, columns (CSV) and arrays and dtypes
(NPZ).
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np
import torch

from auditor.data import Dataset, SourceInfo
from auditor.errors import DataError
from auditor.sources.base import Decisions, Format, ReadOptions, plan
from auditor.sources.images import check_normalize, images_to_features
from auditor.sources.labels import canonical_labels, encode_labels
from auditor.sources.limits import check_memory
from auditor.sources.npy import read_npz_arrays

LABEL, TARGET = "label", "target"
TOO_LARGE = "NaN or inf, or too large for float32"


class _Common(TypedDict):
    """The :class:`Dataset` fields a loader knows before it reads the targets."""

    features: torch.Tensor
    ids: list[str]
    images: NotRequired[torch.Tensor | None]
    source: SourceInfo
    name: str


def read_csv_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV file's header and data rows (blank lines skipped).

    Returns:
        The stripped header names and ``(line number, cells)`` for every data row; the
        line number is the row's first line.

    Raises:
        DataError: Unreadable, not UTF-8, empty, no data rows, a ragged row, or malformed
            quoting (an unbalanced quote would otherwise swallow the rest of the file).
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = _strict_rows(csv.reader(f, strict=True), path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: empty file; expected a header row and data rows")
    header = [name.strip() for name in rows[0][1]]
    data = rows[1:]
    if not data:
        raise DataError(f"{path}: a header row but no data rows")
    for i, (line, row) in enumerate(data):
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {line} (data row {i}) has {len(row)} fields "
                f"but the header has {len(header)}"
            )
    return header, data


def _strict_rows(reader, path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a strict ``csv.reader`` with the line each one starts on.

    Raises:
        DataError: Malformed quoting, naming the line where the bad row starts.
    """
    rows: list[tuple[int, list[str]]] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise DataError(
                f"{path}: line {start}: malformed CSV ({exc}); check for an unbalanced quote"
            ) from None
        if row:
            rows.append((start, row))


def target_column(header: list[str], path: Path) -> tuple[int, str]:
    """The index and kind (``"label"`` or ``"target"``) of the one target column."""
    found = [(i, name) for i, name in enumerate(header) if name in (LABEL, TARGET)]
    if not found:
        raise DataError(
            f"{path}: missing label column: expected one column named 'label' "
            f"(classification) or 'target' (regression); the columns are {', '.join(header)}"
        )
    if len(found) > 1:
        raise DataError(f"{path}: several label/target columns; keep exactly one")
    if len(header) == 1:
        raise DataError(f"{path}: no feature columns besides '{found[0][1]}'")
    return found[0]


def parse_number(cell: str, path: Path, line: int, row: int, column: str) -> float:
    """Parse one numeric cell, or raise DataError naming the line, row and column."""
    where = f"{path}: line {line} (data row {row}), column '{column}'"
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"{where}: {cell!r} is not a number") from None
    if not fits_float32(value):
        raise DataError(f"{where}: non-finite value {cell!r} ({TOO_LARGE})")
    return value


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def fits_float32(value: float) -> bool:
    """Whether ``value`` is finite and stays finite as float32 (what the loaders store).
    Called per CSV cell: numpy is asked only for values beyond float32's largest."""
    if not math.isfinite(value):
        return False
    if abs(value) <= _FLOAT32_MAX:
        return True
    with np.errstate(over="ignore"):  # just above the largest: rounds to it or to inf
        return bool(np.isfinite(np.float32(value)))


def load_csv(path: Path, normalize: str = "unit") -> Dataset:
    """Load a CSV file; ``normalize`` only is recorded (tabular features are used as is).

    Returns:
        A dataset with ``(n, d)`` features (the non-target columns in file order); class
        names sorted numerically if all labels are integers, else lexically.
    """
    check_normalize(normalize)
    header, data = read_csv_table(path)
    col, kind = target_column(header, path)
    features = [
        [parse_number(cell, path, line, i, header[j]) for j, cell in enumerate(row) if j != col]
        for i, (line, row) in enumerate(data)
    ]
    raw = [row[col] for _, row in data]
    common: _Common = {
        "features": torch.tensor(features, dtype=torch.float32),
        "ids": [f"{path.name}#{i}" for i in range(len(data))],
        "source": SourceInfo("csv", str(path.resolve()), {"normalize": normalize}),
        "name": path.name,
    }
    lines = [line for line, _ in data]
    if kind == TARGET:
        values = [parse_number(v, path, lines[i], i, TARGET) for i, v in enumerate(raw)]
        targets = torch.tensor(values, dtype=torch.float32)
        return Dataset(targets=targets, task="regression", **common)
    for i, (line, value) in enumerate(zip(lines, raw, strict=True)):
        where = f"{path}: line {line} (data row {i}), column 'label'"
        if not value.strip():
            raise DataError(f"{where}: empty label")
        if "\n" in value or "\r" in value:
            raise DataError(f"{where}: the label {value!r} contains a line break")
    targets, class_names = encode_labels(canonical_labels(raw))
    return Dataset(targets=targets, task="classification", class_names=class_names, **common)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an NPZ file (no pickled objects), by name; each member's header is
    checked before its array is loaded (see :mod:`auditor.sources.npy`)."""
    return read_npz_arrays(path)


def load_npz(path: Path, normalize: str = "unit") -> Dataset:
    """Load ``X`` and ``y`` from an NPZ file.

    Returns:
        A dataset with ``(n, d)`` features (``X`` flattened per row; uint8 image-shaped
        ``X`` is scaled as pixels and kept as ``(n, C, H, W)`` images), classification
        for integer ``y`` (class names the sorted distinct values) or regression for float.
    """
    check_normalize(normalize)
    arrays = read_npz(path)
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing array {', '.join(missing)}; it holds {', '.join(arrays) or 'nothing'}"
        )
    x, y = arrays["X"], arrays["y"]
    if x.ndim not in (2, 3, 4) or len(x) == 0 or x[0].size == 0:
        raise DataError(
            f"{path}: X must be (n, d), (n, H, W) or (n, C, H, W) with n > 0 and at least one "
            f"feature, got {x.shape}"
        )
    if y.shape != (len(x),):
        raise DataError(f"{path}: y must have shape ({len(x)},) to match X, got {y.shape}")
    ids = [f"{path.name}#{i}" for i in range(len(x))]
    images, features = _npz_features(x, normalize, path, ids)
    common: _Common = {
        "features": features,
        "ids": ids,
        "images": images,
        "source": SourceInfo("npz", str(path.resolve()), {"normalize": normalize}),
        "name": path.name,
    }
    if np.issubdtype(y.dtype, np.integer):
        values = np.unique(y)
        targets = torch.from_numpy(np.searchsorted(values, y).astype(np.int64))
        names = [str(v) for v in values.tolist()]
        return Dataset(targets=targets, task="classification", class_names=names, **common)
    if np.issubdtype(y.dtype, np.floating):
        with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
            targets = torch.from_numpy(y.astype(np.float32))
        bad = (~torch.isfinite(targets)).nonzero().flatten()
        if len(bad):
            raise DataError(f"{path}: non-finite y ({TOO_LARGE}) at row {bad[0].item()}")
        return Dataset(targets=targets, task="regression", **common)
    raise DataError(f"{path}: y must be integer (classes) or float (regression), got {y.dtype}")


def _npz_features(
    x: np.ndarray, normalize: str, path: Path, ids: list[str]
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(images or None, (n, d) float32 features)`` from an NPZ ``X``."""
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        check_memory(path, f"the float32 features of X {x.shape}", 4 * x.size)
        images = torch.from_numpy(np.ascontiguousarray(x[:, None] if x.ndim == 3 else x))
        return images, images_to_features(images, normalize)
    if not any(np.issubdtype(x.dtype, t) for t in (np.integer, np.floating, np.bool_)):
        raise DataError(f"{path}: X must be integer, float or bool, got {x.dtype}")
    check_memory(path, f"the float32 features of X {x.shape}", 4 * x.size)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
        flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    features = torch.from_numpy(flat)
    bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise DataError(f"{path}: non-finite value in X ({TOO_LARGE}) at row {bad[0].item()}")
    return None, features


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


def write_csv_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write a CSV file (UTF-8, ``\\n`` line ends) that :func:`load_csv` reads back."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_csv_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """CSV: same header and columns; rows removed, ``label`` / ``target`` cells changed."""
    assert source.path is not None  # write_cleaned refuses a file source without one
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
    write_csv_rows(out, header, rows)
    return [out]


def _write_npz(out: Path, arrays: dict[str, np.ndarray], *, compressed: bool) -> None:
    """Write ``arrays`` as the members ``NAME.npy`` of an NPZ archive, as ``np.savez``
    does, but for any array name: ``np.savez(f, **arrays)`` takes an array named
    ``allow_pickle`` for its own keyword and leaves it out of the copy."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_npz_cleaned(
    source: SourceInfo, decisions: Decisions, out_dir: Path, unlisted: str
) -> list[Path]:
    """NPZ: every array with ``n`` rows loses the removed rows; ``y`` relabelled; dtypes kept."""
    assert source.path is not None  # write_cleaned refuses a file source without one
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
    _write_npz(out, cleaned, compressed=_is_compressed(path))
    return [out]


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


def _has_suffix(suffix: str) -> Callable[[Path], bool]:
    """A detector: a path that is not a folder and whose name ends in ``suffix`` (any case)."""

    def detect(path: Path) -> bool:
        return not path.is_dir() and path.suffix.lower() == suffix

    return detect


def _read_csv(path: Path | None, options: ReadOptions) -> Dataset:
    assert path is not None  # only a built-in data set is read without a path
    return load_csv(path, options.normalize)


def _read_npz(path: Path | None, options: ReadOptions) -> Dataset:
    assert path is not None  # only a built-in data set is read without a path
    return load_npz(path, options.normalize)


CSV = Format("csv", _has_suffix(".csv"), _read_csv, write_csv_cleaned, describes="a .csv file")
NPZ = Format("npz", _has_suffix(".npz"), _read_npz, write_npz_cleaned, describes="a .npz file")
