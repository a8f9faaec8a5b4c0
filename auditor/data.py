"""The in-memory dataset every data source produces, and the operations on it.

A :class:`Dataset` is what flows from a data source to the model: features as a float
matrix, targets, a stable id per point, and (for images) the raw pixels kept for
thumbnails. Data sources live in :mod:`auditor.sources`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from auditor.errors import DataError

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class SourceInfo:
    """Where a dataset came from, enough for ``auditor apply`` to write it back.

    Attributes:
        format: The name of the data format that read it (one of
            :data:`auditor.sources.FORMATS`: ``toy-linear``, ``csv``, ``npz``, ``idx``,
            ``imagefolder``), or ``memory`` for data built in memory.
        path: The file or directory that was read (``None`` for built-in data).
        options: Loader options that affect the points (``classes``, ``normalize``...).
    """

    format: str
    path: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class Dataset:
    """A labelled dataset, ready for a model.

    Attributes:
        features: ``(n, d)`` float32 feature matrix.
        targets: ``(n,)`` int64 class indices (classification) or float32 values (regression).
        ids: ``n`` stable ids (file path, row number or index) used by reports and exports.
        task: ``"classification"`` or ``"regression"``.
        class_names: Names of the ``k`` classes, index-aligned with ``targets``
            (classification only).
        images: ``(n, C, H, W)`` uint8 pixels for thumbnails, or ``None`` for tabular data.
        source: Where the data came from.
        name: A short human-readable name for reports.
    """

    features: torch.Tensor
    targets: torch.Tensor
    ids: list[str]
    task: Task
    class_names: list[str] | None = None
    images: torch.Tensor | None = None
    source: SourceInfo = field(default_factory=lambda: SourceInfo("memory"))
    name: str = "dataset"

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.ndim != 2:
            raise DataError(
                f"{self.name}: features must be a 2-D matrix, got {self.features.ndim}-D"
            )
        if self.targets.shape != (n,) or len(self.ids) != n:
            raise DataError(f"{self.name}: features, targets and ids have different lengths")
        if self.images is not None and self.images.shape[0] != n:
            raise DataError(f"{self.name}: images and features have different lengths")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of classes (1 for regression)."""
        return len(self.class_names) if self.class_names else 1

    def subset(self, index: torch.Tensor | list[int]) -> Dataset:
        """The points at ``index`` (a ``(m,)`` integer tensor or list), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            features=self.features[index],
            targets=self.targets[index],
            ids=[self.ids[i] for i in index.tolist()],
            images=None if self.images is None else self.images[index],
        )


def validate(dataset: Dataset, role: str) -> None:
    """Raise :class:`DataError` for data no model can be fitted to.

    Args:
        dataset: The dataset to check.
        role: ``"train"`` or ``"test"``, named in the message.
    """
    where = f"{role} data ({dataset.name})"
    if len(dataset) == 0:
        raise DataError(f"{where} is empty")
    if dataset.n_features == 0:
        raise DataError(f"{where} has no features: every point is an empty vector")
    if not torch.isfinite(dataset.features).all():
        bad = int((~torch.isfinite(dataset.features)).any(dim=1).nonzero()[0].item())
        raise DataError(f"{where}: non-finite feature value (NaN or inf) at {dataset.ids[bad]}")
    if dataset.task == "regression":
        if not torch.isfinite(dataset.targets).all():
            bad = int((~torch.isfinite(dataset.targets)).nonzero()[0].item())
            raise DataError(f"{where}: non-finite target at {dataset.ids[bad]}")
        return
    k = dataset.n_classes
    if dataset.targets.min() < 0 or dataset.targets.max() >= k:
        raise DataError(f"{where}: labels must lie in 0..{k - 1}")
    if role == "train" and torch.unique(dataset.targets).numel() < 2:
        raise DataError(f"{where}: only one class present; a classifier needs at least two")


def check_compatible(train: Dataset, test: Dataset) -> None:
    """Raise :class:`DataError` when train and test cannot share one model."""
    if train.n_features != test.n_features:
        raise DataError(
            f"train has {train.n_features} features per point but test has {test.n_features}"
        )
    if train.task != test.task:
        raise DataError(f"train is {train.task} data but test is {test.task} data")
    if train.task == "classification" and train.class_names != test.class_names:
        raise DataError(
            f"train and test have different classes: {train.class_names} vs {test.class_names}"
        )


def train_test_split(dataset: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split at random into train and test parts; ``test_fraction`` in (0, 1)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"--test-split must lie strictly between 0 and 1, got {test_fraction}")
    n = len(dataset)
    n_test = int(round(n * test_fraction))
    if n_test == 0 or n_test == n:
        raise DataError(f"--test-split {test_fraction} of {n} points leaves an empty part")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[n_test:]), dataset.subset(order[:n_test])


def points_fingerprint(dataset: Dataset) -> str:
    """A SHA-256 of the multiset of (features, target) points: the same points in any order
    and under any ids give the same fingerprint."""
    features = dataset.features.to(torch.float32).contiguous().numpy()
    targets = dataset.targets.to(torch.float64).contiguous().numpy()
    rows = sorted(
        hashlib.sha256(f.tobytes() + t.tobytes()).digest()
        for f, t in zip(features, targets, strict=True)
    )
    return hashlib.sha256(b"".join(rows)).hexdigest()


def fingerprint(*datasets: Dataset) -> str:
    """A SHA-256 over features, targets and ids: equal data gives an equal fingerprint."""
    digest = hashlib.sha256()
    for ds in datasets:
        digest.update(ds.features.to(torch.float32).contiguous().numpy().tobytes())
        digest.update(ds.targets.contiguous().numpy().tobytes())
        digest.update("\x00".join(ds.ids).encode())
    return digest.hexdigest()
